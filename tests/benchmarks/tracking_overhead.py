"""Benchmark: what the trainer's tracking costs per epoch.

Trains the same Keras model the same way twice, alternating, several times: once with no
callbacks, once as a job does (runtime.tracking_callbacks: mlflow.keras.MlflowCallback
logging every epoch to a real MLflow server, plus Keras' TensorBoard callback writing event
files), and prints the median time per epoch of each, and the median of the paired ratios (each
tracked fit against the untracked fit just before it, which cancels slow drifts of a shared
machine). The digits example's epochs are tiny (~1,400 images), so the same model is also timed
on digits repeated 20 times, closer to a real epoch.

The tracked fits run as a job now does: as a plain MLflow user with EDIT on the experiment
(not an admin) against a server with basic auth and its credential cache, with MLflow's system
metrics on.

    .venv/bin/python -m tests.benchmarks.tracking_overhead [EPOCHS] [REPEATS]
"""

from __future__ import annotations

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
from mlstack_trainer.runtime import tracking_callbacks  # noqa: E402
from tests.mlflow_server import mlflow_server  # noqa: E402


def per_epoch(data: Dataset, epochs: int, tracked: bool, tb_dir: Path) -> float:
    keras.utils.set_random_seed(0)
    model = EXAMPLES["digits-cnn"].build(data, DEFAULTS)
    model.fit(data.x[:64], data.y[:64], epochs=1, verbose=0)  # warm up: graph tracing
    callbacks = []
    if tracked:
        callbacks = tracking_callbacks(str(tb_dir))  # exactly what a job uses
        mlflow.start_run()
    started = time.perf_counter()
    model.fit(data.x, data.y, epochs=epochs, batch_size=32, validation_split=0.2,
              callbacks=callbacks, verbose=0)
    elapsed = time.perf_counter() - started
    if tracked:
        mlflow.end_run()
    return elapsed / epochs


def as_job(uri: str, admin: tuple[str, str]) -> None:
    """A job's identity: a plain user with EDIT on its experiment; system metrics on."""
    from mlflow.server.auth.client import AuthServiceClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
    experiment_id = mlflow.MlflowClient(uri).create_experiment("overhead")
    auth = AuthServiceClient(uri)
    auth.create_user("job-identity", "job-identity-password")
    auth.grant_user_permission("job-identity", "experiment", experiment_id, "EDIT")
    os.environ.update(MLFLOW_TRACKING_USERNAME="job-identity",
                      MLFLOW_TRACKING_PASSWORD="job-identity-password",
                      MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="true")


def main(epochs: int, repeats: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, TensorFlow/Keras {keras.__version__}")
    digits = EXAMPLES["digits-cnn"].load()
    big = Dataset(digits.name, digits.source, np.concatenate([digits.x] * 20),
                  np.concatenate([digits.y] * 20))
    admin = ("admin", "benchmark-admin-password")
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp), admin=admin) as uri:
        mlflow.set_tracking_uri(uri)
        as_job(uri, admin)
        mlflow.set_experiment("overhead")
        for label, data in (("digits (1,437 train images)", digits),
                            ("digits x20 (28,740)", big)):
            plain, tracked = [], []
            for i in range(repeats):
                plain.append(per_epoch(data, epochs, False, Path(tmp)))
                tracked.append(per_epoch(data, epochs, True, Path(tmp, f"tb{i}")))
            p, t = statistics.median(plain), statistics.median(tracked)
            paired = statistics.median(b / a for a, b in zip(plain, tracked, strict=True))
            print(f"{label:<30} no callbacks {p * 1000:8.1f} ms/epoch   tracked "
                  f"{t * 1000:8.1f} ms/epoch   overhead {(t - p) * 1000:6.1f} ms/epoch "
                  f"({(t / p - 1) * 100:+.1f} %; paired median {(paired - 1) * 100:+.1f} %, "
                  f"{repeats} pairs)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [10, 9][len(args):]))
