"""Where and as whom a job runs: its own uid, its own folders, an environment built from an
allow-list, and limits it cannot lift.

The worker runs as root with only CHOWN, SETUID, SETGID and KILL (docker-compose.yml); a job's
process switches to a uid of its own (JOB_UID_BASE + job id: unique across workers sharing the
volumes and never reused), with no supplementary groups, no capabilities and no way to gain any
(no_new_privs). It can therefore read neither the worker's credential, nor other jobs' code,
logs, TensorBoard files or /proc/*/environ. The worker (group `mlstack`, 10001) still reads
the event files the job writes: the job's TensorBoard folder belongs to that group and is
setgid, and jobs run with umask 027. TensorBoard reads the worker's copy (tb_publish.py).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tb_layout import EXPERIMENT_DIR_MODE, READERS_GID

JOB_UID_BASE = 1_000_000
# READERS_GID: the `mlstack` group; TensorBoard and the jobs API read through it.
# Processes and threads per job (TensorFlow starts many threads); its uid is its own, so
# RLIMIT_NPROC counts only the job's: a fork bomb stops here, not at the host's limit.
MAX_PROCESSES = 2048
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def job_uid(job_id: int) -> int:
    return JOB_UID_BASE + job_id


def _limit_job(home: str) -> None:
    """Runs in the job's process after it switched uid, just before it starts Python. The
    parent-death signal is set here because a uid change clears it; the home is entered here
    because only the job's uid may (Popen's cwd= is applied before the switch)."""
    os.chdir(home)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def prepare_shared_roots(tb_root: Path, logs_dir: Path, jobs_dir: Path) -> None:
    """Owners and modes of the shared folders: readers (group 10001) list them, jobs may only
    pass through the TensorBoard root to their own folder, and see nothing of the logs."""
    # The TensorBoard root is group-writable: the janitor (group mlstack) adds the folders of
    # runs trained elsewhere. Jobs are in no group of ours.
    for path, mode in ((tb_root, 0o771), (logs_dir, 0o750), (jobs_dir, 0o711)):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 0, READERS_GID if path != jobs_dir else 0)
        os.chmod(path, mode)
    marker = tb_root / ".mlstack-permissions-v1"
    if not marker.exists():
        _harden(tb_root)
        marker.touch()
    sweep_leftovers(jobs_dir)


def sweep_leftovers(jobs_dir: Path) -> None:
    """What jobs left behind when the worker died (its container restarted): their homes and
    their files in the shared temporary folders, found by owner."""
    uids = set()
    for folder in (jobs_dir, *SHARED_TEMP):
        if os.path.isdir(folder):
            uids |= {entry.stat(follow_symlinks=False).st_uid for entry in os.scandir(folder)}
    for uid in sorted(u for u in uids if u >= JOB_UID_BASE):
        job_id = uid - JOB_UID_BASE
        homes = [jobs_dir / e.name for e in os.scandir(jobs_dir)
                 if e.name.split("-")[0] == str(job_id)]
        end(JobFolders(uid, homes[0] if homes else jobs_dir / f"{job_id}-gone", Path(), Path()))
        for home in homes[1:]:
            remove_home(home, uid)


def _harden(tb_root: Path) -> None:
    """Once, on upgrade: folders written before jobs had their own uid were world-readable."""
    for entry in tb_root.iterdir():
        for dirpath, dirnames, filenames in os.walk(entry):
            for name in [*dirnames, *filenames, ""]:
                path = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(path)
                if st.st_uid >= JOB_UID_BASE or os.path.islink(path):
                    continue
                os.chown(path, 0, READERS_GID)
                os.chmod(path, 0o750 if os.path.isdir(path) else 0o640)
        if entry.is_dir() and not entry.is_symlink():
            os.chmod(entry, EXPERIMENT_DIR_MODE)


@dataclass
class JobFolders:
    uid: int
    home: Path       # private: code, virtualenv, temporary files; removed afterwards
    tensorboard: Path  # the job's own: where it writes event files; removed afterwards
    log: Path
    published: Path | None = None  # the worker's copy of them, which TensorBoard reads


def make_folders(job_id: int, attempt: int, tb_root: Path, tb_relative: str, logs_dir: Path,
                 jobs_dir: Path) -> JobFolders:
    uid = job_uid(job_id)
    home = jobs_dir / f"{job_id}-{attempt}"
    if home.exists():
        remove_home(home, uid)
    home.mkdir(mode=0o700)
    (home / "tmp").mkdir(mode=0o700)
    experiment_dir, run_dir = tb_relative.split("/")
    parent = tb_root / experiment_dir
    parent.mkdir(exist_ok=True)
    os.chown(parent, 0, READERS_GID)
    os.chmod(parent, EXPERIMENT_DIR_MODE)
    published = parent / run_dir
    published.mkdir(exist_ok=True)
    os.chown(published, 0, READERS_GID)
    os.chmod(published, 0o2750)
    tensorboard = jobs_dir / f"{job_id}-{attempt}.tensorboard"
    if tensorboard.exists():
        remove_home(tensorboard, uid)
    tensorboard.mkdir()
    os.chown(tensorboard, 0, READERS_GID)
    os.chmod(tensorboard, 0o2750)  # while the worker owns it (it has no FOWNER)
    os.chown(tensorboard, uid, READERS_GID)
    log = logs_dir / f"{job_id}.log"
    return JobFolders(uid, home, tensorboard, log, published)


def give(folders: JobFolders, name: str, data: bytes) -> Path:
    """A file in the job's home that only the job reads (its code, the CA). Before hand_over:
    the worker cannot enter the home once the job owns it."""
    path = folders.home / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(path, folders.uid, folders.uid)
    return path


def hand_over(folders: JobFolders) -> None:
    for path in (folders.home / "tmp", folders.home):  # the inside first: then it is locked
        os.chown(path, folders.uid, folders.uid)


def environment(claim: dict[str, Any], folders: JobFolders, platform_url: str,
                ca_file: Path | None, gpus: int, pip_index_url: str | None,
                code_archive: Path | None) -> dict[str, str]:
    """The job's whole environment: nothing of the worker's is passed on."""
    job, spec = claim["job"], claim["job"]["spec"]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(folders.home), "TMPDIR": str(folders.home / "tmp"), "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "MLFLOW_TRACKING_URI": platform_url,
        "MLFLOW_TRACKING_USERNAME": claim["identity"]["username"],
        "MLFLOW_TRACKING_PASSWORD": claim["identity"]["password"],
        "MLFLOW_RUN_ID": claim["run_id"], "MLFLOW_EXPERIMENT_ID": claim["experiment_id"],
        # The runtime samples system metrics itself (runtime.system_metrics): mlflow.start_run()
        # in a script or MLflow Project continuing the run must not start a second sampler.
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        # MLflow prints "View run at <tracking URI>": an address users cannot open.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "GIT_PYTHON_REFRESH": "quiet",  # no git in the image; MLflow probes for it
        "TF_CPP_MIN_LOG_LEVEL": "0" if spec.get("verbose") else "2",
        "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "MLSTACK_JOB_ID": str(job["id"]), "MLSTACK_JOB_SPEC": json.dumps(spec),
        "MLSTACK_SUBMITTER": job["submitter"], "MLSTACK_TB_LOGDIR": str(folders.tensorboard),
        "MLSTACK_JOB_HOME": str(folders.home),
    }
    if ca_file:
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(folders.home / "ca.crt")
    if code_archive:
        env["MLSTACK_CODE_ARCHIVE"] = str(code_archive)
    if pip_index_url:
        env["MLSTACK_PIP_INDEX_URL"] = pip_index_url
    if os.environ.get("MLSTACK_PROJECTS_DIR"):
        env["MLSTACK_PROJECTS_DIR"] = os.environ["MLSTACK_PROJECTS_DIR"]
    if gpus:  # the worker runs one job at a time: the job gets the GPUs it asked for
        wanted = int(spec.get("resources", {}).get("gpus") or 0)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(wanted))
    env.update({k: str(v) for k, v in (spec.get("env") or {}).items()})  # validated on submit
    return env


def start(folders: JobFolders, env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlstack_trainer.runtime"], env=env,
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
        user=folders.uid, group=folders.uid, extra_groups=[], umask=0o027,
        start_new_session=True, preexec_fn=functools.partial(_limit_job, str(folders.home)))


# Places every process of the container may write to: a job's leftovers there could be read or
# overwritten by the next job (another user's) on this worker.
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")


class SandboxBroken(RuntimeError):
    """A job's processes or files outlived it: this worker must not run another job."""


