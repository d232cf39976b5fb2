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
