"""The platform on a one-node Docker Swarm, deployed as the README tells an operator:
scripts/swarm secrets, then scripts/swarm deploy (docker-stack.yml). Every service becomes
healthy, two MLflow replicas serve behind nginx, and a newcomer logs a run, reads it back and
sees its curves in TensorBoard. A rotated secret reaches the services with the next deploy.

When the engine is not in a swarm yet, the test makes it a one-node swarm and leaves it again
afterwards; an engine already in a swarm keeps it (the test's stack, volumes, secrets and node
labels are removed)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from . import conftest
from .stack import Stack, docker
from .test_tensorboard import laptop_run, scalars

VERSION = "swarm-e2e"
# MLflow's REST API: what an admin uses on Swarm to add a team member (scripts/users needs
# compose).
USERS_CREATE = "/api/2.0/mlflow/users/create"


def swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def start_swarm() -> None:
    result = subprocess.run(["docker", "swarm", "init"], capture_output=True, text=True)
    if result.returncode != 0 and "advertise address" in result.stderr:
        # Several addresses: the one of the default route, as an operator would choose.
        route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True,
                               text=True, check=True).stdout.split()
        result = subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", route[route.index("src") + 1]],
            capture_output=True, text=True)
    assert result.returncode == 0, f"docker swarm init failed:\n{result.stderr}"


def node_labels() -> dict[str, str]:
    node = docker("node", "ls", "-q").split()[0]
    return json.loads(docker("node", "inspect", node, "--format", "{{json .Spec.Labels}}"))


def remove_stack(stack: Stack, name: str) -> None:
    stack.script("swarm", "rm", check=False)
    deadline = time.monotonic() + 120
    mine = ("--filter", f"label=com.docker.stack.namespace={name}")
    while docker("ps", "-q", *mine).strip() and time.monotonic() < deadline:
        time.sleep(2)
    left = docker("ps", "-aq", *mine).split()  # Swarm's stopped tasks
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    for kind in ("secret", "config"):
        names = docker(kind, "ls", "--format", "{{.Name}}").split()
        mine = [n for n in names if n.startswith(f"{name}_")]
        if mine:
            subprocess.run(["docker", kind, "rm", *mine], capture_output=True)
    volumes = [v for v in docker("volume", "ls", "-q").split() if v.startswith(f"{name}_")]
    if volumes:
        subprocess.run(["docker", "volume", "rm", *volumes], capture_output=True)
    networks = [n for n in docker("network", "ls", "--format", "{{.Name}}").split()
                if n.startswith(f"{name}_")]
    if networks:
        subprocess.run(["docker", "network", "rm", *networks], capture_output=True)


def diagnostics(stack: Stack, name: str) -> str:
    out = [stack.script("swarm", "status", check=False).stdout]
    for service in docker("service", "ls", "--format", "{{.Name}}").split():
        if service.startswith(f"{name}_"):
            logs = subprocess.run(["docker", "service", "logs", "--tail", "60", service],
                                  capture_output=True, text=True)
            out.append(f"--- {service}\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def swarm():
    name = f"mlstack-swarm-{os.getpid()}"
    stack = Stack(project=name, settings={
        "MLSTACK_STACK_NAME": name,
        "MLFLOW_REPLICAS": "2",
        "MLSTACK_SWARM_WAIT_SECONDS": "600",
        # Swarm publishes on every address (scripts/swarm refuses another bind address).
        "MLSTACK_BIND_ADDRESS": "0.0.0.0",
        # Images of their own tag: the upgrade test rebuilds one.
        "MLSTACK_VERSION": VERSION,
        # Two replicas of two workers: 2 x 2 x 21 + 20 connections fit the default 200.
    })
    started = swarm_state() != "active"
    if started:
        start_swarm()
    labels_before = node_labels()
    failed = False
    ran_before = conftest._failed
    try:
        stack.compose("build", "--quiet", timeout=1800)
        stack.script("swarm", "secrets")
        deploy = stack.script("swarm", "deploy", timeout=900)
        stack.ca_file.write_text(stack.script("swarm", "ca-cert").stdout)
        yield stack, deploy
    except BaseException:
        failed = True
        raise
    finally:
        if failed or conftest._failed != ran_before or os.environ.get("MLSTACK_E2E_DIAGNOSTICS"):
            print(diagnostics(stack, name))
        remove_stack(stack, name)
        for image in ("platform", "tensorboard", "trainer"):
            subprocess.run(["docker", "rmi", f"mlstack/{image}:{VERSION}"], capture_output=True)
        if started:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)
        else:
            node = docker("node", "ls", "-q").split()[0]
            for label in set(node_labels()) - set(labels_before):
                docker("node", "update", "--label-rm", label, node)


@pytest.fixture(scope="module")
def admin(swarm):
    stack, _ = swarm
    values = dict(line.split("=", 1) for line in stack.script("swarm", "credentials").stdout.split())
    return values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"]


@pytest.fixture(scope="module")
def nadia(swarm, admin):
    stack, _ = swarm
    user = ("nadia", "nadia-has-a-long-password")
    r = stack.session(*admin).post(f"{stack.base_url}{USERS_CREATE}",
                                   json={"username": user[0], "password": user[1]})
    assert r.status_code == 200, r.text
    return user


def tasks(name: str, service: str) -> list[str]:
    """The running containers of a stack service."""
    return docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}_{service}",
                  "--filter", "status=running").split()


def test_every_service_is_healthy_and_mlflow_runs_twice(swarm):
    stack, deploy = swarm
    assert "is up" in deploy.stderr
    services = {}
    for line in docker("service", "ls", "--filter",
                       f"label=com.docker.stack.namespace={stack.project}",
                       "--format", "{{.Name}} {{.Replicas}}").splitlines():
        service, replicas = line.split(" ", 1)
        services[service.removeprefix(f"{stack.project}_")] = replicas
    assert services == {"postgres": "1/1", "minio": "1/1", "init": "0/1 (1/1 completed)",
                        "mlflow": "2/2", "tensorboard": "1/1", "trainer-api": "1/1",
                        "trainer": "1/1", "janitor": "1/1", "nginx": "1/1"}
    for service in ("postgres", "minio", "mlflow", "tensorboard", "trainer-api", "trainer",
                    "janitor", "nginx"):
        for container in tasks(stack.project, service):
            health = docker("inspect", container, "--format", "{{.State.Health.Status}}")
            assert health.strip() == "healthy", f"{service}: {health}"
    assert len(tasks(stack.project, "mlflow")) == 2


def test_the_front_door_asks_for_a_login_over_https_and_redirects_http(swarm):
    stack, _ = swarm
    assert stack.session().get(f"{stack.base_url}/").status_code == 401
    http = stack.session().get(f"http://localhost:{stack.http_port}/page", allow_redirects=False)
    assert http.status_code == 301
    assert http.headers["Location"] == f"https://localhost:{stack.https_port}/page"


def test_a_newcomer_logs_a_run_reads_it_back_and_sees_it_in_tensorboard(swarm, nadia):
    stack, _ = swarm
    run = laptop_run(stack, nadia, "swarm-first-steps", "first", 0.9, 0.5, 0.25)
    r = stack.session(*nadia).get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                                  params={"run_id": run["run_id"]})
    assert r.status_code == 200 and r.json()["run"]["info"]["status"] == "FINISHED"
    # The janitor copies the event files where TensorBoard reads them.
    curve = stack.wait_for("the run's curve in TensorBoard", lambda: _curve(stack, nadia, run),
                           timeout_s=120)
    assert curve == [(0, 0.9), (1, 0.5), (2, 0.25)]
    # An artifact, up and back down through the front door: nginx fetches a download from
    # MinIO itself, across the artifact-store overlay.
    data = os.urandom(3 << 20)
    url = (f"{stack.base_url}/api/2.0/mlflow-artifacts/artifacts/{run['experiment_id']}/"
           f"{run['run_id']}/artifacts/weights.bin")
    s = stack.session(*nadia)
    assert s.put(url, data=data).status_code == 200
    got = s.get(url)
    assert got.status_code == 200 and got.content == data, got.text[:300]
    # Another user's experiment is not hers to read, on either replica.
    other = stack.session(*nadia).get(f"{stack.base_url}/api/2.0/mlflow/experiments/get",
                                      params={"experiment_id": "0"})
    assert other.status_code == 403


def _curve(stack: Stack, user, run: dict):
    runs = stack.session(*user).get(
        f"{stack.base_url}/tensorboard/{run['experiment_id']}/data/runs")
    if runs.status_code != 200:
        return None
    mine = [r for r in runs.json() if run["run_id"] in r and r.endswith("/train")]
    return scalars(stack, user, run["experiment_id"], mine[0], "epoch_loss") if mine else None


def _connections_from_nginx(container: str) -> int:
    """Established connections to MLflow's port 5000 in one replica."""
    tcp = docker("exec", container, "cat", "/proc/net/tcp").splitlines()[1:]
    return sum(1 for line in tcp if line.split()[1].endswith(":1388") and line.split()[3] == "01")


