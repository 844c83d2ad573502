"""Waiting on a condition with a deadline, instead of sleeping a fixed time and hoping.

    from waiting import wait_for, wait_until_stable
    wait_for(lambda: path.exists(), 30, "the stage's status file")
    count = wait_until_stable(lambda: len(list(store.list(prefix))), 30, "the shard count", quiet=0.5)

Both raise AssertionError naming what they waited for (and the last value seen) when the deadline
passes, so a slow machine fails with a message instead of a flaky assertion further down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns something truthy (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def wait_until_stable(read: Callable[[], T], timeout: float, what: str, quiet: float = 0.5,
                      interval: float = 0.05) -> T:
    """Call ``read`` until its value has not changed for ``quiet`` seconds; return that value.
    For things that settle (e.g. uploads already in flight when their client died)."""
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while True:
        now = time.monotonic()
        if now - since >= quiet:
            return value
        if now >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} to settle (last: {value!r})")
        time.sleep(interval)
        new = read()
        if new != value:
            value, since = new, time.monotonic()
