"""Malformed requests get a 400 that says what is wrong, from the platform's MLflow app (a real
server): stock MLflow answers these with a 500 and a stack trace."""

from __future__ import annotations

import pytest
import requests

from .conftest import ALICE


def post(app, endpoint: str, data: bytes) -> requests.Response:
    return requests.post(f"{app['uri']}/api/2.0/mlflow/{endpoint}", data=data, auth=ALICE,
                         headers={"Content-Type": "application/json"}, timeout=30)


@pytest.mark.parametrize("body, says", [
    (b"[]", "must be a JSON object, not list"),
    (b'"text"', "must be a JSON object, not str"),
    (b"1e999", "must be a JSON object, not float"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"{", "not valid JSON"),
    (b"\x00\xff", "not valid JSON"),
    (b'{"name": "a\\u0000b"}', "NUL character"),
    ('{"name": "a\\u0000b"}'.encode("utf-16"), "NUL character"),  # no \u0000 in its bytes
])
def test_a_body_that_is_no_json_object_is_refused_with_what_is_wrong(mlstack_app, body, says):
    for endpoint in ("experiments/create", "runs/search", "runs/log-batch"):
        r = post(mlstack_app, endpoint, body)
        assert r.status_code == 400, (endpoint, r.text)
        assert says in r.json()["message"] and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "Bad Request" not in r.json()["message"]  # the decoder's words, not Flask's


def test_a_field_of_the_wrong_shape_is_refused_by_mlflows_own_message(mlstack_app):
    app = mlstack_app
    r = post(app, "runs/create", b'{"experiment_id": [1, 2]}')
    assert r.status_code == 400 and "experiment_id must be a single value" in r.json()["message"]
    r = post(app, "runs/log-batch", b'{"run_id": "x", "metrics": "all"}')
    assert r.status_code == 400 and "metrics must be a list" in r.json()["message"]
    r = post(app, "runs/log-batch", b'{"run_id": "x", "metrics": [{"key": {"a": 1}}]}')
    assert r.status_code == 400 and "metrics.key must be a single value" in r.json()["message"]
    # A NUL in a query parameter, and GraphQL without a JSON body.
    r = requests.get(f"{app['uri']}/api/2.0/mlflow/runs/get", params={"run_id": "\x00"},
                     auth=ALICE, timeout=30)
    assert r.status_code == 400 and "NUL" in r.json()["message"]
    r = requests.get(f"{app['uri']}/graphql", params={"query": "{"}, auth=ALICE, timeout=30)
    assert r.status_code == 400 and "POST" in r.json()["message"]
    r = requests.post(f"{app['uri']}/graphql", data=b"{", auth=ALICE, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_well_formed_requests_are_untouched(mlstack_app):
    app = mlstack_app
    created = post(app, "experiments/create", b'{"name": "shapes-ok", "tags": [{"key": "k", '
                                              b'"value": "v"}]}')
    assert created.status_code == 200, created.text
    experiment = created.json()["experiment_id"]
    run = post(app, "runs/create", f'{{"experiment_id": "{experiment}"}}'.encode())
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]
    logged = post(app, "runs/log-batch", f'{{"run_id": "{run_id}", "metrics": [{{"key": "m", '
                                         f'"value": 1.5, "timestamp": 1, "step": 0}}]}}'.encode())
    assert logged.status_code == 200, logged.text
    # Not a REST message: MLflow's own answer (a 400 or 404), not ours.
    r = requests.post(f"{app['uri']}/graphql", auth=ALICE, timeout=30, json={
        "query": f'{{ mlflowGetRun(input: {{runId: "{run_id}"}}) {{ run {{ info {{ runId }} }} }} }}'})
    assert r.status_code == 200 and run_id in r.text


def test_the_body_this_check_parses_is_the_one_mlflow_reads(monkeypatch):
    """A log-batch of 1000 metrics is parsed once: MLflow's handler and validators take the
    check's parse from Flask's cache instead of decoding the body again."""
    from flask import Flask, request

    from mlstack_platform import request_shapes

    app = Flask(__name__)
    app.add_url_rule("/api/2.0/mlflow/runs/log-batch", "log_batch", lambda: "", methods=["POST"])
    body = {"run_id": "r", "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}]}
    with app.test_request_context("/api/2.0/mlflow/runs/log-batch", method="POST", json=body):
        request_shapes.check()
        monkeypatch.setattr(app.json, "loads", lambda *a, **k: pytest.fail("parsed twice"))
        assert request.get_json(force=True, silent=True) == body  # as MLflow asks for it
