"""Every setting docker-compose.yml reads is documented in .env.example, with the same
default: an operator reading .env.example learns exactly what an empty .env gives."""

from __future__ import annotations

import re
from pathlib import Path

from mlstack_platform import secrets_store

ROOT = Path(__file__).resolve().parents[2]
# ${NAME}, ${NAME:-default} or ${NAME-default} in the compose files.
VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?-([^}]*))?\}")
# NAME=value, also commented out (# NAME=value) for settings that are empty by default.
SETTING = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def compose_defaults() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in ROOT.glob("docker-compose*.yml"):
        for name, default in VARIABLE.findall(path.read_text()):
            found.setdefault(name, set()).add(default)
    return found


def documented() -> dict[str, str]:
    settings = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
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


def test_every_compose_setting_is_in_env_example_with_its_default():
    docs = documented()
    missing = sorted(set(compose_defaults()) - set(docs))
    assert not missing, f"add these to .env.example (with a comment): {missing}"
    for name, defaults in compose_defaults().items():
        assert len(defaults) == 1, f"{name} has different defaults in the compose files: {defaults}"
        expected = effective(name, next(iter(defaults)))
        assert docs[name] == expected, (
            f"{name}: .env.example says {docs[name]!r}, docker-compose.yml gives {expected!r}")


def test_env_example_lists_nothing_the_stack_ignores():
    used = set(compose_defaults()) | {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}
    # Read by the operator scripts rather than the compose file.
    used |= {name for name in documented() if re.search(
        rf"setting {name}\b", "".join(p.read_text() for p in (ROOT / "scripts").iterdir()))}
    unused = sorted(set(documented()) - used)
    assert not unused, f".env.example documents settings nothing reads: {unused}"
