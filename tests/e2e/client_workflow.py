"""A team member's session with the stock MLflow client, run by the e2e tests in a separate
process whose environment holds only MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD and the CA file
(no S3 endpoint, no S3 credentials). Prints what it saw as JSON.

    python client_workflow.py EXPERIMENT MODEL_NAME [BIG_FILE]
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(experiment: str, model_name: str, big_file: str | None) -> dict:
    work = Path(tempfile.mkdtemp())
    mlflow.set_experiment(experiment)
    notes = work / "notes.txt"
    notes.write_text("trained on digits, lr 0.01\n")
    example = pd.DataFrame({"x": [1.0, 2.0]})
    with mlflow.start_run() as run:
        mlflow.log_params({"lr": 0.01, "epochs": 3})
        for step in range(10):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_artifact(str(notes), artifact_path="docs")
        if big_file:
            mlflow.log_artifact(big_file, artifact_path="big")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Doubler(), input_example=example,
            signature=infer_signature(example, example * 2),
            registered_model_name=model_name)

    client = MlflowClient()
    result = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "artifact_uri": run.info.artifact_uri,
        "params": client.get_run(run.info.run_id).data.params,
        "loss": [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")],
        "model_uri": info.model_uri,
    }
    downloaded = Path(client.download_artifacts(run.info.run_id, "docs/notes.txt", str(work / "dl")))
    result["notes_roundtrip"] = downloaded.read_text() == notes.read_text()
    if big_file:
        got = Path(client.download_artifacts(
            run.info.run_id, f"big/{Path(big_file).name}", str(work / "dl")))
        result["big_sha256"] = sha256(got)
        got.unlink()

    version = client.get_latest_versions(model_name)[0]
    result["registered_version"] = version.version
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
    result["prediction"] = loaded.predict(pd.DataFrame({"x": [3.0, 4.5]}))["x"].tolist()
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], args[1], args[2] if len(args) > 2 else None)))
