"""The platform's cached lookup of a run's experiment, in MLflow's permission check: the same
decisions as MLflow's own, grants and revocations at once, and nothing learnt from one user's
requests given to another (a real server: the platform's app under gunicorn)."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow.server.auth
import pytest
from mlflow.server.auth.client import AuthServiceClient

from mlstack_platform.permission_cache import RunExperiments

from .conftest import ALICE, BOB
from .test_model_version_sources import make_run, rest
from .test_tensorboard_access import as_user

# MLflow's own `_run_requirement`, which permission_cache.run_requirement repeats with the cache
# in front. If an MLflow upgrade changes it, bring permission_cache.py in line, then this.
MLFLOWS_RUN_REQUIREMENT = '''
def _run_requirement(
    run_id: str, action: str
) -> "tuple[tuple[str, str], list[Requirement]] | None":
    # A missing run denies rather than 404ing, so the response is not an oracle for which
    # run ids exist -- master applies the same reasoning to logged models.
    run = _fetch_or_none(_get_tracking_store().get_run, run_id)
    if run is None:
        return None
    experiment = (RESOURCE_TYPE_EXPERIMENT, run.info.experiment_id)
    return experiment, [
        Requirement(RESOURCE_TYPE_EXPERIMENT, run.info.experiment_id, "read"),
        Requirement(RESOURCE_TYPE_RUN, "*", action, fallback_if_no_grant=(experiment,)),
    ]
'''


def test_mlflows_run_requirement_is_still_the_one_the_cache_repeats():
    source = Path(mlflow.server.auth.__file__).read_text()
    found = re.search(r"\ndef _run_requirement\(.*?\n(?=\n\ndef )", source, re.S)
    assert found and found.group(0).strip() == MLFLOWS_RUN_REQUIREMENT.strip(), \
        "MLflow changed _run_requirement: review mlstack_platform/permission_cache.py"


MLFLOWS_LOG_BATCH_VALIDATOR = '''
def validate_can_log_batch():
    # LogBatch can optionally write metrics to logged models via per-metric model_id.
    # Parse through the proto (covers the camelCase `modelId` alias on nested metrics).
    msg = _get_request_message(LogBatch())
    model_ids = {m.model_id for m in msg.metrics if m.model_id}
    return _validate_can_update_run_and_models(model_ids)
'''


def test_mlflows_log_batch_validator_is_still_the_one_read_from_json():
    source = Path(mlflow.server.auth.__file__).read_text()
    found = re.search(r"\ndef validate_can_log_batch\(.*?\n(?=\n\ndef )", source, re.S)
    assert found and found.group(0).strip() == MLFLOWS_LOG_BATCH_VALIDATOR.strip(), \
        "MLflow changed validate_can_log_batch: review mlstack_platform/permission_cache.py"


@pytest.mark.parametrize("field", ["model_id", "modelId"])
def test_a_batch_cannot_write_metrics_to_someone_elses_logged_model(mlstack_app, field):
    app = mlstack_app
    alices_experiment, _ = make_run(app, ALICE, f"alice-models-{field}")
    model = rest(app, ALICE, "post", "logged-models",
                 json={"experiment_id": alices_experiment}).json()["model"]["info"]["model_id"]
    _, bobs_run = make_run(app, BOB, f"bob-batch-{field}")

    def batch(user, run_id, model_id):
        return rest(app, user, "post", "runs/log-batch", json={"run_id": run_id, "metrics": [
            {"key": "loss", "value": 1, "timestamp": 1},
            {"key": "acc", "value": 0.5, "timestamp": 1, field: model_id}]})

    assert batch(BOB, bobs_run, model).status_code == 403  # alice's model, from bob's own run
    assert batch(BOB, bobs_run, "").status_code == 200
    _, alices_run = make_run(app, ALICE, f"alice-batch-{field}")
    assert batch(ALICE, alices_run, model).status_code == 200


def log(app, user, run_id, value: float):
    return rest(app, user, "post", "runs/log-metric",
                json={"run_id": run_id, "key": "loss", "value": value, "timestamp": 1})


def test_run_scoped_requests_decide_as_before_and_grants_apply_at_once(mlstack_app):
    app = mlstack_app
    experiment, run = make_run(app, ALICE, "alice-permission-cache")
    for i in range(5):  # alice's own run, looked up once and then from the cache
        assert log(app, ALICE, run, i).status_code == 200
    # bob, after alice's requests put the run in the cache: refused all the same.
    assert log(app, BOB, run, 9).status_code == 403
    assert rest(app, BOB, "get", "runs/get", params={"run_id": run}).status_code == 403
    auth = AuthServiceClient(app["uri"])
    as_user(ALICE, lambda: auth.grant_user_permission(BOB[0], "experiment", experiment, "EDIT"))
    assert log(app, BOB, run, 10).status_code == 200  # at once
    as_user(ALICE, lambda: auth.revoke_user_permission(BOB[0], "experiment", experiment))
    assert log(app, BOB, run, 11).status_code == 403  # at once
    # A run that does not exist is denied, as MLflow denies it (no oracle of which ids exist).
    assert log(app, ALICE, "0" * 32, 1).status_code == 403


def test_the_cache_is_bounded_and_keeps_the_recently_used():
    runs = RunExperiments(size=2)
    runs.put("a", "1")
    runs.put("b", "1")
    assert runs.get("a") == "1"  # a is now the most recent
    runs.put("c", "2")
    assert runs.get("b") is None and runs.get("a") == "1" and runs.get("c") == "2"


@pytest.mark.parametrize("run_id", [None, 5, ["x"]])
def test_an_odd_run_id_is_left_to_mlflow(mlstack_app, run_id):
    r = rest(mlstack_app, ALICE, "post", "runs/log-metric",
             json={"run_id": run_id, "key": "loss", "value": 1, "timestamp": 1})
    assert 400 <= r.status_code < 500, r.text
