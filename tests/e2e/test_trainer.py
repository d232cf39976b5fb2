"""The trainer end to end, through nginx: a team member submits the digits example with the
`mlstack` CLI and with curl, follows it, and finds the run in MLflow and TensorBoard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .stack import Stack

DIGITS = """\
name: digits-e2e
experiment: carol-digits
entrypoint: example:digits-cnn
params: {epochs: 2, batch_size: 64}
register_model: carol-digits-cnn
"""


@pytest.fixture(scope="module")
def carol(stack: Stack) -> tuple[str, str]:
    return stack.user("carol")


def mlstack(stack: Stack, user: tuple[str, str], *args: str) -> subprocess.CompletedProcess:
    cli = shutil.which("mlstack", path=str(Path(sys.executable).parent))
    assert cli, "the mlstack CLI is installed with `pip install ./trainer` (tests/requirements.txt)"
    return subprocess.run([cli, *args], env=stack.client_env(*user), capture_output=True,
                          text=True, timeout=600)


def job_state(stack: Stack, user, job_id: int) -> dict:
    return stack.session(*user).get(f"{stack.base_url}/trainer/api/jobs/{job_id}").json()


def wait_for_job(stack: Stack, user, job_id: int, timeout_s: float = 600) -> dict:
    def ended():
        job = job_state(stack, user, job_id)
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return stack.wait_for(f"job {job_id} to end", ended, timeout_s=timeout_s, every_s=3)


def start_long_job(stack: Stack, user, tmp_path: Path, name: str) -> int:
    """Submit a digits job long enough to act on while it runs; return once it runs."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\nexperiment: carol-digits\nentrypoint: example:digits-cnn\n"
                    "params: {epochs: 500}\n")
    job_id = int(mlstack(stack, user, "submit", str(spec)).stdout.strip())
    stack.wait_for("the job to start",
                   lambda: job_state(stack, user, job_id)["state"] == "running", timeout_s=300)
    return job_id


def test_trainer_services_are_healthy(stack: Stack):
    services = stack.services()
    for name in ("trainer", "trainer-api"):
        assert services[name]["Health"] == "healthy", services[name]


def test_jobs_api_needs_a_login(stack: Stack):
    assert stack.session().get(f"{stack.base_url}/trainer/api/jobs").status_code == 401
    r = stack.session("carol", "wrong-password").get(f"{stack.base_url}/trainer/api/jobs")
    assert r.status_code == 401


def test_a_bad_spec_is_refused_with_every_problem(stack: Stack, carol, tmp_path):
    s = stack.session(*carol)
    r = s.post(f"{stack.base_url}/trainer/api/jobs",
               data="experiment: x\nentrypoint: example:mnist\nresources: {gpus: two}\n")
    assert r.status_code == 400
    problems = r.json()["problems"]
    assert any("unknown example 'mnist'" in p for p in problems)
    assert any("resources.gpus" in p for p in problems)
    spec = tmp_path / "bad.yaml"
    spec.write_text("experiment: x\n")
    out = mlstack(stack, carol, "submit", str(spec))
    assert out.returncode != 0 and "entrypoint: missing" in out.stderr


