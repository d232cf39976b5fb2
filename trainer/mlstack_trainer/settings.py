"""The trainer's settings, read in one place: secret files first, then the environment, then
defaults. Two roles read them: the jobs API (`ApiSettings`: the queue's database, MLflow as its
admin service account) and the worker (`WorkerSettings`: only the platform's front door, with a
worker credential). Neither sees the other's secrets: each service mounts its own volume."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psycopg2

API_VERSION = "1"
# The front door as jobs and local workers reach it: nginx's alias on the `jobs` network,
# certified by the platform's own CA whatever certificate the public names use.
INTERNAL_URL = "https://mlstack.internal"
LOCAL_WORKER_ACCOUNT = "mlstack-worker"
SERVICE_ACCOUNT = "mlstack-trainer"  # trainer-api's MLflow admin account
JOB_IDENTITY_PREFIX = "mlstack-job-"


class SettingError(ValueError):
    """A setting is missing or malformed; the message names it and says what to fix."""


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def integer(name: str, default: int, minimum: int = 0) -> int:
    raw = env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a whole number: write e.g. {name}={default}")
    if value < minimum:
        raise SettingError(f"{name}={value} is too small: use at least {minimum}")
    return value


def boolean(name: str, default: bool) -> bool:
    raw = env(name, "true" if default else "false").lower()
    if raw not in ("true", "false"):
        raise SettingError(f"{name}={raw!r} is neither true nor false: write {name}=true or "
                           f"{name}=false")
    return raw == "true"


def secret(directory: Path, name: str) -> str:
    path = directory / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SettingError(f"{path} is missing: the init-secrets service writes it "
                           "(see docker compose logs init-secrets)")


@dataclass(frozen=True)
class ApiSettings:
    mlflow_uri: str
    db_host: str
    db_port: int
    logs_dir: Path
    # The logs remote workers send (they share no volume with the platform); trainer-api's own.
    remote_logs_dir: Path
    public_url: str  # where users open MLflow and TensorBoard: the links jobs carry
    origins: tuple[str, ...]  # state changes from any other Origin are refused
    lease_s: int
    max_code_bytes: int
    identity_cache_s: int
    secrets_dir: Path
    trainer_image: str = "mlstack/trainer"  # of this release: what every worker must run

    @classmethod
    def from_env(cls) -> ApiSettings:
        secrets_dir = Path(env("MLSTACK_TRAINER_SECRETS_DIR", "/var/lib/mlstack/trainer-secrets"))
        # Written by init-secrets from MLSTACK_HOSTNAMES and MLSTACK_HTTPS_PORT: one parser.
        origins = secret(secrets_dir, "public_origins").split()
        return cls(
            mlflow_uri=env("MLSTACK_MLFLOW_URL", "http://mlflow:5000"),
            db_host=env("POSTGRES_HOST", "postgres"),
            db_port=integer("POSTGRES_PORT", 5432, 1),
            logs_dir=Path(env("MLSTACK_JOB_LOGS", "/var/lib/mlstack/job-logs")),
            remote_logs_dir=Path(env("MLSTACK_REMOTE_JOB_LOGS",
                                     "/var/lib/mlstack/remote-job-logs")),
            public_url=origins[0],
            origins=tuple(origins),
            lease_s=integer("TRAINER_LEASE_SECONDS", 60, 10),
            max_code_bytes=integer("TRAINER_MAX_CODE_MB", 50, 1) * 1024 * 1024,
            # With MLflow's own cache (at most 10 s), a changed password is refused within 15 s.
            identity_cache_s=integer("TRAINER_IDENTITY_CACHE_SECONDS", 4, 0),
            secrets_dir=secrets_dir,
            trainer_image=env("MLSTACK_TRAINER_IMAGE", "mlstack/trainer"),
        )

    def connect(self):
        return psycopg2.connect(host=self.db_host, port=self.db_port, dbname="trainer",
                                user="trainer",
                                password=secret(self.secrets_dir, "trainer_db_password"),
                                connect_timeout=10)

    def use_service_account(self) -> None:
        """MLflow's own clients (MlflowClient, AuthServiceClient) read these."""
        os.environ["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        os.environ["MLFLOW_TRACKING_USERNAME"] = SERVICE_ACCOUNT
        os.environ["MLFLOW_TRACKING_PASSWORD"] = secret(self.secrets_dir,
                                                        "trainer_mlflow_password")


@dataclass(frozen=True)
class WorkerSettings:
    name: str
    platform_url: str  # the front door, as this worker and its jobs reach it
    username: str
    password: str
    ca_file: Path | None  # None: the system's CAs (a publicly trusted certificate)
    tb_root: Path
    logs_dir: Path
    jobs_dir: Path
    gpus: int
    pip_index_url: str | None
    image: str
    max_tensorboard_bytes: int  # per job: what the worker copies of its TensorBoard files
    # On a host of its own (docker-compose.worker.yml): no volume shared with the platform, so
    # logs and TensorBoard files are sent (remote.py).
    remote: bool = False

    @classmethod
    def from_env(cls) -> WorkerSettings:
        secrets_dir = Path(env("MLSTACK_WORKER_SECRETS_DIR", "/var/lib/mlstack/worker-secrets"))
        ca = Path(env("MLSTACK_CA_FILE", str(secrets_dir / "ca.crt")))
        return cls(
            name=env("TRAINER_WORKER_NAME", f"{socket.gethostname()}-{os.getpid()}"),
            platform_url=env("MLSTACK_URL", INTERNAL_URL).rstrip("/"),
            username=env("MLSTACK_WORKER_USERNAME", LOCAL_WORKER_ACCOUNT),
            # A remote worker's from its host's .env (scripts/workers create); a local one's
            # from the secret that init-secrets wrote.
            password=(os.environ.get("MLSTACK_WORKER_PASSWORD", "").strip()
                      or secret(secrets_dir, "worker_mlflow_password")),
            ca_file=ca if ca.exists() else None,
            tb_root=Path(env("MLSTACK_TB_ROOT", "/var/lib/mlstack/tb-logs")),
            logs_dir=Path(env("MLSTACK_JOB_LOGS", "/var/lib/mlstack/job-logs")),
            jobs_dir=Path(env("MLSTACK_JOBS_DIR", "/var/lib/mlstack/jobs")),
            gpus=integer("TRAINER_GPUS", count_gpus()),
            pip_index_url=env("TRAINER_PIP_INDEX_URL", "") or None,
            image=env("MLSTACK_TRAINER_IMAGE", "mlstack/trainer"),
            max_tensorboard_bytes=integer("TRAINER_MAX_TENSORBOARD_MB", 2048, 1) * 1024 * 1024,
            remote=boolean("TRAINER_REMOTE", False),
        )


def count_gpus() -> int:
    """NVIDIA GPUs visible to this container (the GPU overlay passes them in)."""
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])
