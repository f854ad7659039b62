"""One bounded wait: every "poll until ready or a deadline passes" loop uses wait_until."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float) -> T:
    """Call `predicate` until it returns something truthy, and return that. Once `timeout`
    seconds have passed (it is called at least once, also with timeout 0) return its last,
    falsy answer instead; the caller says what timing out means. Exceptions from the predicate
    propagate at once, which is how a predicate gives up early (e.g. a unit that failed).
    Between calls it sleeps `interval` seconds (never past the deadline)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result
        time.sleep(min(interval, remaining))