def test_digits_job_by_cli_and_by_curl_is_tracked_in_mlflow_and_tensorboard(stack: Stack, carol,
                                                                             tmp_path):
    spec = tmp_path / "digits.yaml"
    spec.write_text(DIGITS)
    submitted = mlstack(stack, carol, "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    cli_job = int(submitted.stdout.strip())

    curl = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(stack.ca_file), "-u", ":".join(carol),
         "--data-binary", f"@{spec}", "-H", "Content-Type: application/yaml",
         f"{stack.base_url}/trainer/api/jobs"], capture_output=True, text=True, timeout=60)
    assert curl.returncode == 0, curl.stdout + curl.stderr
    curl_job = json.loads(curl.stdout)["id"]

    for job_id in (cli_job, curl_job):
        job = wait_for_job(stack, carol, job_id)
        assert job["state"] == "succeeded", job
        assert job["submitter"] == "carol" and job["worker"]

    job = wait_for_job(stack, carol, cli_job)
    run_id = job["mlflow_run_id"]
    assert job["links"]["mlflow"].endswith(
        f"/#/experiments/{job['experiment_id']}/runs/{run_id}?workflowType=machine_learning")
    # TensorBoard 2.21 filters by the query's runFilter (it ignores one in the fragment).
    assert job["links"]["tensorboard"].endswith(
        f"/tensorboard/{job['experiment_id']}/?runFilter={run_id}#timeseries")

    # The job's output, through the CLI.
    logs = mlstack(stack, carol, "logs", str(cli_job), "-f")
    assert logs.returncode == 0 and "Epoch 2/2" in logs.stdout

    # The MLflow run, as carol sees it with the stock client.
    check = subprocess.run([sys.executable, "-c", f"""
import json, mlflow, numpy as np
from mlflow import MlflowClient
c = MlflowClient()
run = c.get_run("{run_id}")
info = mlflow.models.get_model_info("models:/carol-digits-cnn/1")
loaded = mlflow.pyfunc.load_model("models:/carol-digits-cnn/1")
pred = loaded.predict(np.zeros((2, 8, 8, 1), "float32"))
print(json.dumps({{
    "status": run.info.status,
    "steps": [m.step for m in c.get_metric_history("{run_id}", "loss")],
    "params": run.data.params, "tags": run.data.tags, "metrics": sorted(run.data.metrics),
    "inputs": sorted(d.dataset.name for d in run.inputs.dataset_inputs),
    "artifacts": [a.path for a in c.list_artifacts("{run_id}", "logs")],
    "signature": info.signature is not None,
    "example": info.saved_input_example_info is not None,
    "pred_shape": list(np.asarray(pred).shape)}}))
"""], env=stack.client_env(*carol), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    seen = json.loads(check.stdout.strip().splitlines()[-1])
    assert seen["status"] == "FINISHED"
    assert seen["steps"] == [0, 1]
    assert "system/cpu_utilization_percentage" in seen["metrics"]  # MLflow's system metrics
    assert seen["params"]["epochs"] == "2"
    assert seen["tags"]["mlstack.job_id"] == str(cli_job)
    assert seen["tags"]["mlstack.submitter"] == "carol"
    # Attributed to the person, not to the job's technical identity.
    assert seen["tags"]["mlflow.user"] == "carol"
    assert seen["tags"]["mlflow.source.type"] == "JOB"
    assert seen["tags"]["mlstack.hardware"].startswith("CPU")
    assert seen["tags"]["mlstack.image"].startswith("mlstack/trainer")
    assert seen["inputs"] == ["sklearn-digits", "sklearn-digits"]
    assert seen["artifacts"] == [f"logs/{cli_job}.log"]
    assert seen["signature"] and seen["example"] and seen["pred_shape"] == [2, 10]

    # The experiment's TensorBoard has the same run's curves, as <run name>-<run id>.
    s = stack.session(*carol)
    tb = f"{stack.base_url}/tensorboard/{job['experiment_id']}"
    tb_run = f"digits-e2e-{run_id}/train"
    stack.wait_for("TensorBoard to load the job's run", lambda: tb_run in s.get(
        f"{tb}/data/runs").json(), timeout_s=120)
    tags = s.get(f"{tb}/data/plugin/scalars/tags").json()
    assert "epoch_loss" in tags[tb_run]  # written by Keras' own TensorBoard callback


@pytest.mark.parametrize("entrypoint, params, metric, epochs", [
    ("module:userjobs:train_breast_cancer", "{epochs: 2, units: 4}", "accuracy", 2),
    ("project:iris-mlp", "{epochs: 3}", "accuracy", 3),
])
def test_user_code_from_the_projects_directory_runs_tracked(stack: Stack, carol, tmp_path,
                                                             entrypoint, params, metric, epochs):
    """trainer/examples/projects, mounted as TRAINER_PROJECTS (see stack.py)."""
    spec = tmp_path / "user-code.yaml"
    spec.write_text(f"experiment: carol-own-code\nentrypoint: {entrypoint}\nparams: {params}\n")
    submitted = mlstack(stack, carol, "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    job = wait_for_job(stack, carol, int(submitted.stdout.strip()))
    assert job["state"] == "succeeded", stack.session(*carol).get(
        f"{stack.base_url}/trainer/api/jobs/{job['id']}/logs").text[-3000:]
    run = run_status(stack, carol, job["mlflow_run_id"])
    assert run["status"] == "FINISHED" and run["tags"]["mlstack.submitter"] == "carol"
    history = stack.session(*carol).get(
        f"{stack.base_url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": job["mlflow_run_id"], "metric_key": metric}).json()["metrics"]
    assert sorted(m["step"] for m in history) == list(range(epochs))
    s = stack.session(*carol)
    tb_run = f"{job['name']}-{job['mlflow_run_id']}/train"
    stack.wait_for("TensorBoard to load the job's run", lambda: tb_run in s.get(
        f"{stack.base_url}/tensorboard/{job['experiment_id']}/data/runs").json(), timeout_s=120)


def test_a_running_job_is_cancelled(stack: Stack, carol, tmp_path):
    job_id = start_long_job(stack, carol, tmp_path, "cancelled")
    assert mlstack(stack, carol, "cancel", str(job_id)).returncode == 0
    job = wait_for_job(stack, carol, job_id, timeout_s=120)
    assert job["state"] == "cancelled"


def run_status(stack: Stack, user, run_id: str) -> dict:
    r = stack.session(*user).get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                                 params={"run_id": run_id})
    assert r.status_code == 200, r.text
    run = r.json()["run"]
    return {"status": run["info"]["status"],
            "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])}}


def test_a_job_that_raises_ends_failed_with_its_traceback(stack: Stack, carol, tmp_path):
    spec = tmp_path / "raises.yaml"
    spec.write_text("experiment: carol-digits\nentrypoint: example:diabetes-mlp\n"
                    "params: {epochs: lots}\n")  # valid spec; int('lots') raises in the job
    job_id = int(mlstack(stack, carol, "submit", str(spec)).stdout.strip())
    job = wait_for_job(stack, carol, job_id)
    assert job["state"] == "failed" and "exited with code 1" in job["error"]
    assert run_status(stack, carol, job["mlflow_run_id"])["status"] == "FAILED"
    artifacts = stack.session(*carol).get(
        f"{stack.base_url}/api/2.0/mlflow/artifacts/list",
        params={"run_id": job["mlflow_run_id"], "path": "error"}).json()
    assert [f["path"] for f in artifacts["files"]] == ["error/traceback.txt"]


def test_a_job_whose_worker_is_killed_ends_failed(stack: Stack, carol, tmp_path):
    job_id = start_long_job(stack, carol, tmp_path, "killed")
    stack.compose("kill", "-s", "SIGKILL", "trainer")
    stack.compose("up", "-d", "--wait", "--wait-timeout", "600")
    # The new worker reaps the dead one's job once its lease (15 s here) has run out.
    job = wait_for_job(stack, carol, job_id, timeout_s=180)
    assert job["state"] == "failed" and "stopped heartbeating" in job["error"]
    run = run_status(stack, carol, job["mlflow_run_id"])
    assert run["status"] == "FAILED" and "stopped heartbeating" in run["tags"]["mlstack.failure"]


def test_several_workers_run_each_job_exactly_once(stack: Stack, carol, tmp_path):
    stack.compose("up", "-d", "--wait", "--wait-timeout", "600", "--scale", "trainer=2")
    try:
        ids = []
        for i in range(5):
            spec = tmp_path / f"quick{i}.yaml"
            spec.write_text(f"name: quick{i}\nexperiment: carol-scale\n"
                            "entrypoint: example:breast-cancer-mlp\nparams: {epochs: 1}\n")
            ids.append(int(mlstack(stack, carol, "submit", str(spec)).stdout.strip()))
        jobs = [wait_for_job(stack, carol, job_id) for job_id in ids]
        failed_logs = [stack.session(*carol).get(
            f"{stack.base_url}/trainer/api/jobs/{j['id']}/logs").text[-3000:]
            for j in jobs if j["state"] != "succeeded"]
        assert [j["state"] for j in jobs] == ["succeeded"] * 5, failed_logs
        assert all(j["attempts"] == 1 for j in jobs)
        assert len({j["mlflow_run_id"] for j in jobs}) == 5
        # MLflow holds exactly one run per job.
        s = stack.session(*carol)
        exp = s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": "carol-scale"}).json()["experiment"]
        runs = s.post(f"{stack.base_url}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": [exp["experiment_id"]]}).json()["runs"]
        job_tags = sorted(int(t["value"]) for r in runs for t in r["data"]["tags"]
                          if t["key"] == "mlstack.job_id")
        assert job_tags == sorted(ids)
    finally:
        stack.compose("up", "-d", "--wait", "--wait-timeout", "600", "--scale", "trainer=1")


