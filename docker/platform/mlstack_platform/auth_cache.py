"""MLflow's reads of the auth database, kept in each worker until the database says they changed.

For every request of a plain user MLflow's auth asks the auth database who the caller is
(`get_user`: the id and `is_admin`, two or three times a request) and which grants they hold
(`list_grants`), and the login check asks whether the caller is blocked (login.py). Each is a
pooled connection's ping plus a query; together they were most of what a plain user's
log-metric cost MLflow (py-spy: tests/benchmarks/versus_stock.py's notes in the README). The
answers change only when users, grants or failed logins change, so they are kept here, and
PostgreSQL itself says when to drop them: a trigger on every table of the auth database
(TRIGGERS, installed by init) NOTIFYs `mlstack_auth` with the table's name after each change,
and a thread in each worker LISTENs. A grant, a revocation, a deleted user or a new block
therefore takes effect at once, as without the cache (within the milliseconds a notification
takes to arrive).

Until that thread is listening (at start, after losing its connection, or with an auth database
that is not PostgreSQL, as in the unit tests), and whenever it has not heard from the database
for 10 s (it asks every 3 s when nothing else comes), nothing is served from the cache: every
read goes to the database.

MLflow's own cache of checked passwords (`_authenticate_cached`) forgets each one after
MLFLOW_AUTH_CACHE_TTL_SECONDS (10 s): every worker then hashes each active user's password again
(scrypt, ~70 ms of CPU), every 10 s, per user. While this cache listens, a checked password is
kept here instead until the users table changes (a new password, a deleted user, admin rights),
so a team of twenty busy users no longer costs half a core in hashes (four workers); while it
does not listen, MLflow's 10 s cache alone answers, as before.

Those milliseconds matter to one who has just changed something: a user who creates an
experiment (and with it a grant) and reads it at once may reach a worker that has not heard
yet. So a refusal (403, or 429 for a block) is never sent on the cache's word alone:
`confirm_refusals` asks the database again first. An allow from memory stands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("mlstack.auth_cache")

CHANNEL = "mlstack_auth"
LOGIN_FAILURES = "mlstack_login_failures"  # login.TABLE (not imported: login needs Flask)
USERS = "users"  # MLflow's: names, password hashes, admin rights
MAX_ENTRIES = 10_000  # per cache and worker

# Every table of the auth database, MLflow's (users, roles, grants...) and login.py's, notifies
# on any change. Idempotent: init runs it on every start, after the migrations (which may add
# tables), as the role that owns the tables.
TRIGGERS = f"""
CREATE OR REPLACE FUNCTION mlstack_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
    RETURN NULL;
END $$;
DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = 'public' AND tablename <> 'alembic_version' LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER mlstack_auth_changed AFTER INSERT OR UPDATE '
                       'OR DELETE OR TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION mlstack_auth_changed()', t.tablename);
    END LOOP;
