"""docker-stack.yml (Swarm) and docker-compose.yml cannot drift apart: every key of every
service must be equal in both files, except the differences named below, each of which the
stack file's header explains; the keys that differ in form (volumes, secrets, networks,
ports) are compared for what they mean."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mlstack_platform import secrets_store

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE = COMPOSE_FILE["services"]
STACK_FILE = yaml.safe_load((ROOT / "docker-stack.yml").read_text())
STACK = STACK_FILE["services"]

# scripts/swarm secrets runs it on the manager; no service of the stack.
COMPOSE_ONLY = {"init-secrets"}
# Keys Swarm has no use for or takes in another form: start order and restarts (Swarm's own
# restart policy, in deploy), builds, secrets volumes (Swarm secrets), tmpfs (a tmpfs mount).
# `labels`: the image's ID, so that a rebuilt image rolls its services.
DIFFERENT_FORM = {"build", "restart", "depends_on", "deploy", "volumes", "secrets", "configs",
                  "tmpfs", "shm_size", "labels", "networks", "ports", "environment"}
# Per service, keys Swarm does not take (SECURITY.md, "Docker Swarm", says what replaces
# each) or that only the stack has.
ALLOWED = {
    "trainer": {"security_opt", "group_add"},
    "mlflow": {"stop_grace_period"},  # the drain (MLSTACK_DRAIN_SECONDS), then gunicorn's 30 s
}
# Settings a stack service has beyond its compose twin (name -> value pattern), and the ones
# it has not.
EXTRA_ENV = {
    # A replica told to stop keeps serving while nginx moves to the others (server.py).
    "mlflow": {"MLSTACK_DRAIN_SECONDS": "15"},
    # The worker's credential as a Swarm secret under /run/secrets: the image's folder is
    # closed to root without DAC_OVERRIDE, and compose's group_add (which opens it) is lost.
    "trainer": {"MLSTACK_WORKER_SECRETS_DIR": "/run/secrets/mlstack-worker"},
    # Whether .env sets the admin password, not the password (readable on every manager).
    "init": {"MLSTACK_ADMIN_PASSWORD_SET": "${MLSTACK_DEPLOY_ADMIN_PASSWORD_SET:-}"},
}
MISSING_ENV = {"init": {"MLSTACK_ADMIN_PASSWORD"}}
# Where compose mounts a secrets volume, the stack mounts Swarm secrets in this folder instead.
SECRET_DIRS = {"trainer": {"/var/lib/mlstack/worker-secrets": "/run/secrets/mlstack-worker"}}
SECRET_VOLUMES = {"secrets", "tls", "postgres-secrets", "minio-secrets", "mlflow-secrets",
                  "janitor-secrets", "trainer-secrets", "worker-secrets", "tensorboard-secrets"}
# What each service finds in its secrets folder(s) under compose (init-secrets writes them).
SECRET_FILES = {
    **{name: {"/var/lib/mlstack/secrets": set(files)}
       for name, files in secrets_store.SERVICE_SECRETS.items()},
    "init": {"/var/lib/mlstack/secrets": {s.file for s in secrets_store.SECRETS}},
    "trainer-api": {"/var/lib/mlstack/trainer-secrets": {*secrets_store.TRAINER_API_SECRETS,
                                                         "public_origins"}},
    "trainer": {"/run/secrets/mlstack-worker": {*secrets_store.WORKER_SECRETS, "ca.crt"}},
    "tensorboard": {"/var/lib/mlstack/tensorboard-secrets": set(
        secrets_store.TENSORBOARD_SECRETS)},
    "nginx": {"/etc/nginx/tls": {"tls.crt", "tls.key", "internal.crt", "internal.key", "ca.crt",
                                 "server_names.conf", "cors_origins.conf",
                                 "trainer_body_limit.conf"}},
}
PUBLIC_FILES = {"ca.crt", "tls.crt", "internal.crt", "public_origins", "server_names.conf",
                "cors_origins.conf", "trainer_body_limit.conf"}
# SOURCE:TARGET[:ro], where SOURCE may be ${NAME:-default} (with its own colon).
SHORT_VOLUME = re.compile(r"^(\$\{[^}]*\}|[^:]+):([^:]+)(?::(ro|rw))?$")


def volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """Mount point -> (source: a volume, a host path or 'tmpfs'; read-only)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = (volume.get("source", volume["type"]),
                                       bool(volume.get("read_only")))
        else:
            source, target, mode = SHORT_VOLUME.match(volume).groups()
            found[target] = (source, mode == "ro")
    for target in service.get("tmpfs", []):
        found[target.split(":")[0]] = ("tmpfs", False)
    return found


def stack_secret_files(name: str) -> dict[str, set[str]]:
    """Folder -> the secret files a stack service gets there."""
    found: dict[str, set[str]] = {}
    for secret in STACK[name].get("secrets", []):
        target = PurePosixPath(secret["target"])
        found.setdefault(str(target.parent), set()).add(target.name)
    return found


def test_the_same_services():
    assert set(COMPOSE) - COMPOSE_ONLY == set(STACK)


