"""TensorBoard for runs trained anywhere: event files a run logs as MLflow artifacts under
`tensorboard/` are copied into the shared TensorBoard volume, in the same layout as a trainer
job's (`<experiment id>/<run name>-<run id>/`), so both kinds of runs look the same there.

MLflow's server records each upload under `tensorboard/` in a small queue table (see
`mlstack_platform.app`); the janitor copies what the queue names, from the bucket, and tags
the run with its TensorBoard link. Nothing scans every run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path, PurePosixPath

from psycopg2 import sql

QUEUE = "mlstack_tensorboard_sync"
PREFIX = "tensorboard"  # the artifact folder whose files TensorBoard shows
TAG = "mlstack.tensorboard_url"
# A run's artifact upload through the server's proxy: /<exp>/<run>/artifacts/tensorboard/...
UPLOAD_PATH = re.compile(
    r"/(?:ajax-)?api/2\.0/mlflow-artifacts/(?:artifacts|mpu/complete)/"
    r"(?P<experiment>[0-9]+)/(?P<run>[0-9a-f]{32})/artifacts/" + PREFIX + r"/.+")
ARTIFACT_ROOT = "mlflow-artifacts:/"


def ensure_queue(server, dbname: str, owner: str) -> None:
    """The queue table, owned by MLflow's role (its server writes it). Idempotent."""
    conn = server.connect(dbname)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (run_uuid varchar(32) PRIMARY KEY, "
                                "requested_at bigint NOT NULL)").format(sql.Identifier(QUEUE)))
            cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(QUEUE), sql.Identifier(owner)))
    finally:
        conn.close()


# The statement the MLflow server runs after an upload (SQLAlchemy text; PostgreSQL and SQLite).
# Only for a run of the experiment the upload's path names: MLflow checks the uploader's rights
# on that experiment alone, so a path pairing one's own experiment with another's run id must
# not touch that run.
REQUEST_SYNC = (f"INSERT INTO {QUEUE} (run_uuid, requested_at) SELECT :run, :at WHERE EXISTS "
                "(SELECT 1 FROM runs WHERE run_uuid = :run AND experiment_id = :experiment) "
                "ON CONFLICT (run_uuid) DO UPDATE SET requested_at = excluded.requested_at")


def run_folder_name(run_name: str | None, run_id: str) -> str:
    """`<sanitised run name>-<run id>`, as the trainer names its jobs' folders
    (trainer/mlstack_trainer/tb_layout.py: the two images share no code)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_name or "")[:100]
    return f"{safe or 'run'}-{run_id}"


def find_run_folder(tb_root: Path, experiment_id: str, run_id: str) -> Path | None:
    parent = tb_root / experiment_id
    try:
        return next((e for e in parent.iterdir() if e.is_dir() and e.name.endswith(f"-{run_id}")),
                    None)
    except FileNotFoundError:
        return None


def relative_target(key: str, prefix: str) -> PurePosixPath | None:
    """The path of an object below the run's `tensorboard/` folder, or None when its key could
    leave it (`..`, empty or absolute parts) or is not below it."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return PurePosixPath(*parts)


def _pending(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT q.run_uuid, q.requested_at, r.experiment_id::text, r.name, "
                    f"r.lifecycle_stage, r.artifact_uri FROM {QUEUE} q "
                    f"LEFT JOIN runs r ON r.run_uuid = q.run_uuid ORDER BY q.requested_at")
        return cur.fetchall()


def _done(conn, run_id: str, requested_at: int) -> None:
    """Unqueue, unless an upload came in since it was read (then it is copied next pass)."""
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {QUEUE} WHERE run_uuid = %s AND requested_at = %s",
                    (run_id, requested_at))
    conn.commit()


def make_dir(path: Path, mode: int = 0o750) -> None:
    """A folder of ours (group mlstack, which TensorBoard reads through). An existing one keeps
    its owner and mode: the trainer sets those of its own."""
    if not path.exists():
        path.mkdir()
        os.chmod(path, mode)


# An experiment's folder: jobs pass through it to their own run folder, and the trainer (in
# group mlstack) adds its runs' folders to one the janitor created.
EXPERIMENT_DIR_MODE = 0o771


def copy_run(s3, bucket: str, tb_root: Path, experiment_id: str, run_id: str,
             run_name: str | None, artifact_uri: str) -> int:
    """Copy the run's event files that are new or have grown. Returns how many were copied."""
    if not artifact_uri.startswith(ARTIFACT_ROOT):
        raise ValueError(f"artifacts at {artifact_uri!r}, not in the platform's bucket")
    prefix = artifact_uri[len(ARTIFACT_ROOT):].strip("/") + f"/{PREFIX}/"
    folder = find_run_folder(tb_root, experiment_id, run_id)
    if folder is not None and not os.access(folder, os.W_OK):
        raise ValueError("its TensorBoard folder is a trainer job's, written by the worker")
    if folder is None:
        make_dir(tb_root / experiment_id, EXPERIMENT_DIR_MODE)
        folder = tb_root / experiment_id / run_folder_name(run_name, run_id)
        make_dir(folder)
    copied = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = relative_target(obj["Key"], prefix)
            if relative is None:
                continue
            target = folder.joinpath(*relative.parts)
            try:
                if target.is_file() and target.stat().st_size == obj["Size"]:
                    continue
                for parent in reversed(target.relative_to(folder).parents[:-1]):
                    make_dir(folder / parent)
            except OSError as exc:  # a file where a folder must go, a name too long: skip it
                print(f"[janitor] {obj['Key']}: not copied for TensorBoard: {exc}", flush=True)
                continue
            partial = target.with_name(f".{target.name[:200]}.partial")
            try:
                s3.download_file(bucket, obj["Key"], str(partial))
                os.chmod(partial, 0o640)
                os.replace(partial, target)  # TensorBoard never reads half a file
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
                print(f"[janitor] {obj['Key']}: not copied for TensorBoard: {exc}", flush=True)
                continue
            finally:
                partial.unlink(missing_ok=True)
            copied += 1
    return copied


def sync_pass(conn, s3, bucket: str, tb_root: Path, tracking_store, public_url: str) -> list[str]:
    """One pass over the queue; returns the runs copied. A deleted or vanished run is
    unqueued (its files are not copied; gc removes what was)."""
    from mlflow.entities import RunTag

    synced = []
    for run_id, requested_at, experiment_id, name, stage, artifact_uri in _pending(conn):
        if stage == "active":
            try:
                copied = copy_run(s3, bucket, tb_root, experiment_id, run_id, name, artifact_uri)
            except ValueError as exc:  # will not change by trying again
                print(f"[janitor] run {run_id}: TensorBoard files not copied: {exc}", flush=True)
            except Exception as exc:  # noqa: BLE001 - S3 down, a full disk: the next pass retries
                print(f"[janitor] run {run_id}: copying TensorBoard files failed, will retry: "
                      f"{exc}", flush=True)
                continue
            else:
                run = tracking_store.get_run(run_id)
                if TAG not in run.data.tags:
                    tracking_store.set_tag(run_id, RunTag(TAG, link(public_url, experiment_id,
                                                                    run_id)))
                if copied:
                    synced.append(run_id)
        _done(conn, run_id, requested_at)
    return synced


def link(public_url: str, experiment_id: str, run_id: str) -> str:
    """The run's TensorBoard: its experiment's, filtered to the run (TensorBoard 2.21 reads
    the filter from the query, not from the fragment)."""
    return f"{public_url}/tensorboard/{experiment_id}/?runFilter={run_id}#timeseries"


def now_ms() -> int:
    return int(time.time() * 1000)
