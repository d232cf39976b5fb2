"""A model version's source must be the artifacts of a run or logged model the caller may read:
checked inside MLflow (the platform's app, a real server), for every caller, whatever the
scheme or path trick. Otherwise MLflow would serve those files with its own storage keys."""

from __future__ import annotations

import pytest
import requests

from mlstack_platform.model_sources import SourceRefused, parse

from .conftest import ADMIN, ALICE, BOB

RUN = "0123456789abcdef0123456789abcdef"
MODEL = "m-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("source", [
    f"runs:/{RUN}/model", f"runs:/{RUN}", f"models:/{MODEL}",
    f"mlflow-artifacts:/3/{RUN}/artifacts/model", f"mlflow-artifacts:/3/{RUN}/artifacts",
    f"mlflow-artifacts:/3/models/{MODEL}/artifacts",
])
def test_the_forms_mlflows_clients_send_are_understood(source):
    assert parse(source)


@pytest.mark.parametrize("source", [
    f"s3://mlflow-artifacts/3/{RUN}/artifacts/model", "file:///etc/passwd", "/etc/passwd",
    "../../etc", f"runs:/{RUN}/../../other/artifacts", f"runs:/{RUN}/a//b",
    f"runs:/{RUN}/%2e%2e/x", f"mlflow-artifacts:/3/{RUN}/artifacts/../../4",
    f"mlflow-artifacts://evil.example/3/{RUN}/artifacts", f"mlflow-artifacts:/3/{RUN}/x",
    "http://169.254.169.254/latest/meta-data", f"models:/{MODEL}/../x", "models:/name/1",
    f"runs:/{RUN.upper()}/model", "", f"runs:/{RUN}/a\\..\\b",
])
def test_anything_else_is_refused_with_what_to_use(source):
    with pytest.raises(SourceRefused, match="model version source"):
        parse(source)


def rest(app, user, method, path, **kwargs):
    return requests.request(method, f"{app['uri']}/api/2.0/mlflow/{path}", auth=user, timeout=30,
                            **kwargs)


def make_run(app, user, experiment_name) -> tuple[str, str]:
    experiment_id = rest(app, user, "post", "experiments/create",
                         json={"name": experiment_name}).json()["experiment_id"]
    run = rest(app, user, "post", "runs/create", json={"experiment_id": experiment_id}).json()
    return experiment_id, run["run"]["info"]["run_id"]


def create_version(app, user, model, source, run_id=None, **more):
    body = {"name": model, "source": source, **({"run_id": run_id} if run_id else {}), **more}
    return rest(app, user, "post", "model-versions/create", json=body)


def test_a_user_registers_their_own_runs_artifacts_but_not_someone_elses(mlstack_app):
    app = mlstack_app
    alices_exp, alices_run = make_run(app, ALICE, "alice-sources")
    bobs_exp, bobs_run = make_run(app, BOB, "bob-sources")
    rest(app, BOB, "post", "registered-models/create", json={"name": "bob-sources-model"})

    ok = create_version(app, BOB, "bob-sources-model", f"runs:/{bobs_run}/model", bobs_run)
    assert ok.status_code == 200, ok.text
    ok = create_version(app, BOB, "bob-sources-model",
                        f"mlflow-artifacts:/{bobs_exp}/{bobs_run}/artifacts/model", bobs_run)
    assert ok.status_code == 200, ok.text

    for source in (f"runs:/{alices_run}/model",
                   f"mlflow-artifacts:/{alices_exp}/{alices_run}/artifacts/model"):
        refused = create_version(app, BOB, "bob-sources-model", source)
        assert refused.status_code == 403, refused.text
        assert f"you may not read experiment {alices_exp}" in refused.json()["message"]
    # alice's run, dressed as if it were in bob's experiment.
    refused = create_version(app, BOB, "bob-sources-model",
                             f"mlflow-artifacts:/{bobs_exp}/{alices_run}/artifacts/model")
    assert refused.status_code == 400 and "not in experiment" in refused.json()["message"]
    # Straight at the bucket, and other schemes: refused for admins too.
    for user in (BOB, ADMIN):
        for source in (f"s3://mlflow-artifacts/{alices_exp}/{alices_run}/artifacts/model",
                       "file:///etc/passwd", f"runs:/{bobs_run}/../../{alices_run}"):
            refused = create_version(app, user, "bob-sources-model", source)
            assert refused.status_code == 400, (user, source, refused.text)
            assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    versions = rest(app, BOB, "get", "registered-models/get",
                    params={"name": "bob-sources-model"}).json()["registered_model"]
    assert {v["source"] for v in versions.get("latest_versions", [])} <= {
        f"runs:/{bobs_run}/model", f"mlflow-artifacts:/{bobs_exp}/{bobs_run}/artifacts/model"}


def test_a_logged_model_registers_by_its_models_uri_for_its_readers_only(mlstack_app):
    """What mlflow.<flavor>.log_model(..., registered_model_name=...) sends in MLflow 3."""
    app = mlstack_app
    experiment_id, run_id = make_run(app, ALICE, "alice-logged-models")
    model_id = rest(app, ALICE, "post", "logged-models", json={
        "experiment_id": experiment_id, "name": "model", "source_run_id": run_id}
    ).json()["model"]["info"]["model_id"]
    for user, name in ((ALICE, "alice-logged"), (BOB, "bob-logged")):
        rest(app, user, "post", "registered-models/create", json={"name": name})
    ok = create_version(app, ALICE, "alice-logged", f"models:/{model_id}", run_id,
                        model_id=model_id)
    assert ok.status_code == 200, ok.text
    location = f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts"
    for source in (f"models:/{model_id}", location):
        refused = create_version(app, BOB, "bob-logged", source, model_id=model_id)
        assert refused.status_code == 403, refused.text


def test_an_unknown_run_is_refused(mlstack_app):
    rest(mlstack_app, ALICE, "post", "registered-models/create", json={"name": "alice-ghost"})
    refused = create_version(mlstack_app, ALICE, "alice-ghost", f"runs:/{RUN}/model")
    assert refused.status_code == 400 and "no such run" in refused.json()["message"]


@pytest.mark.parametrize("location", [
    "s3://mlflow-artifacts/1", "mlflow-artifacts:/1", "file:///etc", "/var/lib/mlstack",
    "http://169.254.169.254/latest", "mlflow-artifacts:/1/../2",
])
def test_an_experiment_takes_the_servers_artifact_location_only(mlstack_app, location):
    """Otherwise its runs' artifacts (read and written with the server's keys) could sit in
    another experiment's folder, a local path or another host."""
    app = mlstack_app
    for user in (BOB, ADMIN):
        refused = rest(app, user, "post", "experiments/create",
                       json={"name": f"located-{user[0]}", "artifact_location": location})
        assert refused.status_code == 400, (user, refused.text)
        assert "artifact_location cannot be set" in refused.json()["message"]
    created = rest(app, BOB, "post", "experiments/create",
                   json={"name": f"located-{location}"})
    assert created.status_code == 200, created.text
