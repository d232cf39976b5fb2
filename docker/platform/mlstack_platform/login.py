"""The MLflow server's authorization function (basic_auth.ini `authorization_function`):
MLflow's own basic auth and credential cache, plus what it lacks against password guessing.

- Failed logins are counted per client address and user name, in the auth database (shared by
  every gunicorn worker and replica). After MLSTACK_LOGIN_MAX_FAILURES within
  MLSTACK_LOGIN_WINDOW_SECONDS that pair is answered 429 with Retry-After for
  MLSTACK_LOGIN_BLOCK_SECONDS, without the password being checked at all (not even against
  MLflow's cache of good credentials: a blocked guesser must learn nothing). Only failures
  count: a training job logging every second or the UI's bursts never come near it, and
  other users, or the same user elsewhere, are never held up by someone's failures.
- An unknown user name costs the same password hash as a wrong password for a known one, so
  user names cannot be told apart by timing.
- Refused logins are logged with user name and address, never the password.
  `scripts/users unblock NAME` lifts a block.

The client address is what nginx saw (X-Real-IP, which nginx sets on every request it passes),
believed only when the request comes from nginx itself (MLSTACK_TRUSTED_PROXY, a host name
looked up every few seconds: its address changes when the container is recreated). From any
other peer on the network (TensorBoard, the jobs API) the header is ignored and the peer's own
address counts.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import math
import secrets
import socket
import threading
import time

from flask import Response, g, request
from werkzeug.datastructures import Authorization
from werkzeug.security import check_password_hash, generate_password_hash

from . import settings

log = logging.getLogger("mlstack.login")

TABLE = "mlstack_login_failures"
CREATE_TABLE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (address varchar(64) NOT NULL, "
                "username varchar(256) NOT NULL, failures integer NOT NULL, "
                "window_start double precision NOT NULL, blocked_until double precision "
                "NOT NULL, PRIMARY KEY (address, username))")


@functools.cache
def _dummy_hash() -> str:
    """A hash made like MLflow's (werkzeug's default): checking one costs what MLflow's does."""
    return generate_password_hash(secrets.token_urlsafe(16))


def _limits() -> tuple[int, int, int]:
    return (settings.integer("MLSTACK_LOGIN_MAX_FAILURES", 10, minimum=1, maximum=10_000),
            settings.integer("MLSTACK_LOGIN_WINDOW_SECONDS", 300, minimum=1, maximum=86_400),
            settings.integer("MLSTACK_LOGIN_BLOCK_SECONDS", 300, minimum=1, maximum=86_400))


class _TrustedProxy:
    """The addresses of the host named by MLSTACK_TRUSTED_PROXY, looked up at most every
    REFRESH_S seconds (and again, at most once a second, when an unknown peer calls: nginx may
    just have been recreated)."""

    REFRESH_S = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._addresses: frozenset[str] = frozenset()
        self._looked_up = -math.inf

    def _lookup(self) -> None:
        name = settings.text("MLSTACK_TRUSTED_PROXY", "nginx")
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:  # nginx not started yet: nobody's header is believed
            found = set()
        self._addresses, self._looked_up = frozenset(found), time.monotonic()

    def __contains__(self, address: str) -> bool:
        with self._lock:
            age = time.monotonic() - self._looked_up
            if age > self.REFRESH_S or (address not in self._addresses and age > 1.0):
                self._lookup()
            return address in self._addresses


_trusted_proxy = _TrustedProxy()


def from_front_door() -> bool:
    """Whether the request came from nginx (MLSTACK_TRUSTED_PROXY), not another service."""
    return (request.remote_addr or "unknown") in _trusted_proxy


def client_address() -> str:
    peer = request.remote_addr or "unknown"
    forwarded = request.headers.get("X-Real-IP")
    if forwarded and peer in _trusted_proxy:
        return forwarded[:64]
    return peer[:64]


