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


def test_each_service_gets_its_own_secrets_and_the_ca_key_stays_with_init_secrets(
        secrets_dir, tmp_path, monkeypatch):
    """What init-secrets writes into each volume. A release that kept the CA in the store
    (or a backup of one, restored there) has it moved to the CA's own volume."""
    from mlstack_platform import settings, tls
    from mlstack_platform.__main__ import run_secrets
    from mlstack_platform.config import PlatformConfig

    for name in ("TLS_DIR", "TRAINER_SECRETS_DIR", "WORKER_SECRETS_DIR",
                 "TENSORBOARD_SECRETS_DIR", "CA_DIR", "SERVICE_SECRETS_ROOT"):
        monkeypatch.setattr(settings, name, tmp_path / name.lower())
    monkeypatch.setenv("MLSTACK_USER_TLS_CERT", str(tmp_path / "none"))
    monkeypatch.setenv("MLSTACK_USER_TLS_KEY", str(tmp_path / "none"))
    old_ca = secrets_dir / "ca"
    tls.ensure_ca(old_ca, PlatformConfig.from_env().hostnames)
    old_key = (old_ca / "ca.key").read_text()
    (tmp_path / "service_secrets_root" / "mlflow").mkdir(parents=True)
    (tmp_path / "service_secrets_root" / "mlflow" / "admin_password").write_text("stale\n")

    run_secrets(PlatformConfig.from_env())

    assert not old_ca.exists()
    assert (settings.CA_DIR / "ca.key").read_text().strip() == old_key.strip()  # moved
    files = {service: sorted(p.name for p in (settings.SERVICE_SECRETS_ROOT / service).iterdir())
             for service in secrets_store.SERVICE_SECRETS}
    assert files == {service: sorted(names)
                     for service, names in secrets_store.SERVICE_SECRETS.items()}
    every = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != secrets_dir]
    assert not any(p.name == "ca.key" for p in every if p.parent != settings.CA_DIR)
    # The admin password and PostgreSQL's superuser live in the store alone.
    assert not [p for p in every if p.name == "admin_password"]
    assert {p.parent.name for p in every if p.name == "postgres_password"} == {"postgres"}
    for service, names in secrets_store.SERVICE_SECRETS.items():
        for name in names:
            path = settings.SERVICE_SECRETS_ROOT / service / name
            assert path.read_text() == (secrets_dir / name).read_text()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
