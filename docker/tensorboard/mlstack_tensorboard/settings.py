"""The service's settings, from the environment, checked once at start.

A wrong value stops the service with a message that names the variable and says what it
expects, instead of a traceback from deep inside the pool.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


class SettingError(Exception):
    """A setting the operator must fix; its message says which and how."""


@dataclass(frozen=True)
class Settings:
    tb_root: Path
    views_root: Path
    reload_seconds: int
    max_resident: int
    idle_minutes: float
    start_timeout_s: float
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password_file: Path
    tensorboard_binary: str


def _int(env, name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected a whole number >= {minimum} (default {default})")
    if value < minimum:
        raise SettingError(f"{name}={raw!r}: expected a whole number >= {minimum} (default {default})")
    return value


def _float(env, name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected a number > {minimum:g} (default {default:g})")
    if not value > minimum or value != value or value == float("inf"):
        raise SettingError(f"{name}={raw!r}: expected a number > {minimum:g} (default {default:g})")
    return value


def _default_tensorboard() -> str:
    # The `tensorboard` of the venv the router runs from (/opt/venv in the image, .venv in
    # tests), so PATH order cannot pick a different TensorBoard.
    beside = Path(sys.executable).parent / "tensorboard"
    return str(beside) if beside.exists() else (shutil.which("tensorboard") or "tensorboard")


# Measured with --load_fast=true (see __main__.load_fast): a resident TensorBoard over one
# experiment costs ~50 MiB of its own memory (USS, ~87 MiB RSS with shared pages), one over 50
# experiments ~100 MiB; the router ~45 MiB. The router with 10 residents (8 single experiments,
# `1,2,3` and `all`) came to 557 MiB USS (947 MiB summed RSS): 10 leaves room in the default 2 GiB
# limit for experiments with far more data than the test set (images, histograms, long runs).
DEFAULT_MAX_RESIDENT = 10
DEFAULT_IDLE_MINUTES = 10.0


def load(env=None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        tb_root=Path(env.get("MLSTACK_TB_ROOT") or "/var/lib/mlstack/tb-logs"),
        views_root=Path(env.get("MLSTACK_TB_VIEWS") or "/tmp/mlstack-tb-views"),
        reload_seconds=_int(env, "TENSORBOARD_RELOAD_SECONDS", 5, 1),
        max_resident=_int(env, "TENSORBOARD_MAX_RESIDENT", DEFAULT_MAX_RESIDENT, 1),
        idle_minutes=_float(env, "TENSORBOARD_IDLE_MINUTES", DEFAULT_IDLE_MINUTES, 0),
        start_timeout_s=_float(env, "MLSTACK_TB_START_TIMEOUT_SECONDS", 60.0, 0),
        db_host=env.get("MLSTACK_TB_DB_HOST") or "postgres",
        db_port=_int(env, "MLSTACK_TB_DB_PORT", 5432, 1),
        db_name=env.get("MLSTACK_TB_DB_NAME") or "mlflow",
        db_user=env.get("MLSTACK_TB_DB_USER") or "mlstack_tensorboard",
        db_password_file=Path(env.get("MLSTACK_TB_DB_PASSWORD_FILE")
                              or "/var/lib/mlstack/tensorboard-secrets/tensorboard_db_password"),
        tensorboard_binary=env.get("MLSTACK_TB_BINARY") or _default_tensorboard(),
    )
