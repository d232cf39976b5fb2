"""The job queue, in PostgreSQL (the `trainer` database): no broker beside the one database
the platform already runs and backs up.

Workers claim with `FOR UPDATE SKIP LOCKED`, so any number of them can poll at once and each
job is handed to exactly one. A claim is a lease: the worker renews it with heartbeats, and a
job whose lease ran out (its worker was killed) is requeued while it has retries left, else
failed. This class is the whole interface a worker needs (claim, heartbeat, finish), so that
a remote worker can later reach it through the jobs API instead of the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import psycopg2
import psycopg2.extras

from .spec import JobSpec

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")

SCHEMA = """
-- Several workers and the API migrate at start: one at a time.
SELECT pg_advisory_xact_lock(424242);
CREATE TABLE IF NOT EXISTS jobs (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL,
    spec             jsonb NOT NULL,
    submitter        text NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
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
"""


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

    def migrate(self) -> None:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(SCHEMA)
        finally:
            conn.close()

    def submit(self, spec: JobSpec, submitter: str) -> Job:
        return self._run(
            "INSERT INTO jobs (name, spec, submitter, max_retries) VALUES (%s, %s, %s, %s) "
            "RETURNING *",
            (spec.name, psycopg2.extras.Json(spec.to_dict()), submitter, spec.retries))[0]

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

    def claim(self, worker: str, lease_s: int) -> Job | None:
        """Hand the oldest queued job to `worker`, or None. Never the same job to two workers."""
        rows = self._run(
            """UPDATE jobs SET state = 'running', worker = %s, attempts = attempts + 1,
                      started_at = now(), error = NULL,
                      lease_expires_at = now() + make_interval(secs => %s)
               WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id
                           FOR UPDATE SKIP LOCKED LIMIT 1)
               RETURNING *""", (worker, lease_s))
        return rows[0] if rows else None

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

    def finish(self, job_id: int, worker: str, state: str, error: str | None = None) -> bool:
        """Record the outcome; False when the job was no longer this worker's to finish."""
        if state not in FINAL:
            raise ValueError(f"a job finishes as one of {FINAL}, not {state!r}")
        rows = self._run(
            """UPDATE jobs SET state = %s, error = %s, finished_at = now(),
                      lease_expires_at = NULL
               WHERE id = %s AND worker = %s AND state = 'running' RETURNING *""",
            (state, error, job_id, worker))
        return bool(rows)

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
        """Jobs whose worker stopped heartbeating: requeued while retries remain (and no cancel
        was asked for), otherwise failed. Returns them as they are now."""
        return self._run(
            """UPDATE jobs SET
                   state = CASE WHEN attempts <= max_retries AND NOT cancel_requested
                                THEN 'queued' ELSE 'failed' END,
                   error = 'worker ' || coalesce(worker, '?') || ' stopped heartbeating '
                           || '(attempt ' || attempts || ')',
                   finished_at = CASE WHEN attempts <= max_retries AND NOT cancel_requested
                                      THEN NULL ELSE now() END,
                   worker = NULL, lease_expires_at = NULL
               WHERE state = 'running' AND lease_expires_at < now()
               RETURNING *""")
