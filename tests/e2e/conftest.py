"""The e2e layer's stacks. Most modules share one stack (the `stack` fixture); a few bring up
stacks of their own (operations, upgrade). On a 2-core machine two stacks at once slow both
down, so the modules on the shared stack run first, the shared stack is taken down as soon as
no remaining test needs it, and the others follow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .stack import Stack

_failed = False
_shared: dict[str, object] = {}  # "stack" and its "lifecycle" generator while it is up


def _uses_shared(item) -> bool:
    return "stack" in item.fixturenames


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    # Whole modules move, in their own order (module fixtures stay contiguous).
    shared_modules = {item.module.__name__ for item in items if _uses_shared(item)}
    items.sort(key=lambda item: item.module.__name__ not in shared_modules)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _failed
    outcome = yield
    if outcome.get_result().failed:
        _failed = True


def pytest_runtest_teardown(item, nextitem):
    if "lifecycle" in _shared and (nextitem is None or not any(
            _uses_shared(later) for later in item.session.items[
                item.session.items.index(nextitem):])):
        _take_down_shared()


def _take_down_shared() -> None:
    lifecycle = _shared.pop("lifecycle", None)
    _shared.pop("stack", None)
    if lifecycle is not None:
        for _ in lifecycle:  # runs `running`'s cleanup: diagnostics on failure, then down
            pass


@pytest.fixture(scope="session")
def stack():
    """The real platform, brought up from docker-compose.yml once for all e2e tests that share
    it and always torn down with its volumes. On any failure every service's state and logs
    are printed.

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
    lifecycle = running(Stack(project=f"mlstack-e2e-{os.getpid()}"))
    _shared.update(lifecycle=lifecycle, stack=next(lifecycle))
    try:
        yield _shared["stack"]
    finally:
        _take_down_shared()


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
