"""One job, in its own process under its own uid: `python -m mlstack_trainer.runtime`.

The worker starts it with the job's spec (MLSTACK_JOB_SPEC), its MLflow run (MLFLOW_RUN_ID, with
the job's own MLflow identity, reaching the platform through its front door), its private home
(MLSTACK_JOB_HOME), its uploaded code (MLSTACK_CODE_ARCHIVE) and its TensorBoard run directory
(MLSTACK_TB_LOGDIR); see sandbox.py. The code is unpacked here, by the job itself, and a
`requirements.txt` at its root is installed into a virtualenv of the job's own, layered on the
trainer's packages (the job still imports TensorFlow and MLflow from the image). Training uses
MLflow's own Keras integration (mlflow.keras.MlflowCallback) and Keras' own TensorBoard
callback, and MLflow's system-metrics sampler (JobSystemMetrics). On an exception the run is
marked FAILED with the traceback as an artifact.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
import traceback
import types
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from .spec import JobSpec, validate

# MLflow's default. Each sample costs a get_run and a log_batch, answered on the cores that
# training uses: every 2 s that cost digits x20 +15 % per epoch on a 2-core machine, every 10 s
# nothing measurable (tests/benchmarks/tracking_overhead.py).
SYSTEM_METRICS_INTERVAL_S = 10

_logger = logging.getLogger(__name__)


def _save_keras_model(path: str, **kwargs: Any):
    # mlflow.keras.save_model (MLflow 3.17.2) writes input_example.json before it creates the
    # model directory, so log_model(..., input_example=...) fails with FileNotFoundError.
    # Creating the directory first is all it needs; everything else is MLflow's own code.
    os.makedirs(path, exist_ok=True)
    return mlflow.keras.save_model(path=path, **kwargs)


# Stands in for the mlflow.keras module as the flavor that Model.log saves with.
KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)


def log_keras_model(model, example_input, registered_model_name: str | None):
    import keras
    from mlflow.models import Model, infer_signature

    signature = infer_signature(example_input, model.predict(example_input, verbose=0))
    # MLflow checks the saved example by predicting it: no progress bars in the job's log.
    keras.config.disable_interactive_logging()
    try:
        return Model.log(artifact_path=None, name="model", flavor=KERAS_FLAVOR, model=model,
                         signature=signature, input_example=example_input,
                         registered_model_name=registered_model_name)
    finally:
        keras.config.enable_interactive_logging()


def log_input(dataset, context: str, attempts: int = 5) -> None:
    """mlflow.log_input, retried: when two jobs log the same dataset into one experiment at
    the same moment, MLflow's server checks-then-inserts the dataset row and the loser gets
    an error (seen with two workers); a moment later the row exists and the call succeeds."""
    import time

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def import_tensorflow_quietly():
    """TensorFlow 2.21 prints its oneDNN notice at import whatever TF_CPP_MIN_LOG_LEVEL says
    (tensorflow/tensorflow#100442): unless the spec asks for verbose, the job's log stays the
    job's. Errors still show: they are Python exceptions, raised after stderr is back."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0" or "tensorflow" in sys.modules:
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tensorflow


def describe_devices() -> str:
    tf = import_tensorflow_quietly()

    devices = tf.config.list_physical_devices()
    names = [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in devices]
    details = []
    for gpu in tf.config.list_physical_devices("GPU"):
        info = tf.config.experimental.get_device_details(gpu)
        details.append(info.get("device_name", gpu.name))
    return ", ".join(names + details)


def tracking_callbacks(tb_dir: str, log_every_n_batches: int | None = None) -> list:
    """MLflow's own Keras callback (per-epoch metrics with the epoch as step; every N batches
    too when asked) and Keras' own TensorBoard callback, writing per epoch.

    On the TensorFlow backend Keras (3.15) runs every callback's batch-end hook on the training
    loop, after each batch (its thread pool for `async_safe` callbacks is for backends it deems
    thread-safe, not TensorFlow): what these hooks do per batch is paid per batch.
    MlflowCallback's hook returns at once without log_every_n_steps; with it, it reads the
    optimizer's step counter (and costs what it costs). Both are still declared `async_safe`
    (the other backends then run their batch hooks off the loop: they are safe there, as
    neither writes batch summaries unless asked)."""
    import keras
    import mlflow.keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        """Keras' TensorBoard callback less its per-batch scalars: Keras 3.15 writes `batch_*`
        scalars on every batch even with update_freq="epoch" (into no writer then, so nothing
        is written), and those calls took ~8 % of the training loop in a py-spy profile of
        digits x20 (tests/benchmarks/tracking_overhead.py). What it does once per fit (the
        model's summary) and per epoch is unchanged."""

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs=None)  # no logs: no per-batch scalars

    mlflow_callback = mlflow.keras.MlflowCallback(log_every_epoch=True,
                                                  log_every_n_steps=log_every_n_batches)
    tensorboard = EpochTensorBoard(log_dir=tb_dir, update_freq="epoch")
    tensorboard.async_safe = True
    mlflow_callback.async_safe = log_every_n_batches is None
    return [mlflow_callback, tensorboard]


