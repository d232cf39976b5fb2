"""Model versions point only at artifacts their creator may read.

A model version's `source` tells MLflow where the model's files are; MLflow then serves them
(`/model-versions/get-artifact`) with its own storage keys. Stock MLflow accepts any location
its storage reaches, so a user could register `s3://<bucket>/<someone's run>/...` (or another
user's `mlflow-artifacts:/` path) and read files of runs MLflow would never show them. Here a
source must be the artifacts of a run or of a logged model the caller may read, in one of the
forms MLflow's own clients send, with no path tricks; for every caller, admins included.
"""

from __future__ import annotations

import re

RUN_ID = r"[0-9a-f]{32}"
MODEL_ID = r"m-[0-9a-f]{32}"
_FORMS = (
    re.compile(rf"runs:/(?P<run>{RUN_ID})(?:/(?P<path>.*))?"),
    re.compile(rf"models:/(?P<model>{MODEL_ID})/?"),
    re.compile(rf"mlflow-artifacts:/(?P<experiment>[0-9]+)/(?:(?P<run>{RUN_ID})|models/"
               rf"(?P<model>{MODEL_ID}))/artifacts(?:/(?P<path>.*))?"),
)
CREATE_PATHS = {"/api/2.0/mlflow/model-versions/create", "/ajax-api/2.0/mlflow/model-versions/create"}


class SourceRefused(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse(source: str) -> dict[str, str | None]:
    """The run or logged model a source names (and its experiment, when it says), or
    SourceRefused."""
    for form in _FORMS:
        match = form.fullmatch(source)
        if match:
            found = match.groupdict()
            path = found.pop("path", None)
            if path and not _plain(path):
                raise SourceRefused(f"model version source {source!r}: the path must not "
                                    "contain '..', '.', empty parts, '%' or '\\\\'")
            return {key: found.get(key) for key in ("run", "model", "experiment")}
    raise SourceRefused(
        f"model version source {source!r} is not allowed: use the artifacts of a run or a "
        f"logged model you may read (runs:/<run id>/<path>, models:/<model id>, or their "
        f"mlflow-artifacts:/ location)")


def _plain(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    return not any(p in ("", ".", "..") for p in parts) and not any(c in path for c in "%\\\0")


def check(source: str, username: str, is_admin: bool, tracking_store, can_read) -> None:
    """Raise SourceRefused unless `source` is the artifacts of a run or logged model that
    exists (in the experiment the source names, if it names one) and `username` may read."""
    named = parse(source)
    try:
        if named["run"]:
            experiment_id = tracking_store.get_run(named["run"]).info.experiment_id
        else:
            experiment_id = tracking_store.get_logged_model(named["model"]).experiment_id
    except Exception:  # noqa: BLE001 - MLflow raises its not-found error
        raise SourceRefused(f"model version source {source!r}: no such run or model")
    if named["experiment"] is not None and named["experiment"] != str(experiment_id):
        raise SourceRefused(f"model version source {source!r}: the run or model is not in "
                            f"experiment {named['experiment']}")
    if not is_admin and not can_read(str(experiment_id), username):
        raise SourceRefused(f"model version source {source!r}: you may not read experiment "
                            f"{experiment_id}", status=403)
