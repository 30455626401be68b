"""Helpers of the actor tests (not fixtures: see conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll *cond* until it holds; fail after a generous *timeout*. Used to
    wait on state, never to race a clock."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
