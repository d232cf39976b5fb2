from __future__ import annotations

import pytest

from mlstack_platform import settings


@pytest.fixture
def secrets_dir(tmp_path, monkeypatch):
    """An empty secrets volume, and no operator settings from the machine's environment."""
    directory = tmp_path / "secrets"
    monkeypatch.setattr(settings, "SECRETS_DIR", directory)
    for name in ("MLSTACK_ADMIN_USERNAME", "MLSTACK_ADMIN_PASSWORD", "MINIO_ROOT_USER",
                 "MINIO_ROOT_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    return directory


ADMIN = ("admin", "admin-password-for-tests")
ALICE = ("alice", "alice-password-for-tests")
BOB = ("bob", "bob-password-for-tests")


@pytest.fixture(scope="session")
def mlstack_app(tmp_path_factory):
    """The platform's MLflow app (--app-name mlstack) as a real server with basic auth, under
    gunicorn as on the platform: admin, and two plain users, alice and bob."""
    import sqlite3

    from mlflow.server.auth.client import AuthServiceClient

    from mlstack_platform import login, tensorboard_sync
    from tests.mlflow_server import mlflow_server

    root = tmp_path_factory.mktemp("mlflow-mlstack-app")
    # The queue table init creates on the platform (PostgreSQL); here, in MLflow's SQLite file.
    with sqlite3.connect(root / "mlflow.db") as db:
        db.execute(f"CREATE TABLE {tensorboard_sync.QUEUE} (run_uuid varchar(32) PRIMARY KEY, "
                   "requested_at bigint NOT NULL)")
    # The failed-logins table init creates in the auth database.
    with sqlite3.connect(root / "auth.db") as db:
        db.execute(login.CREATE_TABLE)
    with mlflow_server(root, admin=ADMIN, app="mlstack", gunicorn=True) as uri:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
            env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
            for username, password in (ALICE, BOB):
                AuthServiceClient(uri).create_user(username, password)
        yield {"uri": uri, "db": root / "mlflow.db"}
