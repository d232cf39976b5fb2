"""The trainer worker and job runtime with real parts: PostgreSQL (the queue), a real MLflow
server and client, TensorFlow/Keras training the built-in digits example."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlstack_platform import databases
from tests.mlflow_server import mlflow_server
from mlstack_trainer.queue import JobQueue
from mlstack_trainer.spec import parse
from mlstack_trainer.worker import Worker, WorkerConfig

PROJECT_CODE = textwrap.dedent('''
    import os, time
    def boom(params, tb_dir):
        raise ValueError("the user's code raised")
    def sleep(params, tb_dir):
        open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
        time.sleep(float(params.get("seconds", 120)))
''')

# An MLflow Project: python_env is ignored (env_manager=local); `epochs` has a default.
MLPROJECT = textwrap.dedent('''
    name: tiny
    python_env: python_env.yaml
    entry_points:
      main:
        parameters:
          scale: float
          epochs: {type: int, default: 3}
        command: "python train.py --scale {scale} --epochs {epochs}"
''')
PROJECT_TRAIN = textwrap.dedent('''
    import argparse, os, mlflow
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args()
    with mlflow.start_run():  # resumes the job's run (MLFLOW_RUN_ID)
        for step in range(args.epochs):
            mlflow.log_metric("score", args.scale * step, step=step)
    open(os.path.join(os.environ["MLSTACK_TB_LOGDIR"], "seen"), "w").write("yes")
''')


def write_project(projects: Path, name: str, mlproject: str) -> None:
    (projects / name).mkdir()
    (projects / name / "MLproject").write_text(mlproject)
    (projects / name / "python_env.yaml").write_text("python: '3.11'\ndependencies: []\n")
    (projects / name / "train.py").write_text(PROJECT_TRAIN)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def setup(postgres, tracking_uri, tmp_path, monkeypatch, request):
    db = f"trainer_w_{request.node.name.lower()[:40]}"
    databases.ensure_database(postgres, db, "postgres")
    queue = JobQueue(lambda: postgres.connect(db))
    queue.migrate()
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "userjobs.py").write_text(PROJECT_CODE)
    write_project(projects, "tiny", MLPROJECT)
    write_project(projects, "boxed", MLPROJECT.replace("python_env: python_env.yaml",
                                                       "docker_env: {image: python:3.11}"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLSTACK_PROJECTS_DIR", str(projects))
    monkeypatch.setenv("PID_FILE", str(tmp_path / "job.pid"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    mlflow.set_tracking_uri(tracking_uri)
    config = WorkerConfig(name="worker-a", tb_root=tmp_path / "tb-logs",
                          logs_dir=tmp_path / "job-logs", public_url="https://ml.example",
                          lease_s=30, heartbeat_s=0.5, kill_grace_s=2,
                          heartbeat_file=tmp_path / "heartbeat")
    worker = Worker(queue, MlflowClient(tracking_uri), config)
    return queue, worker, config, tmp_path


def run_job(setup, spec_text: str, submitter: str, state: str = "succeeded"):
    """Submit, let the worker run it, check it ended in `state`; the job's log on failure."""
    queue, worker, _, tmp = setup
    job = queue.submit(parse(spec_text), submitter)
    worker.run_once()
    done = queue.get(job.id)
    assert done.state == state, (tmp / "job-logs" / f"{job.id}.log").read_text()[-3000:]
    return done


def test_digits_example_is_trained_and_fully_tracked(setup):
    queue, worker, config, tmp = setup
    spec = parse("name: digits\nexperiment: trainer-it\nentrypoint: example:digits-cnn\n"
                 "params: {epochs: 2}\nregister_model: digits-it\n")
    job = queue.submit(spec, "alice")
    assert worker.run_once() is True
    done = queue.get(job.id)
    assert done.state == "succeeded", (tmp / "job-logs" / f"{job.id}.log").read_text()[-3000:]

    client = MlflowClient()
    run = client.get_run(done.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["learning_rate"] == "0.001"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert run.data.metrics["test_accuracy"] > 0.5
    tags = run.data.tags
    assert tags["mlstack.job_id"] == str(job.id) and tags["mlstack.submitter"] == "alice"
    assert tags["mlstack.worker"] == "worker-a" and tags["mlstack.hardware"].startswith("CPU")
    tb_run = f"digits-{run.info.run_id}"
    assert tags["mlstack.tensorboard_url"].endswith(f"runFilter={tb_run}")
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {("sklearn-digits", "training"), ("sklearn-digits", "test")}

    # The model: Keras-native, with signature and input example, registered, loads, predicts.
    model = mlflow.keras.load_model("models:/digits-it/1")
    example = mlflow.models.Model.load("models:/digits-it/1")
    assert example.signature is not None and example.saved_input_example_info is not None
    import numpy as np
    assert model.predict(np.zeros((3, 8, 8, 1), "float32"), verbose=0).shape == (3, 10)

    # TensorBoard event files in <experiment>/<run name>-<run id>/, and the captured log.
    events = list((config.tb_root / "trainer-it" / tb_run).rglob("events.out.tfevents.*"))
    assert events, list(config.tb_root.rglob("*"))
    logs = [a.path for a in client.list_artifacts(run.info.run_id, "logs")]
    assert logs == [f"logs/{job.id}.log"]


def test_mixed_precision_trains_with_the_float16_policy(setup):
    done = run_job(setup, "experiment: trainer-it\nentrypoint: example:breast-cancer-mlp\n"
                          "params: {epochs: 1}\nmixed_precision: true", "alice")
    run = MlflowClient().get_run(done.mlflow_run_id)
    assert run.data.tags["mlstack.precision"] == "mixed_float16"
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    hidden = [layer for layer in model.layers if layer.name.startswith("dense")][0]
    assert hidden.dtype_policy.name == "mixed_float16" and hidden.compute_dtype == "float16"
    assert model.layers[-1].compute_dtype == "float32"  # the output stays float32


def test_an_exception_fails_the_job_and_the_run_with_its_traceback(setup):
    queue, worker, _, tmp = setup
    job = queue.submit(parse("experiment: trainer-it\nentrypoint: module:userjobs:boom"), "bob")
    worker.run_once()
    done = queue.get(job.id)
    assert done.state == "failed" and "exited with code 1" in done.error
    client = MlflowClient()
    assert client.get_run(done.mlflow_run_id).info.status == "FAILED"
    path = client.download_artifacts(done.mlflow_run_id, "error/traceback.txt", str(tmp))
    assert "ValueError: the user's code raised" in Path(path).read_text()


def test_an_mlflow_project_runs_into_the_jobs_run(setup):
    config = setup[2]
    done = run_job(setup, "experiment: trainer-it\nentrypoint: project:tiny\n"
                          "params: {scale: 2.5}", "carol")
    client = MlflowClient()
    run = client.get_run(done.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["scale"] == "2.5"
    assert run.data.tags["mlstack.submitter"] == "carol"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "score")] == \
        [(0, 0.0), (1, 2.5), (2, 5.0)]
    assert (config.tb_root / "trainer-it" / f"tiny-{run.info.run_id}" / "seen").exists()


