"""The MLflow server's app (`mlflow server --app-name mlstack`): MLflow's own basic-auth app,
plus what TensorBoard needs from MLflow, so that MLflow's permissions stay the one source of
truth for TensorBoard too:

  GET /mlstack/tensorboard/access   nginx's auth subrequest for /tensorboard/<experiments>/...:
                                    204 when the caller may read every experiment the original
                                    URI (X-Original-URI) names, 403 when not
  GET /mlstack/tensorboard/         the index: the experiments the caller may read that have
                                    TensorBoard data (HTML, or JSON with ?format=json)

and, after each artifact upload under a run's `tensorboard/` folder, a row in the queue the
janitor copies event files from (see tensorboard_sync.py); before a model version is created,
a check that its source is a run's or logged model's artifacts the caller may read
(model_sources.py); experiments are created only with the server's own artifact location;
malformed requests are answered 400 before MLflow's handlers fail on them (request_shapes.py);
the experiment of a run, which MLflow looks up on every run-scoped request, is cached
(permission_cache.py), and so are users, grants and login blocks until the auth database
changes (auth_cache.py); artifact downloads stream from S3 (artifact_download.py).
"""

from __future__ import annotations

import html
import json
import logging
import re

from flask import Flask, Response, jsonify, redirect, request

from . import (
    artifact_download,
    auth_cache,
    login,
    model_sources,
    permission_cache,
    request_shapes,
    tensorboard_sync,
)

_logger = logging.getLogger(__name__)

ACCESS = "/mlstack/tensorboard/access"
INDEX = "/mlstack/tensorboard/"
COMPARE = "/mlstack/tensorboard/compare"
# What nginx sends to TensorBoard: one experiment, several (compared side by side), or all.
SELECTION = re.compile(r"^/tensorboard/(?P<selection>all|[0-9]+(?:,[0-9]+)*)(?:/|$)")
MAX_COMPARED = 20

_EXPERIMENTS_WITH_TENSORBOARD = """
SELECT e.experiment_id, e.name, COUNT(*) AS runs
FROM experiments e
JOIN runs r ON r.experiment_id = e.experiment_id AND r.lifecycle_stage = 'active'
JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = :tag
WHERE e.lifecycle_stage = 'active'
GROUP BY e.experiment_id, e.name
ORDER BY e.experiment_id
"""


def parse_selection(uri: str) -> list[str] | str | None:
    """`all`, the experiment ids of a TensorBoard URI, or None when it names none."""
    match = SELECTION.match(uri.split("?", 1)[0])
    if not match:
        return None
    selection = match["selection"]
    return selection if selection == "all" else selection.split(",")


def _caller() -> tuple[str, bool]:
    from mlflow.server import auth

    username = auth.authenticate_request().username
    return username, auth.store.get_user(username).is_admin


def can_read(experiment_id: str, username: str) -> bool:
    """MLflow's own answer (grants, roles, the default permission), as for its REST API."""
    from mlflow.server import auth

    try:
        return auth._get_experiment_permission(experiment_id, username).can_read
    except Exception:  # noqa: BLE001 - no such experiment: nothing to read
        return False


def access() -> Response:
    selection = parse_selection(request.headers.get("X-Original-URI", ""))
    if selection is None or (isinstance(selection, list) and len(selection) > MAX_COMPARED):
        return Response(f"not a TensorBoard address (at most {MAX_COMPARED} experiments)",
                        status=403)
    username, is_admin = _caller()
    if is_admin:
        return Response(status=204)
    if selection == "all":
        return Response("only admins may open every experiment's TensorBoard", status=403)
    for experiment_id in selection:
        if not can_read(experiment_id, username):
            return Response(f"you may not read experiment {experiment_id}: ask its owner for "
                            "READ in MLflow", status=403)
    return Response(status=204)


def readable_experiments(username: str, is_admin: bool) -> list[dict]:
    from mlflow.server.handlers import _get_tracking_store
    from sqlalchemy import text

    with _get_tracking_store().engine.connect() as conn:
        rows = conn.execute(text(_EXPERIMENTS_WITH_TENSORBOARD),
                            {"tag": tensorboard_sync.TAG}).fetchall()
    return [{"experiment_id": str(eid), "name": name, "runs": runs} for eid, name, runs in rows
            if is_admin or can_read(str(eid), username)]


def index() -> Response:
    username, is_admin = _caller()
    experiments = readable_experiments(username, is_admin)
    if request.args.get("format") == "json":
        return jsonify({"experiments": experiments, "all": is_admin})
    return Response(_index_html(experiments, is_admin), mimetype="text/html")


def compare() -> Response:
    """The index's form: the chosen experiments side by side in one TensorBoard."""
    ids = sorted({i for i in request.args.getlist("experiment")
                  if re.fullmatch(r"[0-9]{1,18}", i)}, key=int)
    if not ids:
        return redirect("/tensorboard/", code=303)
    return redirect(f"/tensorboard/{','.join(ids[:MAX_COMPARED])}/", code=303)


