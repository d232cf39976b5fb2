"""The pool of stock TensorBoard processes: one per selection, started on demand.

Why processes and not one TensorBoard with many logdirs: TensorBoard has no users, so the
only way to show a user just their experiments is a TensorBoard that can see nothing else.

Bounds: at most `max_resident` at once (starting one more stops the least recently used
that nobody used in the last `busy_s`; when all are busy the start is refused, 503, rather
than one user's burst of selections throwing out everyone else's), and any left idle for
`idle_s` is stopped. Starts happen one at a time. A process that died is noticed (by the periodic
check or the next request), logged and started again on the next request.

Each process runs in a session of its own so that stopping it (SIGTERM to its process group)
also stops the Rust data server that --load_fast=true starts beside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .selection import Selection

log = logging.getLogger(__name__)

Command = Callable[[Selection, int, Path], list[str]]


class StartFailed(Exception):
    """TensorBoard did not answer in time (or exited while starting), or the pool is full of
    TensorBoards in use."""


@dataclass
class _Process:
    selection: Selection
    proc: subprocess.Popen
    port: int
    started: float
    last_used: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


def free_port() -> int:
    # The port is free when asked; TensorBoard binds it a moment later. Should something take
    # it in between, TensorBoard exits and the request gets a 503; the next one retries.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    def __init__(self, command: Command, view_dir: Callable[[Selection], Path], *,
                 max_resident: int, idle_s: float, start_timeout_s: float = 60.0,
                 busy_s: float = 10.0):
        self._command = command
        self._view_dir = view_dir
        self.max_resident = max_resident
        self.idle_s = idle_s
        self.start_timeout_s = start_timeout_s
        self._procs: OrderedDict[str, _Process] = OrderedDict()  # least recently used first
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False)
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references
        self.busy_s = busy_s
        self._starting = asyncio.Lock()

    def resident(self) -> list[str]:
        return list(self._procs)

    async def ensure(self, selection: Selection) -> int:
        """The port of this selection's ready TensorBoard, starting it if needed.

        Concurrent callers for a selection that is starting wait for the same process
        (the first caller registers it before any await), so it starts once.
        """
        name = selection.name
        entry = self._procs.get(name)
        if entry is not None and entry.proc.poll() is not None:
            await self.stop(name, f"died, exit code {entry.proc.returncode}")
            entry = None
        if entry is None:
            async with self._starting:
                entry = self._procs.get(name) or await self._start(selection)
        if self._procs.get(name) is not entry:  # stopped meanwhile (deleted run, evicted)
            raise StartFailed(f"TensorBoard for {selection.title} was stopped; try again")
        entry.last_used = time.monotonic()
        self._procs.move_to_end(name)
        try:
            await asyncio.wait_for(entry.ready.wait(), self.start_timeout_s + 5)
        except TimeoutError:
            raise StartFailed(f"TensorBoard for {selection.title} did not start")
        if entry.failed:
            raise StartFailed(f"TensorBoard for {selection.title} did not start")
        return entry.port

    def touch(self, selection: Selection) -> None:
        entry = self._procs.get(selection.name)
        if entry is not None:
            entry.last_used = time.monotonic()

    async def _start(self, selection: Selection) -> _Process:
        name = selection.name
        now = time.monotonic()
        idle = [n for n, e in self._procs.items()  # least recently used first
                if e.ready.is_set() and now - e.last_used > self.busy_s]
        excess = len(self._procs) + 1 - self.max_resident
        if excess > len(idle):
            raise StartFailed(f"TensorBoard is busy: {len(self._procs)} experiment views are "
                              f"open and in use (at most {self.max_resident}); try again in a "
                              f"minute")
        for other in idle[:max(0, excess)]:
            await self.stop(other, f"evicted: more than {self.max_resident} resident")
        port = free_port()
        argv = self._command(selection, port, self._view_dir(selection))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        now = time.monotonic()
        entry = _Process(selection, proc, port, now, now)
        self._procs[name] = entry  # before any await: concurrent callers find it
        log.info("started TensorBoard for %s (pid %d, port %d)", selection.title, proc.pid, port)
        task = asyncio.get_running_loop().create_task(self._wait_ready(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return entry

    async def _wait_ready(self, entry: _Process) -> None:
        url = f"http://127.0.0.1:{entry.port}/tensorboard/{entry.selection.name}/data/environment"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and entry.proc.poll() is None:
            try:
                if (await self._client.get(url)).status_code == 200:
                    log.info("TensorBoard for %s answers after %.1f s", entry.selection.title,
                             time.monotonic() - entry.started)
                    entry.ready.set()
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        entry.failed = True
        entry.ready.set()
        code = entry.proc.poll()
        why = (f"did not start: exited with code {code}" if code is not None
               else f"did not start within {self.start_timeout_s:g} s")
        if self._procs.get(entry.selection.name) is entry:
            await self.stop(entry.selection.name, why)

    async def stop(self, name: str, reason: str) -> None:
        entry = self._procs.pop(name, None)
        if entry is None:
            return
        await _terminate(entry.proc)
        log.info("stopped TensorBoard for %s (pid %d): %s", entry.selection.title, entry.proc.pid,
                 reason)

    async def check(self) -> None:
        """Periodic: stop idle processes, notice (and reap) dead ones."""
        now = time.monotonic()
        for name, entry in list(self._procs.items()):
            if entry.proc.poll() is not None:
                await self.stop(name, f"died, exit code {entry.proc.returncode}")
            elif entry.ready.is_set() and now - entry.last_used > self.idle_s:
                await self.stop(name, f"idle for {self.idle_s / 60:g} min")

    async def run_checks(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:  # the checker must outlive any one failure
                log.exception("pool check failed")

    async def close(self) -> None:
        # All at once: `docker stop` waits 10 s before SIGKILL, for the whole container.
        await asyncio.gather(*[self.stop(name, "router exiting") for name in list(self._procs)])
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()


async def _terminate(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after the grace period, reap."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is not None:
            # The leader is reaped; make sure the rest of its group (data server) is gone too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
