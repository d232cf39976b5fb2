"""The jobs API (FastAPI, in process) against a real PostgreSQL and a real MLflow server with
basic auth, as team members, the worker account and the job identities it mints see it.

MLflow runs once for the module (default permission NO_PERMISSIONS, as on the platform); each
test gets a fresh queue database and a fresh app whose service account is MLflow's admin.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile

import pytest
import requests
from fastapi.testclient import TestClient
from mlflow.server.auth.client import AuthServiceClient

from mlstack_platform import databases
from mlstack_trainer import worker_accounts
from mlstack_trainer.api import create_app
from mlstack_trainer.callers import Authenticator
from mlstack_trainer.mlflow_admin import MlflowAdmin
from mlstack_trainer.queue import JobQueue
from mlstack_trainer.settings import API_VERSION, ApiSettings, SettingError
from tests.mlflow_server import mlflow_server

ADMIN = ("admin", "admin-password-for-tests")
WORKER = ("mlstack-worker", "worker-password-for-tests")  # the account the app marks a worker
ALICE = ("alice", "alice-password-for-tests")
BOB = ("bob", "bob-password-for-tests")
ORIGIN = "https://mlstack.example"
JOBS = "/trainer/api/jobs"
CLAIM = "/trainer/api/worker/claim"
MAX_CODE_BYTES = 1 << 20

EXAMPLE = "experiment: {experiment}\nentrypoint: example:breast-cancer-mlp\n"
SCRIPT = "experiment: {experiment}\nentrypoint: script:train.py\nparams: {{scale: 2}}\n"


# --- MLflow, the queue and the app ------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-auth"), admin=ADMIN) as uri, \
            pytest.MonkeyPatch.context() as env:
        # The jobs API's MLflow clients (MlflowAdmin) read the service account from here.
        env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        auth = AuthServiceClient(uri)
        for username, password in (WORKER, ALICE, BOB):
            auth.create_user(username, password)
        yield uri


@pytest.fixture(scope="module")
def bobs(mlflow_uri) -> dict[str, str]:
    """bob's own experiment and registered model (bob gets MANAGE on what he creates)."""
    experiment_id = mlflow(mlflow_uri, BOB, "post", "experiments/create",
                           json={"name": "bob-private"}).json()["experiment_id"]
    mlflow(mlflow_uri, BOB, "post", "registered-models/create", json={"name": "bob-model"})
    return {"experiment": "bob-private", "experiment_id": experiment_id, "model": "bob-model"}


@pytest.fixture
def db(postgres, request) -> str:
    name = f"trainer_api_{request.node.name.lower()[:40]}"
    databases.ensure_database(postgres, name, "postgres")
    return name


@pytest.fixture
def settings(mlflow_uri, tmp_path) -> ApiSettings:
    (tmp_path / "logs").mkdir()
    return ApiSettings(mlflow_uri=mlflow_uri, db_host="unused", db_port=0,
                       logs_dir=tmp_path / "logs", remote_logs_dir=tmp_path / "remote-logs",
                       public_url=ORIGIN, origins=(ORIGIN,),
                       lease_s=60, max_code_bytes=MAX_CODE_BYTES, identity_cache_s=0,
                       secrets_dir=tmp_path / "no-secrets")


@pytest.fixture
def api(postgres, db, settings, mlflow_uri):
    queue = JobQueue(lambda: postgres.connect(db))
    app = create_app(settings=settings, queue=queue, admin=MlflowAdmin(mlflow_uri),
                     authenticate=Authenticator(mlflow_uri, ttl_s=0), sweep=False)
    with TestClient(app) as client:  # runs the lifespan: migrates, marks the worker account
        yield client
    # Job ids start at 1 in every test's database: no identity may outlive its test.
    admin = MlflowAdmin(mlflow_uri)
    for job in queue.list():
        if job.identity:
            admin.delete_identity(job.identity)


def sql(postgres, db: str, statement: str, args: tuple = ()) -> None:
    conn = postgres.connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, args)
    finally:
        conn.close()


# --- what users and workers do ------------------------------------------------------------------

