"""A trainer worker on a host of its own (docker-compose.worker.yml), played by a second compose
project on a network of its own: it reaches the platform only at the front door's published
port, with a credential from `scripts/workers create`, as a GPU box in another rack would.

The platform is a stack of its own, published on the Docker bridge's gateway address (where
the other project's containers reach the host), and its local workers are stopped, so every
job runs on the remote one."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from mlstack_trainer.sandbox import JOB_UID_BASE

from .conftest import running
from .stack import ROOT, Stack, docker
from .test_trainer import job_state, mlstack, wait_for_job

WORKER_NAME = "gpu-box-1"


def gateway() -> str:
    """The host's address on Docker's default bridge: reachable from any compose network."""
    config = json.loads(docker("network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}"))[0]
    # Docker records no Gateway when docker0 already existed as the daemon started (a daemon
    # restarted on this machine); the bridge's address is then its subnet's first one.
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@pytest.fixture(scope="module")
def platform():
    host = gateway()
    yield from running(Stack(project=f"mlstack-remote-{os.getpid()}", host=host, settings={
        "MLSTACK_BIND_ADDRESS": host, "MLSTACK_HOSTNAMES": f"localhost {host}",
        "MLSTACK_TB_SYNC_SECONDS": "2",
    }))


@pytest.fixture(scope="module")
def carol(platform: Stack) -> tuple[str, str]:
    return platform.user("carol")


class RemoteHost:
    """docker-compose.worker.yml under a project of its own, with the .env an operator writes."""

    def __init__(self, platform: Stack, username: str, password: str):
        self.workdir = platform.workdir / "gpu-box"
        self.workdir.mkdir(exist_ok=True)
        (self.workdir / "empty.env").touch()
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("COMPOSE_", "MLSTACK_", "TRAINER_"))}
        self.env.update(COMPOSE_PROJECT_NAME=f"{platform.project}-gpu-box",
                        MLSTACK_VERSION=os.environ.get("MLSTACK_VERSION", "dev"),
                        MLSTACK_URL=platform.base_url, MLSTACK_WORKER_USERNAME=username,
                        MLSTACK_WORKER_PASSWORD=password, MLSTACK_CA_PEM=str(platform.ca_file),
                        TRAINER_WORKER_NAME=WORKER_NAME)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", "--env-file", str(self.workdir / "empty.env"), "-f",
             str(ROOT / "docker-compose.worker.yml"), *args], cwd=self.workdir, env=self.env,
            text=True, capture_output=True, check=check, timeout=600)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", "trainer", "python", "-c", code, check=False)


@pytest.fixture(scope="module")
def gpu_box(platform: Stack):
    created = platform.script("workers", "create", WORKER_NAME).stdout
    env = dict(line.split("=", 1) for line in created.splitlines()
               if line.startswith("MLSTACK_WORKER_"))
    host = RemoteHost(platform, env["MLSTACK_WORKER_USERNAME"], env["MLSTACK_WORKER_PASSWORD"])
    platform.compose("stop", "trainer")  # the platform's own workers: every job goes remote
    try:
        host.compose("up", "-d", "--wait", "--wait-timeout", "300")
        yield host
    finally:
        print(host.compose("logs", "--no-color", "--tail", "100", check=False).stdout)
        host.compose("down", "--volumes", "--remove-orphans", check=False)


def test_the_remote_host_reaches_the_front_door_and_nothing_else(platform: Stack, gpu_box):
    mlflow_ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} "
                       "{{end}}", f"{platform.project}-mlflow-1").split()
    probe = gpu_box.python(f"""
import socket, ssl, urllib.error, urllib.request
for host, port in [("postgres", 5432), ("mlflow", 5000), ("nginx", 443)] + [
        (ip, 5000) for ip in {mlflow_ip!r}]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("REACHED", host, port)
    except OSError:
        pass
context = ssl.create_default_context(cafile="/run/mlstack/ca.crt")  # verified: the real one
try:
    urllib.request.urlopen("{platform.base_url}/", context=context, timeout=10)
except urllib.error.HTTPError as answer:
    print("front door", answer.code)
""")
    assert probe.returncode == 0, probe.stderr
    assert "REACHED" not in probe.stdout, probe.stdout
    assert "front door 401" in probe.stdout, probe.stdout  # asks for a login, as to anyone


def test_a_job_runs_on_the_remote_host_fully_tracked_with_live_logs(platform: Stack, carol,
                                                                    gpu_box, tmp_path):
    spec = tmp_path / "remote.yaml"
    spec.write_text("name: remote-digits\nexperiment: carol-remote\n"
                    "entrypoint: example:digits-cnn\nparams: {epochs: 150, batch_size: 64}\n"
                    "register_model: carol-remote-cnn\n")
    job_id = int(mlstack(platform, carol, "submit", str(spec)).stdout.strip())

    # The log while the job runs: sent by the remote worker as it grows.
    def live_log():
        job = job_state(platform, carol, job_id)
        text = platform.session(*carol).get(
            f"{platform.base_url}/trainer/api/jobs/{job_id}/logs").text
        return job["state"] == "running" and "[mlstack] devices" in text
    platform.wait_for("the running job's log", live_log, timeout_s=300, every_s=1)

    job = wait_for_job(platform, carol, job_id)
    assert job["state"] == "succeeded", job
    assert job["worker"] == WORKER_NAME
    logs = mlstack(platform, carol, "logs", str(job_id), "-f")
    assert logs.returncode == 0 and "Epoch 150/150" in logs.stdout, logs.stdout[-2000:]

    check = subprocess.run([sys.executable, "-c", f"""
