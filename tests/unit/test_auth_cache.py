"""The auth reads MLflow's workers keep (auth_cache.py), against MLflow's real auth store on a
real PostgreSQL: answered from memory while nothing changes, and never stale once the database
has told the workers of a change (a user made admin, deleted, blocked); with no database to
listen to, every read goes to the database."""

from __future__ import annotations

import hmac
import os
import threading
import time
import types

import pytest

from mlstack_platform import auth_cache, databases, login, users
from mlstack_platform.databases import sqlalchemy_uri


@pytest.fixture
def auth_db(postgres):
    # A role and database of this test's own: the session's PostgreSQL is shared.
    name = f"auth_cache_{time.monotonic_ns()}"
    databases.ensure_role(postgres, name, "auth-cache-password-123")
    databases.ensure_database(postgres, name, name)
    store = users.open_store(sqlalchemy_uri(postgres.host, postgres.port, name,
                                            "auth-cache-password-123", name))
    databases.run_as(postgres, name, name, login.CREATE_TABLE)
    databases.run_as(postgres, name, name, auth_cache.TRIGGERS)
    return store


class Counting:
    """Wraps a function and counts the calls that reach it (the database reads)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def listening(invalidations: auth_cache.Invalidations) -> None:
    """As if its thread had just heard from the database (none is started)."""
    invalidations._pid, invalidations._listening = os.getpid(), True
    invalidations._heard_at = time.monotonic()


class MlflowsCredentialCache:
    """MLflow's `_authenticate_cached` and its helpers (mlflow/server/auth/__init__.py), whose
    module-level store cannot be this test's: good credentials kept for a TTL (here, until
    dropped), the password hashed by the store's `authenticate_user` otherwise."""

    def __init__(self, store):
        self.store, self.kept = store, {}

    def _auth_cache_key(self, username, password):
        return username, hmac.new(b"per-process key", password.encode(), "sha256").digest()

    def _authenticate_cached(self, username, password):
        key = self._auth_cache_key(username, password)
        if key not in self.kept:
            if not self.store.authenticate_user(username, password):
                return None
            self.kept[key] = self.store.get_user(username)
        return self.kept[key]

    def _invalidate_user_auth_cache(self, username):
        self.kept = {k: v for k, v in self.kept.items() if k[0] != username}


def as_mlflows_auth(store) -> types.SimpleNamespace:
    mlflows = MlflowsCredentialCache(store)
    return types.SimpleNamespace(store=store, _USER_AUTH_CACHE=mlflows.kept, mlflows=mlflows,
                                 _auth_cache_key=mlflows._auth_cache_key,
                                 _authenticate_cached=mlflows._authenticate_cached,
                                 _invalidate_user_auth_cache=mlflows._invalidate_user_auth_cache)


@pytest.fixture
def cached(auth_db, monkeypatch):
    """MLflow's auth module and login.py as the platform's app installs the cache on them."""
    get_user = Counting(auth_db.get_user)
    monkeypatch.setattr(auth_db, "get_user", get_user)
    blocked_until = Counting(login.blocked_until)
    monkeypatch.setattr(login, "blocked_until", blocked_until)
    auth = as_mlflows_auth(auth_db)
    invalidations = auth_cache.install(auth, login)
    eventually(lambda: invalidations.generation("permissions") is not None)  # listening
    return auth_db, get_user, blocked_until, auth