def mlflow(uri: str, user: tuple[str, str], method: str, path: str, **kwargs) -> requests.Response:
    """MLflow's REST API with a user's own credentials."""
    return requests.request(method, f"{uri}/api/2.0/mlflow/{path}", auth=user, timeout=30,
                            **kwargs)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


CODE = tar_gz({"train.py": b"print('training')\n", "requirements.txt": b""})


def submit(api: TestClient, user, spec: str, code: bytes | None = None):
    """POST a spec (YAML body), or spec and code (multipart) when there is code."""
    if code is None:
        return api.post(JOBS, content=spec, auth=user,
                        headers={"Content-Type": "application/yaml"})
    return api.post(JOBS, auth=user, files={"spec": ("job.yaml", spec),
                                            "code": ("code.tar.gz", code, "application/gzip")})


def queued(api: TestClient, user, spec: str, code: bytes | None = None) -> dict:
    r = submit(api, user, spec, code)
    assert r.status_code == 201, r.text
    return r.json()


def claim(api: TestClient, worker: str = "host-1", gpus: int = 0, user=WORKER,
          api_version: str = API_VERSION):
    return api.post(CLAIM, auth=user, json={"worker": worker, "gpus": gpus,
                                            "api_version": api_version, "image": "trainer:t"})


def run_of(uri: str, user, run_id: str) -> requests.Response:
    return mlflow(uri, user, "get", "runs/get", params={"run_id": run_id})


# --- who is calling -------------------------------------------------------------------------------

def test_no_or_wrong_credentials_get_401(api):
    for auth in (None, ("alice", "not-her-password"), ("nobody", "whatever-password")):
        r = api.get(JOBS, auth=auth)
        assert r.status_code == 401, auth
        assert "not logged in" in r.json()["error"]
    assert submit(api, None, EXAMPLE.format(experiment="e")).status_code == 401


def test_a_forged_user_header_changes_nothing(api):
    queued(api, BOB, EXAMPLE.format(experiment="bob-jobs"))
    forged = {"X-Mlstack-User": "bob", "X-Forwarded-User": "admin", "X-Remote-User": "admin"}
    assert api.get(JOBS, headers=forged).status_code == 401
    r = api.get(JOBS, params={"all": 1}, headers=forged, auth=ALICE)
    assert r.status_code == 200 and r.json()["jobs"] == []


# --- submitting ------------------------------------------------------------------------------------

def test_a_yaml_spec_is_queued(api):
    job = queued(api, ALICE, "name: first\nexperiment: alice-e\nentrypoint: example:digits-cnn\n"
                             "params: {epochs: 2}\n")
    assert (job["name"], job["state"], job["submitter"]) == ("first", "queued", "alice")
    assert job["spec"]["params"] == {"epochs": 2} and job["code_sha256"] is None
    assert api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()["state"] == "queued"


def test_a_spec_with_code_and_its_git_source_is_queued(api):
    source = {"git_commit": "0123abc", "git_dirty": True, "git_branch": "main",
              "password": "not kept"}
    r = api.post(JOBS, auth=ALICE, data={"source": json.dumps(source)},
                 files={"spec": ("job.yaml", SCRIPT.format(experiment="alice-code")),
                        "code": ("code.tar.gz", CODE, "application/gzip")})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["code_sha256"] == hashlib.sha256(CODE).hexdigest()
    assert job["code_bytes"] == len(CODE)
    assert job["source"] == {"git_commit": "0123abc", "git_dirty": True, "git_branch": "main"}


def test_an_invalid_spec_is_refused_with_every_problem(api):
    r = submit(api, ALICE, "entrypoint: example:nope\nresources: {gpus: -1}\n")
    assert r.status_code == 400
    problems = r.json()["problems"]
    assert any(p.startswith("experiment: missing") for p in problems), problems
    assert any("unknown example 'nope'" in p for p in problems), problems
    assert any(p.startswith("resources.gpus:") for p in problems), problems
    assert api.get(JOBS, auth=ALICE).json()["jobs"] == []


