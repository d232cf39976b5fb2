from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .stack import Stack

_failed = False


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _failed
    outcome = yield
    if outcome.get_result().failed:
        _failed = True


@pytest.fixture(scope="session")
def stack():
    """The real platform, brought up from docker-compose.yml once for all e2e tests and always
    torn down with its volumes. On any failure every service's state and logs are printed.

    For a quick loop while developing, MLSTACK_E2E_ATTACH=PROJECT:HTTPS_PORT:HTTP_PORT runs the
    tests against a stack you brought up yourself with those settings (and the ones in
    stack.py's Stack.env); it is left running."""
    attach = os.environ.get("MLSTACK_E2E_ATTACH")
    if attach:
        project, https_port, http_port = attach.split(":")
        s = Stack(project=project, https_port=int(https_port), http_port=int(http_port))
        (s.workdir / "empty.env").touch()
        s.ca_file.write_text(s.script("ca-cert").stdout)
        yield s
        return
    yield from running(Stack(project=f"mlstack-e2e-{os.getpid()}"))


def running(s: Stack):
    """Bring `s` up, yield it, print diagnostics if a test failed, always take it down."""
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.fail("the end-to-end tests need Docker with Compose v2 "
                    "(on a runner without registry access: see tests/standins/)")
    try:
        try:
            s.up()
        except subprocess.CalledProcessError as exc:
            # Straight to the terminal: pytest would otherwise keep it in its capture.
            sys.__stderr__.write(f"{exc.stdout}\n{exc.stderr}\n{s.diagnostics()}\n")
            raise
        yield s
        if _failed:
            sys.__stderr__.write(s.diagnostics() + "\n")
    finally:
        s.down()
