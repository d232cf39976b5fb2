"""Launches the MLflow tracking server (with the model registry, artifact proxy and basic auth)
under gunicorn, configured from the platform settings and secrets."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import settings
from .config import PlatformConfig

AUTH_INI = Path(os.environ.get("MLSTACK_AUTH_INI", "/tmp/mlstack/basic_auth.ini"))


def write_auth_ini(config: PlatformConfig, path: Path = AUTH_INI) -> Path:
    ini = configparser.ConfigParser()
    ini["mlflow"] = {
        "default_permission": config.default_permission,
        "database_uri": config.db_uri(config.auth_db),
        "admin_username": settings.secret("admin_username"),
        # MLflow's basic auth, with failed logins limited and constant-time refusals (login.py).
        "authorization_function": "mlstack_platform.login:authenticate",
        # Basic auth runs PBKDF2 on every request (~300 ms per call measured); the cache makes
        # a repeated credential cost a dictionary lookup. Changes made through the API take
        # effect at once on the worker that handled them, elsewhere within the TTL.
        "auth_cache_ttl_seconds": str(config.auth_cache_ttl_s),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        ini.write(f)
    return path


def gunicorn_options(config: PlatformConfig) -> str:
    return shlex.join([
        # Threads, not sync workers: gunicorn's timeout then guards against hung workers
        # without killing a slow multi-GB artifact upload that takes longer than the timeout.
        "--worker-class", "gthread",
        "--threads", str(config.threads),
        "--timeout", str(config.timeout_s),
        "--graceful-timeout", "30",
        "--keep-alive", "75",  # longer than nginx's upstream idle time
        # Recycle workers now and then so slow leaks cannot build up; jitter avoids all at once.
        "--max-requests", "20000",
        "--max-requests-jitter", "2000",
        # No access log: nginx logs every request from outside, with the user; gunicorn's
        # own line per request cost 6 % of MLflow's time under load (py-spy).
        # X-Forwarded-* believed from no peer (gunicorn's default is localhost alone): other
        # services share nginx's network, and MLflow builds no URL from them. The client
        # address for counting failed logins: login.py, from nginx alone.
        "--forwarded-allow-ips", "127.0.0.1,::1",
    ])


def command_and_env(config: PlatformConfig) -> tuple[list[str], dict[str, str]]:
    env = {
        # S3 credentials stay on the server: clients upload through the artifact proxy. MLflow's
        # own key reaches the artifact bucket alone (s3_user.py).
        "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
        "AWS_ACCESS_KEY_ID": settings.secret("s3_access_key"),
        "AWS_SECRET_ACCESS_KEY": settings.secret("s3_secret_key"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_ini(config)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": settings.secret("flask_secret_key"),
        # The flags --allowed-hosts/--cors-allowed-origins are refused with --gunicorn-opts,
        # but these variables are enforced all the same (tests/e2e prove it).
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(config.allowed_hosts()),
        # The UI's own pages, as the browser names them (with the port when it is not 443).
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": ",".join(config.origins()),
        # Background GenAI job runners (~2 GB RSS) that this platform does not use.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Two pools per worker (tracking and registry): workers x 2 x (size + overflow)
        # connections; see POSTGRES_MAX_CONNECTIONS in .env.example.
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(config.db_pool_size),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(config.db_max_overflow),
        "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "3600",
    }
    command = [
        "mlflow", "server",
        "--backend-store-uri", config.db_uri(config.mlflow_db),
        # s3-proxied: S3 without presigned URLs, see artifact_repo.py.
        "--artifacts-destination", f"s3-proxied://{config.bucket}",
        "--serve-artifacts",
        # MLflow's basic-auth app with the platform's TensorBoard routes (app.py).
        "--app-name", "mlstack",
        "--host", "0.0.0.0",
        "--port", "5000",
        "--workers", str(config.workers),
        "--gunicorn-opts", gunicorn_options(config),
    ]
    return command, env


def exec_server(config: PlatformConfig) -> None:
    command, env = command_and_env(config)
    drain_s = settings.integer("MLSTACK_DRAIN_SECONDS", 0, minimum=0, maximum=300)
    if drain_s == 0:
        os.execvpe(command[0], command, {**os.environ, **env})
    sys.exit(serve_then_drain(command, {**os.environ, **env}, drain_s))


def serve_then_drain(command: list[str], env: dict[str, str], drain_s: float) -> int:
    """One of several replicas (Swarm): told to stop, the server keeps serving for drain_s
    before gunicorn's own graceful stop. Swarm has already taken the replica out of its DNS
    by then, and nginx, which re-resolves every 10 s, stops sending to it meanwhile: a request
    on its way is never cut off (gunicorn closing a kept-alive connection that nginx has just
    reused would answer a POST with 502)."""
    server = subprocess.Popen(command, env=env)
    stopping: list[float] = []

    def stop(signum, _frame):
        if not stopping:
            print(f"[mlstack] stopping: serving {drain_s:g} s more while nginx moves to the "
                  "other replicas", flush=True)
            stopping.append(time.monotonic() + drain_s)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while server.poll() is None:
        if stopping and time.monotonic() >= stopping[0]:
            server.send_signal(signal.SIGTERM)
            return server.wait()
        time.sleep(0.2)
    return server.returncode
