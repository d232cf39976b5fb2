"""init's database steps and the user store, against a real PostgreSQL (the image the compose
file uses, started with Docker)."""

from __future__ import annotations

import time

import psycopg2
import pytest

from mlstack_platform import databases, users
from mlstack_platform.databases import Server
from mlstack_platform.waiting import DependencyUnavailable


def test_roles_and_databases_are_created_once_and_kept(postgres):
    assert databases.ensure_role(postgres, "mlflow", "first-password-123") == "created"
    assert databases.ensure_database(postgres, "mlflow", "mlflow") == "created"
    assert databases.ensure_database(postgres, "mlflow", "mlflow") == "kept"
    # A second start with a rotated secret updates the role's password in place.
    assert databases.ensure_role(postgres, "mlflow", "second-password-456") == "kept"
    conn = psycopg2.connect(host=postgres.host, port=postgres.port, user="mlflow",
                            password="second-password-456", dbname="mlflow")
    conn.close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=postgres.host, port=postgres.port, user="mlflow",
                         password="first-password-123", dbname="mlflow")


def test_other_roles_cannot_connect_to_a_platform_database(postgres):
    databases.ensure_role(postgres, "intruder", "intruder-password-1")
    databases.ensure_database(postgres, "private_db", "mlflow")
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(host=postgres.host, port=postgres.port, user="intruder",
                         password="intruder-password-1", dbname="private_db")


def test_a_wrong_superuser_password_fails_at_once_with_a_clear_error(postgres):
    wrong = Server(postgres.host, postgres.port, "postgres", "not-the-password")
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        databases.wait_until_ready(wrong, timeout_s=60)
    assert time.monotonic() - started < 10


def test_an_unreachable_database_ends_the_wait_with_a_hint():
    nowhere = Server("127.0.0.1", 1, "postgres", "x")
    with pytest.raises(DependencyUnavailable, match="docker compose logs postgres"):
        databases.wait_until_ready(nowhere, timeout_s=1)


@pytest.fixture(scope="module")
def store(postgres):
    databases.ensure_role(postgres, "mlflow", "store-password-123")
    databases.ensure_database(postgres, "mlflow_auth", "mlflow")
    uri = databases.sqlalchemy_uri(postgres.host, postgres.port, "mlflow", "store-password-123",
                                   "mlflow_auth")
    return users.open_store(uri)


def test_admin_is_created_once_and_a_changed_password_is_kept(store):
    assert users.ensure_admin(store, "admin", "generated-password-1", enforce=False) == "created"
    store.update_user("admin", password="changed-in-the-ui-2")
    assert users.ensure_admin(store, "admin", "generated-password-1", enforce=False) == "kept"
    assert store.authenticate_user("admin", "changed-in-the-ui-2")


def test_an_admin_password_from_env_is_enforced(store):
    users.ensure_admin(store, "admin", "generated-password-1", enforce=False)
    assert users.ensure_admin(store, "admin", "set-in-dot-env-3", enforce=True) == \
        "password reset from .env"
    assert store.authenticate_user("admin", "set-in-dot-env-3")
    assert users.ensure_admin(store, "admin", "set-in-dot-env-3", enforce=True) == "kept"


def test_user_management(store):
    password = users.create(store, "carol", None, admin=False)
    assert len(password) >= 24 and store.authenticate_user("carol", password)
    with pytest.raises(ValueError, match="already exists"):
        users.create(store, "carol", "another-password", admin=False)
    with pytest.raises(ValueError, match="at least 12"):
        users.set_password(store, "carol", "short")
    assert store.authenticate_user("carol", password)  # unchanged by the refusal
    assert ("carol", False) in users.listing(store)
    with pytest.raises(ValueError, match="platform admin"):
        users.delete(store, "admin", "admin")
    users.delete(store, "carol", "admin")
    assert "carol" not in {name for name, _ in users.listing(store)}
