"""The jobs API behind nginx at /trainer/api/ (served by gunicorn: `mlstack-trainer api`).

nginx has already checked the caller's MLflow login and passes the user name in
X-Mlstack-User; whether they are an admin is asked of MLflow with their own credentials
(cached briefly). A user sees and cancels their own jobs; an admin, everyone's.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response, jsonify, request

from .queue import Job, JobQueue
from .spec import SpecError, parse
from .settings import TrainerSettings

OPENAPI = Path(__file__).with_name("openapi.json")
_ADMIN_CACHE: dict[str, tuple[float, bool]] = {}


def create_app(settings: TrainerSettings | None = None, queue: JobQueue | None = None) -> Flask:
    settings = settings or TrainerSettings.from_env()
    queue = queue or JobQueue(settings.connect)
    queue.migrate()
    app = Flask(__name__)

    def caller() -> tuple[str, bool]:
        user = request.headers.get("X-Mlstack-User", "")
        if not user:
            # Only nginx reaches this service, and it always sets the header after login.
            raise PermissionError("no authenticated user")
        auth = request.headers.get("Authorization", "")
        key = hashlib.sha256(auth.encode()).hexdigest()
        cached = _ADMIN_CACHE.get(key)
        if cached and cached[0] > time.monotonic():
            return user, cached[1]
        r = requests.get(f"{settings.mlflow_uri}/api/2.0/mlflow/users/current",
                         headers={"Authorization": auth}, timeout=10)
        is_admin = r.ok and bool(r.json().get("user", {}).get("is_admin"))
        if len(_ADMIN_CACHE) > 10_000:  # bounded: one entry per distinct credential
            _ADMIN_CACHE.clear()
        _ADMIN_CACHE[key] = (time.monotonic() + 60, is_admin)
        return user, is_admin

    def view(job: Job) -> dict[str, Any]:
        links = {}
        if job.mlflow_run_id:
            links = {"mlflow": f"{settings.public_url}/#/runs/{job.mlflow_run_id}",
                     "tensorboard": f"{settings.public_url}/tensorboard/#timeseries&runFilter="
                                    f"{job.name}-{job.mlflow_run_id}"}
        return {"id": job.id, "name": job.name, "state": job.state, "submitter": job.submitter,
                "worker": job.worker, "attempts": job.attempts, "mlflow_run_id": job.mlflow_run_id,
                "error": job.error, "cancel_requested": job.cancel_requested, "spec": job.spec,
                "links": links,
                **{k: (getattr(job, k).isoformat() if getattr(job, k) else None)
                   for k in ("created_at", "started_at", "finished_at")}}

    def visible(job_id: int) -> Job:
        user, admin = caller()
        job = queue.get(job_id)
        if job is None or not (admin or job.submitter == user):
            raise LookupError(f"no job {job_id}")
        return job

    @app.errorhandler(PermissionError)
    def _forbidden(exc):
        return jsonify(error=str(exc)), 401

    @app.errorhandler(LookupError)
    def _missing(exc):
        return jsonify(error=str(exc)), 404

    @app.post("/trainer/api/jobs")
    def submit():
        user, _ = caller()
        try:
            spec = parse(request.get_data(as_text=True))
        except SpecError as exc:
            return jsonify(error="invalid job spec", problems=exc.problems), 400
        return jsonify(view(queue.submit(spec, user))), 201

    @app.get("/trainer/api/jobs")
    def listing():
        user, admin = caller()
        jobs = queue.list(None if admin and request.args.get("all") else user)
        return jsonify(jobs=[view(j) for j in jobs])

    @app.get("/trainer/api/jobs/<int:job_id>")
    def show(job_id: int):
        return jsonify(view(visible(job_id)))

    @app.get("/trainer/api/jobs/<int:job_id>/logs")
    def logs(job_id: int):
        job = visible(job_id)
        offset = max(int(request.args.get("offset", 0)), 0)
        path = settings.logs_dir / f"{job.id}.log"
        data = b""
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(1 << 20)
        return Response(data, mimetype="text/plain", headers={
            "X-Next-Offset": str(offset + len(data)), "X-Job-State": job.state})

    @app.post("/trainer/api/jobs/<int:job_id>/cancel")
    def cancel(job_id: int):
        visible(job_id)
        return jsonify(view(queue.cancel(job_id)))

    @app.get("/trainer/api/openapi.json")
    def openapi():
        return Response(OPENAPI.read_text(), mimetype="application/json")

    @app.get("/trainer/api/health")
    def health():
        queue.depth()
        return jsonify(status="ok")

    return app