def train_example(spec: JobSpec, tb_dir: str) -> None:
    import keras
    from sklearn.model_selection import train_test_split

    from .examples import DEFAULTS, EXAMPLES, Dataset

    params = {**DEFAULTS, **spec.params}
    keras.utils.set_random_seed(int(params["seed"]))
    mlflow.log_params(params)

    example = EXAMPLES[spec.entrypoint.target]
    data = example.load()
    x_train, x_test, y_train, y_test = train_test_split(
        data.x, data.y, test_size=0.2, random_state=int(params["seed"]))
    train = Dataset(data.name, data.source, x_train, y_train)
    # Our sources are descriptive names, which MLflow's registry warns it cannot classify.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    log_input(mlflow.data.from_numpy(x_train, targets=y_train, name=data.name,
                                     source=data.source), "training")
    log_input(mlflow.data.from_numpy(x_test, targets=y_test, name=data.name,
                                     source=data.source), "test")

    model = example.build(train, params)
    every_n = int(params["log_every_n_batches"]) if "log_every_n_batches" in params else None
    callbacks = tracking_callbacks(tb_dir, every_n)
    model.fit(x_train, y_train, epochs=int(params["epochs"]),
              batch_size=int(params["batch_size"]),
              validation_split=float(params["validation_split"]), callbacks=callbacks, verbose=2)
    results = model.evaluate(x_test, y_test, return_dict=True, verbose=0)
    mlflow.log_metrics({f"test_{name}": float(value) for name, value in results.items()})
    log_keras_model(model, x_test[:5], spec.register_model)


class JobSetupError(RuntimeError):
    """The job's code or its requirements cannot be set up; the message says what to change."""


def code_root() -> Path:
    """The uploaded code, or else the operator's projects directory (TRAINER_PROJECTS)."""
    home = Path(os.environ.get("MLSTACK_JOB_HOME", "."))
    if os.environ.get("MLSTACK_CODE_ARCHIVE"):
        return home / "code"
    return Path(os.environ.get("MLSTACK_PROJECTS_DIR", "/var/lib/mlstack/projects"))


def unpack_code() -> None:
    from .code_archive import extract

    archive = os.environ.get("MLSTACK_CODE_ARCHIVE")
    if archive and not code_root().exists():
        extract(Path(archive), code_root())


