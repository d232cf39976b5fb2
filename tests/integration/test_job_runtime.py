"""The job runtime (`python -m mlstack_trainer.runtime`) with real parts: a real MLflow server,
TensorFlow/Keras training, pip installing a job's own requirements.

Each job runs as the worker starts it: a process of its own with exactly the environment
sandbox.environment() builds from a claim (its run, its home, its code archive, its
TensorBoard folder), but as the current user: switching uids is the worker's part, covered end
to end by tests/e2e (as are cancelling, timeouts and killed workers)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

import mlstack_trainer
from mlstack_trainer import sandbox
from mlstack_trainer.spec import parse
from tests.e2e.test_job_isolation import wheel
from tests.mlflow_server import mlflow_server

# The image installs the trainer as a plain package. This checkout's editable install is found
# through a .pth hook in the test virtualenv, which a job's own virtualenv does not run (it
# adds the trainer's site-packages as a plain path): name the source folder instead.
TRAINER_SOURCE = str(Path(mlstack_trainer.__file__).parent.parent)

# An MLflow Project: python_env is ignored (env_manager=local); `epochs` has a default.
MLPROJECT = textwrap.dedent("""\
    name: tiny
    python_env: python_env.yaml
    entry_points:
      main:
        parameters:
          scale: float
          epochs: {type: int, default: 3}
        command: "python train.py --scale {scale} --epochs {epochs}"
    """)
PROJECT_TRAIN = textwrap.dedent("""\
    import argparse, os, mlflow
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args()
    with mlflow.start_run():  # resumes the job's run (MLFLOW_RUN_ID)
        for step in range(args.epochs):
            mlflow.log_metric("score", args.scale * step, step=step)
    open(os.path.join(os.environ["MLSTACK_TB_LOGDIR"], "seen"), "w").write("yes")
    """)


def project(mlproject: str = MLPROJECT) -> dict[str, str]:
    return {"MLproject": mlproject, "python_env.yaml": "python: '3.11'\ndependencies: []\n",
            "train.py": PROJECT_TRAIN}


DOCKER_MLPROJECT = MLPROJECT.replace("python_env: python_env.yaml",
                                     "docker_env: {image: python:3.11}")


# --- a job, as the worker would run it ------------------------------------------------------

@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri, \
            pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)  # this test's own MLflow client
        yield uri


@pytest.fixture(scope="module")
def projects_dir(tmp_path_factory) -> Path:
    """The operator's projects folder (TRAINER_PROJECTS), for jobs without uploaded code."""
    root = tmp_path_factory.mktemp("projects")
    for name, text in project().items():
        (root / "tiny").mkdir(exist_ok=True)
        (root / "tiny" / name).write_text(text)
    return root


