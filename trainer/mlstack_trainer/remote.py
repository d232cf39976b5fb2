"""What a worker on a host of its own sends the platform, with which it shares no volume
(TRAINER_REMOTE=true): its job's output over the jobs API as it comes, which users follow
with `mlstack logs -f`; and the job's TensorBoard event files as artifacts of the job's run
under `tensorboard/`, which the platform's janitor copies where TensorBoard reads them (the
path of runs trained anywhere, tensorboard_sync.py). A local worker writes both to the shared
volumes instead; everything else is the same code.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from .jobs_client import JobsClient, LogRefused

_CHUNK = 1 << 20
ARTIFACT_ROOT = "mlflow-artifacts:/"  # runs' artifacts go through MLflow's proxy


class LogSender:
    """Everything the job wrote to its log since the last call, over the jobs API."""

    def __init__(self, api: JobsClient, job_id: int, attempt: int, path: Path):
        self.api, self.job_id, self.attempt, self.path = api, job_id, attempt, path
        self.offset = 0
        self.refused: str | None = None  # over the platform's limit: nothing more is sent

    def send(self) -> None:
        if self.refused:
            return
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                while chunk := log.read(_CHUNK):
                    self.offset = self.api.send_log(self.job_id, self.attempt, self.offset, chunk)
                    log.seek(self.offset)
        except FileNotFoundError:
            return
        except LogRefused as exc:
            self.refused = str(exc)
            print(f"[worker] job {self.job_id}: {exc}", flush=True)


class TensorBoardUploader:
    """The worker's copy of the job's event files (tb_publish.Publisher: regular files only,
    links never followed) into the run's artifacts under tensorboard/, with the job's own
    identity; a file again when it has grown (see upload)."""

    def __init__(self, claim: dict[str, Any], folder: Path, platform_url: str,
                 ca_file: Path | None):
        self.folder, self.run_id = folder, claim["run_id"]
        self.base = platform_url
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.auth = (claim["identity"]["username"], claim["identity"]["password"])
        self.http.verify = str(ca_file) if ca_file else True
        self.sent: dict[str, int] = {}
        self._root: str | None = None

    def _artifact_root(self) -> str:
        """The run's artifact folder behind MLflow's proxy: <experiment>/<run>/artifacts."""
        if self._root is None:
            r = self.http.get(f"{self.base}/api/2.0/mlflow/runs/get",
                              params={"run_id": self.run_id}, timeout=(10, 60))
            r.raise_for_status()
            uri = r.json()["run"]["info"]["artifact_uri"]
            if not uri.startswith(ARTIFACT_ROOT):
                raise RuntimeError(f"run {self.run_id} keeps its artifacts at {uri}, not "
                                   "behind the platform's proxy")
            self._root = uri[len(ARTIFACT_ROOT):].strip("/")
        return self._root

    def upload(self, final: bool = False) -> int:
        """Files new or grown since the last call; how many were sent. An event file only
        grows and is sent whole each time: once past 1 MB it is sent again only when it has
        grown by a quarter (or at the end), so a long job sends a few times its files' size,
        not their size at every turn."""
        sent = 0
        for path in sorted(self.folder.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(self.folder).as_posix()
            size = path.stat().st_size
            before = self.sent.get(relative)
            if before == size or (not final and before is not None and before >= _CHUNK
                                  and size < before * 1.25):
                continue
            target = quote(f"{self._artifact_root()}/tensorboard/{relative}")
            with open(path, "rb") as data:
                r = self.http.put(f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{target}",
                                  data=data, timeout=(10, 300))
            r.raise_for_status()
            self.sent[relative] = size
            sent += 1
        return sent


class Sender:
    """Both, beside the job: the log every `log_every_s`, the TensorBoard files every
    `tensorboard_every_s`, and both once more when the job has ended (before the worker
    reports the end, which deletes the job's identity). In a thread of its own, so that a slow
    or unreachable platform never delays the worker's heartbeats and its lease clock; a failure
    is retried the next time round."""

    def __init__(self, api: JobsClient, claim: dict[str, Any], log: Path, published: Path,
                 platform_url: str, ca_file: Path | None, log_every_s: float = 5,
                 tensorboard_every_s: float = 30):
        self.log = LogSender(api, claim["job"]["id"], claim["attempt"], log)
        self.tensorboard = TensorBoardUploader(claim, published, platform_url, ca_file)
        self.log_every_s, self.tensorboard_every_s = log_every_s, tensorboard_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sender")

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        """After the job ended: what is left, then done."""
        self._stop.set()
        self._thread.join()
        self._try(self.log.send)
        self._try(lambda: self.tensorboard.upload(final=True))

    def _loop(self) -> None:
        next_upload = time.monotonic() + self.tensorboard_every_s
        while not self._stop.wait(self.log_every_s):
            self._try(self.log.send)
            if time.monotonic() >= next_upload:
                self._try(self.tensorboard.upload)
                next_upload = time.monotonic() + self.tensorboard_every_s

    @staticmethod
    def _try(step) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the platform restarting: next time round
            print(f"[worker] could not send to the platform (tried again): {exc}", flush=True)