@pytest.mark.parametrize("name", sorted(STACK))
def test_every_other_key_is_the_same(name):
    compose, stack = COMPOSE[name], STACK[name]
    for key in (set(compose) | set(stack)) - DIFFERENT_FORM:
        if key in ALLOWED.get(name, ()):
            continue
        assert stack.get(key) == compose.get(key), f"{name}: {key} differs"


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_settings(name):
    compose_env = {k: v for k, v in COMPOSE[name].get("environment", {}).items()
                   if k not in MISSING_ENV.get(name, ())}
    stack_env = dict(STACK[name].get("environment", {}))
    for extra, value in EXTRA_ENV.get(name, {}).items():
        assert stack_env.pop(extra) == value
    assert stack_env == compose_env


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_networks_limits_and_published_ports(name):
    compose, stack = COMPOSE[name], STACK[name]
    assert stack.get("networks") == compose.get("networks")  # aliases too (mlstack.internal)
    assert (stack["deploy"]["resources"]["limits"]["memory"]
            == compose["deploy"]["resources"]["limits"]["memory"])
    # Only nginx publishes ports, the same ones (Swarm: host mode, no address).
    compose_ports = {p.rsplit(":", 1)[1] for p in compose.get("ports", [])}
    assert {str(p["target"]) for p in stack.get("ports", [])} == compose_ports
    assert all(p["mode"] == "host" for p in stack.get("ports", []))


def test_only_nginx_publishes_ports():
    assert [name for name, service in STACK.items() if service.get("ports")] == ["nginx"]


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_volumes_read_only_where_compose_has_them(name):
    compose_volumes, stack_volumes = volumes(COMPOSE[name]), volumes(STACK[name])
    data_mounts = {t: v for t, v in compose_volumes.items()
                   if v[0] not in SECRET_VOLUMES and not v[0].startswith("${TLS_")}
    # compose's shm_size becomes a tmpfs on /dev/shm.
    if "shm_size" in COMPOSE[name]:
        assert stack_volumes.pop("/dev/shm") == ("tmpfs", False)
    # A folder of this checkout (nginx's templates) becomes Swarm configs, one per file.
    for target, (source, _) in list(data_mounts.items()):
        if source.startswith("./"):
            del data_mounts[target]
            assert {c["target"] for c in STACK[name]["configs"]} == {
                f"{target}/{p.name}" for p in (ROOT / source).iterdir()}
    assert stack_volumes == data_mounts


@pytest.mark.parametrize("name", sorted(STACK))
def test_each_service_gets_exactly_the_secrets_it_has_under_compose(name):
    compose_folders = {t for t, (source, _) in volumes(COMPOSE[name]).items()
                       if source in SECRET_VOLUMES}
    expected = SECRET_FILES.get(name, {})
    assert {SECRET_DIRS.get(name, {}).get(f, f) for f in compose_folders} == set(expected)
    assert stack_secret_files(name) == expected


def test_no_secret_file_is_readable_by_others_except_public_ones():
    for name, service in STACK.items():
        for secret in service.get("secrets", []):
            if PurePosixPath(secret["target"]).name not in PUBLIC_FILES:
                assert secret["mode"] == 0o400, f"{name}: {secret['target']}"


def test_jobs_cannot_read_the_workers_credential():
    """The worker runs as root (without DAC_OVERRIDE), its jobs under uids of their own."""
    assert STACK["trainer"]["user"] == "0:0"
    credential = next(s for s in STACK["trainer"]["secrets"]
                      if s["target"].endswith("/worker_mlflow_password"))
    assert credential["uid"] == "0" and credential["mode"] == 0o400


def test_scripts_swarm_creates_every_secret_the_stack_file_names():
    script = (ROOT / "scripts" / "swarm").read_text()
    sources = dict(re.findall(r"^  ([a-z0-9_]+):([a-z-]+/[\w.]+)$", script, re.M))
    assert set(sources) == set(STACK_FILE["secrets"])
    for key, secret in STACK_FILE["secrets"].items():
        assert secret["external"] is True
        assert secret["name"].startswith(f"${{MLSTACK_SECRET_{key.upper()}:?")
    # A service's secret file has the name of the store's file it comes from.
    for service in STACK.values():
        for secret in service.get("secrets", []):
            assert PurePosixPath(secret["target"]).name == PurePosixPath(
                sources[secret["source"]]).name


def test_services_with_node_local_volumes_or_the_whole_store_run_on_the_data_node():
    for name, service in STACK.items():
        named = {s for s, _ in volumes(service).values() if s in STACK_FILE["volumes"]}
        constraints = service["deploy"].get("placement", {}).get("constraints", [])
        if named or name == "init":
            assert constraints == ["node.labels.mlstack.data == true"], name


def test_the_same_networks_internal_where_compose_has_them_and_encrypted_between_nodes():
    compose_networks = COMPOSE_FILE["networks"]
    assert set(STACK_FILE["networks"]) == set(compose_networks)
    for name, network in STACK_FILE["networks"].items():
        assert network.get("internal", False) == (compose_networks[name] or {}).get(
            "internal", False), name
        assert network["driver"] == "overlay" and "encrypted" in network["driver_opts"], name
        assert not network.get("attachable"), name  # no container outside the stack joins


def test_docker_stack_config_accepts_the_stack_file_and_asks_for_the_secrets_names():
    """The Docker CLI's own Swarm schema (it rejects what Swarm cannot run, e.g. group_add)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSTACK_SECRET_")}
    stack_config = ["docker", "stack", "config", "-c", str(ROOT / "docker-stack.yml")]
    refused = subprocess.run(stack_config, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "deploy with scripts/swarm deploy" in refused.stderr
    env.update({f"MLSTACK_SECRET_{key.upper()}": f"test_{key}" for key in STACK_FILE["secrets"]})
    accepted = subprocess.run(stack_config, env=env, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert yaml.safe_load(accepted.stdout)["services"]["mlflow"]["deploy"]["replicas"] == 2
