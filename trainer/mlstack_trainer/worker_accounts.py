"""`mlstack-trainer workers create NAME | revoke NAME | list`: the operator's worker credentials
(scripts/workers runs this in the trainer-api container, which holds the jobs database and the
MLflow admin account).

A worker credential is an MLflow user with no grants (it reads and writes nothing in MLflow),
marked as a worker in the jobs database: it may claim jobs through the jobs API and nothing
else. Each job it runs gets the job's own identity from the claim. Revoking one refuses its
next call to the jobs API at once ("not a worker"), deletes the MLflow user, and ends the leases
of the jobs its workers hold: their job identities are deleted here and now, and the jobs API's
next sweep (within 10 s) requeues or fails each job per its retries and ends its run.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys

from .mlflow_admin import MlflowAdmin
from .queue import JobQueue
from .settings import LOCAL_WORKER_ACCOUNT, ApiSettings, SettingError

ACCOUNT_PREFIX = f"{LOCAL_WORKER_ACCOUNT}-"  # mlstack-worker-NAME: never a person's name
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def account_of(name: str) -> str:
    if not NAME.fullmatch(name):
        raise SettingError(f"worker name {name!r}: use 1-40 lower-case letters, digits and "
                           "dashes, starting with a letter or digit (e.g. gpu-box-1)")
    return ACCOUNT_PREFIX + name


def create(queue: JobQueue, admin: MlflowAdmin, name: str) -> str:
    """A new worker credential; prints the lines for the worker host's .env (shown once)."""
    account = account_of(name)
    if admin.user_exists(account):
        raise SettingError(f"worker {name} exists already: `scripts/workers revoke {name}` "
                           "first to replace its credential")
    password = secrets.token_urlsafe(32)
    queue.add_worker_account(account)  # first: a half-made worker is found by revoke
    try:
        admin.auth.create_user(account, password)
    except Exception:
        queue.revoke_worker_account(account)
        raise
    return (f"worker {name}: created. Put these lines in the worker host's .env (the password "
            f"is shown this once):\nMLSTACK_WORKER_USERNAME={account}\n"
            f"MLSTACK_WORKER_PASSWORD={password}\n")


def revoke(queue: JobQueue, admin: MlflowAdmin, name: str) -> str:
    account = account_of(name)
    if not queue.worker_account_exists(account):
        raise SettingError(f"there is no worker {name}: `scripts/workers list` shows them")
    queue.revoke_worker_account(account)  # refused from the next call on
    held = queue.expire_leases_of(account)
    for job in held:
        if job.identity:
            admin.delete_identity(job.identity)
            queue.clear_identity(job.id, job.identity)
    admin.delete_worker_account(account)
    done = f"worker {name}: revoked ({account} deleted)."
    if not held:
        return f"{done} It held no job.\n"
    jobs = ", ".join(f"job {job.id}" for job in held)
    return (f"{done} It held {jobs}: deleted its identity; the jobs API requeues or fails it "
            "(per its retries) within 10 s.\n")


def listing(queue: JobQueue) -> str:
    rows = [("WORKER", "ACCOUNT", "GPUS", "API", "LAST SEEN", "JOB")]
    for w in queue.worker_instances():
        rows.append((w["name"], w["username"] + (" (revoked)" if w["revoked"] else ""),
                     str(w["gpus"]), w["version"] or "?", f"{w['seen_s_ago']} s ago",
                     str(w["job_id"] or "-")))
    idle = queue.worker_accounts_never_seen()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    if idle:
        lines.append("credentials not used yet: " + ", ".join(idle))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mlstack-trainer workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["create", "revoke", "list"])
    p.add_argument("name", nargs="?")
    args = p.parse_args(argv)
    if args.action != "list" and not args.name:
        p.error(f"{args.action} needs the worker's NAME, e.g. gpu-box-1")
    settings = ApiSettings.from_env()
    settings.use_service_account()
    queue, admin = JobQueue(settings.connect), MlflowAdmin(settings.mlflow_uri)
    try:
        if args.action == "create":
            sys.stdout.write(create(queue, admin, args.name))
        elif args.action == "revoke":
            sys.stdout.write(revoke(queue, admin, args.name))
        else:
            sys.stdout.write(listing(queue))
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