def as_job(uid: int, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), user=uid, group=uid, extra_groups=[], cwd="/",
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                          check=False)


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


def kill_everything_of(uid: int, rounds: int = 200) -> None:
    """Every process of the job's uid, stopped then killed, by the worker itself (root with
    CAP_KILL): the job cannot kill its killer, and a stopped process forks no more. Rounds
    repeat until a scan finds none (a fork in flight shows up in the next scan)."""
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    raise SandboxBroken(f"processes of uid {uid} survive SIGKILL: {processes_of(uid)}")


def end(folders: JobFolders) -> None:
    """After a job: every process it left (a daemon that escaped its process group too)
    killed, its files in the shared temporary folders removed, its home removed. Raises
    SandboxBroken when that did not work: the worker then stops rather than run the next job
    next to the remains of this one."""
    kill_everything_of(folders.uid)
    leftovers = as_job(folders.uid, "find", *[d for d in SHARED_TEMP if os.path.isdir(d)],
                       "-xdev", "-mindepth", "1", "-user", str(folders.uid), "-delete")
    remaining = as_job(folders.uid, "find", *[d for d in SHARED_TEMP if os.path.isdir(d)],
                       "-xdev", "-mindepth", "1", "-user", str(folders.uid), "-print", "-quit")
    if remaining.stdout.strip():
        raise SandboxBroken(f"job files left in shared folders: {remaining.stdout.strip()} "
                            f"({leftovers.stderr.strip()[:300]})")
    remove_home(folders.home, folders.uid)


def remove_home(home: Path, uid: int) -> None:
    as_job(uid, "rm", "-rf", "--one-file-system", f"{home}/")
    try:
        home.rmdir()  # the folder itself: the worker owns its parent
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SandboxBroken(f"could not remove {home}: {exc}")
