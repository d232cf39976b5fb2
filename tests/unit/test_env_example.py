"""Every setting the compose files read is documented in their example .env, with the same
default: an operator reading .env.example learns exactly what an empty .env gives. The
platform's files (and its Swarm stack file) go with .env.example; a worker host's
(docker-compose.worker.yml, with the GPU overlay) with .env.worker.example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlstack_platform import secrets_store

ROOT = Path(__file__).resolve().parents[2]
# ${NAME}, ${NAME:-default} or ${NAME-default} in the compose files; ${NAME:?why}, required.
VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?-([^}]*)|:\?[^}]*)?\}")
EXAMPLES = {
    ".env.example": ("docker-compose.yml", "docker-compose.gpu.yml", "docker-stack.yml"),
    ".env.worker.example": ("docker-compose.worker.yml", "docker-compose.gpu.yml"),
}
# Set by scripts/swarm deploy for docker-stack.yml: names of Swarm secrets and configs,
# image IDs, whether .env sets the admin password.
DEPLOY_NAMES = ("MLSTACK_SECRET_", "MLSTACK_CONFIG_", "MLSTACK_DEPLOY_")
# NAME=value, also commented out (# NAME=value) for settings that are empty by default.
SETTING = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def compose_defaults(example: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in EXAMPLES[example]:
        for variable, default in VARIABLE.findall((ROOT / name).read_text()):
            if variable.startswith(DEPLOY_NAMES):
                continue
            found.setdefault(variable, set()).add(default)
    return found


def test_every_compose_file_has_its_example():
    assert {f for files in EXAMPLES.values() for f in files} == {
        p.name for p in [*ROOT.glob("docker-compose*.yml"), *ROOT.glob("docker-stack*.yml")]}


def documented(example: str) -> dict[str, str]:
    settings = {}
    for line in (ROOT / example).read_text().splitlines():
        match = SETTING.match(line.strip())
        if match:
            settings.setdefault(match.group(1), match.group(2).strip())
    return settings


def effective(name: str, compose_default: str) -> str:
    """What an unset setting amounts to: the compose default, except where the compose file
    passes it on empty and the platform picks the value (secrets_store), or mounts /dev/null
    for an unset file."""
    if compose_default == "/dev/null":
        return ""
    chosen = {s.env: s.default for s in secrets_store.SECRETS if s.env and s.default}
    return chosen.get(name, compose_default) if compose_default == "" else compose_default


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_compose_setting_is_in_its_example_with_its_default(example):
    docs = documented(example)
    missing = sorted(set(compose_defaults(example)) - set(docs))
    assert not missing, f"add these to {example} (with a comment): {missing}"
    for name, defaults in compose_defaults(example).items():
        assert len(defaults) == 1, f"{name} has different defaults in the compose files: {defaults}"
        expected = effective(name, next(iter(defaults)))
        assert docs[name] == expected, (
            f"{name}: {example} says {docs[name]!r}, the compose files give {expected!r}")


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_example_lists_nothing_the_stack_ignores(example):
    used = set(compose_defaults(example)) | {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}
    # Read by the operator scripts rather than the compose file.
    used |= {name for name in documented(example) if re.search(
        rf"setting {name}\b", "".join(p.read_text() for p in (ROOT / "scripts").iterdir()))}
    unused = sorted(set(documented(example)) - used)
    assert not unused, f"{example} documents settings nothing reads: {unused}"
