"""Benchmark: one request's latency through the front door (nginx, TLS, the auth subrequest)
to the jobs API, next to an MLflow request on the same connection. Several uvicorn workers on
one socket delay every kept-alive response by ~40 ms (Nagle; shared/DESIGN.md): the jobs API
runs one uvicorn process, and this shows whether the trap is avoided.

    export MLFLOW_TRACKING_URI=https://HOST MLFLOW_TRACKING_USERNAME=... \\
           MLFLOW_TRACKING_PASSWORD=... MLFLOW_TRACKING_SERVER_CERT_PATH=mlstack-ca.pem
    .venv/bin/python -m tests.benchmarks.jobs_api_latency [CALLS]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import requests

PATHS = ("/trainer/api/config", "/trainer/api/jobs",
         "/api/2.0/mlflow/experiments/search?max_results=1")


def main(calls: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"{calls} sequential calls per path on one kept-alive connection")
    s = requests.Session()
    s.trust_env = False
    s.verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    s.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    for path in PATHS:
        s.get(base + path).raise_for_status()  # warm: TLS session, caches
        ms = []
        for _ in range(calls):
            started = time.perf_counter()
            s.get(base + path).raise_for_status()
            ms.append((time.perf_counter() - started) * 1000)
        ms.sort()
        print(f"{path:<52} p50 {statistics.median(ms):6.1f} ms   p95 "
              f"{ms[int(len(ms) * .95) - 1]:6.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