@pytest.mark.parametrize("entrypoint, message", [
    ("project:boxed", "asks for docker_env"),
    ("project:tiny:evaluate", "Could not find evaluate among entry points"),
    ("project:missing", "is not a directory in the trainer's projects directory"),
])
def test_an_mlflow_project_that_cannot_run_here_fails_saying_why(setup, entrypoint, message):
    tmp = setup[3]
    done = run_job(setup, f"experiment: trainer-it\nentrypoint: {entrypoint}\n"
                          "params: {scale: 1}", "carol", state="failed")
    client = MlflowClient()
    assert client.get_run(done.mlflow_run_id).info.status == "FAILED"
    path = client.download_artifacts(done.mlflow_run_id, "error/traceback.txt", str(tmp))
    assert message in Path(path).read_text()


def test_cancel_kills_a_running_job(setup):
    queue, worker, _, _ = setup
    job = queue.submit(parse("experiment: trainer-it\nentrypoint: module:userjobs:sleep"), "bob")
    claimed = queue.claim("worker-a", 30)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.execute(claimed)))
    started = time.monotonic()
    thread.start()
    time.sleep(3)
    queue.cancel(job.id)
    thread.join(timeout=60)
    assert outcome == ["cancelled"] and time.monotonic() - started < 30
    done = queue.get(job.id)
    assert done.state == "cancelled"
    assert MlflowClient().get_run(done.mlflow_run_id).info.status == "KILLED"


def test_a_job_past_its_timeout_is_killed_and_failed(setup):
    queue, worker, _, _ = setup
    job = queue.submit(parse("experiment: trainer-it\nentrypoint: module:userjobs:sleep\n"
                             "resources: {timeout_seconds: 2}"), "bob")
    worker.run_once()
    done = queue.get(job.id)
    assert done.state == "failed" and "timed out after 2 s" in done.error
    assert MlflowClient().get_run(done.mlflow_run_id).info.status == "FAILED"


WORKER_SCRIPT = """
import sys
from pathlib import Path
from mlflow import MlflowClient
from mlstack_trainer.queue import JobQueue
from mlstack_trainer.worker import Worker, WorkerConfig
import psycopg2
dsn, uri, tmp = sys.argv[1:]
queue = JobQueue(lambda: psycopg2.connect(dsn))
Worker(queue, MlflowClient(uri), WorkerConfig(
    name="doomed", tb_root=Path(tmp, "tb"), logs_dir=Path(tmp, "logs"), public_url="x",
    lease_s=2, heartbeat_s=0.5, heartbeat_file=Path(tmp, "doomed.heartbeat"))).run_once()
"""


def test_a_worker_killed_mid_job_takes_its_job_along_and_the_job_is_failed(setup, postgres,
                                                                            tracking_uri):
    queue, worker, _, tmp = setup
    job = queue.submit(parse("experiment: trainer-it\nentrypoint: module:userjobs:sleep"), "bob")
    db = f"trainer_w_{'test_a_worker_killed_mid_job_takes_its_job_along_and_the_job_is_failed'[:40]}"  # noqa: E501 - as the setup fixture names it
    dsn = (f"host={postgres.host} port={postgres.port} user=postgres "
           f"password={postgres.superuser_password} dbname={db}")
    doomed = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, dsn, tracking_uri, str(tmp)])
    pid_file = tmp / "job.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    job_pid = int(pid_file.read_text())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    # PR_SET_PDEATHSIG: no orphan left training (gone, or a zombie awaiting its reaper).
    deadline = time.monotonic() + 10
    while process_alive(job_pid):
        assert time.monotonic() < deadline, f"job process {job_pid} outlived its worker"
        time.sleep(0.2)

    time.sleep(2.5)  # the dead worker's 2 s lease runs out
    worker.run_once()  # any live worker reaps it (retries: 0 -> failed)
    done = queue.get(job.id)
    assert done.state == "failed" and "doomed stopped heartbeating" in done.error
    run = MlflowClient().get_run(done.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert "stopped heartbeating" in run.data.tags["mlstack.failure"]


def test_healthcheck_proves_the_worker_polls(setup):
    from mlstack_trainer.worker import check
    _, worker, config, _ = setup
    assert check(config.heartbeat_file, 30) == 1  # never polled yet
    worker.run_once()
    assert check(config.heartbeat_file, 30) == 0
    assert check(config.heartbeat_file, -1) == 1  # stale