@pytest.mark.parametrize("code, message", [
    (b"this is not an archive", "not a gzip-compressed tar archive"),
    (tar_gz({"other.py": b""}), "script 'train.py' is not in the uploaded code"),
    (None, "a script: job needs its code"),
])
def test_code_that_cannot_run_the_entrypoint_is_refused(api, code, message):
    r = submit(api, ALICE, SCRIPT.format(experiment="alice-code"), code)
    assert r.status_code == 400, r.text
    assert any(message in p for p in r.json()["problems"]), r.json()


@pytest.mark.parametrize("size", [MAX_CODE_BYTES + 1000, 3 * MAX_CODE_BYTES])
def test_code_over_the_limit_is_refused(api, size):
    code = tar_gz({"train.py": b"", "weights.bin": os.urandom(size)})  # random: no compression
    r = submit(api, ALICE, SCRIPT.format(experiment="alice-code"), code)
    assert r.status_code == 413
    assert "TRAINER_MAX_CODE_MB" in r.json()["error"]
    assert api.get(JOBS, auth=ALICE).json()["jobs"] == []


def test_a_chunked_body_is_counted_as_it_arrives(api):
    # No Content-Length to check up front: the API stops reading past the limit.
    def chunks():
        yield SCRIPT.format(experiment="alice-chunked").encode()
        for _ in range(3):
            yield b"#" * (1 << 20) + b"\n"
    r = api.post(JOBS, content=chunks(), auth=ALICE, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 413 and "over 1 MB" in r.json()["error"]
    assert api.get(JOBS, auth=ALICE).json()["jobs"] == []


def test_a_gzip_bomb_is_refused_before_it_is_inflated(api):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("train.py"), io.BytesIO(b""))
        zeros = tarfile.TarInfo("zeros.bin")
        zeros.size = 64 << 20  # 64 MB of zeros, 64 KB compressed: over 10x the limit

        class Zeros(io.RawIOBase):
            left = zeros.size

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n
        tar.addfile(zeros, io.BufferedReader(Zeros(), 1 << 20))
    assert len(buffer.getvalue()) < MAX_CODE_BYTES
    r = submit(api, ALICE, SCRIPT.format(experiment="alice-bomb"), buffer.getvalue())
    assert r.status_code == 400 and "unpacks to more than" in r.json()["problems"][0]


