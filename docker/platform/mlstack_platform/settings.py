"""The platform's settings, read in one place: a secret file first, then the environment, then a
default. Every reader fails with `SettingError` naming the setting and what to write instead, so a
bad `.env` stops `init` with a clear message rather than half-starting the stack."""

from __future__ import annotations

import os
import re
from pathlib import Path

SECRETS_DIR = Path(os.environ.get("MLSTACK_SECRETS_DIR", "/var/lib/mlstack/secrets"))
TLS_DIR = Path(os.environ.get("MLSTACK_TLS_DIR", "/var/lib/mlstack/tls"))
TRAINER_SECRETS_DIR = Path(os.environ.get("MLSTACK_TRAINER_SECRETS_DIR",
                                          "/var/lib/mlstack/trainer-secrets"))
WORKER_SECRETS_DIR = Path(os.environ.get("MLSTACK_WORKER_SECRETS_DIR",
                                         "/var/lib/mlstack/worker-secrets"))
TENSORBOARD_SECRETS_DIR = Path(os.environ.get("MLSTACK_TENSORBOARD_SECRETS_DIR",
                                              "/var/lib/mlstack/tensorboard-secrets"))
# In init-secrets alone: the CA (its key above all), and each long-running service's own
# secrets volume, one folder per service (which mounts it as its SECRETS_DIR).
CA_DIR = Path(os.environ.get("MLSTACK_CA_DIR", "/var/lib/mlstack/ca"))
SERVICE_SECRETS_ROOT = Path(os.environ.get("MLSTACK_SERVICE_SECRETS_ROOT",
                                           "/var/lib/mlstack/service-secrets"))


class SettingError(ValueError):
    """A setting is missing or malformed; the message names it and says what to fix."""


def text(name: str, default: str | None = None) -> str:
    """A setting's value from the environment (empty counts as unset), else `default`."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise SettingError(f"{name} is not set: set it in .env (see .env.example)")
    return default


def integer(name: str, default: int, minimum: int = 1, maximum: int = 1_000_000) -> int:
    raw = text(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a whole number: write e.g. {name}={default}")
    if not minimum <= value <= maximum:
        raise SettingError(f"{name}={value} is out of range: use {minimum}..{maximum}")
    return value


def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = text(name, default)
    if value not in allowed:
        raise SettingError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
    return value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def username(name: str, default: str) -> str:
    value = text(name, default)
    if not _NAME.match(value):
        raise SettingError(
            f"{name}={value!r} is not a valid user name: use letters, digits, '_', '.', '@', '-'"
        )
    return value


def hostnames(name: str, default: str) -> list[str]:
    """Space- or comma-separated host names or IPv4 addresses, e.g. 'mlflow.example.com localhost'."""
    values = [h for h in re.split(r"[\s,]+", text(name, default)) if h]
    for host in values:
        if not _HOST.match(host):
            raise SettingError(f"{name}: {host!r} is not a host name or IPv4 address")
    return values


def bucket(name: str, default: str) -> str:
    value = text(name, default)
    if not _BUCKET.match(value):
        raise SettingError(
            f"{name}={value!r} is not a valid S3 bucket name: 3-63 lower-case letters, digits, '.', '-'"
        )
    return value


def secret(name: str) -> str:
    """A secret that `mlstack-platform secrets` wrote on first start (or copied from .env)."""
    path = SECRETS_DIR / name
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise SettingError(
            f"secret {name!r} is missing from {SECRETS_DIR}: the init-secrets service must run "
            "first (docker compose up runs it; see docker compose logs init-secrets)"
        )
    if not value:
        raise SettingError(f"secret file {path} is empty: delete it and restart the stack")
    return value
