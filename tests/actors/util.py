"""Helpers of the actor tests (not fixtures: see conftest.py)."""

from __future__ import annotations


import psutil
from tests.waiting import wait_until  # noqa: F401  (re-exported)


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