END $$;
"""


class Invalidations:
    """A generation number per kind of data ("login": failed logins; "credentials": the users
    table; "permissions": every table but failed logins), moved on by every notification that
    concerns it; None while not listening."""

    RETRY_S = 1.0
    # A query after this much silence, so that a silently dead connection is noticed...
    KEEPALIVE_S = 3.0
    # ...and nothing is trusted once the connection has not been heard from for this long (a
    # database host gone without closing its connections: its notifications would never come;
    # the socket's own keepalives then end the connection too). The bound MLflow's 10 s
    # credential cache used to give, kept.
    SILENT_S = 10.0

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._generations = {"login": 0, "credentials": 0, "permissions": 0}
        self._listening = False
        self._heard_at = 0.0  # time.monotonic() of the last sign of life from the database
        self._warned = False
        self._pid: int | None = None

    def generation(self, kind: str) -> int | None:
        self._start_once()
        with self._lock:
            trusted = self._listening and time.monotonic() - self._heard_at < self.SILENT_S
            return self._generations[kind] if trusted else None

    def _start_once(self) -> None:
        # Started on first use, in the process that uses it (gunicorn forks its workers).
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid, self._listening = os.getpid(), False
                    threading.Thread(target=self._listen_forever, daemon=True,
                                     name="mlstack-auth-cache").start()

    def _changed(self, listening: bool, kinds: set[str] | None = None) -> None:
        with self._lock:
            for kind in kinds or self._generations:
                self._generations[kind] += 1
            self._listening = listening
            self._heard_at = time.monotonic()

    def _heard(self) -> None:
        with self._lock:
            self._heard_at = time.monotonic()

    def _listen_forever(self) -> None:
        while True:
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 (any failure: stop trusting, reconnect)
                self._changed(listening=False)
                if not self._warned:  # once per outage, not once a second
                    log.warning("auth cache off until the auth database answers again: %s", exc)
                    self._warned = True
            time.sleep(self.RETRY_S)

    def _listen(self) -> None:
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
            self._changed(listening=True)
            log.info("auth cache on: listening for changes to the auth database")
            self._warned = False
            while True:
                if select.select([conn], [], [], self.KEEPALIVE_S) == ([], [], []):
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                conn.poll()
                self._heard()
                if conn.notifies:
                    tables = {notification.payload for notification in conn.notifies}
                    conn.notifies.clear()
                    # A failed login must not flush everyone's permissions, nor a new grant
                    # everyone's checked passwords, and the reverse.
                    self._changed(listening=True, kinds=set().union(*map(kinds_of, tables)))
        finally:
            conn.close()


def kinds_of(table: str) -> set[str]:
    """The cached data a change to an auth table makes stale."""
    if table == LOGIN_FAILURES:
        return {"login"}
    return {"credentials", "permissions"} if table == USERS else {"permissions"}


_fresh = threading.local()


@contextlib.contextmanager
def fresh_reads():
    """Every cached read in this block (this thread) goes to the database, and refreshes the
    cache with what it found."""
    _fresh.on = True
    try:
        yield
    finally:
        _fresh.on = False


def confirm_refusals(hook: Callable[[], Any]) -> Callable[[], Any]:
    """MLflow's before-request hook, with a refusal from memory checked against the database.
    Not a 401: a wrong password is recorded as a failed login once, and the cache cannot make
    a right one fail (it keeps no 'no such user')."""
    from flask import g

    @functools.wraps(hook)
    def checked():
        response = hook()
        if response is None or response.status_code not in (403, 429):
            return response
        if response.status_code == 429:
            g.pop("mlstack_login", None)  # login.authenticate's answer for this request
        with fresh_reads():
            confirmed = hook()
        # The database's answer when it is one (an allow, or a refusal). Not MLflow's 404 for
        # a user deleted a moment ago that its own credential cache still lets in: the
        # refusal from memory stands (the front door's auth check takes 401 and 403 alone).
        if confirmed is None or confirmed.status_code in (401, 403, 429):
            return confirmed
        return response
    return checked


class Cache:
    """Values loaded by key, each valid while the generation it was loaded in is current."""

    def __init__(self, invalidations: Invalidations, kind: str, size: int = MAX_ENTRIES) -> None:
        self._invalidations, self._kind, self._size = invalidations, kind, size
        self._entries: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any],
            keep: Callable[[Any], bool] = lambda value: True) -> Any:
        """The value for key, loaded when missing or stale; kept only when keep(value)."""
        # The generation is read before loading: a change that lands while loading makes the
        # loaded value stale at once.
        generation = self._invalidations.generation(self._kind)
        if generation is None:
            return load()
        if not getattr(_fresh, "on", False):
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] == generation:
                    self._entries.move_to_end(key)
                    return entry[1]
        value = load()
        if not keep(value):
            return value
        with self._lock:
            self._entries[key] = (generation, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value


def _psycopg2_connect(engine) -> Callable[[], Any]:
    import psycopg2

    args = engine.url.translate_connect_args(username="user", database="dbname")
    # A peer that vanished without closing the connection ends it within seconds, not minutes.
    return lambda: psycopg2.connect(connect_timeout=10, keepalives=1, keepalives_idle=5,
                                    keepalives_interval=2, keepalives_count=3,
                                    tcp_user_timeout=10_000, **args)


def install(auth, login) -> Invalidations | None:
    """Cache the auth store's `get_user` and `list_grants` (module `auth`: MLflow's, once its
    store is open), its checked passwords (`_authenticate_cached`) and login.py's block lookup,
    with a LISTENing connection of their own."""
    store = auth.store
    if store.engine.dialect.name != "postgresql":
        log.info("auth reads are not cached: the auth database is not PostgreSQL")
        return None
    invalidations = Invalidations(_psycopg2_connect(store.engine))
    users = Cache(invalidations, "permissions")
    grants = Cache(invalidations, "permissions")
    blocks = Cache(invalidations, "login")
    get_user, list_grants, blocked_until = store.get_user, store.list_grants, login.blocked_until

    # The entities are MLflow's, never changed in place by its auth code; a list is copied.
    store.get_user = lambda username: users.get(username, lambda: get_user(username))
    store.list_grants = lambda user_id, workspace, resource_types: list(grants.get(
        (user_id, workspace, frozenset(resource_types)),
        lambda: tuple(list_grants(user_id, workspace, resource_types))))
    login.blocked_until = lambda engine, address, username: blocks.get(
        (address, username), lambda: blocked_until(engine, address, username))
    _keep_checked_passwords(auth, invalidations)
    return invalidations


def _keep_checked_passwords(auth, invalidations: Invalidations) -> None:
    """A good password, once checked, until the users table changes; a wrong one every time.
    Not with MLFLOW_AUTH_CACHE_TTL_SECONDS=0: then no credential is ever kept."""
    # MLflow's private names, looked up here: should an upgrade rename one, the server fails
    # at start, not at every login.
    if auth._USER_AUTH_CACHE is None:  # MLflow's cache is off: so is this one
        return
    authenticate_cached, cache_key = auth._authenticate_cached, auth._auth_cache_key
    forget = auth._invalidate_user_auth_cache
    checked = Cache(invalidations, "credentials")

    def check(username: str, password: str):
        def verify():
            # MLflow's cache may still hold a password changed elsewhere (another worker, or
            # `scripts/users`): after a change, the hash decides. (login.py lets one thread at
            # a time check a credential, so no other can refill it in between.)
            forget(username)
            return authenticate_cached(username, password)

        if invalidations.generation("credentials") is None:
            return authenticate_cached(username, password)  # MLflow's TTL cache alone
        # MLflow's own key: the user name and an HMAC of the password under a per-process key.
        return checked.get(cache_key(username, password), verify, keep=bool)

    auth._authenticate_cached = check