import json, mlflow
from mlflow import MlflowClient
c = MlflowClient()
run = c.get_run("{job['mlflow_run_id']}")
print(json.dumps({{"status": run.info.status, "tags": run.data.tags,
    "steps": len(c.get_metric_history(run.info.run_id, "loss")),
    "metrics": sorted(run.data.metrics),
    "logs": [a.path for a in c.list_artifacts(run.info.run_id, "logs")],
    "model": mlflow.models.get_model_info("models:/carol-remote-cnn/1").run_id}}))
"""], env=platform.client_env(*carol), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    seen = json.loads(check.stdout.strip().splitlines()[-1])
    assert seen["status"] == "FINISHED" and seen["steps"] == 150
    assert seen["tags"]["mlstack.worker"] == WORKER_NAME
    assert seen["tags"]["mlflow.user"] == "carol"
    assert "system/cpu_utilization_percentage" in seen["metrics"]
    assert seen["logs"] == [f"logs/{job_id}.1.log"]
    assert seen["model"] == job["mlflow_run_id"]

    # The event files, sent as the run's artifacts, in the experiment's TensorBoard.
    s = platform.session(*carol)
    tb = f"{platform.base_url}/tensorboard/{job['experiment_id']}"
    tb_run = f"remote-digits-{job['mlflow_run_id']}/train"
    platform.wait_for("TensorBoard to load the remote job's run",
                      lambda: tb_run in s.get(f"{tb}/data/runs").json(), timeout_s=120)
    points = s.get(f"{tb}/data/plugin/scalars/scalars",
                   params={"run": tb_run, "tag": "epoch_loss"}).json()
    assert [step for _, step, _ in points] == list(range(150))


def start_long_job(platform: Stack, carol, tmp_path) -> int:
    spec = tmp_path / "long.yaml"
    spec.write_text("name: remote-long\nexperiment: carol-remote\nentrypoint: example:digits-cnn\n"
                    "params: {epochs: 5000}\n")
    job_id = int(mlstack(platform, carol, "submit", str(spec)).stdout.strip())
    platform.wait_for("the job to run remotely", lambda: job_state(
        platform, carol, job_id)["state"] == "running", timeout_s=300)
    return job_id


def job_processes(gpu_box: RemoteHost) -> int:
    """Processes of jobs (their uids) on the remote host."""
    left = gpu_box.python("import os; print(sum(1 for p in os.listdir('/proc') if p.isdigit() "
                          f"and os.stat(f'/proc/{{p}}').st_uid >= {JOB_UID_BASE}))")
    assert left.returncode == 0, left.stderr
    return int(left.stdout)


def test_a_killed_remote_worker_leaves_its_job_to_the_lease(platform: Stack, carol, gpu_box,
                                                            tmp_path):
    job_id = start_long_job(platform, carol, tmp_path)
    gpu_box.compose("kill", "trainer")
    try:
        job = wait_for_job(platform, carol, job_id, timeout_s=120)
        assert job["state"] == "failed" and "stopped heartbeating" in job["error"], job
        assert f"mlstack-job-{job_id}-1" not in platform.script("users", "list").stdout
    finally:
        gpu_box.compose("up", "-d", "--wait", "--wait-timeout", "300")


def test_a_remote_worker_cut_off_stops_its_job_before_its_lease_runs_out(
        platform: Stack, carol, gpu_box, tmp_path):
    job_id = start_long_job(platform, carol, tmp_path)
    platform.wait_for("the job's processes", lambda: job_processes(gpu_box) > 0, timeout_s=60)
    container = gpu_box.compose("ps", "-q", "trainer").stdout.strip()
    network = f"{gpu_box.env['COMPOSE_PROJECT_NAME']}_default"
    lease_s = int(platform.env["TRAINER_LEASE_SECONDS"])
    docker("network", "disconnect", network, container)
    cut = time.monotonic()
    try:
        # By the worker's own clock: gone before the platform may hand the job to another.
        platform.wait_for("the cut-off worker to stop its job",
                          lambda: job_processes(gpu_box) == 0, timeout_s=lease_s, every_s=0.5)
        assert time.monotonic() - cut < lease_s
    finally:
        docker("network", "connect", network, container)
    job = wait_for_job(platform, carol, job_id, timeout_s=120)
    assert job["state"] == "failed" and "stopped heartbeating" in job["error"], job
    logs = gpu_box.compose("logs", "--no-color", "trainer").stdout
    assert f"heartbeat for job {job_id} failed" in logs, logs[-3000:]


def test_revoking_the_worker_ends_its_job_and_refuses_it(platform: Stack, carol, gpu_box,
                                                         tmp_path):
    job_id = start_long_job(platform, carol, tmp_path)
    identity = f"mlstack-job-{job_id}-1"
    assert identity in platform.script("users", "list").stdout

    revoked = platform.script("workers", "revoke", WORKER_NAME).stdout
    assert f"It held job {job_id}" in revoked
    assert identity not in platform.script("users", "list").stdout  # at once
    job = wait_for_job(platform, carol, job_id, timeout_s=60)
    assert job["state"] == "failed" and "stopped heartbeating" in job["error"], job

    # The worker was told at its next call, and its job process is gone from the host.
    def refused():
        return "refuses this worker" in gpu_box.compose("logs", "--no-color").stdout
    platform.wait_for("the worker to be refused", refused, timeout_s=60)
    assert job_processes(gpu_box) == 0


def test_the_remote_worker_is_listed_with_its_last_call(platform: Stack, gpu_box):
    listed = platform.script("workers", "list").stdout
    assert any(line.split()[:2] == [WORKER_NAME, f"mlstack-worker-{WORKER_NAME}"]
               for line in listed.splitlines()), listed
    assert "(revoked)" in listed