def test_both_replicas_serve_and_a_rolling_restart_loses_no_request(swarm, nadia):
    stack, _ = swarm
    s = stack.session(*nadia)
    experiment = s.post(f"{stack.base_url}/api/2.0/mlflow/experiments/create",
                        json={"name": "swarm-replicas"}).json()["experiment_id"]
    run_id = s.post(f"{stack.base_url}/api/2.0/mlflow/runs/create",
                    json={"experiment_id": experiment}).json()["run"]["info"]["run_id"]
    steps = iter(range(100_000))

    def log() -> int:
        step = next(steps)
        return s.post(f"{stack.base_url}/api/2.0/mlflow/runs/log-metric",
                      json={"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                            "timestamp": 0, "step": step}).status_code

    assert [log() for _ in range(20)] == [200] * 20
    replicas = tasks(stack.project, "mlflow")
    assert all(_connections_from_nginx(c) > 0 for c in replicas), "a replica got no request"

    # An upgrade's rolling restart: one replica at a time is replaced while a client logs.
    docker("service", "update", "--force", "--detach", f"{stack.project}_mlflow")
    statuses = []
    deadline = time.monotonic() + 300
    # Until both old replicas have drained and stopped (Swarm calls the update complete once
    # it has told them to stop).
    while (_update_state(stack) != "completed" or set(tasks(stack.project, "mlflow")) & set(
            replicas)) and time.monotonic() < deadline:
        statuses.append(log())
    assert _update_state(stack) == "completed"
    assert len(tasks(stack.project, "mlflow")) == 2
    assert not set(tasks(stack.project, "mlflow")) & set(replicas)  # both were replaced
    assert len(statuses) > 50 and set(statuses) == {200}, statuses
    history = s.get(f"{stack.base_url}/api/2.0/mlflow/metrics/get-history",
                    params={"run_id": run_id, "metric_key": "loss"}).json()["metrics"]
    assert sorted(m["step"] for m in history) == list(range(20 + len(statuses)))


def _update_state(stack: Stack) -> str:
    return docker("service", "inspect", f"{stack.project}_mlflow", "--format",
                  "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}").strip()


def test_a_rotated_secret_reaches_the_services_with_the_next_deploy(swarm, admin):
    stack, _ = swarm
    new_password = "a-new-admin-password-for-swarm"
    stack.settings["MLSTACK_ADMIN_PASSWORD"] = new_password
    try:
        out = stack.script("swarm", "secrets").stderr
        assert "secret admin_password:" in out and "1 new" in out
        stack.script("swarm", "deploy", timeout=900)
        # init (a job) reruns with the new secret and sets the admin's password. Seldom: each
        # refusal counts as a failed login (MLSTACK_LOGIN_MAX_FAILURES).
        stack.wait_for("the new admin password", lambda: stack.session(
            admin[0], new_password).get(f"{stack.base_url}/api/2.0/mlflow/users/current"
                                        ).status_code == 200, timeout_s=120, every_s=15)
        assert stack.session(*admin).get(
            f"{stack.base_url}/api/2.0/mlflow/users/current").status_code == 401
        # The old secret is gone; one admin_password secret is left.
        names = docker("secret", "ls", "--format", "{{.Name}}").split()
        assert len([n for n in names if n.startswith(f"{stack.project}_admin_password_")]) == 1
    finally:
        stack.settings.pop("MLSTACK_ADMIN_PASSWORD")


def test_scripts_workers_makes_a_worker_credential_on_the_data_node(swarm):
    """A GPU host joins a Swarm platform as it joins a compose one (README)."""
    stack, _ = swarm
    created = stack.script("workers", "create", "swarm-box").stdout
    env = dict(line.split("=", 1) for line in created.splitlines()
               if line.startswith("MLSTACK_WORKER_"))
    box = stack.session(env["MLSTACK_WORKER_USERNAME"], env["MLSTACK_WORKER_PASSWORD"])
    api = f"{stack.base_url}/trainer/api"
    r = box.post(f"{api}/worker/claim", json={"worker": "swarm-box-1", "gpus": 0,
                                              "api_version": "1", "image": "mlstack/trainer"})
    assert r.status_code == 204, r.text  # a worker's call, answered: no job queued
    assert box.get(f"{api}/jobs").status_code == 403  # and nothing a team member may do
    stack.script("workers", "revoke", "swarm-box")
    refused = box.post(f"{api}/worker/claim", json={
        "worker": "swarm-box-1", "gpus": 0, "api_version": "1", "image": "mlstack/trainer"})
    assert refused.status_code in (401, 403), refused.text  # 403 until login caches expire


# A teammate's curious job on the stack's own worker: its own metric works; the worker's
# credential (a Swarm secret here, not compose's volume) and the stores stay out of reach.
CURIOUS_JOB = """
import json, socket, mlflow

def attempt(action):
    try:
        action()
        return "ALLOWED"
    except Exception as exc:
        return f"refused: {type(exc).__name__}"

def connect(host, port):
    socket.create_connection((host, port), timeout=5).close()

mlflow.log_metric("accuracy", 0.75)
print("PROBES " + json.dumps({
    "worker credential": attempt(lambda: open("/run/secrets/mlstack-worker/worker_mlflow_password").read()),
    "postgres": attempt(lambda: connect("postgres", 5432)),
    "mlflow direct": attempt(lambda: connect("mlflow", 5000)),
}), flush=True)
"""


def test_a_job_runs_on_the_stacks_worker_and_cannot_read_its_credential(swarm, nadia, tmp_path):
    from .test_trainer import mlstack, wait_for_job

    stack, _ = swarm
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "curious.py").write_text(CURIOUS_JOB)
    spec = tmp_path / "job.yaml"
    spec.write_text("name: curious\nexperiment: nadia-swarm\nentrypoint: script:curious.py\n")
    submitted = mlstack(stack, nadia, "submit", str(spec), "--code", str(tmp_path / "code"))
    assert submitted.returncode == 0, submitted.stderr
    job = wait_for_job(stack, nadia, int(submitted.stdout.strip()))
    log = mlstack(stack, nadia, "logs", str(job["id"])).stdout
    assert job["state"] == "succeeded", log[-3000:]
    probes = json.loads(next(line.split(" ", 1)[1] for line in log.splitlines()
                             if line.startswith("PROBES ")))
    assert all(outcome.startswith("refused") for outcome in probes.values()), probes
    assert probes["worker credential"] == "refused: PermissionError"
    run = stack.session(*nadia).get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                                    params={"run_id": job["mlflow_run_id"]}).json()["run"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]}["accuracy"] == 0.75


