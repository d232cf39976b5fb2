"""The trainer worker: claims jobs from the queue and runs each in its own process.

A job process runs in its own session (cancel and timeout kill its whole process group) and
dies with the worker (PR_SET_PDEATHSIG), so a killed worker leaves no orphan training on the
GPU; the worker's lease then runs out and the queue requeues or fails the job. Every loop the
worker touches a heartbeat file; `python -m mlstack_trainer.worker --check` (the container
healthcheck) fails when it is stale, proving the worker polls rather than merely lives.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from . import permissions
from .queue import Job, JobQueue
from .spec import SpecError, validate

PR_SET_PDEATHSIG = 1
DEFAULT_HEARTBEAT_FILE = Path("/tmp/mlstack-worker.heartbeat")


def _die_with_parent() -> None:
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class WorkerConfig:
    name: str
    tb_root: Path
    logs_dir: Path
    public_url: str  # where users open MLflow/TensorBoard, for the links a run carries
    image: str = "unknown"
    lease_s: int = 60
    heartbeat_s: float = 5
    poll_s: float = 2
    kill_grace_s: float = 10
    heartbeat_file: Path = DEFAULT_HEARTBEAT_FILE


class Worker:
    def __init__(self, queue: JobQueue, client: MlflowClient, config: WorkerConfig):
        self.queue, self.client, self.config = queue, client, config
        self.stopping = False

    # --- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        while not self.stopping:
            if not self.run_once():
                time.sleep(self.config.poll_s)

    def run_once(self) -> bool:
        """Reap dead workers' jobs, then run one job if any is queued. True if one ran."""
        self.config.heartbeat_file.write_text(str(time.time()))
        for job in self.queue.reap_expired():
            if job.state == "failed" and job.mlflow_run_id:
                self._terminate_run(job.mlflow_run_id, "FAILED", job.error)
        job = self.queue.claim(self.config.name, self.config.lease_s)
        if job is None:
            return False
        try:
            self.execute(job)
        except Exception as exc:  # noqa: BLE001 - e.g. MLflow unreachable: fail the job, keep going
            self.queue.finish(job.id, self.config.name, "failed", f"worker error: {exc}")
        return True

    # --- one job ---------------------------------------------------------------------------------

    def execute(self, job: Job) -> str:
        try:
            spec = validate(job.spec)
        except SpecError as exc:  # specs are validated on submit; this is belt and braces
            self.queue.finish(job.id, self.config.name, "failed", str(exc))
            return "failed"
        experiment_id = self._experiment_for(job.submitter, spec.experiment)
        if experiment_id is None:
            error = (f"{job.submitter} may not write to experiment {spec.experiment!r}; "
                     "ask its owner, or use another experiment")
            self.queue.finish(job.id, self.config.name, "failed", error)
            return "failed"
        run = self.client.create_run(experiment_id, run_name=spec.name, tags={
            "mlstack.job_id": str(job.id), "mlstack.submitter": job.submitter,
            "mlstack.worker": self.config.name, "mlstack.image": self.config.image,
            "mlstack.entrypoint": str(spec.entrypoint),
            **({"mlflow.source.git.commit": os.environ["MLSTACK_GIT_COMMIT"]}
               if os.environ.get("MLSTACK_GIT_COMMIT") else {}),
        })
        run_id = run.info.run_id
        self.queue.set_run_id(job.id, self.config.name, run_id)
        # TensorBoard: <experiment>/<run name>-<run id>/, so each side names the other.
        tb_run = f"{spec.name}-{run_id}"
        tb_dir = self.config.tb_root / spec.experiment / tb_run
        self.client.set_tag(run_id, "mlstack.tensorboard_url",
                            f"{self.config.public_url}/tensorboard/#timeseries&runFilter={tb_run}")

        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.config.logs_dir / f"{job.id}.log"
        env = {**os.environ, **spec.env, "MLFLOW_RUN_ID": run_id,
               "MLSTACK_JOB_ID": str(job.id), "MLSTACK_JOB_SPEC": json.dumps(job.spec),
               "MLSTACK_SUBMITTER": job.submitter,
               "MLSTACK_TB_LOGDIR": str(tb_dir), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "mlstack_trainer.runtime"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent)
            state, error = self._supervise(job, spec.timeout_s, process)

        try:
            self.client.log_artifact(run_id, str(log_path), artifact_path="logs")
        except Exception as exc:  # noqa: BLE001 - a lost log must not lose the outcome
            print(f"[worker] could not upload the log of job {job.id}: {exc}", flush=True)
        if state != "succeeded":
            # The job process normally ends its run itself; after a kill it could not.
            self._terminate_run(run_id, "KILLED" if state == "cancelled" else "FAILED", error)
        if state != "lost":
            self.queue.finish(job.id, self.config.name, state, error)
        return state

    def _experiment_for(self, submitter: str, name: str) -> str | None:
        """The id of the experiment a job of `submitter` runs in, creating it for them if it
        is new; None when it belongs to someone who has not let them write to it."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(
                    name, tags={"mlstack.created_for": submitter})
                permissions.grant(submitter, "experiment", experiment_id)
                return experiment_id
            except MlflowException as exc:
                # Another worker created it in the meantime: use theirs, as below.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.tags.get("mlstack.created_for") == submitter:
            # A worker made it for this user, maybe a moment ago in a race with this one:
            # its grant may not be in yet, so make sure of it rather than check it.
            permissions.grant(submitter, "experiment", experiment.experiment_id)
            return experiment.experiment_id
        level = permissions.permission(submitter, "experiment", experiment.experiment_id)
        if level is not None and level not in permissions.CAN_EDIT:
            return None
        return experiment.experiment_id

    def _supervise(self, job: Job, timeout_s: int, process: subprocess.Popen) -> tuple[str, str | None]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                code = process.wait(timeout=self.config.heartbeat_s)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                return ("succeeded", None) if code == 0 else (
                    "failed", f"the job process exited with code {code} (see logs/{job.id}.log)")
            self.config.heartbeat_file.write_text(str(time.time()))
            current = self.queue.heartbeat(job.id, self.config.name, self.config.lease_s)
            if current is None:
                self._kill(process)
                return "lost", "the lease was lost (reaped as dead)"
            if current.cancel_requested:
                self._kill(process)
                return "cancelled", "cancelled on request"
            if time.monotonic() > deadline:
                self._kill(process)
                return "failed", f"timed out after {timeout_s} s (resources.timeout_seconds)"

    def _kill(self, process: subprocess.Popen) -> None:
        """TERM to the job's whole process group, KILL after a grace period."""
        for sig, wait in ((signal.SIGTERM, self.config.kill_grace_s), (signal.SIGKILL, 30)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _terminate_run(self, run_id: str, status: str, reason: str | None) -> None:
        try:
            run = self.client.get_run(run_id)
            if RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
                return
            if reason:
                self.client.set_tag(run_id, "mlstack.failure", reason)
            self.client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001
            print(f"[worker] could not mark run {run_id} {status}: {exc}", flush=True)


def check(heartbeat_file: Path, max_age_s: float) -> int:
    """Healthcheck: 0 when the worker touched its heartbeat file within max_age_s."""
    try:
        age = time.time() - float(heartbeat_file.read_text())
    except (FileNotFoundError, ValueError):
        print("no heartbeat yet", file=sys.stderr)
        return 1
    if age > max_age_s:
        print(f"last heartbeat {age:.0f}s ago", file=sys.stderr)
        return 1
    return 0


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
