"""Benchmark: what the trainer's tracking costs per epoch.

Trains the same Keras model the same way twice, alternating, several times: once with no
callbacks, once as a job does (runtime.tracking_callbacks: mlflow.keras.MlflowCallback
logging every epoch to a real MLflow server, plus Keras' TensorBoard callback writing event
files), and prints the median time per epoch of each, and the median of the paired ratios (each
tracked fit against the untracked fit beside it, which cancels slow drifts of a shared
machine). Which of a pair runs first alternates, and each fit starts from a cleared Keras
session: on this machine a fit right after another ran ~10 % slower even when both were
identical, which always counted against tracking when the tracked fit came second. The digits
example's epochs are tiny (~1,400 images), so the same model is also timed on digits repeated
20 times, closer to a real epoch. Each is reported over the whole fit and over the epochs after
the first: what tracking costs each epoch of a running job, without what a job pays once at
its start (the first epoch carries that; see EpochClock). EPOCHS must be 2 or more.

The tracked fits run as a job now does: as a plain MLflow user with EDIT on the experiment
(not an admin) against the platform's own MLflow app (basic auth, its credential and
permission caches) under gunicorn, sampling system metrics into the run as a job does
(runtime.system_metrics, every SYSTEM_METRICS_INTERVAL_S). The server is local and on SQLite:
what the front door itself adds is tests/benchmarks/versus_stock.py's part.

    .venv/bin/python -m tests.benchmarks.tracking_overhead [EPOCHS] [REPEATS]
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from mlstack_trainer.examples import DEFAULTS, EXAMPLES, Dataset  # noqa: E402
from mlstack_trainer.runtime import system_metrics, tracking_callbacks  # noqa: E402
from tests.mlflow_server import mlflow_server  # noqa: E402


class EpochClock(keras.callbacks.Callback):
    """When each epoch began: the first epoch also carries what a job pays once (MlflowCallback
    logs the optimizer's settings and uploads the model summary as training begins;
    TensorBoard writes the model's summary)."""

    async_safe = True

    def __init__(self):
        super().__init__()
        self.began: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.began.append(time.perf_counter())


def per_epoch(data: Dataset, epochs: int, tracked: bool, tb_dir: Path) -> tuple[float, float]:
    """Seconds per epoch over the whole fit, and over the epochs after the first."""
    keras.backend.clear_session()  # each fit from the same start: no earlier model's state
    gc.collect()
    keras.utils.set_random_seed(0)
    model = EXAMPLES["digits-cnn"].build(data, DEFAULTS)
    model.fit(data.x[:64], data.y[:64], epochs=1, verbose=0)  # warm up: graph tracing
    clock = EpochClock()
    callbacks = [clock]
    with contextlib.ExitStack() as job:
        if tracked:  # exactly what a job uses
            callbacks += tracking_callbacks(str(tb_dir))
            run = job.enter_context(mlflow.start_run(log_system_metrics=False))
            job.enter_context(system_metrics(run.info.run_id))
        started = time.perf_counter()
        model.fit(data.x, data.y, epochs=epochs, batch_size=32, validation_split=0.2,
                  callbacks=callbacks, verbose=0)
        ended = time.perf_counter()
    return (ended - started) / epochs, (ended - clock.began[1]) / (epochs - 1)


def as_job(uri: str, admin: tuple[str, str]) -> None:
    """A job's identity: a plain user with EDIT on its experiment."""
    from mlflow.server.auth.client import AuthServiceClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
    experiment_id = mlflow.MlflowClient(uri).create_experiment("overhead")
    auth = AuthServiceClient(uri)
    auth.create_user("job-identity", "job-identity-password")
    auth.grant_user_permission("job-identity", "experiment", experiment_id, "EDIT")
    os.environ.update(MLFLOW_TRACKING_USERNAME="job-identity",
                      MLFLOW_TRACKING_PASSWORD="job-identity-password")


def main(epochs: int, repeats: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, TensorFlow/Keras {keras.__version__}")
    digits = EXAMPLES["digits-cnn"].load()
    big = Dataset(digits.name, digits.source, np.concatenate([digits.x] * 20),
                  np.concatenate([digits.y] * 20))
    admin = ("admin", "benchmark-admin-password")
    with (tempfile.TemporaryDirectory() as tmp,
          mlflow_server(Path(tmp), admin=admin, app="mlstack", gunicorn=True) as uri):
        mlflow.set_tracking_uri(uri)
        as_job(uri, admin)
        mlflow.set_experiment("overhead")
        for label, data in (("digits (1,437 train images)", digits),
                            ("digits x20 (28,740)", big)):
            plain, tracked = [], []
            for i in range(repeats):
                for with_tracking in (False, True) if i % 2 == 0 else (True, False):
                    timing = per_epoch(data, epochs, with_tracking, Path(tmp, f"tb{i}"))
                    (tracked if with_tracking else plain).append(timing)
            for span, which in (("whole fit", 0), ("after epoch 1", 1)):
                a = [timing[which] for timing in plain]
                b = [timing[which] for timing in tracked]
                p, t = statistics.median(a), statistics.median(b)
                paired = statistics.median(y / x for x, y in zip(a, b, strict=True))
                print(f"{label:<28} {span:<14} no callbacks {p * 1000:7.1f} ms/epoch   "
                      f"tracked {t * 1000:7.1f} ms/epoch   overhead {(t - p) * 1000:6.1f} ms/epoch "
                      f"({(t / p - 1) * 100:+.1f} %; paired median {(paired - 1) * 100:+.1f} %, "
                      f"{repeats} pairs)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    if args and args[0] < 2:
        sys.exit("EPOCHS must be 2 or more: the first epoch is reported apart")
    main(*(args + [10, 9][len(args):]))
