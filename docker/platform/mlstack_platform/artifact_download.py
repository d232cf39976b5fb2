"""Artifact downloads through MLflow's proxy, streamed from S3 to the client as they arrive.

MLflow's handler for `GET /api/2.0/mlflow-artifacts/artifacts/<path>` (what every client's
`download_artifacts` calls) first copies the whole object from S3 into a temporary folder, then
sends that file: a 1 GiB model is written to and read back from the MLflow container's disk
before the client gets its first byte, and the proxy delivered a quarter of what S3 can
(tests/benchmarks/versus_stock.py). Here the same endpoint streams S3's response body instead,
with the headers MLflow's handler sets (its own functions set them). Requests with a Range or
a condition, and artifact stores other than s3-proxied://, still go to MLflow's handler.

Through nginx, the file's bytes do not pass through MLflow at all: nginx says it can fetch a
file itself (the HANDOFF header, which it sets on the artifact routes and clears elsewhere;
believed from nginx's address alone), MLflow answers with X-Accel-Redirect to nginx's named
artifact-store location and a GET of that one file presigned by MLflow, and nginx fetches it
from MinIO and sends it on. Streaming it through
MLflow cost a Python copy in and out, a fifth of the platform's CPU during a 1 GiB download on
a 2-core machine, and held the download to 68-78 % of what boto3's transfer manager reads from
S3. nginx passes none of MLflow's headers on but the Content-Type, Content-Disposition and
Cache-Control, so the presigned URL never reaches the client; anything else that calls MLflow
gets the stream.

The endpoint's permission check is MLflow's before-request hook, which runs before any view
function: replacing the view changes nothing about who may download what.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

from flask import Flask, current_app, request

from . import login

ENDPOINT = "_download_artifact"  # MLflow registers each handler under its function's name
# nginx's artifact routes set it (mlstack-routes.inc.template); a client's own is replaced.
HANDOFF = "X-Mlstack-Artifact-Handoff"
# Where nginx fetches the file (a named location: no request can name it), and the header it
# reads the presigned path and query from (nginx never passes it on).
STORE_LOCATION = "@mlstack_artifact_store"
STORE_PATH_HEADER = "X-Mlstack-Artifact-Store"
# The only S3 endpoint nginx fetches from (its artifact-store upstream names it): a presigned
# URL for another (MLSTACK_S3_ENDPOINT set elsewhere) is streamed through MLflow instead.
STORE_ENDPOINT = ("http", "minio:9000")
# The URL goes from MLflow to nginx to MinIO and no further; its lifetime only has to cover
# the clocks of Swarm nodes drifting apart (S3 itself allows 15 minutes of skew).
PRESIGNED_FOR_S = 900
# Partial and conditional downloads: MLflow's handler answers them from its temporary copy.
_MLFLOWS_OWN = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match",
                "If-Unmodified-Since")


def install(flask_app: Flask) -> None:
    from mlflow.server import handlers

    # Here, not at the top: MLflow imports artifact_repo itself when it loads its artifact
    # repository plugins, and an import from this module's own import would get there first,
    # half-done, and the s3-proxied:// scheme would go unregistered.
    from .artifact_repo import ProxiedS3ArtifactRepository

    mlflows = flask_app.view_functions[ENDPOINT]

    @handlers.catch_mlflow_exception
    @handlers._disable_unless_serve_artifacts
    def download(artifact_path):
        if any(header in request.headers for header in _MLFLOWS_OWN):
            return mlflows(artifact_path)
        repo = handlers._get_artifact_repo_mlflow_artifacts()
        if not isinstance(repo, ProxiedS3ArtifactRepository):
            return mlflows(artifact_path)
        path = handlers._get_workspace_scoped_repo_path_if_enabled(
            handlers.validate_path_is_safe(artifact_path))
        handoff = request.headers.get(HANDOFF) == "1" and login.from_front_door()
        response = _handed_to_nginx(repo, path) if handoff else None
        if response is None:
            body, length = repo.open_file(path)
            response = current_app.response_class(
                _chunks(body, handlers.ARTIFACT_STREAM_CHUNK_SIZE), direct_passthrough=True)
            response.content_length = length
        response.cache_control.no_cache = True
        name = posixpath.basename(path)
        response.headers["Content-Disposition"] = handlers._content_disposition_attachment(name)
        return handlers._response_with_file_attachment_headers(name, response)

    flask_app.view_functions[ENDPOINT] = download


def _handed_to_nginx(repo, path: str):
    """An empty answer that has nginx fetch the file from S3 itself; None where nginx could
    not use the URL (an S3 endpoint other than the platform's MinIO, or another signature)."""
    url = urlsplit(repo.presigned_get(path, PRESIGNED_FOR_S))
    # nginx takes a Signature Version 4 URL of its MinIO only (its location checks the same).
    if (url.scheme, url.netloc) != STORE_ENDPOINT or "X-Amz-Signature=" not in url.query:
        return None
    response = current_app.response_class(b"")
    response.headers["X-Accel-Redirect"] = STORE_LOCATION
    response.headers[STORE_PATH_HEADER] = f"{url.path}?{url.query}"
    return response


def _chunks(body, size: int):
    """S3's body, a chunk at a time; closed when the client is done or goes away (the WSGI
    server closes the iterator either way)."""
    try:
        yield from body.iter_chunks(size)
    finally:
        body.close()