def test_a_rebuilt_image_rolls_its_service_on_the_next_deploy(swarm, tmp_path):
    """After `git pull` and `docker compose build` the tag is the same: deploy still updates."""
    stack, _ = swarm
    image = f"mlstack/tensorboard:{VERSION}"
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nLABEL mlstack.test=rebuilt\n")
    docker("build", "-q", "-t", image, str(tmp_path))
    rebuilt = docker("image", "inspect", "--format", "{{.Id}}", image).strip()
    stack.script("swarm", "deploy", timeout=900)
    running = tasks(stack.project, "tensorboard")
    assert len(running) == 1
    assert docker("inspect", "--format", "{{.Image}}", running[0]).strip() == rebuilt


def test_the_compose_scripts_say_they_do_not_work_on_a_stack(swarm):
    stack, _ = swarm
    for script, *args in (("users", "list"), ("backup",), ("status",)):
        result = stack.script(script, *args, check=False)
        assert result.returncode == 1, result.stdout
        assert f"runs here as Docker Swarm stack '{stack.project}'" in result.stderr, result.stderr


def test_each_running_service_holds_only_its_own_secrets(swarm):
    """From inside each container, as a process there would look: the store's other secrets,
    the admin password above all, are nowhere but in init (a job that has ended)."""
    stack, _ = swarm
    folders = "/var/lib/mlstack/secrets /var/lib/mlstack/trainer-secrets " \
              "/var/lib/mlstack/tensorboard-secrets /run/secrets /etc/nginx/tls"
    expected = {
        "postgres": {"postgres_password"},
        "minio": {"minio_root_user", "minio_root_password"},
        "mlflow": {"mlflow_db_password", "s3_access_key", "s3_secret_key", "flask_secret_key",
                   "admin_username"},
        "janitor": {"mlflow_db_password", "s3_access_key", "s3_secret_key"},
        "tensorboard": {"tensorboard_db_password"},
        "trainer-api": {"trainer_db_password", "trainer_mlflow_password", "public_origins"},
        "trainer": {"worker_mlflow_password", "ca.crt"},
    }
    for service, files in expected.items():
        container = tasks(stack.project, service)[0]
        found = docker("exec", container, "sh", "-c",
                       f"find {folders} -type f 2>/dev/null || true").split()
        assert {f.rsplit("/", 1)[1] for f in found} == files, (service, found)
    nginx = docker("exec", tasks(stack.project, "nginx")[0], "sh", "-c",
                   f"find {folders} -type f 2>/dev/null || true")
    assert "admin_password" not in nginx and "postgres_password" not in nginx
