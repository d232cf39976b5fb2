"""Generates the platform's secrets on first start and keeps them across restarts.

Each secret lives in its own file (mode 0600) in the secrets volume. A value set in `.env` wins
and is written over the stored one, so an operator can rotate it by editing `.env`; otherwise a
stored value is never overwritten. There is no well-known default anywhere.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .settings import SettingError


@dataclass(frozen=True)
class Secret:
    file: str
    env: str | None  # the .env setting that overrides it; None: always generated
    min_length: int = 12
    default: str | None = None  # a non-secret default (user names); None: random


SECRETS = (
    # PostgreSQL's superuser: used by init alone, so it is never an operator setting.
    Secret("postgres_password", None),
    Secret("mlflow_db_password", None),
    Secret("trainer_db_password", None),
    # TensorBoard's database role: reads which runs and experiments are active, nothing else.
    Secret("tensorboard_db_password", None),
    # The jobs API's MLflow admin account: creates each job's run and its job identity.
    Secret("trainer_mlflow_password", None),
    # The local workers' credential: an MLflow user with no grants (jobs API: claim, finish).
    Secret("worker_mlflow_password", None),
    Secret("minio_root_user", "MINIO_ROOT_USER", min_length=3, default="mlstack"),
    Secret("minio_root_password", "MINIO_ROOT_PASSWORD", min_length=8),
    # MLflow's own S3 key (MLflow, the janitor, the bucket commands): a MinIO user limited to
    # the artifact bucket, which init creates (s3_user.py).
    Secret("s3_access_key", None, default="mlstack-mlflow"),
    Secret("s3_secret_key", None),
    Secret("flask_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY", min_length=16),
    Secret("admin_username", "MLSTACK_ADMIN_USERNAME", min_length=1, default="admin"),
    # MLflow refuses admin passwords shorter than 12 characters.
    Secret("admin_password", "MLSTACK_ADMIN_PASSWORD", min_length=12),
)


def generate() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, value: str) -> None:
    """Write atomically with mode 0600, so a crash never leaves a half-written secret."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure(directory: Path = settings.SECRETS_DIR) -> dict[str, str]:
    """Make every secret exist; return what was done to each ('kept', 'generated', 'from .env').

    Every .env value is checked before anything is written, so a bad one changes nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[Path, str | None, str]] = []  # (file, value to write or None, what)
    for spec in SECRETS:
        path = directory / spec.file
        override = os.environ.get(spec.env, "").strip() if spec.env else ""
        stored = path.read_text().strip() if path.exists() else ""
        if override:
            if len(override) < spec.min_length:
                raise SettingError(
                    f"{spec.env} is too short ({len(override)} characters): use at least "
                    f"{spec.min_length}, or remove it from .env to have one generated"
                )
            if spec.file == "admin_username":
                settings.username(spec.env, "admin")
            plan.append((path, override if override != stored else None, "from .env"))
        elif stored:
            plan.append((path, None, "kept"))
        else:
            plan.append((path, spec.default or generate(),
                         "default" if spec.default else "generated"))
    for path, value, _ in plan:
        if value is not None:
            write_private(path, value)
    return {path.name: what for path, _, what in plan}


# What each long-running service's own volume holds, and nothing more: the store itself is
# mounted by the two one-shots alone (init-secrets, init), and the CA's key by init-secrets
# alone. PostgreSQL and MinIO: their superuser and root keys (read at first start). MLflow and
# the janitor: MLflow's database role and its S3 key, limited to the artifact bucket.
SERVICE_SECRETS = {
    "postgres": ("postgres_password",),
    "minio": ("minio_root_user", "minio_root_password"),
    "mlflow": ("mlflow_db_password", "s3_access_key", "s3_secret_key", "flask_secret_key",
               "admin_username"),
    "janitor": ("mlflow_db_password", "s3_access_key", "s3_secret_key"),
}


# The jobs API's two (its queue's database role, the MLflow admin account that mints job
# identities), the local workers' credential, TensorBoard's database role: in folders of
# their own (settings.TRAINER_SECRETS_DIR, WORKER_SECRETS_DIR, TENSORBOARD_SECRETS_DIR).
TRAINER_API_SECRETS = ("trainer_db_password", "trainer_mlflow_password")
WORKER_SECRETS = ("worker_mlflow_password",)
TENSORBOARD_SECRETS = ("tensorboard_db_password",)


def copy(names: tuple[str, ...], source: Path, target: Path, mode: int = 0o600) -> None:
    """Copy some secrets into another volume (for a service that must not see the rest).
    `mode` 0o640 lets the volume's group (10001) read them: the trainer worker runs as root
    without DAC_OVERRIDE, in that group, and the jobs it starts are in no group of ours."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        value = (source / name).read_text().strip()
        path = target / name
        if not path.exists() or path.read_text().strip() != value:
            write_private(path, value)
        path.chmod(mode)
    # A secret a service no longer uses (an older release gave it more) leaves its volume.
    for spec in SECRETS:
        if spec.file not in names:
            (target / spec.file).unlink(missing_ok=True)
