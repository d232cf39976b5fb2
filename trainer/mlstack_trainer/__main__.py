"""`mlstack-trainer ROLE`: the roles of the trainer image.

  worker   claim and run jobs (the `trainer` service; scale it with --scale trainer=N)
  api      the jobs API under gunicorn (the `trainer-api` service)
  check    exit 0 when this container's worker polled within the last 60 s (healthcheck)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .worker import DEFAULT_HEARTBEAT_FILE, check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlstack-trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["worker", "api", "check"])
    args = p.parse_args(argv)
    if args.role == "check":
        return check(DEFAULT_HEARTBEAT_FILE, max_age_s=60)
    if args.role == "api":
        workers = os.environ.get("TRAINER_API_WORKERS", "2")
        os.execvp("gunicorn", ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", workers,
                               "--worker-class", "gthread", "--threads", "4",
                               "--access-logfile", "-", "mlstack_trainer.api:create_app()"])
    from mlflow import MlflowClient

    from .queue import JobQueue
    from .settings import TrainerSettings
    from .worker import Worker, WorkerConfig, default_name

    settings = TrainerSettings.from_env()
    settings.use_service_account()
    queue = JobQueue(settings.connect)
    queue.migrate()
    config = WorkerConfig(name=default_name(), tb_root=settings.tb_root,
                          logs_dir=settings.logs_dir, public_url=settings.public_url,
                          image=settings.image, lease_s=settings.lease_s)
    print(f"[worker] {config.name} polling for jobs", flush=True)
    Worker(queue, MlflowClient(), config).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