class _OneCheckPerCredential:
    """When a credential is not in the cache of checked passwords (its first use, after a
    change to the users, or when MLflow's own cache lets it go: auth_cache.py), every thread
    that then sees it would hash the password itself, at once: with a client sending several
    requests at a time, that is up to one hash per thread of every worker (py-spy: 17 % of
    MLflow's time under 8 clients when that came every 10 s). Here threads
    checking the same credential take turns: the first hashes and fills MLflow's cache, the
    others then find it there. Other credentials (a guesser's among them) never wait."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)  # the password never becomes a dictionary key
        self._lock = threading.Lock()
        self._held: dict[bytes, list] = {}  # digest -> [lock, threads using it]

    @contextlib.contextmanager
    def held(self, username: str, password: str):
        digest = hmac.new(self._key, f"{username}\0{password}".encode(), "sha256").digest()
        with self._lock:
            entry = self._held.setdefault(digest, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._held[digest]


_verifying = _OneCheckPerCredential()


def authenticate() -> Authorization | Response:
    """Once per request: MLflow calls its authorization function several times."""
    if "mlstack_login" not in g:
        g.mlstack_login = _authenticate()
    return g.mlstack_login


def _authenticate() -> Authorization | Response:
    from mlflow.server import auth

    credentials = request.authorization
    if credentials is None or credentials.type != "basic" or not credentials.username \
            or credentials.password is None:
        return auth.make_basic_auth_response()
    username, password = credentials.username, credentials.password
    address = client_address()
    retry_after = _blocked_for(auth.store.engine, address, username)
    if retry_after:
        log.warning("login refused: %r from %s is blocked for %d s more", username, address,
                    retry_after)
        return _too_many(retry_after)
    with _verifying.held(username, password):
        verified = auth._authenticate_cached(username, password)
    if verified:
        return credentials
    if not auth.store.has_user(username):
        check_password_hash(_dummy_hash(), password)  # as long as a wrong password takes
    failures = _record_failure(auth.store.engine, address, username)
    log.warning("login refused: wrong password or unknown user %r from %s (%d in a row)",
                username, address, failures)
    return auth.make_basic_auth_response()


def _too_many(retry_after: int) -> Response:
    response = Response(f"Too many failed logins from this address for this user: try again "
                        f"in {retry_after} s, or ask an admin to lift the block.\n", status=429,
                        mimetype="text/plain")
    response.headers["Retry-After"] = str(retry_after)
    return response


def _blocked_for(engine, address: str, username: str) -> int:
    """Seconds the pair is still blocked for (0: not blocked). Fails open: a database
    problem must not lock everyone out (MLflow itself will fail on it anyway)."""
    try:
        until = blocked_until(engine, address, username)
    except Exception:  # noqa: BLE001
        log.exception("could not read failed logins")
        return 0
    left = until - time.time()
    return math.ceil(left) if left > 0 else 0


def blocked_until(engine, address: str, username: str) -> float:
    """When the pair's block ends (0: never blocked). Cached per worker (auth_cache.py)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(f"SELECT blocked_until FROM {TABLE} WHERE address = :a "
                                 "AND username = :u"), {"a": address, "u": username}
                            ).scalar() or 0.0


def _record_failure(engine, address: str, username: str) -> int:
    from sqlalchemy import text

    max_failures, window_s, block_s = _limits()
    now = time.time()
    try:
        with engine.begin() as conn:
            failures = conn.execute(text(
                f"INSERT INTO {TABLE} (address, username, failures, window_start, blocked_until) "
                "VALUES (:a, :u, 1, :now, 0) ON CONFLICT (address, username) DO UPDATE SET "
                f"failures = CASE WHEN {TABLE}.window_start < :since THEN 1 "
                f"ELSE {TABLE}.failures + 1 END, "
                f"window_start = CASE WHEN {TABLE}.window_start < :since THEN :now "
                f"ELSE {TABLE}.window_start END RETURNING failures"),
                {"a": address, "u": username, "now": now, "since": now - window_s}).scalar()
            if failures >= max_failures:
                conn.execute(text(f"UPDATE {TABLE} SET blocked_until = :until, failures = 0, "
                                  "window_start = :now WHERE address = :a AND username = :u"),
                             {"until": now + block_s, "now": now, "a": address, "u": username})
                log.warning("login blocked: %r from %s for %d s after %d failures", username,
                            address, block_s, failures)
        return failures
    except Exception:  # noqa: BLE001
        log.exception("could not record a failed login")
        return 0


def unblock(engine, username: str) -> int:
    """Lift every block and count of failures for a user name; returns how many addresses."""
    from sqlalchemy import text

    with engine.begin() as conn:
        return conn.execute(text(f"DELETE FROM {TABLE} WHERE username = :u"),
                            {"u": username}).rowcount
