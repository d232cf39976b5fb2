"""The job queue, in PostgreSQL (the `trainer` database): no broker beside the one database
the platform already runs and backs up.

Workers claim with `FOR UPDATE SKIP LOCKED`, so any number of them can poll at once and each
job is handed to exactly one. A claim is a lease: the worker renews it with heartbeats, and a
job whose lease ran out (its worker was killed) is requeued while it has retries left, else
failed. Only the jobs API (trainer-api) opens this database: workers, local or remote, reach
the queue through the API's claim / heartbeat / finish, so a host that runs users' code holds
no database secret.

A job's uploaded code is stored here too (table job_code, removed with its job), so a retry
gets the same bytes and a backup of the database holds everything needed to run it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras

from .spec import JobSpec
from .states import FINAL, JobState

_STATES_SQL = ", ".join(f"'{s.value}'" for s in JobState)

SCHEMA = """
-- Each jobs API process migrates at start: one at a time.
SELECT pg_advisory_xact_lock(424242);
CREATE TABLE IF NOT EXISTS jobs (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL,
    spec             jsonb NOT NULL,
    submitter        text NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN (%(states)s)),
    attempts         integer NOT NULL DEFAULT 0,
    max_retries      integer NOT NULL DEFAULT 0,
    worker           text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    mlflow_run_id    text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_queued_idx ON jobs (id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
-- Since the jobs API took the queue over from the workers (release 0.2):
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS gpus integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS experiment_id text;
-- The MLflow user minted for the running attempt; deleted (and this cleared) when it ends.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS identity text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS code_sha256 text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS code_bytes bigint;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS source jsonb;
CREATE TABLE IF NOT EXISTS job_code (
    job_id  bigint PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    archive bytea NOT NULL
);
-- Worker credentials: MLflow users with no grants, allowed to claim jobs while not revoked.
CREATE TABLE IF NOT EXISTS worker_accounts (
    username   text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
-- Each worker process (several may share an account), as last seen by the API.
CREATE TABLE IF NOT EXISTS worker_instances (
    name      text PRIMARY KEY,
    username  text NOT NULL,
    gpus      integer NOT NULL DEFAULT 0,
    version   text,
    last_seen timestamptz NOT NULL DEFAULT now(),
    job_id    bigint
);
""".replace("%(states)s", _STATES_SQL)


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    spec: dict[str, Any]
    submitter: str
    state: str
    attempts: int
    max_retries: int
    worker: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    mlflow_run_id: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    gpus: int = 0
    experiment_id: str | None = None
    identity: str | None = None
    code_sha256: str | None = None
    code_bytes: int | None = None
    source: dict[str, Any] | None = None


class JobQueue:
    def __init__(self, connect: Callable[[], Any]):
        self._connect = connect

    def _run(self, sql: str, args: tuple = ()) -> list[Job]:
        conn = self._connect()
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, args)
                rows = cur.fetchall() if cur.description else []
            return [Job(**row) for row in rows]
        finally:
            conn.close()

    def _scalar(self, sql: str, args: tuple = ()) -> Any:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, args)
                row = cur.fetchone()
            return row[0] if row else None
        finally:
            conn.close()

    def migrate(self) -> None:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(SCHEMA)
        finally:
            conn.close()

    def submit(self, spec: JobSpec, submitter: str, code: bytes | None = None,
               source: dict[str, Any] | None = None) -> Job:
        """Queue a job, with its code archive in the same transaction (all or nothing)."""
        conn = self._connect()
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(
                    "INSERT INTO jobs (name, spec, submitter, max_retries, gpus, code_sha256, "
                    "code_bytes, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (spec.name, psycopg2.extras.Json(spec.to_dict()), submitter, spec.retries,
                     spec.gpus, hashlib.sha256(code).hexdigest() if code is not None else None,
                     len(code) if code is not None else None,
                     psycopg2.extras.Json(source) if source else None))
                job = Job(**cur.fetchone())
                if code is not None:
                    cur.execute("INSERT INTO job_code (job_id, archive) VALUES (%s, %s)",
                                (job.id, psycopg2.Binary(code)))
            return job
        finally:
            conn.close()

    def code(self, job_id: int) -> bytes | None:
        value = self._scalar("SELECT archive FROM job_code WHERE job_id = %s", (job_id,))
        return bytes(value) if value is not None else None

    def get(self, job_id: int) -> Job | None:
        rows = self._run("SELECT * FROM jobs WHERE id = %s", (job_id,))
        return rows[0] if rows else None

    def list(self, submitter: str | None = None, limit: int = 100) -> list[Job]:
        if submitter is None:
            return self._run("SELECT * FROM jobs ORDER BY id DESC LIMIT %s", (limit,))
        return self._run("SELECT * FROM jobs WHERE submitter = %s ORDER BY id DESC LIMIT %s",
                         (submitter, limit))

    def depth(self) -> int:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs WHERE state = 'queued'")
                return cur.fetchone()[0]
        finally:
            conn.close()

    # --- the worker's side -------------------------------------------------------------------

    def claim(self, worker: str, lease_s: int, gpus: int = 0) -> Job | None:
        """Hand the oldest queued job that needs at most `gpus` GPUs to `worker`, or None.
        Never the same job to two workers."""
        rows = self._run(
            """UPDATE jobs SET state = 'running', worker = %s, attempts = attempts + 1,
                      started_at = now(), error = NULL,
                      lease_expires_at = now() + make_interval(secs => %s)
               WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND gpus <= %s
                           ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
               RETURNING *""", (worker, lease_s, gpus))
        return rows[0] if rows else None

    def set_identity(self, job_id: int, worker: str, identity: str) -> None:
        """Record the job identity's name before it is created, so that whatever happens next
        it is found and deleted (see identities_to_delete)."""
        self._run("UPDATE jobs SET identity = %s WHERE id = %s AND worker = %s",
                  (identity, job_id, worker))

    def set_started(self, job_id: int, worker: str, run_id: str, experiment_id: str) -> None:
        self._run("UPDATE jobs SET mlflow_run_id = %s, experiment_id = %s "
                  "WHERE id = %s AND worker = %s", (run_id, experiment_id, job_id, worker))

    def identities_to_delete(self) -> list[tuple[int, str]]:
        """Job identities whose job no longer runs: (job id, MLflow user name)."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT id, identity FROM jobs "
                            "WHERE identity IS NOT NULL AND state <> 'running'")
                return list(cur.fetchall())
        finally:
            conn.close()

    def clear_identity(self, job_id: int, identity: str) -> None:
        self._run("UPDATE jobs SET identity = NULL WHERE id = %s AND identity = %s",
                  (job_id, identity))

    # --- workers -------------------------------------------------------------------------------

    def add_worker_account(self, username: str) -> None:
        """Mark an MLflow user as a worker (again, if it was revoked)."""
        self._run("INSERT INTO worker_accounts (username) VALUES (%s) ON CONFLICT (username) "
                  "DO UPDATE SET revoked_at = NULL", (username,))

    def revoke_worker_account(self, username: str) -> None:
        self._run("UPDATE worker_accounts SET revoked_at = now() WHERE username = %s",
                  (username,))

    def is_worker(self, username: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM worker_accounts WHERE username = %s "
                                 "AND revoked_at IS NULL", (username,)))

    def worker_account_exists(self, username: str) -> bool:
        """Marked as a worker once, revoked or not."""
        return bool(self._scalar("SELECT 1 FROM worker_accounts WHERE username = %s",
                                 (username,)))

    def expire_leases_of(self, username: str) -> list[Job]:
        """The running jobs of an account's workers, their leases ended now: the next sweep
        requeues or fails them (reap_expired). Returns them."""
        return self._run(
            """UPDATE jobs SET lease_expires_at = now() - interval '1 second'
               WHERE state = 'running' AND worker IN
                     (SELECT name FROM worker_instances WHERE username = %s)
               RETURNING *""", (username,))

    def worker_instances(self) -> list[dict[str, Any]]:
        """Each worker process as last seen, newest first, with its account's state."""
        conn = self._connect()
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("""SELECT i.name, i.username, i.gpus, i.version, i.job_id,
                                      extract(epoch FROM now() - i.last_seen)::int AS seen_s_ago,
                                      a.revoked_at IS NOT NULL AS revoked
                               FROM worker_instances i
                               LEFT JOIN worker_accounts a ON a.username = i.username
                               ORDER BY i.last_seen DESC""")
                return [dict(row) for row in cur.fetchall()]
        finally:
            conn.close()

    def worker_accounts_never_seen(self) -> list[str]:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("""SELECT username FROM worker_accounts a WHERE revoked_at IS NULL
                               AND NOT EXISTS (SELECT 1 FROM worker_instances i
                                               WHERE i.username = a.username)
                               ORDER BY username""")
                return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()

    def worker_seen(self, name: str, username: str, gpus: int, version: str) -> bool:
        """A worker process asked for work (its GPUs are what it offers). False when another
        worker account uses that name: a name is its first account's for good."""
        return self._scalar(
            """INSERT INTO worker_instances (name, username, gpus, version, job_id)
               VALUES (%s, %s, %s, %s, NULL)
               ON CONFLICT (name) DO UPDATE SET gpus = EXCLUDED.gpus,
                   version = EXCLUDED.version, job_id = NULL, last_seen = now()
               WHERE worker_instances.username = EXCLUDED.username
               RETURNING name""", (name, username, gpus, version)) is not None

    def worker_owner(self, name: str) -> str | None:
        """The worker account that a worker process's name belongs to."""
        return self._scalar("SELECT username FROM worker_instances WHERE name = %s", (name,))

    def worker_busy(self, name: str, job_id: int) -> None:
        self._run("UPDATE worker_instances SET last_seen = now(), job_id = %s WHERE name = %s",
                  (job_id, name))

    def most_gpus_seen(self, within_s: int = 300) -> int | None:
        """The most GPUs any worker offered lately; None when no worker was seen."""
        return self._scalar("SELECT max(gpus) FROM worker_instances "
                            "WHERE last_seen > now() - make_interval(secs => %s)", (within_s,))

    def heartbeat(self, job_id: int, worker: str, lease_s: int) -> Job | None:
        """Renew the lease. None means the job is no longer this worker's (it was reaped);
        a returned job with cancel_requested means: stop it."""
        rows = self._run(
            """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %s)
               WHERE id = %s AND worker = %s AND state = 'running' RETURNING *""",
            (lease_s, job_id, worker))
        return rows[0] if rows else None

    def set_run_id(self, job_id: int, worker: str, run_id: str) -> None:
        self._run("UPDATE jobs SET mlflow_run_id = %s WHERE id = %s AND worker = %s",
                  (run_id, job_id, worker))

    def finish(self, job_id: int, worker: str, state: str, error: str | None = None) -> Job | None:
        """Record the outcome; None when the job was no longer this worker's to finish."""
        if state not in {s.value for s in FINAL}:
            raise ValueError(f"a job finishes as one of {[s.value for s in FINAL]}, not {state!r}")
        rows = self._run(
            """UPDATE jobs SET state = %s, error = %s, finished_at = now(),
                      lease_expires_at = NULL
               WHERE id = %s AND worker = %s AND state = 'running' RETURNING *""",
            (state, error, job_id, worker))
        return rows[0] if rows else None

    # --- the user's and the housekeeper's side --------------------------------------------------

    def cancel(self, job_id: int) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged for its worker to stop
        (the worker sees the flag on its next heartbeat). Final jobs are left as they are."""
        rows = self._run(
            """UPDATE jobs SET
                   state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                   finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
                   cancel_requested = CASE WHEN state IN ('queued', 'running') THEN true
                                           ELSE cancel_requested END
               WHERE id = %s RETURNING *""", (job_id,))
        return rows[0] if rows else None

    def reap_expired(self) -> list[Job]:
        """Jobs whose worker stopped heartbeating, or whose worker's credential was revoked
        (even by a claim or heartbeat that was on its way as it happened): requeued while
        retries remain (and no cancel was asked for), otherwise failed. Returns them as they
        are now."""
        return self._run(
            """UPDATE jobs SET
                   state = CASE WHEN attempts <= max_retries AND NOT cancel_requested
                                THEN 'queued' ELSE 'failed' END,
                   error = 'worker ' || coalesce(worker, '?') || ' stopped heartbeating '
                           || '(attempt ' || attempts || ')',
                   finished_at = CASE WHEN attempts <= max_retries AND NOT cancel_requested
                                      THEN NULL ELSE now() END,
                   worker = NULL, lease_expires_at = NULL
               WHERE state = 'running' AND (lease_expires_at < now() OR worker IN (
                   SELECT i.name FROM worker_instances i JOIN worker_accounts a
                   ON a.username = i.username WHERE a.revoked_at IS NOT NULL))
               RETURNING *""")
