"""Faults the platform must survive without losing acknowledged data, on the shared e2e stack:
`docker compose restart` of each service, MLflow recreated at another address, and PostgreSQL
killed with SIGKILL, each while a client (tests/e2e/logging_client.py, configured as the
README says) logs metrics and uploads artifacts. Every write the server acknowledged must be
stored afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .stack import Stack, docker

CLIENT = Path(__file__).with_name("logging_client.py")
# The README's advice for long-running clients: MLflow's own retry settings.
RETRY_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


@pytest.fixture(scope="module")
def grace(stack: Stack) -> tuple[str, str]:
    password = "grace-has-a-long-password"
    stack.script("users", "create", "grace", "--password-stdin", input=password + "\n",
                 check=False)
    return "grace", password


def acknowledged(progress: Path) -> tuple[str | None, list[int], list[str]]:
    run_id, metrics, artifacts = None, [], []
    for line in progress.read_text().splitlines():
        entry = json.loads(line)
        run_id = entry.get("run_id", run_id)
        if "metric" in entry:
            metrics.append(entry["metric"])
        if "artifact" in entry:
            artifacts.append(entry["artifact"])
    return run_id, metrics, artifacts


def break_while_logging(stack: Stack, user, tmp_path: Path, fault) -> None:
    """Start the client, wait until it has logged a while, apply `fault`, bring the stack back
    to healthy, let the client log on a little, stop it; then compare."""
    progress, stop = tmp_path / "progress.jsonl", tmp_path / "stop"
    env = {**stack.client_env(*user), **RETRY_SETTINGS}
    client = subprocess.Popen([sys.executable, str(CLIENT), "grace-faults", str(progress),
                               str(stop)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        stack.wait_for("the client to log", lambda: progress.exists() and
                       len(acknowledged(progress)[1]) >= 20, timeout_s=120, every_s=0.5)
        fault()
        stack.compose("up", "-d", "--wait", "--wait-timeout", "300")
        logged = len(acknowledged(progress)[1])
        stack.wait_for("the client to log again", lambda: len(acknowledged(progress)[1])
                       >= logged + 20, timeout_s=300, every_s=0.5)
        stop.touch()
        output, _ = client.communicate(timeout=300)
    finally:
        client.kill()
    assert client.returncode == 0, output[-3000:]

    run_id, metrics, artifacts = acknowledged(progress)
    s = stack.session(*user)
    stored = s.get(f"{stack.base_url}/api/2.0/mlflow/metrics/get-history",
                   params={"run_id": run_id, "metric_key": "load", "max_results": 25000}
                   ).json()["metrics"]
    stored_steps = {m["step"] for m in stored}
    lost = sorted(set(metrics) - stored_steps)
    print(f"acknowledged {len(metrics)} metric points, stored {len(stored_steps)}; "
          f"artifacts acknowledged {len(artifacts)}")
    assert not lost, f"{len(lost)} acknowledged metric points lost: {lost[:20]}"
    for path in artifacts:
        r = s.get(f"{stack.base_url}/get-artifact", params={"run_id": run_id, "path": path})
        assert r.status_code == 200 and len(r.content) == 100_000, (path, r.status_code)
    run = s.get(f"{stack.base_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()
    assert run["run"]["info"]["status"] == "FINISHED"


# What a logging client goes through: nginx, MLflow, and MLflow's two stores. (TensorBoard, the
# trainer and the janitor are not on its path; their restarts are covered where they matter.)
@pytest.mark.parametrize("service", ["postgres", "minio", "mlflow", "nginx"])
def test_restarting_a_service_loses_no_acknowledged_write(stack: Stack, grace, tmp_path,
                                                          service):
    break_while_logging(stack, grace, tmp_path,
                        lambda: stack.compose("restart", service, timeout=300))


def test_mlflow_recreated_at_a_new_address_is_found_again(stack: Stack, grace, tmp_path):
    """nginx keeps its connections to MLflow open and resolves MLflow's name again as it goes
    (upstream keepalive with `resolve`): a new MLflow container at another address is used
    without restarting nginx, and no acknowledged write is lost on the way."""
    container = f"{stack.project}-mlflow-1"
    holders: list[str] = []

    def recreate_at_another_address() -> None:
        before = addresses(container)
        image = docker("inspect", "-f", "{{.Config.Image}}", container).strip()
        stack.compose("rm", "--stop", "--force", "mlflow")
        # Containers that hold the old addresses, so that the new MLflow gets others.
        for network in before:
            holders.append(f"{stack.project}-address-holder-{len(holders)}")
            docker("run", "-d", "--rm", "--name", holders[-1], "--network", network,
                   "--entrypoint", "sleep", image, "900")
        stack.compose("up", "-d", "--no-deps", "mlflow")
        after = addresses(container)
        assert not set(after.values()) & set(before.values()), (before, after)

    try:
        break_while_logging(stack, grace, tmp_path, recreate_at_another_address)
    finally:
        if holders:
            subprocess.run(["docker", "rm", "-f", *holders], capture_output=True)


def addresses(container: str) -> dict[str, str]:
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container))
    return {name: network["IPAddress"] for name, network in networks.items()}


def test_postgres_killed_hard_recovers_and_keeps_every_acknowledged_write(stack: Stack, grace,
                                                                          tmp_path):
    settings = stack.compose("exec", "-T", "postgres", "psql", "-U", "postgres", "-Atc",
                             "SELECT name || '=' || setting FROM pg_settings WHERE name IN "
                             "('fsync', 'synchronous_commit', 'full_page_writes')").stdout
    # Durability is not traded for speed in the shipped configuration.
    assert sorted(settings.split()) == ["fsync=on", "full_page_writes=on",
                                        "synchronous_commit=on"]
    break_while_logging(stack, grace, tmp_path,
                        lambda: stack.compose("kill", "-s", "SIGKILL", "postgres"))
    log = stack.compose("logs", "--no-color", "postgres").stdout
    assert "database system was interrupted" in log or "not properly shut down" in log, log[-2000:]
