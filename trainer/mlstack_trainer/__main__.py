"""`mlstack-trainer ROLE`: the roles of the trainer image.

  worker   claim and run jobs through the jobs API (the `trainer` service; scale it with
           --scale trainer=N, or run it on a GPU host of its own)
  api      the jobs API under uvicorn (the `trainer-api` service)
  check    exit 0 when this container's worker polled within the last 60 s (healthcheck)
  workers create NAME | revoke NAME | list
           worker credentials for GPU hosts of their own (scripts/workers; in trainer-api)
  migrate-tensorboard
           move TensorBoard folders of an older release to the id layout (scripts/upgrade,
           scripts/restore; `RUN_ID<TAB>EXPERIMENT_ID` lines on standard input)
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlstack-trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["worker", "api", "check", "migrate-tensorboard", "workers"])
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.args and args.role != "workers":
        p.error(f"{args.role} takes no arguments")
    if args.role == "workers":
        from .worker_accounts import main as workers

        return workers(args.args)
    if args.role == "migrate-tensorboard":
        from . import tb_layout

        return tb_layout.main(sys.stdin)
    # Imports per role: the healthcheck runs every few seconds and must stay cheap.
    if args.role == "check":
        from .heartbeat import DEFAULT_HEARTBEAT_FILE, check

        return check(DEFAULT_HEARTBEAT_FILE, max_age_s=60)
    if args.role == "api":
        # One process: the API is I/O-bound (its handlers run in a thread pool), and several
        # uvicorn workers sharing a socket delay every kept-alive response by ~40 ms (Nagle,
        # see shared/DESIGN.md). No access log: nginx keeps one.
        os.execvp("uvicorn", ["uvicorn", "mlstack_trainer.api:create_app", "--factory",
                              "--host", "0.0.0.0", "--port", "8000", "--no-access-log",
                              "--no-server-header", "--timeout-graceful-shutdown", "20"])
    from .jobs_client import JobsClient
    from .settings import SettingError, WorkerSettings
    from .worker import Worker

    try:
        settings = WorkerSettings.from_env()
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[worker] {settings.name} polling {settings.platform_url} for jobs "
          f"({settings.gpus} GPU(s))", flush=True)
    Worker(settings, JobsClient(settings)).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
