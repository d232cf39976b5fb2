"""The trainer worker: claims jobs through the jobs API and runs each in a sandbox (sandbox.py).

The worker speaks to the platform only through its front door (jobs_client.py), as a remote GPU
host will. A claim brings the job's spec, its MLflow run and its own MLflow identity; the worker
starts the job under the job's uid, renews its lease while it runs, and reports how it ended.
The jobs API then uploads the log into the run, ends the run if the job could not, and deletes
the identity.

A job dies with its worker (PR_SET_PDEATHSIG), so a killed worker leaves no orphan training on
the GPU; the lease then runs out and the API requeues or fails the job. If the worker cannot
renew the lease (the platform is unreachable), it kills the job before the lease runs out by
its own clock, so a requeued job never runs twice. Every loop the worker touches a heartbeat
file; `mlstack-trainer check` (the container healthcheck) fails when it is stale.

A worker on a host of its own (TRAINER_REMOTE, docker-compose.worker.yml) shares no volume
with the platform: it sends the job's log and TensorBoard files as well (remote.py). A revoked
worker credential ends the running job at the next heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import sandbox
from .heartbeat import DEFAULT_HEARTBEAT_FILE, beat
from .jobs_client import JobsClient, LeaseLost, Refused
from .remote import Sender
from .settings import WorkerSettings
from .tb_publish import Publisher


@dataclass
class Timing:
    heartbeat_s: float = 5
    poll_s: float = 2
    refused_s: float = 30  # between claims the platform refuses (a revoked credential)
    kill_grace_s: float = 10
    heartbeat_file: Path = DEFAULT_HEARTBEAT_FILE


class Worker:
    def __init__(self, settings: WorkerSettings, api: JobsClient, timing: Timing | None = None):
        self.settings, self.api, self.timing = settings, api, timing or Timing()
        self.stopping = False

    # --- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        sandbox.prepare_shared_roots(self.settings.tb_root, self.settings.logs_dir,
                                     self.settings.jobs_dir)
        while not self.stopping:
            try:
                ran = self.run_once()
            except Refused as exc:  # revoked: say so now and then, until the operator acts
                print(f"[worker] {exc}", flush=True)
                time.sleep(self.timing.refused_s)
                continue
            except Exception as exc:  # noqa: BLE001 - the platform restarting: try again
                print(f"[worker] {exc}", flush=True)
                ran = False
            if not ran:
                time.sleep(self.timing.poll_s)

    def run_once(self) -> bool:
        """Run one job if any is queued. True if one ran."""
        self._beat()
        claim = self.api.claim()
        if claim is None:
            return False
        job_id = claim["job"]["id"]
        broken = None
        try:
            state, error = self.execute(claim)
        except sandbox.SandboxBroken as exc:
            state, error, broken = "failed", f"the job outlived its end: {exc}", exc
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: fail the job, keep going
            state, error = "failed", f"worker error: {exc}"
        if state != "lost":
            self.api.finish(job_id, state, error)
        if broken:
            # Fail closed: no next job beside what is left of this one. The container's restart
            # kills every process in it; prepare_shared_roots then sweeps the leftovers.
            raise SystemExit(f"[worker] stopping: {broken}")
        return True

    def _beat(self) -> None:
        beat(self.timing.heartbeat_file)

    # --- one job -----------------------------------------------------------------------------------

    def execute(self, claim: dict[str, Any]) -> tuple[str, str | None]:
        job = claim["job"]
        s = self.settings
        folders = sandbox.make_folders(job["id"], claim["attempt"], s.tb_root,
                                       claim["tensorboard_dir"], s.logs_dir, s.jobs_dir)
        try:
            code = None
            if claim["has_code"]:
                code = sandbox.give(folders, "code.tar.gz", self.api.code(job["id"]))
            if s.ca_file:
                sandbox.give(folders, "ca.crt", s.ca_file.read_bytes())
            sandbox.hand_over(folders)
            env = sandbox.environment(claim, folders, s.platform_url, s.ca_file, s.gpus,
                                      s.pip_index_url, code)
            # A remote host's log is this attempt's alone (what it sends); the shared volume's
            # holds every local attempt of the job.
            truncate = os.O_TRUNC if s.remote else 0
            fd = os.open(folders.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | truncate, 0o640)
            with os.fdopen(fd, "ab") as log:
                os.fchown(log.fileno(), 0, sandbox.READERS_GID)  # the jobs API reads it
                if claim["attempt"] > 1:
                    log.write(f"[mlstack] attempt {claim['attempt']}\n".encode())
                    log.flush()
                process = sandbox.start(folders, env, log)
                publisher = Publisher(folders.tensorboard, folders.published,
                                      max_bytes=s.max_tensorboard_bytes).start()
                timeout_s = int(job["spec"].get("resources", {}).get("timeout_seconds") or 3600)
                # Its own client: a session is not shared between threads.
                sender = Sender(JobsClient(s), claim, folders.log, folders.published,
                                s.platform_url, s.ca_file).start() if s.remote else None
                try:
                    outcome = self._supervise(job["id"], timeout_s, claim["lease_seconds"],
                                              process)
                finally:
                    publisher.stop()
                    if sender:
                        with self._lease_kept(job["id"]):  # the last upload may take a while
                            sender.stop()
                        # Sent: nothing of the job stays on this host.
                        folders.log.unlink(missing_ok=True)
                        shutil.rmtree(folders.published, ignore_errors=True)
        finally:
            sandbox.end(folders)  # raises SandboxBroken when the job outlived it
            sandbox.remove_home(folders.tensorboard, folders.uid)
        return outcome

    def _supervise(self, job_id: int, timeout_s: int, lease_s: int,
                   process: subprocess.Popen) -> tuple[str, str | None]:
        deadline = time.monotonic() + timeout_s
        renewed = time.monotonic()
        # Stop the job while the lease certainly still holds by our clock, whatever the
        # platform's clock says: after that it may already run again elsewhere. So a heartbeat
        # waits no longer than the lease lasts, and a job stopped for it gets only what is
        # left of the lease to end before it is killed.
        margin_s = min(lease_s / 2, 15)
        while True:
            try:
                code = process.wait(timeout=self.timing.heartbeat_s)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                return ("succeeded", None) if code == 0 else (
                    "failed", f"the job process exited with code {code} (see its log)")
            self._beat()
            sent = time.monotonic()
            try:
                cancel = self.api.heartbeat(
                    job_id, timeout_s=min(10.0, max(1.0, renewed + lease_s - 1 - sent)))
                renewed = sent  # the platform renewed it after we sent: a safe lower bound
            except LeaseLost as exc:
                self._kill(process)
                return "lost", str(exc)
            except Exception as exc:  # noqa: BLE001 - unreachable for now; the lease decides
                print(f"[worker] heartbeat for job {job_id} failed: {exc}", flush=True)
                cancel = False
                if time.monotonic() - renewed > lease_s - margin_s:
                    self._kill(process, grace_s=renewed + lease_s - 1 - time.monotonic())
                    return "lost", "could not renew the lease: the platform was unreachable"
            if cancel:
                self._kill(process)
                return "cancelled", "cancelled on request"
            if time.monotonic() > deadline:
                self._kill(process)
                return "failed", f"timed out after {timeout_s} s (resources.timeout_seconds)"

    @contextlib.contextmanager
    def _lease_kept(self, job_id: int):
        """Heartbeats while the block runs (with a client of its own: a session is not shared
        between threads), so that a job which ended well is not reaped meanwhile."""
        done, api = threading.Event(), JobsClient(self.settings)

        def beat():
            while not done.wait(self.timing.heartbeat_s):
                try:
                    api.heartbeat(job_id)
                except Exception:  # noqa: BLE001 - lost or unreachable: the lease decides
                    return

        keeper = threading.Thread(target=beat, daemon=True, name="lease")
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def _kill(self, process: subprocess.Popen, grace_s: float | None = None) -> None:
        """TERM to the job's whole process group, KILL after a grace period."""
        grace_s = self.timing.kill_grace_s if grace_s is None else max(0.5, grace_s)
        for sig, wait in ((signal.SIGTERM, min(grace_s, self.timing.kill_grace_s)),
                          (signal.SIGKILL, 30)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