def eventually(check, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the cache never caught up with the database"
        time.sleep(0.02)


def test_a_user_is_read_once_then_from_memory_until_the_database_changes(cached):
    store, reads, _, _ = cached
    store.create_user("ada", "ada-password-123")
    time.sleep(0.5)  # the creation's notification is in
    store.get_user("ada")
    before = reads.calls
    for _ in range(20):
        assert not store.get_user("ada").is_admin
    assert reads.calls == before  # 20 requests' worth, no query

    store.update_user("ada", is_admin=True)  # as `scripts/users` or MLflow's admin API would
    eventually(lambda: store.get_user("ada").is_admin)
    assert reads.calls > before

    store.delete_user("ada")
    eventually(lambda: _missing(store, "ada"))


def _missing(store, username: str) -> bool:
    try:
        store.get_user(username)
    except Exception:  # noqa: BLE001 (MLflow's "user not found")
        return True
    return False


def test_a_block_takes_effect_for_the_next_request_and_a_failure_keeps_the_users(cached):
    store, user_reads, block_reads, _ = cached
    store.create_user("eve", "eve-password-123")
    engine = store.engine
    time.sleep(0.5)
    assert login._blocked_for(engine, "10.0.0.9", "eve") == 0
    assert login._blocked_for(engine, "10.0.0.9", "eve") == 0
    assert block_reads.calls == 1
    store.get_user("eve")
    users_before = user_reads.calls

    for _ in range(login._limits()[0]):  # enough failures to block the pair
        login._record_failure(engine, "10.0.0.9", "eve")
    eventually(lambda: login._blocked_for(engine, "10.0.0.9", "eve") > 0)
    assert login._blocked_for(engine, "10.0.0.8", "eve") == 0  # another address is not blocked
    # Failed logins changed nothing about users: their cached answers stay.
    store.get_user("eve")
    assert user_reads.calls == users_before

    login.unblock(engine, "eve")
    eventually(lambda: login._blocked_for(engine, "10.0.0.9", "eve") == 0)


def test_a_good_password_is_hashed_once_until_the_users_table_changes(cached, monkeypatch):
    """MLflow's own cache forgets a checked password after 10 s, and every worker then hashes
    it again (scrypt, ~70 ms of CPU) for every active user. Kept here until a user changes."""
    store, _, _, auth = cached
    hashes = Counting(store.authenticate_user)
    monkeypatch.setattr(store, "authenticate_user", hashes)
    store.create_user("ada", "ada-password-123")
    store.create_user("bob", "bob-password-123")
    time.sleep(0.5)
    assert auth._authenticate_cached("ada", "ada-password-123").username == "ada"
    for _ in range(20):
        assert auth._authenticate_cached("ada", "ada-password-123")
    assert hashes.calls == 1
    for _ in range(3):  # a wrong password is hashed every time, and never kept
        assert auth._authenticate_cached("ada", "a-guess") is None
    assert hashes.calls == 4

    # Another user's new password (another worker, or `scripts/users`): the hash decides again,
    # MLflow's own cache bypassed, and ada's old answer is not trusted either.
    store.update_user("bob", password="bob-new-password-456")
    time.sleep(0.5)  # the change's notification is in
    assert auth._authenticate_cached("ada", "ada-password-123")
    assert hashes.calls == 5
    assert auth._authenticate_cached("bob", "bob-password-123") is None
    assert auth._authenticate_cached("bob", "bob-new-password-456")

    store.delete_user("ada")
    eventually(lambda: auth._authenticate_cached("ada", "ada-password-123") is None)

    # A grant (an experiment created, shared) changes no password: nothing is hashed again.
    assert auth._authenticate_cached("bob", "bob-new-password-456")
    calls = hashes.calls
    store.create_experiment_permission("7", "bob", "EDIT")
    time.sleep(0.5)
    assert auth._authenticate_cached("bob", "bob-new-password-456")
    assert hashes.calls == calls


def test_a_changed_password_is_refused_even_where_mlflows_cache_still_holds_it(cached):
    store, _, _, auth = cached
    store.create_user("cy", "cy-password-123")
    time.sleep(0.5)
    assert auth._authenticate_cached("cy", "cy-password-123")
    store.update_user("cy", password="cy-new-password-456")  # on another worker: no
    # _invalidate_user_auth_cache here, so MLflow's cache in this worker still has the old one
    eventually(lambda: auth._authenticate_cached("cy", "cy-password-123") is None)


def test_without_a_listener_or_with_the_ttl_at_0_mlflows_own_cache_alone_decides(auth_db,
                                                                                  monkeypatch):
    hashes = Counting(auth_db.authenticate_user)
    monkeypatch.setattr(auth_db, "authenticate_user", hashes)
    auth_db.create_user("dee", "dee-password-123")
    deaf = auth_cache.Invalidations(connect=_refuse)
    auth = as_mlflows_auth(auth_db)
    auth_cache._keep_checked_passwords(auth, deaf)
    for _ in range(3):
        assert auth._authenticate_cached("dee", "dee-password-123")
    assert hashes.calls == 1 and auth.mlflows.kept  # MLflow's cache (its TTL) answered

    off = as_mlflows_auth(auth_db)
    off._USER_AUTH_CACHE = None  # MLFLOW_AUTH_CACHE_TTL_SECONDS=0
    mlflows = off._authenticate_cached
    auth_cache._keep_checked_passwords(off, deaf)
    assert off._authenticate_cached is mlflows  # nothing of ours in front of it


def test_nothing_is_trusted_once_the_database_has_been_silent_too_long():
    """A database host gone without closing its connections: no notification would ever come."""
    invalidations = auth_cache.Invalidations(connect=_refuse)
    listening(invalidations)
    assert invalidations.generation("credentials") is not None
    invalidations._heard_at -= auth_cache.Invalidations.SILENT_S
    assert invalidations.generation("credentials") is None


def test_the_listener_keeps_hearing_from_a_quiet_database(cached):
    """Nothing changes, and the keepalive query keeps the cache trusted."""
    store, reads, _, _ = cached
    store.create_user("eli", "eli-password-123")
    time.sleep(0.5)
    store.get_user("eli")
    before = reads.calls
    time.sleep(auth_cache.Invalidations.SILENT_S + 1)
    store.get_user("eli")
    assert reads.calls == before


def test_nothing_is_cached_while_nobody_listens():
    loads = []
    invalidations = auth_cache.Invalidations(connect=_refuse)
    cache = auth_cache.Cache(invalidations, "permissions")
    for _ in range(5):
        cache.get("key", lambda: loads.append(1) or len(loads))
        time.sleep(0.05)
    assert len(loads) == 5


def _refuse():
    raise OSError("the auth database is down")


def test_a_change_while_a_value_loads_makes_that_value_stale():
    invalidations = auth_cache.Invalidations(connect=_refuse)
    listening(invalidations)
    cache = auth_cache.Cache(invalidations, "permissions")

    def load_during_a_change():
        invalidations._changed(listening=True, kinds={"permissions"})
        return "old"

    assert cache.get("key", load_during_a_change) == "old"
    assert cache.get("key", lambda: "new") == "new"
    assert cache.get("key", lambda: "unused") == "new"


def test_threads_checking_one_credential_take_turns_and_others_do_not_wait():
    verifying = login._OneCheckPerCredential()
    inside = threading.Event()
    release = threading.Event()
    order = []

    def first():
        with verifying.held("ada", "right-password"):
            inside.set()
            release.wait(5)
            order.append("first")

    def same_credential():
        with verifying.held("ada", "right-password"):
            order.append("same")

    def other_credential():
        with verifying.held("ada", "a-guess"):
            order.append("other")

    threads = [threading.Thread(target=first)]
    threads[0].start()
    inside.wait(5)
    threads += [threading.Thread(target=same_credential), threading.Thread(target=other_credential)]
    for t in threads[1:]:
        t.start()
    threads[2].join(5)
    assert order == ["other"]  # a guess never waits behind a real user's check
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["other", "first", "same"]
    assert not verifying._held  # nothing kept once everyone is through


def test_a_refusal_from_memory_is_checked_against_the_database_before_it_is_sent():
    """A grant made a moment ago on another worker, whose notification has not arrived: the
    refusal the stale memory gives is not sent; the database's answer is, and is kept."""
    from flask import Flask, Response

    invalidations = auth_cache.Invalidations(connect=_refuse)
    listening(invalidations)
    grants = auth_cache.Cache(invalidations, "permissions")
    database = {"ada": ()}
    assert grants.get("ada", lambda: database["ada"]) == ()  # remembered: no grant
    database["ada"] = ("EDIT on experiment 7",)  # granted; no notification yet
    hook_calls = []

    def mlflow_hook():
        hook_calls.append(1)
        return None if grants.get("ada", lambda: database["ada"]) else Response(status=403)

    with Flask(__name__).test_request_context():
        assert auth_cache.confirm_refusals(mlflow_hook)() is None  # allowed
        assert len(hook_calls) == 2
        assert grants.get("ada", lambda: ()) == ("EDIT on experiment 7",)  # memory refreshed
        database["ada"] = ()  # revoked, and this time nothing grants it back
        invalidations._changed(listening=True, kinds={"permissions"})
        assert auth_cache.confirm_refusals(mlflow_hook)().status_code == 403


def test_a_confirmation_that_is_no_answer_keeps_the_refusal():
    """MLflow answers 404 for a user deleted a moment ago whom its own credential cache still
    lets in; nginx's auth check would turn that into a 500. The refusal stands."""
    from flask import Flask, Response

    answers = iter([Response(status=403), Response(status=404)])
    with Flask(__name__).test_request_context():
        assert auth_cache.confirm_refusals(lambda: next(answers))().status_code == 403
