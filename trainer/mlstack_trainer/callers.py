"""Who is calling the jobs API: MLflow's answer to the caller's own credentials.

nginx has checked the login already, but this service never trusts a header that anything on
the network could send (a user name in X-Forwarded-User, say): it asks MLflow's
/users/current with the caller's own Authorization header, and keeps the answer for a few
seconds so that a busy client does not cost MLflow a password hash per request.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Caller:
    username: str
    is_admin: bool


class Authenticator:
    def __init__(self, mlflow_uri: str, ttl_s: float = 4, max_entries: int = 10_000):
        self._url = f"{mlflow_uri.rstrip('/')}/api/2.0/mlflow/users/current"
        self._ttl_s = ttl_s
        self._max = max_entries
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()
        self._http = requests.Session()

    def __call__(self, authorization: str) -> Caller | None:
        """The caller behind an Authorization header, or None when MLflow refuses it."""
        if not authorization:
            return None
        # Keyed by a hash: the cache never holds a password.
        key = hashlib.sha256(authorization.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        r = self._http.get(self._url, headers={"Authorization": authorization}, timeout=10)
        if r.status_code in (401, 403):
            caller = None
        else:
            r.raise_for_status()
            user = r.json()["user"]
            caller = Caller(user["username"], bool(user.get("is_admin")))
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = (now + self._ttl_s, caller)
        return caller
