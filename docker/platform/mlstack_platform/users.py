"""MLflow users, managed through MLflow's own auth store (the one user store that nginx, the
MLflow UI and the API all check). Operators reach it with `scripts/users`."""

from __future__ import annotations

import warnings

from .secrets_store import generate

# Importing the auth store imports MLflow's server, whose FastAPI module warns about a
# Starlette deprecation that is MLflow's to fix; keep it out of operators' terminals.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")

from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore  # noqa: E402

MIN_PASSWORD = 12  # MLflow's own minimum for the admin; applied to everyone here
TRAINER_ACCOUNT = "mlstack-trainer"  # the jobs API's MLflow admin account
WORKER_ACCOUNT = "mlstack-worker"  # the local trainer workers' credential (no grants)
SERVICE_ACCOUNTS = (TRAINER_ACCOUNT, WORKER_ACCOUNT)


def open_store(auth_db_uri: str) -> SqlAlchemyStore:
    store = SqlAlchemyStore()
    store.init_db(auth_db_uri)  # also brings the auth schema up to date
    return store


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password is too short: use at least {MIN_PASSWORD} characters")


def ensure_admin(store: SqlAlchemyStore, username: str, password: str, enforce: bool) -> str:
    """Create the admin on first start. With `enforce` (the password came from .env), also
    reset it to that password when it no longer matches; otherwise never touch it again, so a
    password the admin changed in MLflow stays changed."""
    if not store.has_user(username):
        store.create_user(username, password, is_admin=True)
        return "created"
    if enforce and not store.authenticate_user(username, password):
        store.update_user(username, password=password, is_admin=True)
        return "password reset from .env"
    return "kept"


def ensure_plain(store: SqlAlchemyStore, username: str, password: str) -> str:
    """A service user that is not an admin, with its password from the secrets volume."""
    if not store.has_user(username):
        store.create_user(username, password, is_admin=False)
        return "created"
    if not store.authenticate_user(username, password) or store.get_user(username).is_admin:
        store.update_user(username, password=password, is_admin=False)
        return "reset"
    return "kept"


def create(store: SqlAlchemyStore, username: str, password: str | None, admin: bool) -> str:
    """Create a user; returns the password (generated when none is given)."""
    if store.has_user(username):
        raise ValueError(f"user {username!r} already exists (use set-password to change it)")
    password = password or generate()
    check_password(password)
    store.create_user(username, password, is_admin=admin)
    return password


def set_password(store: SqlAlchemyStore, username: str, password: str | None) -> str:
    if not store.has_user(username):
        raise ValueError(f"no user {username!r}")
    password = password or generate()
    check_password(password)
    store.update_user(username, password=password)
    return password


def delete(store: SqlAlchemyStore, username: str, admin_username: str) -> None:
    if username == admin_username:
        raise ValueError(f"{username!r} is the platform admin (MLSTACK_ADMIN_USERNAME): not deleted")
    if username in SERVICE_ACCOUNTS:
        raise ValueError(f"{username!r} is a service account of the trainer: not deleted")
    if not store.has_user(username):
        raise ValueError(f"no user {username!r}")
    store.delete_user(username)


def listing(store: SqlAlchemyStore) -> list[tuple[str, bool]]:
    return sorted((u.username, u.is_admin) for u in store.list_users())