def test_users_see_only_their_own_jobs(stack: Stack, carol):
    dave_password = "dave-has-a-long-password"
    stack.script("users", "create", "dave", "--password-stdin", input=dave_password + "\n",
                 check=False)
    theirs = stack.session(*carol).get(f"{stack.base_url}/trainer/api/jobs").json()["jobs"]
    assert theirs
    dave = stack.session("dave", dave_password)
    assert dave.get(f"{stack.base_url}/trainer/api/jobs").json()["jobs"] == []
    assert dave.get(f"{stack.base_url}/trainer/api/jobs/{theirs[0]['id']}").status_code == 404
    assert dave.post(f"{stack.base_url}/trainer/api/jobs/{theirs[0]['id']}/cancel").status_code == 404


def test_a_worker_credential_works_through_the_front_door_until_revoked(stack: Stack):
    """scripts/workers, as an operator adds a GPU host of its own: the credential it prints is
    a worker's at the front door; a worker of another jobs API version is told which to run;
    revoked, the credential is refused at once."""
    created = stack.script("workers", "create", "e2e-box").stdout
    env = dict(line.split("=", 1) for line in created.splitlines()
               if line.startswith("MLSTACK_WORKER_"))
    box = stack.session(env["MLSTACK_WORKER_USERNAME"], env["MLSTACK_WORKER_PASSWORD"])
    api = f"{stack.base_url}/trainer/api"
    again = stack.script("workers", "create", "e2e-box", check=False)
    assert again.returncode == 2 and "exists already" in again.stderr
    # A worker's call (no job of its own to renew), where a plain user's is refused.
    r = box.post(f"{api}/worker/jobs/999999/heartbeat", json={"worker": "e2e-box-1"})
    assert r.status_code == 409 and "no longer e2e-box-1's" in r.json()["error"], r.text
    r = box.post(f"{api}/worker/claim", json={"worker": "e2e-box-1", "gpus": 0,
                                              "api_version": "0", "image": "old"})
    assert r.status_code == 409 and "speaks jobs API version 1" in r.json()["error"], r.text
    image = f"mlstack/trainer:{stack.env.get('MLSTACK_VERSION', 'dev')}"
    assert f"run the platform's trainer image, {image}" in r.json()["error"], r.text
    listed = stack.script("workers", "list").stdout
    assert "credentials not used yet: mlstack-worker-e2e-box" in listed, listed
    assert " mlstack-worker " in listed, listed  # the local workers, with their last call

    # What the credential may not do: act as a team member, speak for another credential's
    # worker process or take its name, send a log part over 1 MB.
    r = box.get(f"{api}/jobs")
    assert r.status_code == 403 and "only claims jobs" in r.json()["error"], r.text
    local = next(line.split()[0] for line in listed.splitlines()
                 if line.split()[1:2] == ["mlstack-worker"])
    r = box.post(f"{api}/worker/jobs/999999/heartbeat", json={"worker": local})
    assert r.status_code == 403 and "is not mlstack-worker-e2e-box's" in r.text, r.text
    r = box.post(f"{api}/worker/claim", json={"worker": local, "gpus": 0, "api_version": "1",
                                              "image": "stolen"})
    assert r.status_code == 409 and "belongs to another worker account" in r.text, r.text
    r = box.post(f"{api}/worker/jobs/999999/log", data=b"x" * (2 << 20),
                 params={"worker": "e2e-box-1", "attempt": 1, "offset": 0})
    assert r.status_code == 413, r.text

    revoked = stack.script("workers", "revoke", "e2e-box").stdout
    assert "revoked" in revoked and "It held no job" in revoked, revoked
    r = box.post(f"{api}/worker/jobs/999999/heartbeat", json={"worker": "e2e-box-1"})
    assert r.status_code in (401, 403), r.text  # at once: 403 until the login caches expire
    assert stack.script("workers", "revoke", "nobody", check=False).returncode == 2
