"""A team member's training loop that keeps logging while the fault tests break the platform
under it: a metric point per step and a small artifact every 10 steps, with the stock MLflow
client and the retry settings the README gives. Each acknowledged write is appended to the
progress file as it is acknowledged (so the test knows what the server confirmed even if this
process dies); the loop stops when the stop file appears, then ends the run.

    python logging_client.py EXPERIMENT PROGRESS_FILE STOP_FILE
"""

import json
import os
import sys
import tempfile
import time

import mlflow
from mlflow import MlflowClient


def main(experiment: str, progress: str, stop: str) -> None:
    client = MlflowClient()
    run_id = client.create_run(mlflow.set_experiment(experiment).experiment_id).info.run_id
    chunk = os.path.join(tempfile.mkdtemp(), "chunk.bin")
    with open(progress, "a") as acked:
        acked.write(json.dumps({"run_id": run_id}) + "\n")
        acked.flush()
        step = 0
        while not os.path.exists(stop):
            client.log_metric(run_id, "load", step * 0.5, step=step)
            acked.write(json.dumps({"metric": step}) + "\n")
            if step % 10 == 0:
                with open(chunk, "wb") as f:
                    f.write(os.urandom(100_000))
                client.log_artifact(run_id, chunk, artifact_path=f"chunks/{step}")
                acked.write(json.dumps({"artifact": f"chunks/{step}/chunk.bin"}) + "\n")
            acked.flush()
            step += 1
            time.sleep(0.05)
    client.set_terminated(run_id)


if __name__ == "__main__":
    main(*sys.argv[1:])
