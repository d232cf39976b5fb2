"""The jobs API behind nginx at /trainer/api/ (FastAPI under uvicorn: `mlstack-trainer api`).

Two kinds of caller, both identified by MLflow's answer to their own credentials (callers.py):
- team members submit (a spec, optionally with their code), list, show, follow and cancel their
  own jobs; an admin sees everyone's;
- workers (MLflow users marked as workers in the jobs database) claim jobs, renew their lease,
  fetch a job's code and report how it ended. The claim answer carries the job's own MLflow
  identity, minted here (mlflow_admin.py): this service alone holds the admin credentials and
  the database, and it never runs user code.

The OpenAPI document is generated (GET /trainer/api/openapi.json; interactive at
/trainer/api/docs).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from . import code_archive, tb_layout
from .callers import Authenticator, Caller
from .mlflow_admin import MlflowAdmin, NotAllowed
from .queue import Job, JobQueue
from .settings import API_VERSION, JOB_IDENTITY_PREFIX, LOCAL_WORKER_ACCOUNT, ApiSettings
from .spec import JobSpec, SpecError, parse
from .states import FINAL, JobState

PREFIX = "/trainer/api"
SWEEP_EVERY_S = 10
LOG_CHUNK = 1 << 20
REMOTE_LOG_MAX_BYTES = 100 << 20  # per attempt: what a remote worker may fill trainer-api's disk with
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiError(Exception):
    def __init__(self, status: int, error: str, problems: list[str] | None = None):
        self.status, self.error, self.problems = status, error, problems


# --- what the API answers ----------------------------------------------------------------------

class JobView(BaseModel):
    id: int
    name: str
    state: JobState
    submitter: str
    worker: str | None
    attempts: int
    mlflow_run_id: str | None
    experiment_id: str | None
    error: str | None
    waiting_for: str | None = Field(None, description="Why a queued job is not running yet")
    cancel_requested: bool
    spec: dict[str, Any]
    code_sha256: str | None
    code_bytes: int | None
    source: dict[str, Any] | None
    links: dict[str, str]
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    jobs: list[JobView]


class ApiConfig(BaseModel):
    api_version: str
    max_code_bytes: int


class ClaimRequest(BaseModel):
    worker: str = Field(description="This worker process's name (host and pid)")
    gpus: int = Field(0, ge=0, description="GPUs this worker can give a job")
    api_version: str = Field(description="The jobs API version the worker speaks")
    image: str = Field("unknown", description="The trainer image the worker runs")


class Identity(BaseModel):
    username: str
    password: str


class Claim(BaseModel):
    job: JobView
    attempt: int
    identity: Identity = Field(description="The job's own MLflow user: deleted when it ends")
    experiment_id: str
    run_id: str
    tensorboard_dir: str = Field(description="Relative to the TensorBoard log root")
    lease_seconds: int
    has_code: bool


class WorkerReport(BaseModel):
    worker: str


class Heartbeat(BaseModel):
    cancel_requested: bool


class LogReceived(BaseModel):
    size: int = Field(description="Bytes of this attempt's log the platform holds: send from there")


class Finish(BaseModel):
    worker: str
    state: JobState
    error: str | None = None


# --- who is calling ----------------------------------------------------------------------------

def _caller(request: Request) -> Caller:
    who = request.app.state.authenticate(request.headers.get("authorization", ""))
    if who is None:
        raise ApiError(401, "not logged in: give your MLflow user name and password")
    return who


def _worker(request: Request, who: Annotated[Caller, Depends(_caller)]) -> Caller:
    if not request.app.state.queue.is_worker(who.username):
        raise ApiError(403, f"{who.username} is not a worker")
    return who


def _person(request: Request, who: Annotated[Caller, Depends(_caller)]) -> Caller:
    """A team member: a worker credential claims jobs and nothing else (it would own the
    experiments its jobs created, and could claim back what it submitted)."""
    if request.app.state.queue.is_worker(who.username):
        raise ApiError(403, f"{who.username} is a worker's credential: it only claims jobs")
    return who


User = Annotated[Caller, Depends(_person)]
Worker = Annotated[Caller, Depends(_worker)]


# --- the application -------------------------------------------------------------------------

def create_app(settings: ApiSettings | None = None, queue: JobQueue | None = None,
               admin: MlflowAdmin | None = None, authenticate: Authenticator | None = None,
               sweep: bool = True) -> FastAPI:
    settings = settings or ApiSettings.from_env()
    if admin is None:
        settings.use_service_account()
        admin = MlflowAdmin(settings.mlflow_uri)
    queue = queue or JobQueue(settings.connect)
    authenticate = authenticate or Authenticator(settings.mlflow_uri, settings.identity_cache_s)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        queue.migrate()
        queue.add_worker_account(LOCAL_WORKER_ACCOUNT)
        settings.remote_logs_dir.mkdir(parents=True, exist_ok=True)
        sweeper = threading.Thread(target=_sweep_forever, daemon=True) if sweep else None
        if sweeper:
            sweeper.start()
        yield
        stop.set()

    # FastAPIOffline: the interactive docs with Swagger UI served from this package, not a
    # CDN (no third-party script on the origin where browsers hold the platform's login, and
    # docs that work without internet).
    app = FastAPIOffline(title="mlstack jobs API", version=API_VERSION, lifespan=lifespan,
                         openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs",
                         redoc_url=None, static_url=f"{PREFIX}/docs-static",
                         description="Submit training jobs (a spec and, optionally, your code) "
                                     "and follow them. Log in with your MLflow user name and "
                                     "password.")

    app.state.authenticate, app.state.queue = authenticate, queue

    # --- cross-cutting ------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        body: dict[str, Any] = {"error": exc.error}
        if exc.problems:
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.middleware("http")
    async def _same_origin_only(request: Request, call_next):
        # A page on another site may make a logged-in browser POST here (a "simple" request
        # with text/plain needs no CORS preflight): state changes come from our origins only.
        origin = request.headers.get("origin")
        if request.method not in SAFE_METHODS and origin and origin not in settings.origins:
            return JSONResponse({"error": f"requests from {origin} are refused: use the "
                                          "platform's own address"}, status_code=403)
        return await call_next(request)

    def view(job: Job) -> JobView:
        links = {}
        if job.mlflow_run_id:
            links = {
                # workflowType: the UI's model-training view (its default is GenAI's).
                "mlflow": f"{settings.public_url}/#/experiments/{job.experiment_id}/runs/"
                          f"{job.mlflow_run_id}?workflowType=machine_learning",
                # A job run by a release before experiment ids were kept: the index.
                "tensorboard": tb_layout.link(settings.public_url, job.experiment_id,
                                              job.mlflow_run_id)
                if job.experiment_id else f"{settings.public_url}/tensorboard/",
            }
        waiting = None
        if job.state == JobState.QUEUED and job.gpus:
            most = queue.most_gpus_seen()
            if (most or 0) < job.gpus:
                waiting = (f"no worker offers {job.gpus} GPU(s) (the most seen lately: "
                           f"{most or 0}); it runs when one does")
        return JobView(
            id=job.id, name=job.name, state=JobState(job.state), submitter=job.submitter,
            worker=job.worker, attempts=job.attempts, mlflow_run_id=job.mlflow_run_id,
            experiment_id=job.experiment_id, error=job.error, waiting_for=waiting,
            cancel_requested=job.cancel_requested, spec=job.spec, code_sha256=job.code_sha256,
            code_bytes=job.code_bytes, source=job.source, links=links,
            **{k: (getattr(job, k).isoformat() if getattr(job, k) else None)
               for k in ("created_at", "started_at", "finished_at")})

    def visible(job_id: int, who: Caller) -> Job:
        job = queue.get(job_id)
        if job is None or not (who.is_admin or job.submitter == who.username):
            raise ApiError(404, f"no job {job_id}")
        return job

    # --- team members --------------------------------------------------------------------------

    @app.get(f"{PREFIX}/health", include_in_schema=False)
    def health():
        queue.depth()
        return {"status": "ok"}

    @app.get(f"{PREFIX}/config", response_model=ApiConfig)
    def config(_who: User):
        return ApiConfig(api_version=API_VERSION, max_code_bytes=settings.max_code_bytes)

    @app.post(f"{PREFIX}/jobs", response_model=JobView, status_code=201, openapi_extra={
        "requestBody": {"content": {
            "application/yaml": {"schema": JobSpec.model_json_schema()},
            "multipart/form-data": {"schema": {"type": "object", "required": ["spec"],
                                               "properties": {
                "spec": {"type": "string", "format": "binary", "description": "the job spec"},
                "code": {"type": "string", "format": "binary",
                         "description": "the code, a tar.gz"},
                "source": {"type": "string", "description": "JSON: git_commit, git_dirty, "
                                                            "git_branch, git_remote"}}}}}}})
    async def submit(request: Request, who: User):
        """Queue a job: a YAML/JSON spec as the body, or multipart parts `spec` and `code`."""
        spec_text, code, source = await _read_submission(request, settings.max_code_bytes)
        # Parsing and reading the archive are CPU work: off the event loop, so one upload
        # never stalls everyone else's requests.
        try:
            spec = await run_in_threadpool(parse, spec_text)
        except SpecError as exc:
            raise ApiError(400, "invalid job spec", exc.problems)
        if code is not None:
            try:
                names = await run_in_threadpool(code_archive.member_names, code,
                                                10 * settings.max_code_bytes)
                code_archive.check_entrypoint(names, spec.entrypoint.kind,
                                              spec.entrypoint.target)
            except code_archive.ArchiveError as exc:
                raise ApiError(400, "invalid job", [str(exc)])
        elif spec.entrypoint.kind == "script":
            raise ApiError(400, "invalid job", ["entrypoint: a script: job needs its code: "
                                                "upload it (mlstack submit --code DIR)"])
        try:
            await run_in_threadpool(admin.check_submit, who.username, who.is_admin,
                                    spec.experiment, spec.register_model)
        except NotAllowed as exc:
            raise ApiError(403, str(exc))
        job = await run_in_threadpool(queue.submit, spec, who.username, code, source)
        return view(job)

    @app.get(f"{PREFIX}/jobs", response_model=JobList)
    def listing(who: User, all: bool = Query(False, description="admins: everyone's jobs")):
        jobs = queue.list(None if who.is_admin and all else who.username)
        return JobList(jobs=[view(j) for j in jobs])

    @app.get(f"{PREFIX}/jobs/{{job_id}}", response_model=JobView)
    def show(job_id: int, who: User):
        return view(visible(job_id, who))

    @app.get(f"{PREFIX}/jobs/{{job_id}}/logs", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def logs(job_id: int, who: User, offset: int = Query(0, ge=0)):
        """The job's output from `offset`; X-Next-Offset says where to continue, X-Job-State
        whether more may come."""
        job = visible(job_id, who)
        data = _read_log(_log_parts(job.id), offset)
        return Response(data, media_type="text/plain", headers={
            "X-Next-Offset": str(offset + len(data)), "X-Job-State": job.state})

    @app.post(f"{PREFIX}/jobs/{{job_id}}/cancel", response_model=JobView)
    def cancel(job_id: int, who: User):
        visible(job_id, who)
        return view(queue.cancel(job_id))

    # --- workers ---------------------------------------------------------------------------------

    @app.post(f"{PREFIX}/worker/claim", response_model=Claim,
              responses={204: {"description": "nothing to run"}})
    def claim(body: ClaimRequest, who: Worker):
        if body.api_version != API_VERSION:
            raise ApiError(409, f"this platform speaks jobs API version {API_VERSION}, the "
                                f"worker {body.api_version}: run the platform's trainer image, "
                                f"{settings.trainer_image}")
        if not queue.worker_seen(body.worker, who.username, body.gpus, body.api_version):
            raise ApiError(409, f"the worker name {body.worker} belongs to another worker "
                                "account: give this worker another TRAINER_WORKER_NAME")
        _sweep()
        job = queue.claim(body.worker, settings.lease_s, body.gpus)
        if job is None:
            return Response(status_code=204)
        queue.worker_busy(body.worker, job.id)
        return _start(job, body.worker, body.image)

    def _speaks_for(who: Caller, worker_name: str) -> None:
        """A worker account reports for its own worker processes, never another account's
        (a remote host must not renew, finish or download another host's job)."""
        owner = queue.worker_owner(worker_name)
        if owner is not None and owner != who.username:
            raise ApiError(403, f"worker {worker_name} is not {who.username}'s")

    @app.post(f"{PREFIX}/worker/jobs/{{job_id}}/heartbeat", response_model=Heartbeat)
    def heartbeat(job_id: int, body: WorkerReport, who: Worker):
        _speaks_for(who, body.worker)
        job = queue.heartbeat(job_id, body.worker, settings.lease_s)
        if job is None:
            raise ApiError(409, f"job {job_id} is no longer {body.worker}'s: stop it")
        queue.worker_busy(body.worker, job_id)
        return Heartbeat(cancel_requested=job.cancel_requested)

    @app.post(f"{PREFIX}/worker/jobs/{{job_id}}/log", response_model=LogReceived)
    async def receive_log(job_id: int, request: Request, who: Worker, worker: str,
                          attempt: int = Query(ge=1), offset: int = Query(ge=0)):
        """A remote worker's job output (it shares no volume with the platform): the bytes of
        its attempt's log from `offset`. Bytes sent again (a retry) are kept once; the answer
        says where the next part starts."""
        data = bytearray()
        async for part in request.stream():  # never more than a part in memory
            data += part
            if len(data) > LOG_CHUNK:
                raise ApiError(413, f"send the log in parts of at most {LOG_CHUNK} bytes")
        return await run_in_threadpool(_append_log, job_id, who, worker, attempt, offset, data)

    log_lock = threading.Lock()

    def _append_log(job_id: int, who: Caller, worker: str, attempt: int, offset: int,
                    data: bytearray) -> LogReceived:
        _speaks_for(who, worker)
        job = queue.get(job_id)
        if (job is None or job.worker != worker or job.state != JobState.RUNNING
                or job.attempts != attempt):
            raise ApiError(409, f"job {job_id} attempt {attempt} is no longer {worker}'s: stop it")
        path = settings.remote_logs_dir / f"{job_id}.{attempt}.log"
        with log_lock:
            size = path.stat().st_size if path.exists() else 0
            if offset > size:  # a part went missing: the worker sends again from `size`
                return LogReceived(size=size)
            data = data[size - offset:]
            if size + len(data) > REMOTE_LOG_MAX_BYTES:
                raise ApiError(413, f"the job's log is over {REMOTE_LOG_MAX_BYTES >> 20} MB: "
                                    "the rest is not kept")
            with open(path, "ab") as log:
                log.write(data)
        return LogReceived(size=size + len(data))

    def _log_parts(job_id: int) -> list[Path]:
        """A job's log: the file local workers write on the shared volume (every attempt that
        ran there), then the attempts that remote workers sent, in order."""
        local = settings.logs_dir / f"{job_id}.log"
        parts = settings.remote_logs_dir.glob(f"{job_id}.*.log")
        return ([local] if local.exists() else []) + sorted(
            parts, key=lambda path: int(path.name.split(".")[1]))

    @app.get(f"{PREFIX}/worker/jobs/{{job_id}}/code", response_class=Response)
    def code(job_id: int, worker: str, who: Worker):
        _speaks_for(who, worker)
        job = queue.get(job_id)
        if job is None or job.worker != worker or job.state != JobState.RUNNING:
            raise ApiError(404, f"job {job_id} is not running on {worker}")
        data = queue.code(job_id)
        if data is None:
            raise ApiError(404, f"job {job_id} has no uploaded code")
        return Response(data, media_type="application/gzip")

    @app.post(f"{PREFIX}/worker/jobs/{{job_id}}/finish", response_model=JobView)
    def finish(job_id: int, body: Finish, who: Worker):
        _speaks_for(who, body.worker)
        if not body.state.final:
            raise ApiError(400, f"a job finishes as one of {[s.value for s in FINAL]}")
        job = queue.finish(job_id, body.worker, body.state.value, body.error)
        if job is None:
            raise ApiError(409, f"job {job_id} is no longer {body.worker}'s")
        _wrap_up(job)
        return view(job)

    # --- the job's life in MLflow ----------------------------------------------------------------

    def _start(job: Job, worker_name: str, image: str) -> Claim:
        identity = f"{JOB_IDENTITY_PREFIX}{job.id}-{job.attempts}"
        queue.set_identity(job.id, worker_name, identity)  # found and deleted whatever happens
        spec = job.spec
        try:
            started = admin.start(identity, job.submitter, admin.is_admin(job.submitter),
                                  spec["experiment"], spec.get("register_model"), job.name,
                                  _run_tags(job, worker_name, image))
        except Exception as exc:  # noqa: BLE001 - rights, a deleted experiment, MLflow down
            reason = str(exc) if isinstance(exc, NotAllowed) else f"could not start: {exc}"
            failed = queue.finish(job.id, worker_name, JobState.FAILED.value, reason)
            if failed:
                _wrap_up(failed)  # deletes the identity if it was created
            raise ApiError(409, f"job {job.id} cannot run: {reason}")
        queue.set_started(job.id, worker_name, started.run_id, started.experiment_id)
        tb_dir = f"{started.experiment_id}/{tb_layout.run_folder(job.name, started.run_id)}"
        admin.set_tag(started.run_id, tb_layout.LINK_TAG,
                      tb_layout.link(settings.public_url, started.experiment_id, started.run_id))
        job = queue.get(job.id)
        return Claim(job=view(job), attempt=job.attempts,
                     identity=Identity(username=identity, password=started.password),
                     experiment_id=started.experiment_id, run_id=started.run_id,
                     tensorboard_dir=tb_dir, lease_seconds=settings.lease_s,
                     has_code=job.code_sha256 is not None)

    def _run_tags(job: Job, worker_name: str, image: str) -> dict[str, str]:
        source = job.source or {}
        tags = {
            "mlflow.user": job.submitter,  # the person, not the job's technical identity
            "mlflow.source.type": "JOB",
            "mlflow.source.name": f"mlstack job {job.id}: {job.spec['entrypoint']}",
            "mlstack.job_id": str(job.id), "mlstack.submitter": job.submitter,
            "mlstack.worker": worker_name, "mlstack.image": image,
            "mlstack.entrypoint": job.spec["entrypoint"],
        }
        if job.code_sha256:
            tags["mlstack.code_sha256"] = job.code_sha256
        for key, tag in (("git_commit", "mlflow.source.git.commit"),
                         ("git_branch", "mlflow.source.git.branch"),
                         ("git_remote", "mlflow.source.git.repoURL")):
            if source.get(key):
                tags[tag] = str(source[key])
        if "git_dirty" in source:
            tags["mlstack.git_dirty"] = str(bool(source["git_dirty"])).lower()
        return tags

    def _wrap_up(job: Job) -> None:
        """After an attempt ends: its log into the run, the run ended, the identity gone."""
        if job.mlflow_run_id:
            try:
                # A remote attempt's run gets that attempt's log; a local one, the local file.
                remote = settings.remote_logs_dir / f"{job.id}.{job.attempts}.log"
                admin.upload_log(job.mlflow_run_id, remote if remote.exists() else
                                 settings.logs_dir / f"{job.id}.log")
                if job.state != JobState.SUCCEEDED:
                    status = "KILLED" if job.state == JobState.CANCELLED else "FAILED"
                    admin.end_run(job.mlflow_run_id, status, job.error)
            except Exception as exc:  # noqa: BLE001 - the outcome is recorded; MLflow may be down
                print(f"[api] job {job.id}: could not wrap up run {job.mlflow_run_id}: {exc}",
                      flush=True)
        _delete_identities()

    def _delete_identities() -> None:
        for job_id, identity in queue.identities_to_delete():
            try:
                admin.delete_identity(identity)
                queue.clear_identity(job_id, identity)
            except Exception as exc:  # noqa: BLE001 - retried on the next sweep
                print(f"[api] could not delete job identity {identity}: {exc}", flush=True)

    sweep_lock = threading.Lock()

    def _sweep() -> None:
        """Jobs of workers that stopped heartbeating: requeued or failed (queue.py); their runs
        ended and their identities deleted."""
        if not sweep_lock.acquire(blocking=False):
            return
        try:
            for job in queue.reap_expired():
                # Requeued or failed, the dead worker's attempt is over: its run ends FAILED
                # (a retry gets a run of its own) and its identity goes.
                _wrap_up(job)
            _delete_identities()
        finally:
            sweep_lock.release()

    def _sweep_forever() -> None:
        while not stop.wait(SWEEP_EVERY_S):
            try:
                _sweep()
            except Exception as exc:  # noqa: BLE001 - the database may be restarting
                print(f"[api] sweep failed: {exc}", flush=True)

    app.state.sweep = _sweep  # for tests
    return app


def _read_log(parts: list[Path], offset: int) -> bytes:
    """At most LOG_CHUNK bytes from `offset` of the parts taken as one file."""
    data = b""
    for path in parts:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset < size and len(data) < LOG_CHUNK:
                    f.seek(offset)
                    data += f.read(min(size - offset, LOG_CHUNK - len(data)))
        except FileNotFoundError:
            continue
        offset = max(0, offset - size)
    return data


async def _read_submission(request: Request, max_code_bytes: int
                           ) -> tuple[str, bytes | None, dict | None]:
    """(spec text, code archive or None, git source or None) from either kind of body."""
    content_type = request.headers.get("content-type", "")
    multipart = content_type.startswith("multipart/form-data")
    limit = max_code_bytes + (1 << 20) if multipart else 1 << 20
    too_large = ApiError(413, f"the upload is over the limit of {max_code_bytes / 2**20:.0f} MB "
                              "(TRAINER_MAX_CODE_MB on the platform): leave data and checkpoints "
                              "out of the code folder" if multipart else "the spec is over 1 MB")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    # Counted as it arrives: a chunked body has no Content-Length to check first. Past the
    # limit the rest is read and dropped (up to twice the upload limit), so that nginx, still sending,
    # passes our 413 on rather than a 502 for a closed connection.
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received <= limit:
            body += chunk
        elif received > 2 * (max_code_bytes + (1 << 20)):
            break
    if received > limit:
        raise too_large
    request._body = bytes(body)  # what request.form() parses (Starlette caches the body here)
    if not multipart:
        return request._body.decode("utf-8", errors="replace"), None, None
    form = await request.form(max_files=2, max_fields=4)
    unknown = set(form.keys()) - {"spec", "code", "source"}
    if unknown:
        raise ApiError(400, "invalid job", [f"{k}: unknown part; the parts are spec, code, source"
                                            for k in sorted(unknown)])

    async def text_of(name: str) -> str | None:
        value = form.get(name)
        if value is None or isinstance(value, str):
            return value
        return (await value.read(1 << 20)).decode("utf-8", errors="replace")

    spec_text = await text_of("spec")
    if spec_text is None:
        raise ApiError(400, "invalid job", ["spec: missing; send the job spec as the part "
                                            "'spec' (curl -F spec=@job.yaml)"])
    code = None
    part = form.get("code")
    if part is not None:
        if isinstance(part, str):
            raise ApiError(400, "invalid job", ["code: send the archive as a file "
                                                "(curl -F code=@code.tar.gz)"])
        code = await part.read(max_code_bytes + 1)
        if len(code) > max_code_bytes:
            raise ApiError(413, f"the code is over the limit of {max_code_bytes / 2**20:.0f} MB "
                                "(TRAINER_MAX_CODE_MB on the platform)")
    source = None
    raw_source = await text_of("source")
    if raw_source:
        try:
            source = json.loads(raw_source)
        except ValueError:
            source = None
        if not isinstance(source, dict):
            raise ApiError(400, "invalid job", ["source: expected a JSON object"])
        source = {k: source[k] for k in ("git_commit", "git_dirty", "git_branch", "git_remote")
                  if k in source}
    return spec_text, code, source
