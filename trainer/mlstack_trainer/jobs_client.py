"""The worker's side of the jobs API: claim, heartbeat, code, finish, over the front door with
the worker's own credential (an MLflow user with no grants, marked as a worker). A worker holds
no database, S3 or admin secret; a remote GPU host will use exactly this path."""

from __future__ import annotations

from typing import Any

import requests

from .settings import API_VERSION, WorkerSettings


class LeaseLost(RuntimeError):
    """The job is no longer this worker's (reaped, or the platform says stop)."""


class LogRefused(RuntimeError):
    """The platform keeps no more of this job's log (over its limit)."""


class Refused(RuntimeError):
    """The platform refuses this worker's credential: revoked, or never a worker's."""


def _refused(r: requests.Response) -> Refused | None:
    if r.status_code not in (401, 403):
        return None
    try:
        why = r.json().get("error") or r.text
    except ValueError:
        why = r.text
    return Refused(f"the platform refuses this worker ({r.status_code}: {why.strip()[:200]}); "
                   "if it was revoked, ask the operator for a new credential "
                   "(scripts/workers create)")


class JobsClient:
    def __init__(self, settings: WorkerSettings):
        self.base = f"{settings.platform_url}/trainer/api"
        self.name = settings.name
        self.gpus = settings.gpus
        self.image = settings.image
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy; our CA file, not the environment's
        self.http.auth = (settings.username, settings.password)
        self.http.verify = str(settings.ca_file) if settings.ca_file else True

    def _post(self, path: str, body: dict[str, Any], timeout: float = 60) -> requests.Response:
        return self.http.post(f"{self.base}{path}", json=body, timeout=timeout)

    def claim(self) -> dict[str, Any] | None:
        """The next job for this worker with its identity, or None when there is none."""
        r = self._post("/worker/claim", {"worker": self.name, "gpus": self.gpus,
                                         "api_version": API_VERSION, "image": self.image})
        if r.status_code == 204:
            return None
        if refused := _refused(r):
            raise refused
        if r.status_code == 409 and "TRAINER_WORKER_NAME" in r.text:  # another host's name
            raise Refused(r.json().get("error"))
        if r.status_code == 409:  # the job could not start (rights); the API failed it
            print(f"[worker] {r.json().get('error')}", flush=True)
            return None
        r.raise_for_status()
        return r.json()

    def heartbeat(self, job_id: int, timeout_s: float = 10) -> bool:
        """Renew the lease; True when a cancel was asked for. Raises LeaseLost."""
        r = self._post(f"/worker/jobs/{job_id}/heartbeat", {"worker": self.name},
                       timeout=timeout_s)
        if r.status_code == 409:
            raise LeaseLost(r.json().get("error", "lease lost"))
        if refused := _refused(r):  # revoked: the job goes now, not when the lease runs out
            raise LeaseLost(str(refused))
        r.raise_for_status()
        return bool(r.json()["cancel_requested"])

    def code(self, job_id: int) -> bytes:
        r = self.http.get(f"{self.base}/worker/jobs/{job_id}/code",
                          params={"worker": self.name}, timeout=300)
        r.raise_for_status()
        return r.content

    def send_log(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        """Bytes of the job's log from `offset` (a remote worker's); returns how many the
        platform now holds, where the next part starts. Raises LeaseLost, LogRefused."""
        r = self.http.post(f"{self.base}/worker/jobs/{job_id}/log", data=data, timeout=(10, 60),
                           params={"worker": self.name, "attempt": attempt, "offset": offset},
                           headers={"Content-Type": "application/octet-stream"})
        if r.status_code == 413:
            raise LogRefused(r.json().get("error", "the log is over the platform's limit"))
        if r.status_code == 409:
            raise LeaseLost(r.json().get("error", "lease lost"))
        if refused := _refused(r):
            raise LeaseLost(str(refused))
        r.raise_for_status()
        return int(r.json()["size"])

    def finish(self, job_id: int, state: str, error: str | None) -> None:
        r = self._post(f"/worker/jobs/{job_id}/finish",
                       {"worker": self.name, "state": state, "error": error})
        if r.status_code == 409:  # reaped meanwhile: the platform already decided
            return
        r.raise_for_status()
