import os

import pytest

from mlstack_platform import settings
from mlstack_platform.config import PlatformConfig
from mlstack_platform.settings import SettingError


def test_defaults_apply_when_nothing_is_set(monkeypatch):
    for name in ("MLFLOW_WORKERS", "MLSTACK_HOSTNAMES", "MLFLOW_AUTH_DEFAULT_PERMISSION"):
        monkeypatch.delenv(name, raising=False)
    config = PlatformConfig.from_env()
    # Two per CPU, within 2..8.
    assert config.workers == min(8, max(2, 2 * len(os.sched_getaffinity(0))))
    assert config.hostnames == ["localhost", "127.0.0.1"]
    assert config.default_permission == "NO_PERMISSIONS"


def test_an_empty_value_counts_as_unset(monkeypatch):
    monkeypatch.setenv("MLFLOW_WORKERS", "  ")
    assert settings.integer("MLFLOW_WORKERS", 4) == 4


@pytest.mark.parametrize("name, value, needle", [
    ("MLFLOW_WORKERS", "four", "MLFLOW_WORKERS='four' is not a whole number"),
    ("MLFLOW_WORKERS", "0", "MLFLOW_WORKERS=0 is out of range"),
    ("MLFLOW_TIMEOUT_SECONDS", "5", "MLFLOW_TIMEOUT_SECONDS=5 is out of range"),
    ("MLFLOW_AUTH_DEFAULT_PERMISSION", "read", "is not one of: READ, EDIT, MANAGE, NO_PERMISSIONS"),
    ("MLSTACK_HOSTNAMES", "ok.example bad..name", "'bad..name' is not a host name"),
    ("MLSTACK_ARTIFACT_BUCKET", "My_Bucket", "'My_Bucket' is not a valid S3 bucket name"),
])
def test_malformed_settings_name_themselves(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        PlatformConfig.from_env()


def test_hostnames_accept_spaces_and_commas(monkeypatch):
    monkeypatch.setenv("MLSTACK_HOSTNAMES", "mlflow.example.com, 192.168.1.20 localhost")
    assert settings.hostnames("MLSTACK_HOSTNAMES", "") == [
        "mlflow.example.com", "192.168.1.20", "localhost"]


def test_a_missing_secret_says_which_service_must_run_first(secrets_dir):
    with pytest.raises(SettingError, match="init-secrets"):
        settings.secret("admin_password")


def test_host_names_and_limits_reach_nginx_and_the_jobs_api_as_parsed_once(monkeypatch,
                                                                          tmp_path):
    from mlstack_platform.__main__ import publish_front_door_settings

    monkeypatch.setenv("MLSTACK_HOSTNAMES", " ml.example.com,  localhost ,10.0.0.5")
    monkeypatch.setenv("MLSTACK_HTTPS_PORT", "8443")
    monkeypatch.setenv("TRAINER_MAX_CODE_MB", "200")
    monkeypatch.setattr(settings, "TLS_DIR", tmp_path / "tls")
    monkeypatch.setattr(settings, "TRAINER_SECRETS_DIR", tmp_path / "trainer")
    (tmp_path / "tls").mkdir()
    (tmp_path / "trainer").mkdir()
    publish_front_door_settings(PlatformConfig.from_env())
    # No comma, no stray space in nginx's server_name.
    assert (tmp_path / "tls" / "server_names.conf").read_text() == \
        "server_name ml.example.com localhost 10.0.0.5;\n"
    assert (tmp_path / "trainer" / "public_origins").read_text().split() == [
        "https://ml.example.com:8443", "https://localhost:8443", "https://10.0.0.5:8443"]
    # nginx's CORS map: exactly the platform's own origins.
    assert (tmp_path / "tls" / "cors_origins.conf").read_text().splitlines() == [
        '"https://ml.example.com:8443" $http_origin;', '"https://localhost:8443" $http_origin;',
        '"https://10.0.0.5:8443" $http_origin;']
    # Job uploads: nginx lets through twice what the jobs API accepts (code + 1 MB of spec),
    # so that the API, not nginx, answers an upload a little over the limit.
    assert (tmp_path / "tls" / "trainer_body_limit.conf").read_text() == \
        "client_max_body_size 402m;\n"
