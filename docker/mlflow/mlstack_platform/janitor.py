"""Housekeeping the platform runs by itself (the `janitor` service).

Stale runs: a client that dies (a laptop closed, a notebook kernel killed) leaves its run
RUNNING forever, which makes every dashboard lie. A run is stale when it is RUNNING and
nothing has been logged to it (no metric, and not its start) for longer than the setting.
It is then marked FAILED through MLflow's own store, with a tag saying why. Trainer jobs are
left alone: the trainer's own leases end those (see trainer/mlstack_trainer/worker.py).
"""

from __future__ import annotations

import time

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
