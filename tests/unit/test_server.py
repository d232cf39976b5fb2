import configparser
import signal
import subprocess
import sys
import time

import pytest

from mlstack_platform import secrets_store, server
from mlstack_platform.config import PlatformConfig


@pytest.fixture
def config(secrets_dir, monkeypatch, tmp_path):
    secrets_store.ensure(secrets_dir)
    monkeypatch.setenv("MLSTACK_HOSTNAMES", "ml.example localhost")
    monkeypatch.setenv("MLFLOW_WORKERS", "3")
    monkeypatch.setenv("MLSTACK_HTTPS_PORT", "8443")
    monkeypatch.setattr(server, "AUTH_INI", tmp_path / "basic_auth.ini")
    return PlatformConfig.from_env()


def test_server_runs_under_gunicorn_with_artifacts_proxied_to_the_bucket(config):
    command, env = server.command_and_env(config)
    assert command[:2] == ["mlflow", "server"]
    def opt(flag: str) -> str:
        return command[command.index(flag) + 1]

    opts = {flag: opt(flag) for flag in ("--backend-store-uri", "--artifacts-destination",
                                         "--app-name", "--workers", "--gunicorn-opts")}
    assert opts["--backend-store-uri"].startswith("postgresql+psycopg2://mlflow:")
    assert opts["--backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert opts["--artifacts-destination"] == "s3-proxied://mlflow-artifacts"
    assert opts["--app-name"] == "mlstack"  # basic-auth plus the TensorBoard routes
    assert opts["--workers"] == "3"
    assert "--worker-class gthread" in opts["--gunicorn-opts"]
    assert "--serve-artifacts" in command
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_allowed_hosts_are_explicit_and_drop_mlflows_private_ip_patterns(config):
    _, env = server.command_and_env(config)
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "ml.example" in hosts and "ml.example:*" in hosts and "mlflow:*" in hosts
    assert not any(h.startswith(("10.", "192.168.", "172.")) for h in hosts)
    from mlflow.server.security_utils import is_allowed_host_header
    assert is_allowed_host_header(hosts, "ml.example:8443")
    assert not is_allowed_host_header(hosts, "10.evil.example")


def test_auth_ini_uses_its_own_database_and_caches_credentials(config):
    _, env = server.command_and_env(config)
    ini = configparser.ConfigParser()
    ini.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["database_uri"].endswith("/mlflow_auth")
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    # At most 10 s: a changed password is refused everywhere within 15 s.
    assert ini["mlflow"]["auth_cache_ttl_seconds"] == "10"
    assert ini["mlflow"]["admin_username"] == "admin"
    # The admin's password is not needed by the server: init created the user.
    assert "admin_password" not in ini["mlflow"]


def test_cors_allows_the_platforms_own_origins_only(config):
    from mlflow.server.security_utils import should_block_cors_request
    _, env = server.command_and_env(config)
    origins = env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].split(",")
    assert origins == ["https://ml.example:8443", "https://localhost:8443"]
    assert not should_block_cors_request("https://ml.example:8443", "POST", origins)
    assert should_block_cors_request("https://ml.example:9999", "POST", origins)
    assert should_block_cors_request("https://evil.example", "POST", origins)
    assert should_block_cors_request("https://ml.example.evil.example", "POST", origins)


# A server that notes when it is told to stop.
FAKE_SERVER = """
import signal, sys, time
def stop(*_):
    print("server stopped", round(time.monotonic(), 2), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("server up", flush=True)
time.sleep(60)
"""

DRAINING = """
import sys
from mlstack_platform.server import serve_then_drain
sys.exit(serve_then_drain([sys.executable, "-c", sys.argv[1]], {}, 1.5))
"""


def test_a_replica_told_to_stop_keeps_serving_for_the_drain_then_stops_its_server():
    wrapper = subprocess.Popen([sys.executable, "-c", DRAINING, FAKE_SERVER],
                               stdout=subprocess.PIPE, text=True)
    assert wrapper.stdout.readline().strip() == "server up"
    wrapper.send_signal(signal.SIGTERM)
    told = time.monotonic()
    line = wrapper.stdout.readline()
    assert line.startswith("[mlstack] stopping: serving 1.5 s more")
    stopped_at = float(wrapper.stdout.readline().split()[-1])
    assert stopped_at - told >= 1.4  # still serving during the drain
    assert wrapper.wait(timeout=10) == 0
