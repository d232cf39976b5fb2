"""What the operator scripts (scripts/backup, restore, status, gc) ask of the platform image,
run inside the mlflow container with `docker compose exec -T mlflow mlstack-platform ops ...`,
where the S3 and database credentials already are. Results go to stdout for the scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from . import bucket, bucket_archive, janitor, settings
from .config import PlatformConfig
from .databases import Server

HEARTBEAT = Path(os.environ.get("MLSTACK_JANITOR_HEARTBEAT", "/tmp/mlstack/janitor.heartbeat"))


def s3_client(config: PlatformConfig):
    return bucket.client(config.s3_endpoint, settings.secret("minio_root_user"),
                         settings.secret("minio_root_password"))


def mlflow_db(config: PlatformConfig):
    return Server(config.postgres_host, config.postgres_port, config.db_role,
                  settings.secret("mlflow_db_password")).connect(config.mlflow_db)


def bucket_export(config: PlatformConfig) -> None:
    count, size = bucket_archive.export(s3_client(config), config.bucket, sys.stdout.buffer)
    print(f"exported {count} objects, {size} bytes", file=sys.stderr)


def bucket_import(config: PlatformConfig, replace: bool) -> None:
    s3 = s3_client(config)
    if replace:
        print(f"removed {bucket_archive.empty(s3, config.bucket)} objects", file=sys.stderr)
    count, size = bucket_archive.import_(s3, config.bucket, sys.stdin.buffer)
    print(f"imported {count} objects, {size} bytes", file=sys.stderr)


def bucket_usage(config: PlatformConfig) -> None:
    count, size = bucket_archive.usage(s3_client(config), config.bucket)
    print(f"{count} {size}")


def admin_password_is_generated(config: PlatformConfig) -> bool:
    """True while the admin still logs in with the password init-secrets generated (or .env
    set): the operator has not changed it with scripts/users set-password."""
    from . import users

    store = users.open_store(config.db_uri(config.auth_db))
    return store.authenticate_user(settings.secret("admin_username"),
                                   settings.secret("admin_password"))


def deleted_runs(config: PlatformConfig, older_than_s: float) -> list[tuple[str, str, str]]:
    """(run id, experiment id, run name) of runs deleted more than `older_than_s` ago."""
    cutoff = int((time.time() - older_than_s) * 1000)
    with mlflow_db(config) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, experiment_id::text, name FROM runs "
                    "WHERE lifecycle_stage = 'deleted' AND deleted_time < %s "
                    "ORDER BY deleted_time", (cutoff,))
        return cur.fetchall()


def run_exists(config: PlatformConfig, run_id: str) -> bool:
    with mlflow_db(config) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (run_id,))
        return cur.fetchone() is not None


def gc(config: PlatformConfig, older_than_s: float, dry_run: bool) -> list[str]:
    """`mlflow gc` for runs deleted longer ago than `older_than_s`: their rows and, through
    the server's artifact proxy, their artifacts. Prints `RUN_ID<TAB>EXPERIMENT<TAB>NAME` for
    each run that is gone (or would go) so scripts/gc can remove their TensorBoard logs."""
    runs = deleted_runs(config, older_than_s)
    if runs and not dry_run:
        # Run artifacts are `mlflow-artifacts:/` URIs: mlflow gc deletes them through the
        # tracking server's proxy, so it needs the server's address and an admin login.
        env = {**os.environ, "MLFLOW_TRACKING_USERNAME": settings.secret("admin_username"),
               "MLFLOW_TRACKING_PASSWORD": settings.secret("admin_password")}
        subprocess.run(["mlflow", "gc", "--backend-store-uri", config.db_uri(config.mlflow_db),
                        "--tracking-uri", "http://mlflow:5000",
                        "--run-ids", ",".join(run_id for run_id, _, _ in runs)],
                       check=True, env=env, stdout=sys.stderr)
        runs = [r for r in runs if not run_exists(config, r[0])]
    for run_id, experiment_id, name in runs:
        print(f"{run_id}\t{experiment_id}\t{name}")
    return [r[0] for r in runs]


def reap_stale_runs(config: PlatformConfig, stale_after_s: float) -> list[str]:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(config.db_uri(config.mlflow_db), "mlflow-artifacts:/")
    with mlflow_db(config) as conn:
        return janitor.fail_stale_runs(store, conn, stale_after_s)


def janitor_loop(config: PlatformConfig) -> None:
    stale_after_s = 60 * settings.integer("MLSTACK_STALE_RUN_MINUTES", 1440, maximum=525600)
    interval_s = settings.integer("MLSTACK_JANITOR_INTERVAL_SECONDS", 300, maximum=86400)
    print(f"[janitor] failing runs idle for {stale_after_s / 60:g} min, every {interval_s} s",
          flush=True)
    HEARTBEAT.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            for run_id in reap_stale_runs(config, stale_after_s):
                print(f"[janitor] run {run_id}: stale, marked FAILED", flush=True)
            HEARTBEAT.touch()
        except Exception as exc:  # noqa: BLE001 - a database restart must not kill the loop
            print(f"[janitor] pass failed, will retry: {exc}", flush=True)
        time.sleep(interval_s)


def janitor_healthy(max_age_s: float) -> bool:
    try:
        return time.time() - HEARTBEAT.stat().st_mtime < max_age_s
    except FileNotFoundError:
        return False