def install_requirements() -> None:
    """requirements.txt at the code root: into a virtualenv of this job's own that sees the
    trainer's packages (a .pth file), then this runtime starts again in it (never returns).
    Without a package index (TRAINER_PIP_INDEX_URL on the platform) only wheels in the upload
    install; the job's pip has no cache shared with other jobs."""
    requirements = code_root() / "requirements.txt"
    if not os.environ.get("MLSTACK_CODE_ARCHIVE") or not requirements.exists() \
            or os.environ.get("MLSTACK_IN_JOB_VENV"):
        return
    venv = Path(os.environ["MLSTACK_JOB_HOME"]) / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "mlstack-trainer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    index = os.environ.get("MLSTACK_PIP_INDEX_URL")
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
               "--progress-bar", "off", "-r", "requirements.txt", "--find-links", "."]
    command += ["--index-url", index] if index else ["--no-index"]
    print(f"[mlstack] installing requirements.txt{' from ' + index if index else ''}", flush=True)
    result = subprocess.run(command, cwd=code_root())
    if result.returncode != 0:
        hint = ("" if index else " No package index is configured for jobs "
                "(TRAINER_PIP_INDEX_URL in the platform's .env): only wheels in your upload "
                "install, so put each one in the code folder and name it in requirements.txt.")
        raise JobSetupError(f"pip could not install requirements.txt (exit code "
                            f"{result.returncode}; its output is above).{hint}")
    env = {**os.environ, "MLSTACK_IN_JOB_VENV": "1",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    sys.stdout.flush()
    os.execve(env_python := str(venv / "bin" / "python"),
              [env_python, "-m", "mlstack_trainer.runtime"], env)


def log_code() -> None:
    """The code archive as the run's artifact: with the digest tag, what reproduces the run."""
    archive = os.environ.get("MLSTACK_CODE_ARCHIVE")
    if archive:
        mlflow.log_artifact(archive, artifact_path="code")


def run_module(spec: JobSpec, tb_dir: str) -> None:
    """module:PACKAGE.MODULE:FUNCTION from the code, called as FUNCTION(params, tensorboard_dir)
    inside the job's active MLflow run."""
    sys.path.insert(0, str(code_root()))
    module_name, function_name = spec.entrypoint.target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    mlflow.log_params(spec.params)
    function(dict(spec.params), tb_dir)


def run_script(spec: JobSpec) -> None:
    """script:PATH from the code, as `python PATH --name value ...`; the job's run is active
    through MLFLOW_RUN_ID, so the script's mlflow.start_run() continues it."""
    mlflow.log_params(spec.params)
    args = [a for name, value in spec.params.items() for a in (f"--{name}", str(value))]
    result = subprocess.run([sys.executable, spec.entrypoint.target, *args], cwd=code_root())
    if result.returncode != 0:
        raise JobSetupError(f"{spec.entrypoint.target} exited with code {result.returncode}")


class ProjectError(RuntimeError):
    """The MLflow Project cannot run here; the message says what to change."""


def run_project(spec: JobSpec, run_id: str) -> None:
    """project:[DIR][:ENTRY_POINT]: an MLflow Project (a directory with an MLproject file) in the
    code, run by MLflow's own runner into the job's run. The trainer image is the environment
    (env_manager=local): it has no conda, no network to build a virtualenv and no Docker, so a
    project that asks for docker_env is refused rather than silently run elsewhere. The entry
    point's command sees MLSTACK_TB_LOGDIR like any job."""
    import mlflow.projects
    from mlflow.projects import _project_spec

    directory, _, entry_point = spec.entrypoint.target.partition(":")
    root = code_root().resolve()
    path = (root / (directory or ".")).resolve()
    if not path.is_relative_to(root) or not path.is_dir():
        raise ProjectError(f"project {directory!r} is not a directory in the job's code; "
                           "upload it with `mlstack submit --code DIR`")
    project = _project_spec.load_project(str(path))
    if project.docker_env:
        raise ProjectError(f"project {directory!r} asks for docker_env in its MLproject; the "
                           "trainer runs projects in its own environment (env_manager=local) "
                           "and cannot start containers: remove docker_env, or use python_env "
                           "or conda_env (both are ignored; the trainer image's packages are "
                           "used)")
    mlflow.log_params(spec.params)
    # "python" in the entry point's command must be this interpreter, with the trainer's packages.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    # synchronous=True waits, and raises ExecutionException if the command fails.
    # An unknown entry point is reported by MLflow, with the project's entry points listed.
    mlflow.projects.run(str(path), entry_point=entry_point or "main",
                        parameters={k: str(v) for k, v in spec.params.items()},
                        env_manager="local", run_id=run_id, synchronous=True)


def set_mixed_precision(spec: JobSpec) -> None:
    """Keras' global dtype policy: float16 compute, float32 variables (the models keep their
    outputs float32). It lives in this process, so a script or an MLflow Project's command (a
    process of its own) must set it itself; the tag says which happened."""
    import keras

    if spec.entrypoint.kind in ("project", "script"):
        kind = spec.entrypoint.kind
        mlflow.set_tag("mlstack.precision", f"float32 (mixed_precision is not applied to {kind}: "
                                            f"entrypoints; set the Keras policy in the {kind})")
        return
    keras.mixed_precision.set_global_policy("mixed_float16")
    mlflow.set_tag("mlstack.precision", "mixed_float16")


def run(spec: JobSpec, tb_dir: str) -> None:
    hardware = describe_devices()
    mlflow.set_tag("mlstack.hardware", hardware)
    print(f"[mlstack] devices: {hardware}", flush=True)
    print(f"[mlstack] job {os.environ.get('MLSTACK_JOB_ID', '?')}: {spec.entrypoint}", flush=True)
    if spec.mixed_precision:
        set_mixed_precision(spec)
    if spec.entrypoint.kind == "example":
        train_example(spec, tb_dir)
    elif spec.entrypoint.kind == "module":
        run_module(spec, tb_dir)
    elif spec.entrypoint.kind == "script":
        run_script(spec)
    else:
        run_project(spec, mlflow.active_run().info.run_id)


class JobSystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics sampler, plus a last sample as the job ends. MLflow publishes only
    full intervals and drops the last, partial one: a job shorter than an interval had none."""

    def finish(self):
        if self._process is None:
            return
        self._shutdown_event.set()
        self._process.join()
        try:
            self.collect_metrics()
            self.publish_metrics(self.aggregate_metrics())
        except Exception as error:  # noqa: BLE001 - metrics never fail the job
            _logger.warning("could not log the last system metrics sample: %s", error)
        super().finish()  # sends what is batched


@contextlib.contextmanager
def system_metrics(run_id: str):
    """Samples the machine into the run while the block runs. The job's own sampler, not the one
    mlflow.start_run() starts: the job's environment turns that one off (sandbox.py), so a
    script or MLflow Project continuing the run does not start a second one."""
    try:
        monitor = JobSystemMetrics(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                   resume_logging=True)  # after a restart in the job's venv
        monitor.start()
    except Exception as error:  # noqa: BLE001 - metrics never fail the job
        _logger.warning("system metrics are not sampled: %s", error)
        monitor = None
    try:
        yield
    finally:
        if monitor:
            monitor.finish()


def main() -> int:
    spec = validate(json.loads(os.environ["MLSTACK_JOB_SPEC"]))
    tb_dir = os.environ["MLSTACK_TB_LOGDIR"]
    os.makedirs(tb_dir, exist_ok=True)  # user code may write there directly
    with (mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]) as active,
          system_metrics(active.info.run_id)):
        try:
            if not os.environ.get("MLSTACK_IN_JOB_VENV"):
                unpack_code()
                log_code()
                install_requirements()  # starts this runtime again in the job's virtualenv
            run(spec, tb_dir)
        except BaseException:  # noqa: BLE001 - anything, KeyboardInterrupt included, fails the run
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, "traceback.txt")
                path.write_text(text)
                mlflow.log_artifact(str(path), artifact_path="error")
            mlflow.end_run(status="FAILED")
            print(f"[mlstack] run {active.info.run_id} FAILED", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
