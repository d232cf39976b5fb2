"""A curious teammate's job: it tries what it must not be able to do, records what happened,
then does its own legitimate work. test_job_isolation.py uploads it and reads the report (an
artifact of its own run)."""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile

import mlflow
import requests


def attempt(action) -> str:
    """'refused: ...' or 'ALLOWED: ...'."""
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - any failure is a refusal
        return f"refused: {type(exc).__name__}: {exc}"[:300]
    if isinstance(result, requests.Response):
        verdict = "ALLOWED" if result.ok else "refused"
        return f"{verdict}: HTTP {result.status_code} {result.text[:200]}"
    return f"ALLOWED: {str(result)[:200]}"


def read(path: str):
    with open(path, "rb") as f:
        return f.read(64)


def listing(path: str):
    return os.listdir(path)


def connect(host: str, port: int):
    with socket.create_connection((host, port), timeout=5):
        return f"connected to {host}:{port}"


def main(params, tb_dir):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    me = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    s = requests.Session()
    s.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    s.auth = me
    api = f"{uri}/api/2.0/mlflow"
    victim_run, victim_exp = params["victim_run"], params["victim_experiment"]
    report = {
        "identity": me[0],
        # Secrets of the worker and of the platform.
        "worker credential": attempt(lambda: read("/var/lib/mlstack/worker-secrets/worker_mlflow_password")),
        "worker secrets folder": attempt(lambda: listing("/var/lib/mlstack/worker-secrets")),
        "platform secrets": attempt(lambda: read("/var/lib/mlstack/secrets/admin_password")),
        "trainer-api secrets": attempt(
            lambda: read("/var/lib/mlstack/trainer-secrets/trainer_mlflow_password")),
        # Other processes' environments (the worker's is root's; other jobs have other uids).
        "foreign environ": [attempt(lambda p=p: read(p)) for p in glob.glob("/proc/[0-9]*/environ")
                            if not p.startswith(f"/proc/{os.getpid()}/")
                            and os.stat(p).st_uid != os.getuid()],
        # Other jobs' files.
        "job logs": attempt(lambda: listing("/var/lib/mlstack/job-logs")),
        "other job log": attempt(lambda: read(f"/var/lib/mlstack/job-logs/{params['other_job']}.log")),
        "job homes": attempt(lambda: listing("/var/lib/mlstack/jobs")),
        "tensorboard root": attempt(lambda: listing("/var/lib/mlstack/tb-logs")),
        "victim tensorboard": attempt(lambda: listing(
            f"/var/lib/mlstack/tb-logs/{params['victim_tb_dir']}")),
        # MLflow, as the job's identity, through the front door.
        "create user": attempt(lambda: s.post(f"{api}/users/create", json={
            "username": "job-made-admin", "password": "a-long-enough-password"})),
        "make admin": attempt(lambda: s.patch(f"{api}/users/update-admin", json={
            "username": me[0], "is_admin": True})),
        "grant self": attempt(lambda: s.post(f"{uri}/api/3.0/mlflow/users/permissions/grant",
            json={"username": me[0], "resource_type": "experiment", "resource_id": victim_exp,
                  "permission": "MANAGE"})),
        "victim experiment": attempt(lambda: s.get(f"{api}/experiments/get",
                                                   params={"experiment_id": victim_exp})),
        "victim run": attempt(lambda: s.get(f"{api}/runs/get", params={"run_id": victim_run})),
        "victim artifact": attempt(lambda: s.get(
            f"{uri}/api/2.0/mlflow-artifacts/artifacts/{victim_exp}/{victim_run}/artifacts/secret.txt")),
        "victim model": attempt(lambda: s.get(f"{api}/registered-models/get",
                                              params={"name": params["victim_model"]})),
        "victim model version": attempt(lambda: s.post(f"{api}/model-versions/create", json={
            "name": params["victim_model"], "source": f"runs:/{os.environ['MLFLOW_RUN_ID']}/x",
            "run_id": os.environ["MLFLOW_RUN_ID"]})),
        # The jobs API, with a forged identity header.
        "forged jobs listing": attempt(lambda: [j["submitter"] for j in s.get(
            f"{uri}/trainer/api/jobs", params={"all": "1"},
            headers={"X-Mlstack-User": params["victim_user"],
                     "X-Forwarded-User": params["victim_user"]}).json()["jobs"]]),
        "claim as worker": attempt(lambda: s.post(f"{uri}/trainer/api/worker/claim", json={
            "worker": "evil", "gpus": 0, "api_version": "1"})),
        # Straight past the front door.
        "mlflow direct": attempt(lambda: connect("mlflow", 5000)),
        "postgres direct": attempt(lambda: connect("postgres", 5432)),
        "s3 direct": attempt(lambda: connect("minio", 9000)),
        "trainer-api direct": attempt(lambda: connect("trainer-api", 8000)),
        "internet": attempt(lambda: connect("pypi.org", 443)),
    }
    # Links in its own TensorBoard folder to another experiment's, for TensorBoard (which
    # follows links) to show to this experiment's readers. Making them works; they must
    # never be followed.
    tb_root = "/var/lib/mlstack/tb-logs"
    os.makedirs(os.path.join(tb_dir, "train"), exist_ok=True)
    for link, target in (("leak-absolute", f"{tb_root}/{params['victim_tb_dir']}"),
                         ("train/leak-relative", f"../../../tb-logs/{params['victim_tb_dir']}"),
                         ("leak-root", tb_root)):
        os.symlink(target, os.path.join(tb_dir, link))
    # Its own work, which must succeed: metrics, an artifact, TensorBoard curves.
    for step in range(3):
        mlflow.log_metric("own_metric", step * 1.5, step=step)
    import tensorflow as tf

    with tf.summary.create_file_writer(tb_dir).as_default():
        for step in range(3):
            tf.summary.scalar("own_curve", step * 2.0, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "weights.txt"), "w") as f:
            f.write("not really a model")
        mlflow.log_artifacts(tmp, artifact_path="own-model")
    run = mlflow.active_run()
    mlflow.MlflowClient().create_model_version(
        params["own_model"], source=f"{run.info.artifact_uri}/own-model", run_id=run.info.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        mlflow.log_artifact(path)
    # The test tries this password after the job has ended: it must no longer work.
    print(f"JOB-IDENTITY {me[0]} {me[1]}", flush=True)
