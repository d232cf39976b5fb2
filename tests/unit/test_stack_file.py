"""docker-stack.yml (Swarm) and docker-compose.yml cannot drift apart: the same services run the
same images with the same commands, settings, networks, volumes, health checks, limits and
rights, and each service gets the same secrets. The differences the stack file's header lists
are the only ones allowed, and each is named here."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mlstack_platform import secrets_store

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
STACK_FILE = yaml.safe_load((ROOT / "docker-stack.yml").read_text())
STACK = STACK_FILE["services"]

# scripts/swarm secrets runs it on the manager; no service of the stack.
COMPOSE_ONLY = {"init-secrets"}
# Settings a stack service has beyond its compose twin, and why.
EXTRA_ENV = {
    # A replica told to stop keeps serving while nginx moves to the others (server.py); one
    # MLflow under compose has no other to move to.
    "mlflow": {"MLSTACK_DRAIN_SECONDS"},
    # The worker's credential as a Swarm secret under /run/secrets (its image folder is closed
    # to root without DAC_OVERRIDE; compose opens it with group_add).
    "trainer": {"MLSTACK_WORKER_SECRETS_DIR"},
}
# Where a compose service mounts a secrets volume, the stack mounts the same files as Swarm
# secrets: service -> {compose mount point: stack folder}.
SECRET_DIRS = {
    "trainer": {"/var/lib/mlstack/worker-secrets": "/run/secrets/mlstack-worker"},
}
SECRET_VOLUMES = {"secrets", "tls", "postgres-secrets", "minio-secrets", "mlflow-secrets",
                  "janitor-secrets", "trainer-secrets", "worker-secrets", "tensorboard-secrets"}


def volumes(service: dict) -> dict[str, str]:
    """Mount point -> source (a volume, a host path, or 'tmpfs')."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume.get("source", volume["type"])
        else:
            source, target, *_ = volume.split(":")
            found[target] = source
    for target in service.get("tmpfs", []):
        found[target.split(":")[0]] = "tmpfs"
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


# ... and the time that drain takes before the replica is killed.
EXTRA_KEYS = {"mlflow": {"stop_grace_period"}}


@pytest.mark.parametrize("name", sorted(STACK))
@pytest.mark.parametrize("key", ["image", "command", "user", "cap_add", "cap_drop",
                                 "stop_grace_period", "init"])
def test_same_image_command_and_rights(name, key):
    if key in EXTRA_KEYS.get(name, ()):
        assert key not in COMPOSE[name]
        return
    assert STACK[name].get(key) == COMPOSE[name].get(key), f"{name}: {key} differs"


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_settings(name):
    compose_env = COMPOSE[name].get("environment", {})
    stack_env = dict(STACK[name].get("environment", {}))
    for extra in EXTRA_ENV.get(name, ()):
        stack_env.pop(extra)
    assert stack_env == compose_env


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_networks_health_checks_and_limits(name):
    compose, stack = COMPOSE[name], STACK[name]
    assert set(stack.get("networks", [])) == set(compose.get("networks", []))
    assert stack.get("healthcheck") == compose.get("healthcheck")
    assert (stack["deploy"]["resources"]["limits"]["memory"]
            == compose["deploy"]["resources"]["limits"]["memory"])
    if isinstance(compose.get("networks"), dict):  # aliases (nginx: mlstack.internal)
        assert stack["networks"] == compose["networks"]


