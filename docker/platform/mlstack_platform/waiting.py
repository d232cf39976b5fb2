"""A bounded wait for a dependency, ending in an error that says what to look at."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DependencyUnavailable(RuntimeError):
    pass


def wait_for(what: str, attempt: Callable[[], T], timeout_s: float, hint: str,
             fatal: Callable[[Exception], bool] = lambda exc: False) -> T:
    """Call `attempt` until it returns, for at most `timeout_s` seconds.

    An exception for which `fatal` is true (a wrong password, say) will not go away by waiting
    and propagates at once; anything else is taken as "not up yet".
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return attempt()
        except Exception as exc:  # noqa: BLE001 - any other failure means "not ready yet"
            if fatal(exc):
                raise
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(
                    f"{what} did not answer within {timeout_s:.0f}s ({exc}). {hint}"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 5)
