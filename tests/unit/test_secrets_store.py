import stat

import pytest

from mlstack_platform import secrets_store
from mlstack_platform.settings import SettingError


def test_first_start_generates_random_secrets_with_tight_permissions(secrets_dir):
    done = secrets_store.ensure(secrets_dir)
    assert done["admin_password"] == "generated"
    assert done["admin_username"] == "default"
    password = (secrets_dir / "admin_password").read_text().strip()
    assert len(password) >= 24 and password != "password1234"
    for spec in secrets_store.SECRETS:
        mode = stat.S_IMODE((secrets_dir / spec.file).stat().st_mode)
        assert mode == 0o600, spec.file
    # Another installation gets other secrets.
    other = secrets_dir.parent / "other"
    secrets_store.ensure(other)
    assert (other / "admin_password").read_text() != (secrets_dir / "admin_password").read_text()


def test_a_second_start_keeps_every_secret(secrets_dir):
    secrets_store.ensure(secrets_dir)
    before = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    done = secrets_store.ensure(secrets_dir)
    assert set(done.values()) == {"kept"}
    assert {p.name: p.read_text() for p in secrets_dir.iterdir()} == before


def test_a_value_from_env_wins_over_the_generated_one(secrets_dir, monkeypatch):
    secrets_store.ensure(secrets_dir)
    monkeypatch.setenv("MLSTACK_ADMIN_PASSWORD", "operator-chosen-password")
    assert secrets_store.ensure(secrets_dir)["admin_password"] == "from .env"
    assert (secrets_dir / "admin_password").read_text().strip() == "operator-chosen-password"


def test_a_bad_env_value_is_refused_and_nothing_is_written(secrets_dir, monkeypatch):
    secrets_store.ensure(secrets_dir)
    before = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "a-good-minio-password")  # valid, comes first
    monkeypatch.setenv("MLSTACK_ADMIN_PASSWORD", "short")
    with pytest.raises(SettingError, match="MLSTACK_ADMIN_PASSWORD is too short"):
        secrets_store.ensure(secrets_dir)
    assert {p.name: p.read_text() for p in secrets_dir.iterdir()} == before


def test_a_malformed_admin_user_name_is_refused(secrets_dir, monkeypatch):
    monkeypatch.setenv("MLSTACK_ADMIN_USERNAME", "bad name")
    with pytest.raises(SettingError, match="MLSTACK_ADMIN_USERNAME"):
        secrets_store.ensure(secrets_dir)
