"""What the operator scripts (scripts/backup, restore, status, gc) ask of the platform image,
run inside the mlflow container with `docker compose exec -T mlflow mlstack-platform ops ...`,
where the S3 and database credentials already are. Results go to stdout for the scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from . import bucket_archive, settings
from .config import PlatformConfig


def bucket_export(config: PlatformConfig) -> None:
    count, size = bucket_archive.export(config.s3_root_client(), config.bucket, sys.stdout.buffer)
    print(f"exported {count} objects, {size} bytes", file=sys.stderr)


def bucket_import(config: PlatformConfig, replace: bool) -> None:
    s3 = config.s3_root_client()
    if replace:
        print(f"removed {bucket_archive.empty(s3, config.bucket)} objects", file=sys.stderr)
    count, size = bucket_archive.import_(s3, config.bucket, sys.stdin.buffer)
    print(f"imported {count} objects, {size} bytes", file=sys.stderr)


def bucket_usage(config: PlatformConfig) -> None:
    count, size = bucket_archive.usage(config.s3_root_client(), config.bucket)
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
    with config.mlflow_db_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, experiment_id::text, name FROM runs "
                    "WHERE lifecycle_stage = 'deleted' AND deleted_time < %s "
                    "ORDER BY deleted_time", (cutoff,))
        return cur.fetchall()


def existing_runs(config: PlatformConfig, run_ids: list[str]) -> set[str]:
    with config.mlflow_db_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid FROM runs WHERE run_uuid = ANY(%s)", (run_ids,))
        return {row[0] for row in cur.fetchall()}


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
        left = existing_runs(config, [r[0] for r in runs])
        runs = [r for r in runs if r[0] not in left]
    for run_id, experiment_id, name in runs:
        print(f"{run_id}\t{experiment_id}\t{name}")
    return [r[0] for r in runs]
