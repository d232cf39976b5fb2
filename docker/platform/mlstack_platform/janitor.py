"""Housekeeping the platform runs by itself (the `janitor` service).

TensorBoard for runs trained elsewhere: every few seconds, the event files runs logged as
artifacts under `tensorboard/` are copied into the TensorBoard volume (tensorboard_sync.py).

Stale runs: a client that dies (a laptop closed, a notebook kernel killed) leaves its run
RUNNING forever, which makes every dashboard lie. A run is stale when it is RUNNING and
nothing has been logged to it (no metric, and not its start) for longer than the setting.
It is then marked FAILED through MLflow's own store, with a tag saying why. Trainer jobs are
left alone: the trainer's own leases end those (see trainer/mlstack_trainer/worker.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import settings, tensorboard_sync

HEARTBEAT = Path(os.environ.get("MLSTACK_JANITOR_HEARTBEAT", "/tmp/mlstack/janitor.heartbeat"))
STALE_TAG = "mlstack.failure"
TRAINER_TAG = "mlstack.job_id"

# The last sign of life: the run's start or its newest metric point (latest_metrics holds
# the newest point of each metric, so this stays cheap on runs with millions of points).
_STALE_RUNS = """
SELECT r.run_uuid, r.start_time, COALESCE(MAX(m.timestamp), 0) AS last_metric
FROM runs r
LEFT JOIN latest_metrics m ON m.run_uuid = r.run_uuid
WHERE r.status = 'RUNNING' AND r.lifecycle_stage = 'active'
  AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = %(trainer)s)
GROUP BY r.run_uuid, r.start_time
HAVING GREATEST(r.start_time, COALESCE(MAX(m.timestamp), 0)) < %(cutoff)s
"""


def find_stale_runs(connection, stale_after_s: float, now_ms: int | None = None) -> list[str]:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    with connection.cursor() as cur:
        cur.execute(_STALE_RUNS, {"trainer": TRAINER_TAG,
                                  "cutoff": now_ms - int(stale_after_s * 1000)})
        return [row[0] for row in cur.fetchall()]


def fail_stale_runs(tracking_store, connection, stale_after_s: float) -> list[str]:
    """Mark every stale run FAILED with a tag saying why; return their ids."""
    from mlflow.entities import RunStatus, RunTag

    failed = []
    for run_id in find_stale_runs(connection, stale_after_s):
        run = tracking_store.get_run(run_id)
        if run.info.status != "RUNNING":  # finished meanwhile
            continue
        reason = (f"marked FAILED by mlstack's janitor: RUNNING with nothing logged for more "
                  f"than {stale_after_s / 60:g} minutes (the client most likely died)")
        tracking_store.set_tag(run_id, RunTag(STALE_TAG, reason))
        tracking_store.update_run_info(run_id, RunStatus.FAILED, int(time.time() * 1000),
                                       run.info.run_name)
        failed.append(run_id)
    return failed


def _interval_s() -> int:
    return settings.integer("MLSTACK_JANITOR_INTERVAL_SECONDS", 300, maximum=86400)


def run_service(config) -> None:
    """The janitor service: a stale-run pass every MLSTACK_JANITOR_INTERVAL_SECONDS, touching
    HEARTBEAT after each good one (its healthcheck reads it), and a TensorBoard copy pass every
    MLSTACK_TB_SYNC_SECONDS."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    stale_after_s = 60 * settings.integer("MLSTACK_STALE_RUN_MINUTES", 1440, maximum=525600)
    interval_s = _interval_s()
    sync_s = settings.integer("MLSTACK_TB_SYNC_SECONDS", 10, minimum=1, maximum=3600)
    tb_root = Path(settings.text("MLSTACK_TB_ROOT", "/var/lib/mlstack/tb-logs"))
    print(f"[janitor] failing runs idle for {stale_after_s / 60:g} min, every {interval_s} s; "
          f"copying TensorBoard artifacts every {sync_s} s", flush=True)
    HEARTBEAT.parent.mkdir(parents=True, exist_ok=True)
    store = s3 = None
    next_stale_pass = 0.0
    while True:
        # Each pass on its own: S3 being down must not stop stale runs being failed, nor the
        # other way round; a database restart must not kill the loop.
        try:
            # Built once (it checks the schema and opens a pool), on the first good pass.
            store = store or SqlAlchemyStore(config.db_uri(config.mlflow_db),
                                             "mlflow-artifacts:/")
            s3 = s3 or config.s3_client()
            with config.mlflow_db_connection() as conn:
                for run_id in tensorboard_sync.sync_pass(conn, s3, config.bucket, tb_root, store,
                                                         config.origins()[0]):
                    print(f"[janitor] run {run_id}: TensorBoard files copied", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"[janitor] TensorBoard copy pass failed, will retry: {exc}", flush=True)
        if time.monotonic() >= next_stale_pass:
            try:
                store = store or SqlAlchemyStore(config.db_uri(config.mlflow_db),
                                                 "mlflow-artifacts:/")
                with config.mlflow_db_connection() as conn:
                    for run_id in fail_stale_runs(store, conn, stale_after_s):
                        print(f"[janitor] run {run_id}: stale, marked FAILED", flush=True)
                next_stale_pass = time.monotonic() + interval_s
                HEARTBEAT.touch()
            except Exception as exc:  # noqa: BLE001
                print(f"[janitor] pass failed, will retry: {exc}", flush=True)
        time.sleep(min(sync_s, interval_s))


def healthy() -> bool:
    """The last good pass is recent: two intervals and a minute of slack."""
    try:
        return time.time() - HEARTBEAT.stat().st_mtime < 2 * _interval_s() + 60
    except FileNotFoundError:
        return False