def _index_html(experiments: list[dict], is_admin: bool) -> str:
    rows = "".join(
        f'<tr><td><input type="checkbox" name="experiment" value="{e["experiment_id"]}"></td>'
        f'<td><a href="/tensorboard/{e["experiment_id"]}/">{html.escape(e["name"])}</a></td>'
        f'<td>{e["experiment_id"]}</td><td>{e["runs"]}</td></tr>' for e in experiments)
    everything = ('<p><a href="/tensorboard/all/">Every experiment (admins)</a></p>'
                  if is_admin else "")
    body = (f'<form action="/tensorboard/compare" method="get"><table><thead><tr><th></th>'
            f'<th>Experiment</th><th>Id</th><th>Runs with TensorBoard data</th></tr></thead>'
            f'<tbody>{rows}</tbody></table><p><button type="submit">Compare the chosen '
            f'experiments</button></p></form>' if experiments else
            "<p>No experiment you may read has TensorBoard data yet. Log event files as "
            "artifacts under <code>tensorboard/</code>, or train with a job.</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlstack TensorBoard</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;"
            "text-align:left}</style></head><body><h1>TensorBoard</h1>"
            f"{body}{everything}<p><a href='/'>MLflow</a></p></body></html>")


def _queue_tensorboard_upload(response: Response) -> Response:
    """After a good upload under a run's tensorboard/ folder: the janitor copies it."""
    if request.method not in ("PUT", "POST") or not 200 <= response.status_code < 300:
        return response
    match = tensorboard_sync.UPLOAD_PATH.fullmatch(request.path)
    if match:
        from mlflow.server.handlers import _get_tracking_store
        from sqlalchemy import text

        try:
            with _get_tracking_store().engine.begin() as conn:
                conn.execute(text(tensorboard_sync.REQUEST_SYNC),
                             {"run": match["run"], "at": tensorboard_sync.now_ms(),
                              "experiment": int(match["experiment"])})
        except Exception:  # noqa: BLE001 - the upload itself succeeded: never fail it
            _logger.exception("could not queue run %s for TensorBoard", match["run"])
    return response


def _check_model_version_source() -> Response | None:
    """Before MLflow creates a model version (after its own authentication and checks)."""
    if request.method != "POST" or request.path not in model_sources.CREATE_PATHS:
        return None
    from mlflow.server.handlers import _get_tracking_store

    body = request.get_json(silent=True)
    source = body.get("source") if isinstance(body, dict) else None
    if not isinstance(source, str):
        return None  # MLflow answers a missing or malformed source itself (400)
    username, is_admin = _caller()
    try:
        model_sources.check(source, username, is_admin, _get_tracking_store(), can_read)
    except model_sources.SourceRefused as exc:
        code = "PERMISSION_DENIED" if exc.status == 403 else "INVALID_PARAMETER_VALUE"
        return _error(exc.status, code, str(exc))
    return None


EXPERIMENT_CREATE_PATHS = {"/api/2.0/mlflow/experiments/create",
                           "/ajax-api/2.0/mlflow/experiments/create"}


def _refuse_artifact_location() -> Response | None:
    """Experiments keep their artifacts where the server puts them (its bucket, by experiment
    id). A location of one's choosing would point a run's artifacts (which MLflow reads and
    writes with its own keys) at another experiment's folder, a local file or another host."""
    if request.method != "POST" or request.path not in EXPERIMENT_CREATE_PATHS:
        return None
    body = request.get_json(silent=True)
    if isinstance(body, dict) and body.get("artifact_location"):
        return _error(400, "INVALID_PARAMETER_VALUE",
                      "artifact_location cannot be set on this platform: the server stores "
                      "every experiment's artifacts in its own bucket; create the experiment "
                      "without one")
    return None


def _refuse_malformed_request() -> Response | None:
    try:
        request_shapes.check()
    except request_shapes.BadRequest as exc:
        return _error(400, "INVALID_PARAMETER_VALUE", str(exc))
    return None


def _error(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"error_code": code, "message": message}), status=status,
                    mimetype="application/json")


def create_app(app: Flask | None = None):
    """MLflow's basic-auth app with the routes above. Under gunicorn (the platform) that is the
    Flask app; under uvicorn (MLflow's default, the tests) MLflow wraps it in FastAPI, so the
    routes go onto the Flask app first."""
    from mlflow.server import app as mlflow_app
    from mlflow.server import auth

    flask_app = app or mlflow_app
    # Any signed-in user may ask; each handler decides what the caller may see. (MLflow's
    # auth refuses routes it has no validator for.)
    for path in (ACCESS, INDEX, COMPARE):
        auth.BEFORE_REQUEST_VALIDATORS[(path, "GET")] = auth._allow_authenticated
    flask_app.add_url_rule(ACCESS, "mlstack_tensorboard_access", access, methods=["GET"])
    flask_app.add_url_rule(INDEX, "mlstack_tensorboard_index", index, methods=["GET"])
    flask_app.add_url_rule(COMPARE, "mlstack_tensorboard_compare", compare, methods=["GET"])
    flask_app.after_request(_queue_tensorboard_upload)
    # Before MLflow's own hooks, whose authorization fails on some malformed bodies.
    flask_app.before_request(_refuse_malformed_request)
    permission_cache.install(auth)
    wrapped = auth.create_app(flask_app)
    auth_cache.install(auth, login)  # (auth.store is open now)
    hooks = flask_app.before_request_funcs[None]
    hooks[hooks.index(auth._before_request)] = auth_cache.confirm_refusals(auth._before_request)
    artifact_download.install(flask_app)
    # After MLflow's own before-request hooks: the caller is authenticated by then.
    flask_app.before_request(_check_model_version_source)
    flask_app.before_request(_refuse_artifact_location)
    return wrapped
