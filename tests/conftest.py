"""Project-wide test fixtures.

``no_stray_processes`` runs around every test: a test must stop every process
it started, also when it fails. The stdlib's own helpers (the multiprocessing
resource tracker and forkserver, started once per test session by the first
'spawn'/'forkserver' child) are process-wide and not a test's to stop.
"""

from __future__ import annotations

import time

import psutil
import pytest

_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _is_helper(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(h in cmd for h in _STDLIB_HELPERS)


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_stray_processes():
    before = set(_children())
    yield
    deadline = time.monotonic() + 10.0          # a stopped process may take a moment to be reaped
    while True:
        new = [p for pid, p in _children().items()
               if pid not in before and not _is_helper(p) and p.is_running()
               and p.status() != psutil.STATUS_ZOMBIE]
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    desc = []
    for p in new:                                # report, then end them: never leak into the next test
        try:
            desc.append((p.pid, p.name(), p.status()))
            p.kill()
            p.wait(10)
        except psutil.NoSuchProcess:
            pass
    assert not new, f"processes left behind by this test (pid, name, status): {desc}"
