"""Benchmark: what the front door costs, against stock MLflow side by side.

Brings up the real stack (nginx, TLS, the auth subrequest, MLflow's basic-auth app with the
platform's hooks) and, beside it, stock MLflow from the same platform image (`mlflow server`
with no auth, its own PostgreSQL, the same gunicorn workers and threads), then runs each
workload against both in alternating rounds, from this machine, as a team member's laptop
would: a plain (non-admin) user through https on the stack, plain http on stock MLflow.

Workloads (each round, each target):
  log-metric, 1 client       p50 latency of one metric point per request: one client whose
                             calls alternate between the two targets (a slow moment of the
                             shared machine falls on both alike), then one client per target
                             alone (each server warm, as a client sending steadily sees it)
  log-metric, 8 clients      points/s, each client logging to its own run
  log-batch, 4 clients       points/s, 1000 metrics per request
                             (both for 20 s per target and round, in turns of 1 s and 2.5 s
                             that alternate between the targets, ABBA, the clients of both
                             started first: the VM's speed drifts from second to second, and
                             a slow stretch then falls on both alike)
  runs/search, experiments/search   p50 with RUNS runs in the user's experiment
Then, on the stack only: an artifact of ARTIFACT_MB up and down with the stock client through
the proxy (one HTTP stream each way), against boto3 on the same S3 server from the backend
network ("raw", measured before and after each proxied transfer: their mean), both with its
transfer manager (parallel ranged parts) and in one stream, with
the memory of nginx and MLflow sampled during the transfer; and the idle memory of the stack.

    .venv/bin/python -m tests.benchmarks.versus_stock [--rounds N] [--runs N] [--artifact-mb N]
    .venv/bin/python -m tests.benchmarks.versus_stock --smoke     (CI: every path, tiny sizes)

Prints one line per measurement, then a table of ratios with the goals of the performance
issue. Not a test: the figures depend on the machine, printed with them; in smoke mode the
sizes are too small for the figures to mean anything, and only failures count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.e2e.stack import Stack, docker, free_port

API = "/api/2.0/mlflow"


# ------------------------------------------------------------------------------------------
# The two targets


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    auth: tuple[str, str] | None = None
    verify: str | bool = True

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.verify
        s.auth = self.auth
        return s

    def post(self, s: requests.Session, path: str, body: dict) -> dict:
        r = s.post(self.url + API + path, json=body, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"{self.name}: {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def new_run(self, s: requests.Session, experiment_id: str) -> str:
        run = self.post(s, "/runs/create", {"experiment_id": experiment_id,
                                            "start_time": int(time.time() * 1000)})
        return run["run"]["info"]["run_id"]


class StockMlflow:
    """`mlflow server` from the platform image, no auth, on a PostgreSQL of its own."""

    def __init__(self, project: str, image: str, workers: int, threads: int, address: str):
        self.network = f"{project}-stock"
        self.db = f"{project}-stock-postgres"
        self.server = f"{project}-stock-mlflow"
        self.port = free_port()
        self.image, self.workers, self.threads, self.address = image, workers, threads, address

    def up(self) -> None:
        password = secrets.token_hex(16)
        docker("network", "create", self.network)
        docker("run", "-d", "--name", self.db, "--network", self.network,
               "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=mlflow",
               os.environ.get("POSTGRES_IMAGE", "postgres:15.10-bookworm"))
        wait_until("stock PostgreSQL", lambda: subprocess.run(
            ["docker", "exec", self.db, "pg_isready", "-U", "postgres", "-d", "mlflow"],
            capture_output=True).returncode == 0)
        docker("run", "-d", "--name", self.server, "--network", self.network,
               "-p", f"{self.address}:{self.port}:5000", "-e", "MLFLOW_DISABLE_TELEMETRY=true",
               # (the flag --allowed-hosts is refused beside --gunicorn-opts)
               "-e", f"MLFLOW_SERVER_ALLOWED_HOSTS={self.address}:{self.port}",
               "--entrypoint", "mlflow", self.image, "server",
               "--backend-store-uri", f"postgresql+psycopg2://postgres:{password}@{self.db}:5432/mlflow",
               "--artifacts-destination", "/tmp/mlflow-artifacts", "--serve-artifacts",
               "--host", "0.0.0.0", "--port", "5000", "--workers", str(self.workers),
               "--gunicorn-opts", f"--threads {self.threads}")
        wait_until("stock MLflow", self._healthy, timeout_s=300)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"http://{self.address}:{self.port}/health", timeout=5).ok
        except requests.RequestException:
            return False

    def down(self) -> None:
        for name in (self.server, self.db):
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True)

    @property
    def target(self) -> Target:
        return Target("stock MLflow", f"http://{self.address}:{self.port}")


def own_address() -> str:
    """This machine's address on its network, as a teammate's laptop would reach the front door.

    Not loopback: Docker relays a published port's loopback traffic through docker-proxy, a
    userland copy of every byte (half a core at 140 MB/s here), which a remote client never
    pays; traffic to the machine's own address takes the kernel's NAT, as a remote client's
    does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # picks the outgoing interface; sends nothing
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def wait_until(what: str, check, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(1)


# ------------------------------------------------------------------------------------------
# Workloads. Client functions run in their own processes (one connection each, kept alive).


def _log_metric_calls(targets: list[Target], experiment_ids: list[str], calls: int) -> list[list[float]]:
    """One client, its calls alternating between the targets (so that a slow moment of a
    shared machine falls on both alike): each call's time, per target."""
    sessions = [t.session() for t in targets]
    runs = [t.new_run(s, e) for t, s, e in zip(targets, sessions, experiment_ids, strict=True)]
    timings: list[list[float]] = [[] for _ in targets]
    for step in range(calls + 5):
        for target, s, run_id, times in zip(targets, sessions, runs, timings, strict=True):
            started = time.perf_counter()
            target.post(s, "/runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                                                "timestamp": int(time.time() * 1000), "step": step})
            if step >= 5:  # the first calls open the connection and warm the caches
                times.append(time.perf_counter() - started)
    return timings


def _request(run_id: str, step: int, per_request: int) -> tuple[str, dict]:
    """One log-metric call, or a log-batch of `per_request` points (10 keys, several steps)."""
    now = int(time.time() * 1000)
    if per_request == 1:
        return "/runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                                    "timestamp": now, "step": step}
    return "/runs/log-batch", {"run_id": run_id, "metrics": [
        {"key": f"m{i % 10}", "value": float(i), "timestamp": now,
         "step": step * per_request // 10 + i // 10} for i in range(per_request)]}


class Gate:
    """Lets one target's clients send while the other's wait, and knows when they are done.

    A client sends only while its target's gate is open, and says so in `in_flight`; the
    coordinator closes the gate, waits until the requests already sent have answered, and
    counts the time from opening to that moment."""

    def __init__(self, ctx) -> None:
        self.open, self.lock, self.failed = ctx.Event(), ctx.Lock(), ctx.Event()
        self.in_flight, self.points = ctx.Value("i", 0, lock=False), ctx.Value("q", 0, lock=False)

    def enter(self) -> bool:
        if not self.open.wait(0.2):
            return False
        with self.lock:
            if self.open.is_set():
                self.in_flight.value += 1
                return True
        return False

    def leave(self, points: int) -> None:
        with self.lock:
            self.in_flight.value -= 1
            self.points.value += points

    def turn(self, seconds: float) -> float:
        """Open for `seconds`, then close and drain: how long it took."""
        started = time.perf_counter()
        self.open.set()
        time.sleep(seconds)
        with self.lock:
            self.open.clear()
        deadline = time.monotonic() + 150  # a request's own timeout is 120 s
        while self.in_flight.value and not self.failed.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("a throughput client's request never ended")
            time.sleep(0.001)
        if self.failed.is_set():  # its traceback is above
            raise RuntimeError("a throughput client's request failed")
        return time.perf_counter() - started


def _gated_client(target: Target, experiment_id: str, per_request: int, gate: Gate,
                  ready, stop) -> None:
    """Logs `per_request` points a request, to a run of its own, while its gate is open."""
    s = target.session()
    run_id = target.new_run(s, experiment_id)
    target.post(s, *_request(run_id, 0, per_request))  # the connection open, caches warm
    ready.release()
    step = 1
    while not stop.is_set():
        if gate.enter():
            try:
                target.post(s, *_request(run_id, step, per_request))
            except BaseException:
                gate.failed.set()  # no figure of this run counts
                gate.leave(0)
                raise
            gate.leave(per_request)
            step += 1


def throughput(clients: int, per_request: int, targets: list[Target],
               experiments: dict[str, tuple[str, str]], seconds: float,
               turn_s: float) -> dict[str, float]:
    """Points/s of `clients` parallel clients per target, each target given `seconds` of load
    in turns of `turn_s`, taken alternately (ABBA...). The clients of both targets are started
    first and keep their connections (stock MLflow's gunicorn closes one idle for 2 s, its
    default: in log-batch its clients reconnect each turn, a TCP handshake on plain HTTP); a
    target's clients wait while the other's turn runs. The VM's speed drifts from second to
    second (in one turn of a few seconds every container spent a third more CPU per request
    than in the turns around it), so turns of a second or two let a slow stretch fall on both
    targets alike."""
    ctx = multiprocessing.get_context("fork")
    gates = {t.name: Gate(ctx) for t in targets}
    ready, stop = ctx.Semaphore(0), ctx.Event()
    workers = [ctx.Process(target=_gated_client, daemon=True,
                           args=(t, experiments[t.name][0], per_request, gates[t.name], ready, stop))
               for t in targets for _ in range(clients)]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a throughput client did not start (see its traceback above)")
        elapsed = {t.name: 0.0 for t in targets}
        for i in range(max(1, round(seconds / turn_s))):
            for target in targets if i % 2 == 0 else targets[::-1]:
                elapsed[target.name] += gates[target.name].turn(turn_s)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=150)
            if w.is_alive():
                w.kill()
    if any(w.exitcode for w in workers):  # one died between requests, or failed in the last
        raise RuntimeError("a throughput client failed (its traceback is above)")
    return {name: gates[name].points.value / elapsed[name] for name in elapsed}


def _create_runs(target: Target, experiment_id: str, count: int) -> None:
    s = target.session()
    for i in range(count):
        run_id = target.new_run(s, experiment_id)
        target.post(s, "/runs/log-batch", {
            "run_id": run_id,
            "params": [{"key": "lr", "value": str(0.001 * (i % 7))}, {"key": "seed", "value": str(i)}],
            "metrics": [{"key": "accuracy", "value": (i % 100) / 100, "timestamp": 0, "step": 0}]})


def _searches(target: Target, experiment_id: str, calls: int) -> dict[str, list[float]]:
    s = target.session()
    bodies = {
        "runs/search": ("/runs/search", {"experiment_ids": [experiment_id], "max_results": 100,
                                         "order_by": ["attributes.start_time DESC"]}),
        "experiments/search": ("/experiments/search", {"max_results": 100}),
    }
    timings: dict[str, list[float]] = {name: [] for name in bodies}
    for i in range(calls + 2):
        for name, (path, body) in bodies.items():
            started = time.perf_counter()
            target.post(s, path, body)
            if i >= 2:
                timings[name].append(time.perf_counter() - started)
    return timings


def in_parallel(fn, argsets: list[tuple]) -> list:
    with multiprocessing.get_context("fork").Pool(len(argsets)) as pool:
        return pool.starmap(fn, argsets)


@dataclass
class Sizes:
    rounds: int = 2
    latency_calls: int = 300
    throughput_seconds: float = 20  # per target and round, in turns of:
    metric_turn_s: float = 1  # (8 clients: ~300 requests a turn)
    batch_turn_s: float = 2.5  # (4 clients: ~40 requests of 1000 points a turn)
    runs: int = 10_000
    search_calls: int = 30
    artifact_mb: int = 1024


def round_of(targets: list[Target], experiments: dict[str, tuple[str, str]],
             n: Sizes) -> dict[str, dict[str, float]]:
    """One round of every workload, on both targets (the first one first)."""
    latencies = in_parallel(_log_metric_calls, [(
        targets, [experiments[t.name][0] for t in targets], n.latency_calls)])[0]
    figures = {t.name: {"log-metric, 1 client alternating, p50 ms": statistics.median(times) * 1000}
               for t, times in zip(targets, latencies, strict=True)}
    for target in targets:
        alone = in_parallel(_log_metric_calls, [([target], [experiments[target.name][0]],
                                                 n.latency_calls)])[0][0]
        figures[target.name]["log-metric, 1 client alone, p50 ms"] = statistics.median(alone) * 1000
    for workload, clients, per_request, turn_s in (
            ("log-metric, 8 clients", 8, 1, n.metric_turn_s),
            ("log-batch (1000 points), 4 clients", 4, 1000, n.batch_turn_s)):
        for name, rate in throughput(clients, per_request, targets, experiments,
                                     n.throughput_seconds, turn_s).items():
            figures[name][f"{workload}, points/s"] = rate
    for target in targets:
        searches = in_parallel(_searches, [(target, experiments[target.name][1], n.search_calls)])[0]
        figures[target.name][f"runs/search ({n.runs} runs), p50 ms"] = \
            statistics.median(searches["runs/search"]) * 1000
        figures[target.name]["experiments/search, p50 ms"] = \
            statistics.median(searches["experiments/search"]) * 1000
    return figures


def populate(target: Target, runs: int) -> tuple[str, str]:
    s = target.session()
    workloads = target.post(s, "/experiments/create", {"name": f"bench-{uuid.uuid4().hex[:8]}"})
    searched = target.post(s, "/experiments/create", {"name": f"bench-runs-{uuid.uuid4().hex[:8]}"})
    clients = 8
    in_parallel(_create_runs, [(target, searched["experiment_id"], runs // clients + (i < runs % clients))
                               for i in range(clients)])
    return workloads["experiment_id"], searched["experiment_id"]


# ------------------------------------------------------------------------------------------
# Artifacts and memory (the stack only)


class MemorySampler:
    """The peak memory `docker stats` reports for some containers, sampled in the background."""

    def __init__(self, containers: list[str]):
        self.containers, self.peak, self.start = containers, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self.start = container_memory(self.containers)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, mib in container_memory(self.containers).items():
                self.peak[name] = max(self.peak.get(name, 0.0), mib)

    def growth(self) -> str:
        return ", ".join(f"{name.rsplit('-', 2)[-2]} {self.start.get(name, 0):.0f} -> "
                         f"{self.peak.get(name, 0):.0f} MiB" for name in self.containers)


UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}


def container_memory(containers: list[str]) -> dict[str, float]:
    out = docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *containers)
    memory = {}
    for line in out.splitlines():
        name, used = line.split()[:2]
        unit = used.lstrip("0123456789.")
        memory[name] = float(used[:-len(unit)]) * UNITS[unit]
    return memory


RAW_S3 = """
import os, sys, time
from mlstack_platform.config import PlatformConfig
s3, bucket = PlatformConfig.from_env().s3_root_client(), os.environ["MLSTACK_ARTIFACT_BUCKET"]
path, key, mb = "/tmp/bench.bin", "mlstack-bench/raw.bin", int(sys.argv[1])
with open(path, "wb") as f:
    for _ in range(mb):
        f.write(os.urandom(2**20))
def timed(fn):
    started = time.perf_counter(); fn(); return time.perf_counter() - started
def get_one_stream():
    with open(path, "wb") as f:
        for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(2**20):
            f.write(chunk)
def put_one_stream():
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=key, Body=f)
# boto3's transfer manager (parallel ranged parts), then one stream each way, as a client has.
up = timed(lambda: s3.upload_file(path, bucket, key))
down = timed(lambda: s3.download_file(bucket, key, path))
up1 = timed(put_one_stream)
down1 = timed(get_one_stream)
s3.delete_object(Bucket=bucket, Key=key)
print(up, down, up1, down1)
"""

PROXIED = """
import sys, tempfile, time
from mlflow import MlflowClient
client, path, run_id = MlflowClient(), sys.argv[1], sys.argv[2]
started = time.perf_counter(); client.log_artifact(run_id, path); up = time.perf_counter() - started
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as out:
    started = time.perf_counter()
    client.download_artifacts(run_id, "bench.bin", out)
    down = time.perf_counter() - started
print(up, down)
"""


def raw_s3(stack: Stack, mb: int) -> list[float]:
    """MB/s: up and down with boto3's transfer manager, then up and down in one stream."""
    out = stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "init",
                        "-c", RAW_S3, str(mb), timeout=1800).stdout
    return [mb / seconds for seconds in map(float, out.split()[-4:])]


def proxied(stack: Stack, user: tuple[str, str], experiment_id: str, source: Path,
            mb: int) -> tuple[float, float, str]:
    run_id = stack_target(stack, user).new_run(stack_target(stack, user).session(), experiment_id)
    with MemorySampler([f"{stack.project}-nginx-1", f"{stack.project}-mlflow-1"]) as memory:
        done = subprocess.run([sys.executable, "-c", PROXIED, str(source), run_id, str(source.parent)],
                              env=stack.client_env(*user), capture_output=True, text=True,
                              timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the artifact transfer through the proxy failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    up, down = map(float, out.split()[-2:])
    return mb / up, mb / down, memory.growth()


def stack_target(stack: Stack, user: tuple[str, str]) -> Target:
    return Target("mlstack, plain user", stack.base_url, user, str(stack.ca_file))


def idle_memory(stack: Stack) -> float:
    names = [row["Name"] for row in stack.services().values() if row.get("State") == "running"]
    names += docker("ps", "--filter", f"label=com.docker.compose.project={stack.project}",
                    "--format", "{{.Names}}").split()  # the trainer's job containers, if any
    return sum(container_memory(sorted(set(names))).values())


# ------------------------------------------------------------------------------------------
# The report

# workload prefix: (better, goal, floor). Ratios are mlstack / stock.
GOALS = {
    "log-metric, 1 client": ("lower", 1.25, 1.5),
    "log-metric, 8 clients": ("higher", 0.8, 0.7),
    "log-batch": ("higher", 0.9, 0.9),
}


def verdict(workload: str, ratio: float) -> str:
    for prefix, (better, goal, floor) in GOALS.items():
        if workload.startswith(prefix):
            ok = (lambda x, y: x <= y) if better == "lower" else (lambda x, y: x >= y)
            return "goal met" if ok(ratio, goal) else "above floor" if ok(ratio, floor) else "BELOW FLOOR"
    return "(reported)"


def report(rounds: list[dict[str, dict[str, float]]], stock: str, ours: str) -> None:
    print(f"\n| workload | {stock} | {ours} | ratio | goal |\n| --- | --- | --- | --- | --- |")
    for workload in rounds[0][stock]:
        a = [r[stock][workload] for r in rounds]
        b = [r[ours][workload] for r in rounds]
        ratio = statistics.median(b) / statistics.median(a)
        print(f"| {workload} | {spread(a)} | {spread(b)} | {ratio:.2f}x | {verdict(workload, ratio)} |")


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}" if len(values) == 1 else f"{min(values):.1f}-{max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every path once, tiny sizes (CI)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--runs", type=int, help="runs in the searched experiment")
    parser.add_argument("--artifact-mb", type=int)
    args = parser.parse_args()
    n = Sizes(rounds=1, latency_calls=20, throughput_seconds=2, runs=40,
              search_calls=3, artifact_mb=8) if args.smoke else Sizes()
    n.rounds, n.runs, n.artifact_mb = (args.rounds or n.rounds, args.runs or n.runs,
                                       args.artifact_mb or n.artifact_mb)
    started = time.monotonic()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"images: {os.environ.get('NGINX_IMAGE', 'official')} nginx, "
          f"{os.environ.get('MINIO_IMAGE', 'official')} S3")

    address = own_address()
    print(f"clients reach both targets at {address}"
          + (" (through Docker's userland proxy: the figures are lower than a remote client's)"
             if address.startswith("127.") else ""))
    project = f"mlstack-bench-{os.getpid()}"
    stack = Stack(project=project, host=address, settings={
        "MLSTACK_BIND_ADDRESS": address,
        "MLSTACK_HOSTNAMES": f"localhost 127.0.0.1 {address}",
        # The platform's own defaults for gunicorn, not the e2e tests' smaller ones.
        "MLFLOW_WORKERS": os.environ.get("MLFLOW_WORKERS", ""),
        "MLFLOW_THREADS": os.environ.get("MLFLOW_THREADS", "")})
    try:
        stack.up()
        # The stack's own gunicorn sizing (from the CPU count unless set), for both.
        workers, threads = map(int, stack.compose(
            "exec", "-T", "mlflow", "python", "-c", "from mlstack_platform.config import "
            "PlatformConfig as P; c = P.from_env(); print(c.workers, c.threads)").stdout.split())
        stock = StockMlflow(project, f"mlstack/platform:{os.environ.get('MLSTACK_VERSION', 'dev')}",
                            workers, threads, address)
        print(f"gunicorn, both: {workers} workers x {threads} threads")
        time.sleep(10)
        print(f"idle memory of the stack: {idle_memory(stack):.0f} MiB (goal < 2048 MiB)")
        stock.up()

        password = secrets.token_urlsafe(18)
        stack.script("users", "create", "bench", "--password-stdin", input=password + "\n")
        targets = [stock.target, stack_target(stack, ("bench", password))]
        print(f"populating {n.runs} runs on each target")
        experiments = {t.name: populate(t, n.runs) for t in targets}

        rounds = []
        for r in range(n.rounds):
            figures = round_of(targets if r % 2 == 0 else targets[::-1], experiments, n)
            for target in targets:
                print(f"round {r + 1}, {target.name}: " + json.dumps(
                    {k: round(v, 1) for k, v in figures[target.name].items()}))
            rounds.append(figures)
        report(rounds, targets[0].name, targets[1].name)

        with tempfile.TemporaryDirectory(prefix="mlstack-bench-") as tmp:
            source = Path(tmp) / "bench.bin"
            with source.open("wb") as f:
                for _ in range(n.artifact_mb):
                    f.write(os.urandom(2**20))
            print(f"\nartifact of {n.artifact_mb} MiB, MB/s up / down "
                  f"(raw: boto3 on {os.environ.get('MINIO_IMAGE', 'MinIO')} from the backend network)")
            # Raw before and after each proxied transfer, compared with the mean of the two:
            # the VM's speed drifts over the minute a round takes.
            raw_after = raw_s3(stack, n.artifact_mb)
            for r in range(n.rounds):
                raw_before = raw_after
                up, down, memory = proxied(stack, targets[1].auth, experiments[targets[1].name][0],
                                           source, n.artifact_mb)
                raw_after = raw_s3(stack, n.artifact_mb)
                raw = [(a + b) / 2 for a, b in zip(raw_before, raw_after, strict=True)]
                print(f"round {r + 1}: raw (mean of before and after), boto3's transfer manager "
                      f"{raw[0]:.0f} / {raw[1]:.0f}, one stream {raw[2]:.0f} / {raw[3]:.0f}; "
                      f"through the proxy (one stream) {up:.0f} / {down:.0f}: {up / raw[0]:.0%} / "
                      f"{down / raw[1]:.0%} of the transfer manager, {up / raw[2]:.0%} / "
                      f"{down / raw[3]:.0%} of one stream (goal >= 70 %); memory: {memory}")
    finally:
        if "stock" in locals():
            stock.down()
        stack.down()
    print(f"took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