def test_a_post_from_a_foreign_origin_creates_no_job(api):
    spec = EXAMPLE.format(experiment="alice-e")
    r = api.post(JOBS, content=spec, auth=ALICE,
                 headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert r.status_code == 403 and "https://evil.example" in r.json()["error"]
    assert api.get(JOBS, auth=ALICE).json()["jobs"] == []
    r = api.post(JOBS, content=spec, auth=ALICE,
                 headers={"Origin": ORIGIN, "Content-Type": "text/plain"})
    assert r.status_code == 201, r.text


def test_submitting_into_someone_elses_experiment_or_model_is_refused(api, bobs):
    r = submit(api, ALICE, EXAMPLE.format(experiment=bobs["experiment"]))
    assert r.status_code == 403
    assert "'bob-private'" in r.json()["error"] and "EDIT" in r.json()["error"]
    r = submit(api, ALICE, EXAMPLE.format(experiment="alice-e") + "register_model: bob-model\n")
    assert r.status_code == 403 and "'bob-model'" in r.json()["error"]
    assert api.get(JOBS, auth=ALICE).json()["jobs"] == []
    # Their owner may.
    queued(api, BOB, EXAMPLE.format(experiment=bobs["experiment"]) + "register_model: bob-model\n")


# --- following one's jobs --------------------------------------------------------------------

def test_users_see_their_own_jobs_and_an_admin_sees_all(api):
    mine = [queued(api, ALICE, EXAMPLE.format(experiment="alice-e"))["id"] for _ in range(2)]
    bobs_job = queued(api, BOB, EXAMPLE.format(experiment="bob-jobs"))["id"]

    def listed(user, **params) -> list[int]:
        r = api.get(JOBS, auth=user, params=params)
        assert r.status_code == 200, r.text
        return sorted(job["id"] for job in r.json()["jobs"])

    assert listed(ALICE) == listed(ALICE, all=1) == sorted(mine)
    assert listed(BOB) == [bobs_job]
    assert listed(ADMIN) == []  # the admin's own
    assert listed(ADMIN, all=1) == sorted([*mine, bobs_job])
    assert api.get(f"{JOBS}/{mine[0]}", auth=BOB).status_code == 404
    assert api.get(f"{JOBS}/{mine[0]}", auth=ADMIN).json()["submitter"] == "alice"


def test_a_queued_job_is_cancelled_by_its_submitter_only(api):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-e"))
    assert api.post(f"{JOBS}/{job['id']}/cancel", auth=BOB).status_code == 404
    assert api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()["state"] == "queued"
    r = api.post(f"{JOBS}/{job['id']}/cancel", auth=ALICE)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert claim(api).status_code == 204  # never run


def test_a_jobs_log_is_read_from_an_offset(api, settings):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-e"))
    logs = f"{JOBS}/{job['id']}/logs"
    r = api.get(logs, auth=ALICE)
    assert (r.status_code, r.content, r.headers["X-Next-Offset"]) == (200, b"", "0")
    (settings.logs_dir / f"{job['id']}.log").write_bytes(b"epoch 1\nepoch 2\n")
    r = api.get(logs, auth=ALICE)
    assert r.content == b"epoch 1\nepoch 2\n" and r.headers["X-Next-Offset"] == "16"
    assert r.headers["X-Job-State"] == "queued"
    r = api.get(logs, auth=ALICE, params={"offset": 8})
    assert r.content == b"epoch 2\n" and r.headers["X-Next-Offset"] == "16"
    r = api.get(logs, auth=ALICE, params={"offset": 16})
    assert r.content == b"" and r.headers["X-Next-Offset"] == "16"
    assert api.get(logs, auth=BOB).status_code == 404


# --- workers ---------------------------------------------------------------------------------

def test_only_worker_accounts_claim_jobs(api):
    queued(api, ALICE, EXAMPLE.format(experiment="alice-e"))
    for user in (ALICE, ADMIN):
        r = claim(api, user=user)
        assert r.status_code == 403 and "is not a worker" in r.json()["error"]
    assert claim(api).status_code == 200


def test_a_worker_of_another_release_is_told_so(api):
    queued(api, ALICE, EXAMPLE.format(experiment="alice-e"))
    r = claim(api, api_version="0")
    assert r.status_code == 409
    assert f"version {API_VERSION}" in r.json()["error"] and "the worker 0" in r.json()["error"]
    assert "run the platform's trainer image, mlstack/trainer" in r.json()["error"]
    assert api.get(JOBS, auth=ALICE).json()["jobs"][0]["state"] == "queued"


def test_a_gpu_job_waits_for_a_worker_with_gpus(api):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-e") + "resources: {gpus: 1}\n")
    assert claim(api, gpus=0).status_code == 204
    waiting = api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()
    assert waiting["state"] == "queued"
    assert "no worker offers 1 GPU(s)" in waiting["waiting_for"]
    r = claim(api, worker="gpu-host", gpus=1)
    assert r.status_code == 200 and r.json()["job"]["id"] == job["id"]


@pytest.fixture
def claimed(api):
    """alice's job, with code and its git source, claimed by worker host-1."""
    r = api.post(JOBS, auth=ALICE, data={"source": json.dumps({"git_commit": "0123abc"})},
                 files={"spec": ("job.yaml", SCRIPT.format(experiment="alice-claimed")),
                        "code": ("code.tar.gz", CODE, "application/gzip")})
    assert r.status_code == 201, r.text
    r = claim(api)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_claim_brings_the_jobs_run_and_its_own_identity(api, mlflow_uri, claimed):
    job = claimed["job"]
    assert job["state"] == "running" and job["worker"] == "host-1" and claimed["attempt"] == 1
    assert claimed["has_code"] and claimed["run_id"] == job["mlflow_run_id"]
    assert claimed["identity"]["username"] == f"mlstack-job-{job['id']}-1"
    assert claimed["tensorboard_dir"] == f"{claimed['experiment_id']}/train-{claimed['run_id']}"
    # alice finds the run in her new experiment, marked as hers and linked from the job.
    r = run_of(mlflow_uri, ALICE, claimed["run_id"])
    assert r.status_code == 200, r.text
    run = r.json()["run"]
    assert run["info"]["experiment_id"] == claimed["experiment_id"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.user"] == "alice" and tags["mlstack.worker"] == "host-1"
    assert tags["mlstack.code_sha256"] == job["code_sha256"]
    assert tags["mlflow.source.git.commit"] == "0123abc"
    assert job["links"]["mlflow"].startswith(
        f"{ORIGIN}/#/experiments/{claimed['experiment_id']}/runs/{claimed['run_id']}")
    assert claim(api, worker="host-2").status_code == 204  # handed out once


def test_the_job_identity_writes_its_run_and_reads_nothing_else(api, mlflow_uri, bobs, claimed):
    identity = (claimed["identity"]["username"], claimed["identity"]["password"])
    r = mlflow(mlflow_uri, identity, "post", "runs/log-metric", json={
        "run_id": claimed["run_id"], "key": "loss", "value": 0.5, "timestamp": 0, "step": 0})
    assert r.status_code == 200, r.text
    r = mlflow(mlflow_uri, identity, "get", "experiments/get",
               params={"experiment_id": bobs["experiment_id"]})
    assert r.status_code == 403
    assert api.get(JOBS, auth=identity).json()["jobs"] == []
    assert claim(api, user=identity).status_code == 403


def test_heartbeats_renew_the_lease_and_carry_a_cancel(api, claimed):
    beat = f"/trainer/api/worker/jobs/{claimed['job']['id']}/heartbeat"
    r = api.post(beat, auth=WORKER, json={"worker": "host-1"})
    assert r.status_code == 200 and r.json() == {"cancel_requested": False}
    assert api.post(beat, auth=WORKER, json={"worker": "host-2"}).status_code == 409
    cancelled = api.post(f"{JOBS}/{claimed['job']['id']}/cancel", auth=ALICE).json()
    assert cancelled["state"] == "running" and cancelled["cancel_requested"]
    assert api.post(beat, auth=WORKER, json={"worker": "host-1"}).json() == {
        "cancel_requested": True}


def test_the_worker_running_a_job_downloads_its_code(api, claimed):
    code = f"/trainer/api/worker/jobs/{claimed['job']['id']}/code"
    r = api.get(code, auth=WORKER, params={"worker": "host-1"})
    assert r.status_code == 200 and r.content == CODE
    assert api.get(code, auth=WORKER, params={"worker": "host-2"}).status_code == 404
    assert api.get(code, auth=ALICE, params={"worker": "host-1"}).status_code == 403


def test_a_finished_job_ends_its_run_and_its_identity(api, mlflow_uri, settings, claimed):
    job_id = claimed["job"]["id"]
    identity = (claimed["identity"]["username"], claimed["identity"]["password"])
    (settings.logs_dir / f"{job_id}.log").write_text("Traceback: it broke\n")
    finish = f"/trainer/api/worker/jobs/{job_id}/finish"
    r = api.post(finish, auth=WORKER, json={"worker": "host-1", "state": "running"})
    assert r.status_code == 400
    r = api.post(finish, auth=WORKER, json={"worker": "host-1", "state": "failed",
                                            "error": "the job process exited with code 1"})
    assert r.status_code == 200 and r.json()["state"] == "failed"
    assert r.json()["error"] == "the job process exited with code 1"

    run = run_of(mlflow_uri, ALICE, claimed["run_id"]).json()["run"]
    assert run["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlstack.failure"] == "the job process exited with code 1"
    artifacts = mlflow(mlflow_uri, ALICE, "get", "artifacts/list",
                       params={"run_id": claimed["run_id"], "path": "logs"}).json()
    assert [f["path"] for f in artifacts["files"]] == [f"logs/{job_id}.log"]
    assert run_of(mlflow_uri, identity, claimed["run_id"]).status_code == 401
    # Finished is final: the worker cannot finish it again.
    assert api.post(finish, auth=WORKER, json={"worker": "host-1", "state": "succeeded"}
                    ).status_code == 409


def reap(api: TestClient, postgres, db: str, job_id: int) -> dict:
    """The job's lease runs out (its worker died) and the API's sweep finds it."""
    sql(postgres, db, "UPDATE jobs SET lease_expires_at = now() - interval '1 second' "
                      "WHERE id = %s", (job_id,))
    api.app.state.sweep()
    return api.get(f"{JOBS}/{job_id}", auth=ALICE).json()


@pytest.mark.parametrize("retries, state", [
    (0, "failed"),
    (1, "queued"),  # the abandoned attempt's run ends FAILED too; the retry gets its own
])
def test_a_job_whose_worker_stopped_heartbeating_is_reaped(api, mlflow_uri, postgres, db,
                                                           retries, state):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-reaped") + f"retries: {retries}\n")
    first = claim(api).json()
    identity = (first["identity"]["username"], first["identity"]["password"])
    assert run_of(mlflow_uri, identity, first["run_id"]).status_code == 200

    reaped = reap(api, postgres, db, job["id"])
    assert reaped["state"] == state
    assert "host-1 stopped heartbeating (attempt 1)" in reaped["error"]
    assert run_of(mlflow_uri, identity, first["run_id"]).status_code == 401
    run = run_of(mlflow_uri, ALICE, first["run_id"]).json()["run"]
    assert run["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert "stopped heartbeating" in tags["mlstack.failure"]


def test_a_requeued_job_runs_again_with_a_new_run_and_identity(api, postgres, db):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-reaped") + "retries: 1\n")
    first = claim(api).json()
    assert reap(api, postgres, db, job["id"])["state"] == "queued"
    again = claim(api, worker="host-2").json()
    assert again["attempt"] == 2 and again["job"]["worker"] == "host-2"
    assert again["run_id"] != first["run_id"]
    assert again["identity"]["username"] == f"mlstack-job-{job['id']}-2"


def test_a_job_whose_submitter_lost_the_right_is_failed_at_claim(api, mlflow_uri, bobs):
    def share(action: str, **permission) -> None:  # bob, the experiment's owner, decides
        r = requests.post(f"{mlflow_uri}/api/3.0/mlflow/users/permissions/{action}", auth=BOB,
                          json={"username": "alice", "resource_type": "experiment",
                                "resource_id": bobs["experiment_id"], **permission}, timeout=30)
        assert r.status_code == 200, r.text

    share("grant", permission="EDIT")
    try:
        job = queued(api, ALICE, EXAMPLE.format(experiment=bobs["experiment"]))
    finally:
        share("revoke")
    r = claim(api)
    assert r.status_code == 409 and f"job {job['id']} cannot run" in r.json()["error"]
    failed = api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()
    assert failed["state"] == "failed" and "'bob-private'" in failed["error"]
    assert claim(api).status_code == 204


def test_a_job_into_a_deleted_experiment_fails_saying_so(api, mlflow_uri):
    experiment_id = mlflow(mlflow_uri, ALICE, "post", "experiments/create",
                           json={"name": "alice-deleted"}).json()["experiment_id"]
    mlflow(mlflow_uri, ALICE, "post", "experiments/delete", json={"experiment_id": experiment_id})
    r = submit(api, ALICE, EXAMPLE.format(experiment="alice-deleted"))
    assert r.status_code == 403
    error = r.json()["error"]
    assert "alice-deleted" in error and "deleted" in error


def test_the_openapi_document_lists_the_job_paths_and_the_spec_schema(api):
    r = api.get("/trainer/api/openapi.json")
    assert r.status_code == 200
    document = r.json()
    for path in (JOBS, f"{JOBS}/{{job_id}}", f"{JOBS}/{{job_id}}/logs",
                 f"{JOBS}/{{job_id}}/cancel", CLAIM):
        assert path in document["paths"], sorted(document["paths"])
    body = document["paths"][JOBS]["post"]["requestBody"]["content"]
    schema = body["application/yaml"]["schema"]
    assert {"experiment", "entrypoint"} <= set(schema["required"])
    assert {"params", "env", "resources", "register_model"} <= set(schema["properties"])
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"spec", "code", "source"}


def test_the_interactive_docs_load_nothing_from_other_sites(api):
    page = api.get("/trainer/api/docs")
    assert page.status_code == 200
    assert "https://" not in page.text  # no CDN: Swagger UI comes from the platform
    assert api.get("/trainer/api/docs-static/swagger-ui-bundle.js").status_code == 200


# --- workers on hosts of their own (scripts/workers) ---------------------------------------------

def new_worker(api: TestClient, admin: MlflowAdmin, name: str) -> tuple[str, str]:
    """scripts/workers create NAME: the credential from the lines it prints."""
    printed = worker_accounts.create(api.app.state.queue, admin, name)
    env = dict(line.split("=", 1) for line in printed.splitlines() if line.startswith("MLSTACK_"))
    return env["MLSTACK_WORKER_USERNAME"], env["MLSTACK_WORKER_PASSWORD"]


def test_a_created_worker_claims_and_once_revoked_is_refused_and_its_job_moves_on(
        api, mlflow_uri):
    queue, admin = api.app.state.queue, MlflowAdmin(mlflow_uri)
    box = new_worker(api, admin, "gpu-box-1")
    assert box[0] == "mlstack-worker-gpu-box-1" and len(box[1]) >= 32
    with pytest.raises(SettingError, match="exists already"):
        worker_accounts.create(queue, admin, "gpu-box-1")
    # No grants: the credential reads nothing in MLflow, and cannot submit as a person would.
    assert mlflow(mlflow_uri, box, "get", "experiments/get",
                  params={"experiment_id": "0"}).status_code == 403

    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-remote") + "retries: 1\n")
    held = claim(api, worker="gpu-box-1-a", user=box).json()
    identity = (held["identity"]["username"], held["identity"]["password"])
    assert run_of(mlflow_uri, identity, held["run_id"]).status_code == 200
    listed = worker_accounts.listing(queue)
    assert re.search(rf"gpu-box-1-a\s+mlstack-worker-gpu-box-1\s+0\s+{API_VERSION}\s+\d+ s ago\s+"
                     rf"{job['id']}", listed), listed

    # Another worker account cannot speak for this host's process, nor take its name.
    beat = f"/trainer/api/worker/jobs/{job['id']}/heartbeat"
    for path, body in ((beat, {"worker": "gpu-box-1-a"}),
                       (f"/trainer/api/worker/jobs/{job['id']}/finish",
                        {"worker": "gpu-box-1-a", "state": "failed"})):
        r = api.post(path, auth=WORKER, json=body)
        assert r.status_code == 403 and "is not mlstack-worker's" in r.json()["error"], r.text
    assert api.get(f"/trainer/api/worker/jobs/{job['id']}/code", auth=WORKER,
                   params={"worker": "gpu-box-1-a"}).status_code == 403
    r = claim(api, worker="gpu-box-1-a")
    assert r.status_code == 409 and "belongs to another worker account" in r.json()["error"]
    assert api.post(beat, auth=box, json={"worker": "gpu-box-1-a"}).status_code == 200

    assert f"It held job {job['id']}" in worker_accounts.revoke(queue, admin, "gpu-box-1")
    assert api.post(beat, auth=box, json={"worker": "gpu-box-1-a"}).status_code in (401, 403)
    assert claim(api, worker="gpu-box-1-a", user=box).status_code in (401, 403)
    assert run_of(mlflow_uri, identity, held["run_id"]).status_code == 401  # at once
    assert "(revoked)" in worker_accounts.listing(queue)
    api.app.state.sweep()  # the jobs API's next sweep: requeued per its retries
    assert api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()["state"] == "queued"
    assert claim(api).json()["job"]["id"] == job["id"]  # and another worker runs it


@pytest.mark.parametrize("name, error", [
    ("Gpu_Box", "use 1-40 lower-case letters"),
    ("never-created", "there is no worker never-created"),
])
def test_revoking_a_worker_that_is_not_one_says_why_and_deletes_no_one(api, mlflow_uri, name,
                                                                      error):
    with pytest.raises(SettingError, match=error):
        worker_accounts.revoke(api.app.state.queue, MlflowAdmin(mlflow_uri), name)
    assert claim(api).status_code == 204  # the local worker account still works


def test_a_remote_workers_log_is_kept_once_read_by_its_user_and_lands_in_the_run(
        api, mlflow_uri, claimed):
    job_id = claimed["job"]["id"]
    send = f"/trainer/api/worker/jobs/{job_id}/log"

    def part(offset: int, data: bytes, user=WORKER, worker="host-1", attempt=1):
        return api.post(send, auth=user, content=data,
                        params={"worker": worker, "attempt": attempt, "offset": offset})

    assert part(0, b"epoch 1\n").json() == {"size": 8}
    assert part(0, b"epoch 1\nepoch 2\n").json() == {"size": 16}  # a retry: kept once
    assert part(99, b"lost in between\n").json() == {"size": 16}  # a gap: send from 16
    r = api.get(f"{JOBS}/{job_id}/logs", auth=ALICE)
    assert r.content == b"epoch 1\nepoch 2\n" and r.headers["X-Next-Offset"] == "16"
    assert api.get(f"{JOBS}/{job_id}/logs", auth=ALICE, params={"offset": 8}).content == \
        b"epoch 2\n"
    assert api.get(f"{JOBS}/{job_id}/logs", auth=BOB).status_code == 404
    # Only the job's worker, for the attempt it runs, and only a worker at all.
    assert part(16, b"x", worker="host-2").status_code == 409
    assert part(16, b"x", attempt=2).status_code == 409
    assert part(16, b"x", user=ALICE).status_code == 403
    assert part(16, b"x" * (2 << 20)).status_code == 413  # in parts of at most 1 MB

    r = api.post(f"/trainer/api/worker/jobs/{job_id}/finish", auth=WORKER,
                 json={"worker": "host-1", "state": "succeeded"})
    assert r.status_code == 200, r.text
    assert part(16, b"after the end\n").status_code == 409
    artifacts = mlflow(mlflow_uri, ALICE, "get", "artifacts/list",
                       params={"run_id": claimed["run_id"], "path": "logs"}).json()
    assert [f["path"] for f in artifacts["files"]] == [f"logs/{job_id}.1.log"]


def test_a_worker_credential_is_no_team_member(api):
    for call in (lambda: api.get(JOBS, auth=WORKER),
                 lambda: submit(api, WORKER, EXAMPLE.format(experiment="worker-owned"))):
        r = call()
        assert r.status_code == 403 and "only claims jobs" in r.json()["error"], r.text


def test_a_claim_on_its_way_as_the_worker_is_revoked_is_reaped_at_the_next_sweep(
        api, mlflow_uri):
    queue, admin = api.app.state.queue, MlflowAdmin(mlflow_uri)
    box = new_worker(api, admin, "gpu-box-2")
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-race"))
    assert claim(api, worker="gpu-box-2-a", user=box).status_code == 200
    queue.revoke_worker_account(box[0])  # as the claim above was still on its way: no expiry
    api.app.state.sweep()
    reaped = api.get(f"{JOBS}/{job['id']}", auth=ALICE).json()
    assert reaped["state"] == "failed" and reaped["worker"] is None, reaped
    admin.delete_worker_account(box[0])


def test_a_job_run_locally_then_remotely_shows_both_logs_and_each_run_its_own(
        api, mlflow_uri, postgres, db, settings):
    job = queued(api, ALICE, EXAMPLE.format(experiment="alice-mixed") + "retries: 1\n")
    first = claim(api).json()
    (settings.logs_dir / f"{job['id']}.log").write_text("local attempt\n")
    assert reap(api, postgres, db, job["id"])["state"] == "queued"
    second = claim(api, worker="host-2").json()
    r = api.post(f"/trainer/api/worker/jobs/{job['id']}/log", auth=WORKER,
                 content=b"remote attempt\n",
                 params={"worker": "host-2", "attempt": 2, "offset": 0})
    assert r.status_code == 200, r.text
    assert api.get(f"{JOBS}/{job['id']}/logs", auth=ALICE).content == \
        b"local attempt\nremote attempt\n"
    api.post(f"/trainer/api/worker/jobs/{job['id']}/finish", auth=WORKER,
             json={"worker": "host-2", "state": "succeeded"})
    for claimed_run, name in ((first, f"{job['id']}.log"), (second, f"{job['id']}.2.log")):
        listed = mlflow(mlflow_uri, ALICE, "get", "artifacts/list",
                        params={"run_id": claimed_run["run_id"], "path": "logs"}).json()
        assert [f["path"] for f in listed["files"]] == [f"logs/{name}"]
