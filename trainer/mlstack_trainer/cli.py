"""`mlstack`: submit and follow training jobs from your own machine.

Uses the same settings as the MLflow client: MLFLOW_TRACKING_URI (the platform's address),
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and, for a self-signed certificate,
MLFLOW_TRACKING_SERVER_CERT_PATH.

  mlstack submit job.yaml      queue a job; prints its id
  mlstack jobs [--all]         your jobs (an admin's --all: everyone's)
  mlstack show ID              one job, with its MLflow and TensorBoard links
  mlstack logs ID [-f]         its output; -f follows until the job ends
  mlstack cancel ID            cancel a queued or running job
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import requests

FINAL = ("succeeded", "failed", "cancelled")


class Api:
    def __init__(self) -> None:
        try:
            self.base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/trainer/api"
        except KeyError:
            raise SystemExit("error: set MLFLOW_TRACKING_URI to the platform's address "
                             "(e.g. https://mlflow.example.com)")
        self.session = requests.Session()
        self.session.auth = (os.environ.get("MLFLOW_TRACKING_USERNAME", ""),
                             os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        if os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        r = self.session.request(method, self.base + path, timeout=60, **kwargs)
        if r.status_code == 401:
            raise SystemExit("error: not logged in: check MLFLOW_TRACKING_USERNAME / _PASSWORD")
        if r.status_code == 400 and r.headers.get("Content-Type", "").startswith("application/json"):
            body = r.json()
            raise SystemExit("error: " + body.get("error", "bad request") + "".join(
                f"\n  - {p}" for p in body.get("problems", [])))
        if r.status_code == 404:
            raise SystemExit(f"error: {r.json().get('error', 'not found')}")
        r.raise_for_status()
        return r


def line(job: dict) -> str:
    return (f"{job['id']:>6}  {job['state']:<10} {job['name']:<24} {job['submitter']:<12} "
            f"{job.get('worker') or '-':<20} {job.get('mlflow_run_id') or '-'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlstack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("submit").add_argument("spec_file")
    sub.add_parser("jobs").add_argument("--all", action="store_true")
    for name in ("show", "cancel"):
        sub.add_parser(name).add_argument("id", type=int)
    logs = sub.add_parser("logs")
    logs.add_argument("id", type=int)
    logs.add_argument("-f", "--follow", action="store_true")
    args = p.parse_args(argv)
    api = Api()

    if args.command == "submit":
        with open(args.spec_file, encoding="utf-8") as f:
            job = api.call("POST", "/jobs", data=f.read().encode(),
                           headers={"Content-Type": "application/yaml"}).json()
        print(job["id"])
    elif args.command == "jobs":
        for job in api.call("GET", "/jobs", params={"all": "1"} if args.all else None).json()["jobs"]:
            print(line(job))
    elif args.command == "show":
        print(json.dumps(api.call("GET", f"/jobs/{args.id}").json(), indent=2))
    elif args.command == "cancel":
        print(api.call("POST", f"/jobs/{args.id}/cancel").json()["state"])
    elif args.command == "logs":
        offset = 0
        while True:
            r = api.call("GET", f"/jobs/{args.id}/logs", params={"offset": offset})
            sys.stdout.buffer.write(r.content)
            sys.stdout.flush()
            offset = int(r.headers["X-Next-Offset"])
            if not args.follow or (r.headers["X-Job-State"] in FINAL and not r.content):
                break
            if not r.content:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
