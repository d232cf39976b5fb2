"""Benchmark: TensorBoard per experiment. Memory of the tensorboard service with 1 and with 50
experiments opened (at most TENSORBOARD_MAX_RESIDENT TensorBoards stay resident), and how long
the first open of an experiment takes (no TensorBoard running for it yet) next to a second
request to the same one. Runs against a running stack as an admin; creates N experiments with
3 runs each, logged from here the way a laptop does (event files as artifacts under
tensorboard/), and waits for the janitor to copy them.

    export MLFLOW_TRACKING_URI=https://HOST MLFLOW_TRACKING_USERNAME=<admin> \\
           MLFLOW_TRACKING_PASSWORD=... MLFLOW_TRACKING_SERVER_CERT_PATH=mlstack-ca.pem
    .venv/bin/python -m tests.benchmarks.tensorboard_pool [COMPOSE_PROJECT] [EXPERIMENTS]
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import mlflow
import requests
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

RUNS, TAGS, STEPS = 3, 4, 200


def log_run(experiment: str, name: str) -> str:
    with tempfile.TemporaryDirectory() as logdir:
        writer = EventFileWriter(f"{logdir}/train")
        for step in range(STEPS):
            values = [summary_pb2.Summary.Value(tag=f"metric_{t}", simple_value=step * (t + 1.0))
                      for t in range(TAGS)]
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                             summary=summary_pb2.Summary(value=values)))
        writer.close()
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_artifacts(logdir, "tensorboard")
    return run.info.run_id


UNITS = {"B": 2**-20, "KiB": 2**-10, "kB": 2**-10, "MiB": 1, "MB": 1, "GiB": 2**10, "GB": 2**10}


def container_memory_mib(project: str) -> float:
    """What `docker stats` counts against the service's memory limit (cgroup v1 or v2)."""
    container = subprocess.run(["docker", "compose", "-p", project, "ps", "-q", "tensorboard"],
                               capture_output=True, text=True, check=True).stdout.strip()
    usage = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}",
                            container], capture_output=True, text=True, check=True).stdout
    amount = usage.split("/")[0].strip()
    unit = amount.lstrip("0123456789.")
    return float(amount[:-len(unit)]) * UNITS[unit]


def restart_tensorboard(project: str, s: requests.Session, base: str) -> None:
    subprocess.run(["docker", "compose", "-p", project, "restart", "tensorboard"],
                   capture_output=True, check=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if s.get(f"{base}/tensorboard/?format=json").ok and \
                    subprocess.run(["docker", "compose", "-p", project, "exec", "-T",
                                    "tensorboard", "mlstack-tensorboard", "health"],
                                   capture_output=True).returncode == 0:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit("the tensorboard service did not come back")


def open_experiment(s: requests.Session, base: str, experiment_id: str) -> float:
    """Seconds until the experiment's runs are listed and one scalar series is read."""
    started = time.perf_counter()
    runs = s.get(f"{base}/tensorboard/{experiment_id}/data/runs")
    runs.raise_for_status()
    assert len(runs.json()) == RUNS, runs.json()
    s.get(f"{base}/tensorboard/{experiment_id}/data/plugin/scalars/scalars",
          params={"run": runs.json()[0], "tag": "metric_0"}).raise_for_status()
    return time.perf_counter() - started


def main(project: str, count: int) -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a line per experiment created
    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    s = requests.Session()
    s.trust_env = False
    s.verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    s.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"{count} experiments x {RUNS} runs x {TAGS} scalar tags x {STEPS} steps")

    tag = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    ids = []
    for i in range(count):
        for r in range(RUNS):
            log_run(f"bench-tb-{tag}-{i}", f"run-{r}")
        ids.append(mlflow.get_experiment_by_name(f"bench-tb-{tag}-{i}").experiment_id)
    print(f"logged {count * RUNS} runs in {time.perf_counter() - started:.0f} s")
    deadline = time.monotonic() + 300
    while True:  # the janitor copies the event files every MLSTACK_TB_SYNC_SECONDS
        listed = s.get(f"{base}/tensorboard/", params={"format": "json"}).json()["experiments"]
        ready = {e["experiment_id"] for e in listed if e["runs"] == RUNS} & set(ids)
        if len(ready) == count or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"copied for TensorBoard after {time.perf_counter() - started:.0f} s "
          f"({len(ready)}/{count} experiments)")

    restart_tensorboard(project, s, base)
    print(f"router alone (no TensorBoard resident): {container_memory_mib(project):6.0f} MiB")
    first = open_experiment(s, base, ids[0])
    again = open_experiment(s, base, ids[0])
    print(f"1 experiment opened:                    {container_memory_mib(project):6.0f} MiB; "
          f"first open {first * 1000:.0f} ms, again {again * 1000:.0f} ms")
    firsts, peak = [first], 0.0
    for experiment_id in ids[1:]:
        firsts.append(open_experiment(s, base, experiment_id))
        peak = max(peak, container_memory_mib(project))
    firsts.sort()
    print(f"{count} experiments opened one after another: {container_memory_mib(project):6.0f} "
          f"MiB now, {peak:.0f} MiB at most (the least recently used stop beyond the cap)")
    print(f"first open of an experiment: p50 {statistics.median(firsts) * 1000:.0f} ms, "
          f"p95 {firsts[int(len(firsts) * .95) - 1] * 1000:.0f} ms, "
          f"max {firsts[-1] * 1000:.0f} ms")
    started = time.perf_counter()
    s.get(f"{base}/tensorboard/all/data/runs").raise_for_status()
    print(f"every experiment at once (/tensorboard/all/): {(time.perf_counter() - started) * 1000:.0f}"
          f" ms to list the runs; {container_memory_mib(project):.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mlstack",
         int(sys.argv[2]) if len(sys.argv) > 2 else 50)
