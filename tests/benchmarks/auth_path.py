"""Benchmark: what authentication costs a client on every call, through nginx.

Every request is checked twice with the caller's password: by nginx's auth subrequest to
MLflow's /users/current and by MLflow's basic-auth app on the proxied request. MLflow hashes
the password with PBKDF2 each time unless its credential cache is on
(MLFLOW_AUTH_CACHE_TTL_SECONDS, 60 by default here). This brings the real stack up once,
times sequential log_metric calls with the stock MLflow client with the cache on, then again
with it off (MLFLOW_AUTH_CACHE_TTL_SECONDS=0), and prints both and their ratio.

    .venv/bin/python -m tests.benchmarks.auth_path [CALLS]

Not a test: figures depend on the machine, which is printed with them.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

from tests.e2e.stack import Stack


def measure(stack: Stack, user: str, password: str, calls: int) -> list[float]:
    code = f"""
import time, json, mlflow
from mlflow import MlflowClient
client = MlflowClient()
exp = client.create_experiment("bench-" + str(time.time()))
run = client.create_run(exp).info.run_id
client.log_metric(run, "warmup", 0.0)
timings = []
for step in range({calls}):
    started = time.perf_counter()
    client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
    timings.append(time.perf_counter() - started)
print(json.dumps(timings))
"""
    out = subprocess.run([sys.executable, "-c", code], env=stack.client_env(user, password),
                         capture_output=True, text=True, check=True).stdout
    return __import__("json").loads(out.strip().splitlines()[-1])


def summary(name: str, timings: list[float]) -> str:
    ms = sorted(t * 1000 for t in timings)
    return (f"{name:<28} median {statistics.median(ms):7.1f} ms   p95 {ms[int(len(ms) * .95)]:7.1f} ms"
            f"   {len(ms) / sum(t for t in timings):6.1f} calls/s")


def main(calls: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    stack = Stack(project=f"mlstack-bench-{os.getpid()}")
    try:
        stack.up()
        user, password = stack.admin()
        cached = measure(stack, user, password, calls)
        print(summary("auth cache on (60 s)", cached))
        os.environ["MLFLOW_AUTH_CACHE_TTL_SECONDS"] = "0"
        stack.compose("up", "-d", "--wait", "--wait-timeout", "600")  # recreates mlflow
        uncached = measure(stack, user, password, calls)
        print(summary("auth cache off", uncached))
        print(f"ratio (off / on, median): "
              f"{statistics.median(uncached) / statistics.median(cached):.1f}x")
    finally:
        stack.down()


if __name__ == "__main__":
    started = time.monotonic()
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print(f"took {time.monotonic() - started:.0f} s")
