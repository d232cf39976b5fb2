"""The worker's promise about its lease: a job whose lease it cannot renew (the platform is
unreachable, or answers too slowly) is gone before the lease runs out by the worker's own
clock, however slowly the failing heartbeats fail and whatever the job does with SIGTERM: after
that the platform may hand the job to another worker."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from mlstack_trainer.worker import Timing, Worker

LEASE_S = 6


class Unreachable:
    """A platform whose every heartbeat hangs until the caller's timeout, then fails."""

    def heartbeat(self, job_id: int, timeout_s: float = 10) -> bool:
        time.sleep(timeout_s)
        raise requests.ConnectTimeout("the platform did not answer")


@pytest.mark.parametrize("job", [
    ["sleep", "600"],
    ["sh", "-c", "trap '' TERM; sleep 600"],  # ignores SIGTERM: only SIGKILL ends it
])
def test_a_job_whose_lease_cannot_be_renewed_is_gone_before_the_lease_runs_out(tmp_path, job):
    worker = Worker(settings=None, api=Unreachable(),
                    timing=Timing(heartbeat_s=1, kill_grace_s=10,
                                  heartbeat_file=tmp_path / "heartbeat"))
    process = subprocess.Popen(job, start_new_session=True)  # its own group, as a job's
    try:
        started = time.monotonic()  # the lease began no earlier than this
        state, error = worker._supervise(1, timeout_s=600, lease_s=LEASE_S, process=process)
        ended = time.monotonic()
        assert (state, error) == ("lost", "could not renew the lease: the platform was "
                                          "unreachable")
        assert process.poll() is not None
        assert ended - started < LEASE_S
    finally:
        process.kill()
