"""A job's states: the one list. The queue's CHECK constraint, the API's answers and the CLI's
`--follow` all use it (this module imports nothing, so the CLI stays light)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
