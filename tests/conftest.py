"""Project-wide test fixtures.

Every test must stop every process it started, also when it fails:
``no_stray_processes`` checks that around each test and ``no_child_left``
after each module (module-scoped actors included). The stdlib's own helpers
(the multiprocessing resource tracker and fork server, started once per
owner process by the first 'spawn'/'forkserver' child and kept for its
lifetime) are not a test's to stop and are not counted.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import psutil
import pytest

_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _is_helper(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return any(h in cmd for h in _STDLIB_HELPERS)


def live_children() -> dict[int, psutil.Process]:
    """Children (recursive) of this process that are not stdlib helpers and
    not already reaped."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if not _is_helper(p) and p.status() != psutil.STATUS_ZOMBIE:
                out[p.pid] = p
        except psutil.Error:
            pass
    return out


def _end(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    """Report, then kill and reap: never leak into the next test."""
    desc = []
    for p in procs:
        try:
            desc.append((p.pid, p.name()))
            p.kill()
            p.wait(10)
        except psutil.Error:
            pass
    return desc


def _settle(before: set[int], seconds: float) -> list[psutil.Process]:
    """Processes not in *before* that are still alive after up to *seconds*
    (a process that was just stopped may take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while True:
        new = [p for pid, p in live_children().items() if pid not in before]
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_stray_processes():
    before = set(live_children())
    yield
    new = _settle(before, 10.0)
    assert not new, f"processes left behind by this test (pid, name): {_end(new)}"


@pytest.fixture(scope="module", autouse=True)
def no_child_left():
    """After a module (and its module-scoped fixtures) no child is left."""
    yield
    left = _settle(set(), 10.0)
    assert not left, f"processes left behind by this module (pid, name): {_end(left)}"


@pytest.fixture(scope="module")
def runtime_dir():
    """A short directory for ipc:// socket paths (limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ldb-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
