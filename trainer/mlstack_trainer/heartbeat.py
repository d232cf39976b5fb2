"""The worker's heartbeat file, and the container healthcheck that reads it.

Standard library only: Docker runs the check every 10 s, and importing the worker's modules
(requests, psycopg2) made each check cost ~0.14 s of CPU, the most of any service idle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_HEARTBEAT_FILE = Path("/tmp/mlstack-worker.heartbeat")


def beat(heartbeat_file: Path) -> None:
    heartbeat_file.write_text(str(time.time()))


def check(heartbeat_file: Path, max_age_s: float) -> int:
    """Healthcheck: 0 when the worker touched its heartbeat file within max_age_s."""
    try:
        age = time.time() - float(heartbeat_file.read_text())
    except (FileNotFoundError, ValueError):
        print("no heartbeat yet", file=sys.stderr)
        return 1
    if age > max_age_s:
        print(f"last heartbeat {age:.0f}s ago", file=sys.stderr)
        return 1
    return 0
