"""A real MLflow server on a free local port (sqlite, artifact proxy), for the trainer's tests and
benchmarks: what the trainer talks to inside the stack. Without `admin` it runs without auth;
with `admin` (user name, password) it runs MLflow's basic-auth app as the platform does
(docker/platform/mlstack_platform/server.py): nobody may read or write anything without a grant,
and `admin` is the one admin."""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Threads as on the platform; a short graceful stop so that a test's teardown is quick.
GUNICORN_OPTS = "--worker-class gthread --threads 4 --graceful-timeout 2"


# The platform's app uses its own authorization function (failed logins limited).
AUTH_FUNCTIONS = {"basic-auth": "mlflow.server.auth:authenticate_request_basic_auth",
                  "mlstack": "mlstack_platform.login:authenticate"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auth_env(root: Path, admin: tuple[str, str], authorization_function: str
              ) -> dict[str, str]:
    """The basic-auth app's settings: an ini file, the Flask secret and the first admin."""
    username, password = admin
    ini = configparser.ConfigParser()
    ini["mlflow"] = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": f"sqlite:///{root}/auth.db",
        "admin_username": username,
        "admin_password": password,
        "authorization_function": authorization_function,
        # As on the platform: a repeated credential costs no password hash (deleting a user
        # through the API still takes effect at once with the one worker here).
        "auth_cache_ttl_seconds": "60",
    }
    path = root / "basic_auth.ini"
    with open(path, "w") as f:
        ini.write(f)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(path),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only-flask-secret-key",
            "MLFLOW_AUTH_ADMIN_USERNAME": username, "MLFLOW_AUTH_ADMIN_PASSWORD": password}


@contextmanager
def mlflow_server(root: Path, admin: tuple[str, str] | None = None,
                  app: str = "basic-auth", gunicorn: bool = False) -> Iterator[str]:
    """The server's URI while the block runs; its log is root/server.log. `app`: with `admin`,
    MLflow's basic-auth app or the platform's (`mlstack`, which wraps it). `gunicorn`: serve the
    Flask app under gunicorn as the platform does, rather than under MLflow's default uvicorn
    (which answers some routes, artifact uploads among them, from FastAPI instead)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The caller's own client settings are not the server's.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    auth_args: list[str] = []
    if admin:
        env.update(_auth_env(root, admin, AUTH_FUNCTIONS[app]))
        # The platform's app believes X-Real-IP from nginx alone; here the tests play nginx.
        env["MLSTACK_TRUSTED_PROXY"] = "127.0.0.1"
        auth_args = ["--app-name", app]
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *auth_args, "--backend-store-uri",
         f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         *(["--gunicorn-opts", GUNICORN_OPTS] if gunicorn else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    tail = (root / "server.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the MLflow server on {uri} did not start:\n{tail}")
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
