"""One step of MLflow's permission check, cached: the experiment a run belongs to.

For a plain user, MLflow's auth resolves every run-scoped request (log-metric, log-batch,
get-run, artifact listings...) by loading the whole run (`get_run`: its params, tags and latest
metrics) only to learn its experiment, then asks the auth database for the caller's grants on
it. A run never moves to another experiment, so the first step is cached here, per worker and
bounded; the grants are still asked on every request, so a grant or revocation takes effect at
once, as before. A run that no longer exists is never cached: it is denied as MLflow denies it. Log-batch's
validator reads the logged models its metrics name from the parsed JSON rather than parsing the
body into protobuf a second time.

`run_requirement` is MLflow's `_run_requirement` (mlflow/server/auth/__init__.py) with that
lookup in front; tests/unit/test_permission_cache.py pins MLflow's source of it, so an MLflow
upgrade that changes what a run-scoped request requires fails the tests until this follows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_RUNS = 100_000  # ~10 MB per worker at most


class RunExperiments:
    """run id -> experiment id, least recently used first out."""

    def __init__(self, size: int = MAX_RUNS) -> None:
        self._size = size
        self._map: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> str | None:
        with self._lock:
            experiment_id = self._map.get(run_id)
            if experiment_id is not None:
                self._map.move_to_end(run_id)
            return experiment_id

    def put(self, run_id: str, experiment_id: str) -> None:
        with self._lock:
            self._map[run_id] = experiment_id
            self._map.move_to_end(run_id)
            while len(self._map) > self._size:
                self._map.popitem(last=False)


def install(auth) -> None:
    """Replace MLflow's `_run_requirement` (module `auth`) with the cached equivalent."""
    runs = RunExperiments()

    def run_requirement(run_id, action):
        experiment_id = runs.get(run_id) if isinstance(run_id, str) else None
        if experiment_id is None:
            run = auth._fetch_or_none(auth._get_tracking_store().get_run, run_id)
            if run is None:
                return None
            experiment_id = run.info.experiment_id
            runs.put(run_id, experiment_id)
        experiment = (auth.RESOURCE_TYPE_EXPERIMENT, experiment_id)
        return experiment, [
            auth.Requirement(auth.RESOURCE_TYPE_EXPERIMENT, experiment_id, "read"),
            auth.Requirement(auth.RESOURCE_TYPE_RUN, "*", action, fallback_if_no_grant=(experiment,)),
        ]

    auth._run_requirement = run_requirement
    _read_log_batch_model_ids_from_json(auth)


def _read_log_batch_model_ids_from_json(auth) -> None:
    """MLflow's log-batch validator parses the whole body into its protobuf message only to
    collect the logged models its metrics name (`model_id`, or `modelId`); the handler then
    parses it again. With 1000 metrics that first parse was 10 % of a log-batch (py-spy). Here
    the same ids are read from the JSON body Flask has already parsed, and MLflow's own check
    (`_validate_can_update_run_and_models`) decides. A body the protobuf parser would refuse
    is still refused by the handler, after this check: nothing is written either way."""
    from flask import request

    mlflows = auth.validate_can_log_batch

    def validate_can_log_batch():
        body = request.get_json(silent=True)
        metrics = body.get("metrics") if isinstance(body, dict) else None
        model_ids = set()
        for metric in metrics if isinstance(metrics, list) else []:
            if isinstance(metric, dict):
                model_ids.update(m for m in (metric.get("model_id"), metric.get("modelId")) if m)
        return auth._validate_can_update_run_and_models(model_ids)

    for table in (auth.BEFORE_REQUEST_VALIDATORS, auth.BEFORE_REQUEST_HANDLERS):
        for key, validator in list(table.items()):
            if validator is mlflows:
                table[key] = validate_can_log_batch