@pytest.mark.parametrize("name", sorted(STACK))
def test_same_volumes_and_the_same_secrets_where_compose_mounts_secret_volumes(name):
    compose_volumes, stack_volumes = volumes(COMPOSE[name]), volumes(STACK[name])
    secret_mounts = {t: s for t, s in compose_volumes.items() if s in SECRET_VOLUMES}
    data_mounts = {t: s for t, s in compose_volumes.items()
                   if s not in SECRET_VOLUMES and not s.startswith("${TLS_")}
    # compose's shm_size becomes a tmpfs on /dev/shm.
    if "shm_size" in COMPOSE[name]:
        assert stack_volumes.pop("/dev/shm") == "tmpfs"
    # A folder of this checkout (nginx's templates) becomes Swarm configs, one per file.
    for target, source in list(data_mounts.items()):
        if source.startswith("./"):
            del data_mounts[target]
            assert {c["target"] for c in STACK[name]["configs"]} == {
                f"{target}/{p.name}" for p in (ROOT / source).iterdir()}
    assert stack_volumes == data_mounts
    # Each secrets volume's files arrive as Swarm secrets in the same folder (or the one
    # SECRET_DIRS names), and a service gets no folder of secrets compose does not give it.
    folders = {SECRET_DIRS.get(name, {}).get(t, t) for t in secret_mounts}
    assert set(stack_secret_files(name)) == folders


# What compose's per-service secrets volumes hold (init-secrets copies them; secrets_store).
@pytest.mark.parametrize("name", sorted(secrets_store.SERVICE_SECRETS))
def test_a_service_gets_exactly_its_secrets(name):
    assert stack_secret_files(name) == {
        "/var/lib/mlstack/secrets": set(secrets_store.SERVICE_SECRETS[name])}


def test_init_gets_the_whole_store_and_nothing_else():
    assert stack_secret_files("init") == {
        "/var/lib/mlstack/secrets": {s.file for s in secrets_store.SECRETS}}


def test_the_worker_gets_only_its_credential_and_the_ca_and_jobs_cannot_read_the_credential():
    worker = {s["target"]: s for s in STACK["trainer"]["secrets"]}
    assert set(worker) == {"/run/secrets/mlstack-worker/worker_mlflow_password",
                           "/run/secrets/mlstack-worker/ca.crt"}
    credential = worker["/run/secrets/mlstack-worker/worker_mlflow_password"]
    assert credential["uid"] == "0" and credential["mode"] == 0o400


def test_no_secret_file_is_readable_by_others_except_public_ones():
    public = {"ca.crt", "tls.crt", "internal.crt", "public_origins", "server_names.conf",
              "cors_origins.conf", "trainer_body_limit.conf"}
    for name, service in STACK.items():
        for secret in service.get("secrets", []):
            if PurePosixPath(secret["target"]).name not in public:
                assert secret["mode"] == 0o400, f"{name}: {secret['target']}"


def test_scripts_swarm_creates_every_secret_the_stack_file_names():
    script = (ROOT / "scripts" / "swarm").read_text()
    sources = dict(re.findall(r"^  ([a-z0-9_]+):([a-z-]+/[\w.]+)$", script, re.M))
    assert set(sources) == set(STACK_FILE["secrets"])
    for key, secret in STACK_FILE["secrets"].items():
        assert secret["name"].startswith(f"${{MLSTACK_SECRET_{key.upper()}:?")
    # Where a stack service mounts one, compose's services read the same file.
    for service in STACK.values():
        for secret in service.get("secrets", []):
            assert PurePosixPath(secret["target"]).name == PurePosixPath(
                sources[secret["source"]]).name


def test_services_with_node_local_volumes_run_on_the_data_node():
    for name, service in STACK.items():
        named = {s for s in volumes(service).values() if s in STACK_FILE["volumes"]}
        constraints = service["deploy"].get("placement", {}).get("constraints", [])
        assert not named or constraints == ["node.labels.mlstack.data == true"], name


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


def test_the_same_networks_internal_where_compose_has_them_and_encrypted_between_nodes():
    compose_networks = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["networks"]
    assert set(STACK_FILE["networks"]) == set(compose_networks)
    for name, network in STACK_FILE["networks"].items():
        assert network.get("internal", False) == (compose_networks[name] or {}).get(
            "internal", False), name
        assert network["driver"] == "overlay" and "encrypted" in network["driver_opts"], name
