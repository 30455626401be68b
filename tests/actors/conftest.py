"""Fixtures of the actor tests: a short runtime directory (ipc paths are
limited to 107 bytes) and the no-leftover-process checks.

multiprocessing starts two helpers per owner process and keeps them for its
lifetime: the resource tracker (for spawn and forkserver) and the fork
server. They are not actors and not leaks; every other child is.
"""

from __future__ import annotations

import shutil
import tempfile

import psutil
import pytest

HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(h in cmdline for h in HELPERS)


def live_children() -> list[psutil.Process]:
    """Children (recursive) of this process that are not multiprocessing's
    helpers. Zombies count: nobody reaped them."""
    return [p for p in psutil.Process().children(recursive=True) if not _is_helper(p)]


def _reap_and_report(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    desc = []
    for proc in procs:
        try:
            desc.append((proc.pid, proc.status()))
            proc.kill()
            proc.wait(10)
        except psutil.Error:
            pass
    return desc


@pytest.fixture(scope="module", autouse=True)
def no_child_left_by_module():
    """After the module (and its module-scoped actors) no child is left."""
    yield
    left = live_children()
    assert not left, f"child processes left behind (pid, status): {_reap_and_report(left)}"


@pytest.fixture(autouse=True)
def no_child_leaked_by_test():
    """A test leaves no child beyond those that existed when it started
    (module-scoped actors), whether it passed or failed."""
    before = {p.pid for p in live_children()}
    yield
    leaked = [p for p in live_children() if p.pid not in before]
    assert not leaked, f"child processes leaked (pid, status): {_reap_and_report(leaked)}"


@pytest.fixture(scope="module")
def runtime_dir():
    path = tempfile.mkdtemp(prefix="ldb-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
