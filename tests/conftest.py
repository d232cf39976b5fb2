"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from mlstack_platform import databases
from mlstack_platform.databases import Server

PASSWORD = "superuser-password-for-tests"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL: the image the compose file uses, started with Docker for the session."""
    image = os.environ.get("POSTGRES_IMAGE", "postgres:15.10-bookworm")
    name = f"mlstack-unit-pg-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-e",
                    f"POSTGRES_PASSWORD={PASSWORD}", "-p", "127.0.0.1::5432", image],
                   check=True, capture_output=True)
    try:
        port = subprocess.run(["docker", "port", name, "5432/tcp"], check=True,
                              capture_output=True, text=True).stdout.split(":")[-1].strip()
        server = Server("127.0.0.1", int(port), "postgres", PASSWORD)
        databases.wait_until_ready(server, timeout_s=60)
        yield server
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