def tar_gz(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


@dataclass
class Finished:
    exit_code: int
    log: str
    run: Run
    home: Path
    tensorboard: Path
    archive: Path | None

    def artifact(self, path: str, tmp: Path) -> str:
        return Path(MlflowClient().download_artifacts(self.run.info.run_id, path, str(tmp))
                    ).read_text()

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        history = MlflowClient().get_metric_history(self.run.info.run_id, key)
        return sorted((m.step, m.value) for m in history)


@pytest.fixture
def run_job(tracking_uri, projects_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLSTACK_PROJECTS_DIR", str(projects_dir))  # as the worker's container

    def run(spec_text: str, code: dict[str, str | bytes] | None = None,
            exit_code: int = 0) -> Finished:
        """Run the job to its end, as its worker would after claiming it; its log on failure."""
        spec = parse(spec_text)
        client = MlflowClient()
        found = client.get_experiment_by_name(spec.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            spec.experiment)
        run_id = client.create_run(experiment_id, run_name=spec.name).info.run_id
        home = tmp_path / "home"
        (home / "tmp").mkdir(parents=True)
        folders = sandbox.JobFolders(uid=os.getuid(), home=home,
                                     tensorboard=tmp_path / "tb" / f"{spec.name}-{run_id}",
                                     log=tmp_path / "job.log")
        folders.tensorboard.mkdir(parents=True)
        archive = None
        if code is not None:
            archive = home / "code.tar.gz"
            archive.write_bytes(tar_gz(code))
        claim = {"job": {"id": 7, "spec": spec.to_dict(), "submitter": "alice"},
                 "identity": {"username": "mlstack-job-7-1", "password": "not-checked-here"},
                 "run_id": run_id, "experiment_id": experiment_id}
        env = sandbox.environment(claim, folders, tracking_uri, ca_file=None, gpus=0,
                                  pip_index_url=None, code_archive=archive)
        env["PYTHONPATH"] = TRAINER_SOURCE
        with open(folders.log, "wb") as log:
            done = subprocess.run([sys.executable, "-m", "mlstack_trainer.runtime"], env=env,
                                  cwd=home, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=300)
        text = folders.log.read_text(errors="replace")
        assert done.returncode == exit_code, text[-5000:]
        return Finished(done.returncode, text, client.get_run(run_id), home,
                        folders.tensorboard, archive)

    return run


# --- the built-in examples ---------------------------------------------------------------------

def test_the_digits_example_is_trained_and_fully_tracked(run_job):
    done = run_job("name: digits\nexperiment: runtime-it\nentrypoint: example:digits-cnn\n"
                   "params: {epochs: 2, batch_size: 64}\nregister_model: digits-it\n")
    run = done.run
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["learning_rate"] == "0.001"
    assert [step for step, _ in done.metric_history("loss")] == [0, 1]
    assert [step for step, _ in done.metric_history("val_accuracy")] == [0, 1]
    assert run.data.metrics["test_accuracy"] > 0.5
    assert run.data.tags["mlstack.hardware"].startswith("CPU")
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {("sklearn-digits", "training"), ("sklearn-digits", "test")}

    # The model: Keras-native, with signature and input example, registered, loads, predicts.
    model = mlflow.keras.load_model("models:/digits-it/1")
    logged = mlflow.models.Model.load("models:/digits-it/1")
    assert logged.signature is not None and logged.saved_input_example_info is not None
    assert model.predict(np.zeros((3, 8, 8, 1), "float32"), verbose=0).shape == (3, 10)

    # TensorBoard's event files, where the worker told the job to write them: a curve per
    # epoch for training and validation, and the model's summary; nothing per batch.
    assert list(done.tensorboard.rglob("events.out.tfevents.*")), list(done.tensorboard.rglob("*"))
    train, validation = (event_tags(done.tensorboard / part) for part in ("train", "validation"))
    assert train["epoch_loss"] == [0, 1] and train["epoch_accuracy"] == [0, 1]
    assert validation["epoch_loss"] == [0, 1]
    assert "keras" in train, train  # the model summary (Keras 3 writes no graph)
    assert not [tag for tag in [*train, *validation] if tag.startswith("batch_")], train


def event_tags(folder: Path) -> dict[str, list[int]]:
    """Each summary tag in a TensorBoard run folder, with its steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    tags = {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}
    tags.update({tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]})
    return tags


def test_mixed_precision_trains_with_the_float16_policy(run_job):
    done = run_job("experiment: runtime-it\nentrypoint: example:breast-cancer-mlp\n"
                   "params: {epochs: 1}\nmixed_precision: true\n")
    assert done.run.data.tags["mlstack.precision"] == "mixed_float16"
    model = mlflow.keras.load_model(f"runs:/{done.run.info.run_id}/model")
    hidden = [layer for layer in model.layers if layer.name.startswith("dense")][0]
    assert hidden.dtype_policy.name == "mixed_float16" and hidden.compute_dtype == "float16"
    assert model.layers[-1].compute_dtype == "float32"  # the output stays float32


def test_the_precision_tag_says_what_a_script_trained_with(run_job):
    done = run_job("experiment: runtime-it\nentrypoint: script:train.py\nmixed_precision: true\n",
                   code={"train.py": "import keras, mlflow\n"
                                     "with mlflow.start_run():\n"
                                     "    policy = keras.mixed_precision.global_policy().name\n"
                                     "    mlflow.set_tag('policy', policy)\n"})
    tags = done.run.data.tags
    assert tags["mlstack.precision"].startswith(tags["policy"]), tags["mlstack.precision"]


# --- uploaded code -------------------------------------------------------------------------

def test_a_module_from_the_upload_runs_in_the_jobs_run_and_the_code_is_kept(run_job, tmp_path):
    done = run_job("experiment: runtime-it\nentrypoint: module:pkg.job:main\n"
                   "params: {value: 21}\n", code={"pkg/__init__.py": "", "pkg/job.py": (
                       "import os, mlflow\n"
                       "def main(params, tensorboard_dir):\n"
                       "    mlflow.log_metric('double', params['value'] * 2)\n"
                       "    assert tensorboard_dir == os.environ['MLSTACK_TB_LOGDIR']\n")})
    run = done.run
    assert run.info.status == "FINISHED"
    assert run.data.metrics["double"] == 42 and run.data.params["value"] == "21"
    kept = MlflowClient().download_artifacts(run.info.run_id, "code/code.tar.gz", str(tmp_path))
    assert Path(kept).read_bytes() == done.archive.read_bytes()


def test_a_script_gets_its_params_as_options_and_continues_the_jobs_run(run_job):
    script = textwrap.dedent("""\
        import argparse, mlflow
        parser = argparse.ArgumentParser()
        parser.add_argument("--scale", type=float)
        parser.add_argument("--label")
        args = parser.parse_args()
        with mlflow.start_run():  # MLFLOW_RUN_ID: the job's run, not a new one
            for step in range(3):
                mlflow.log_metric("scaled", args.scale * step, step=step)
            mlflow.set_tag("label", args.label)
        """)
    done = run_job("experiment: runtime-script\nentrypoint: script:src/train.py\n"
                   "params: {scale: 2.5, label: first try}\n", code={"src/train.py": script})
    run = done.run
    assert run.info.status == "FINISHED"
    assert done.metric_history("scaled") == [(0, 0.0), (1, 2.5), (2, 5.0)]
    assert run.data.tags["label"] == "first try" and run.data.params["scale"] == "2.5"
    assert len(MlflowClient().search_runs([run.info.experiment_id])) == 1
    # A job far shorter than a sampling interval still has its system metrics (the last
    # sample), from one sampler: the script's start_run() does not start a second one.
    samples = done.metric_history("system/cpu_utilization_percentage")
    assert samples and len(samples) == len({step for step, _ in samples}), samples


def test_an_mlflow_project_at_the_code_root_runs_into_the_jobs_run(run_job):
    done = run_job("experiment: runtime-project\nentrypoint: project:.\nparams: {scale: 2.5}\n",
                   code=project())
    run = done.run
    assert run.info.status == "FINISHED" and run.data.params["scale"] == "2.5"
    assert done.metric_history("score") == [(0, 0.0), (1, 2.5), (2, 5.0)]
    assert (done.tensorboard / "seen").exists()
    assert len(MlflowClient().search_runs([run.info.experiment_id])) == 1


def test_an_mlflow_project_of_the_operators_runs_into_the_jobs_run(run_job):
    done = run_job("experiment: runtime-it\nentrypoint: project:tiny\n"
                   "params: {scale: 1.5, epochs: 2}\n")
    assert done.run.info.status == "FINISHED"
    assert done.metric_history("score") == [(0, 0.0), (1, 1.5)]


@pytest.mark.parametrize("entrypoint, code, message", [
    ("project:.", project(DOCKER_MLPROJECT), "asks for docker_env"),
    ("project::evaluate", project(), "Could not find evaluate among entry points"),
    ("project:missing", None, "'missing' is not a directory"),  # the operator's projects
], ids=["docker_env", "unknown entry point", "no such project"])
def test_an_mlflow_project_that_cannot_run_here_fails_saying_why(run_job, tmp_path, entrypoint,
                                                                 code, message):
    done = run_job(f"experiment: runtime-it\nentrypoint: '{entrypoint}'\nparams: {{scale: 1}}\n",
                   code=code, exit_code=1)
    assert done.run.info.status == "FAILED"
    assert message in done.artifact("error/traceback.txt", tmp_path)
    assert message in done.log


def test_an_exception_fails_the_run_with_its_traceback(run_job, tmp_path):
    done = run_job("experiment: runtime-it\nentrypoint: module:userjobs:boom\n", exit_code=1,
                   code={"userjobs.py": "def boom(params, tensorboard_dir):\n"
                                        "    raise ValueError(\"the user's code raised\")\n"})
    assert done.run.info.status == "FAILED"
    assert "ValueError: the user's code raised" in done.artifact("error/traceback.txt", tmp_path)
    assert f"[mlstack] run {done.run.info.run_id} FAILED" in done.log


# --- a job's own requirements ------------------------------------------------------------------

def test_requirements_install_into_the_jobs_own_virtualenv(run_job):
    name, data = wheel("teamhelpers", "VERSION = 'wheel-1.0'\n")
    done = run_job("experiment: runtime-it\nentrypoint: module:job:main\n", code={
        name: data, "requirements.txt": f"./{name}\n", "job.py": (
            "import mlflow, teamhelpers\n"
            "def main(params, tensorboard_dir):\n"
            "    mlflow.set_tags({'version': teamhelpers.VERSION,\n"
            "                     'installed_at': teamhelpers.__file__})\n")})
    assert "Successfully installed teamhelpers-1.0" in done.log  # pip's output, in the job's log
    tags = done.run.data.tags
    assert done.run.info.status == "FINISHED" and tags["version"] == "wheel-1.0"
    assert tags["installed_at"].startswith(str(done.home / "venv")), tags["installed_at"]


def test_a_failed_install_fails_the_run_with_pips_message(run_job, tmp_path):
    done = run_job("experiment: runtime-it\nentrypoint: script:train.py\n", exit_code=1, code={
        "train.py": "print('never runs')\n",
        "requirements.txt": "surely-not-a-package-mlstack==9.9\n"})
    assert done.run.info.status == "FAILED"
    assert "No matching distribution found for surely-not-a-package-mlstack" in done.log
    assert "No package index is configured for jobs" in done.log
    assert "never runs" not in done.log
    assert "pip could not install requirements.txt" in done.artifact("error/traceback.txt",
                                                                     tmp_path)

