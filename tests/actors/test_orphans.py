"""A kill -9 of the process that owns an actor leaves no orphan: the actor
(and multiprocessing's helpers of that owner) go away by themselves.

The owner is a middle process started here; it spawns an actor and is
killed with SIGKILL, so none of its cleanup runs. Three ways: spawn from the
main thread (PR_SET_PDEATHSIG), forkserver (the fork server dies with the
owner), spawn from a thread that has already ended (no PDEATHSIG: only the
lifeline pipe tells the actor).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil
import pytest

from .util import gone, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"middle process exited with {proc.returncode}: {proc.stderr.read()}")
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline()
    raise AssertionError(f"middle process said nothing within {timeout}s")


def _middle(runtime_dir: str, method: str, where: str, *extra: str) -> subprocess.Popen:
    """The middle process (orphan_middle.py). Its temporary files
    (multiprocessing's, such as the fork server's socket, which a killed
    owner never removes) go under *runtime_dir*, which the fixture removes."""
    return subprocess.Popen([sys.executable, "-m", "tests.actors.orphan_middle", method, where, runtime_dir, *extra],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": runtime_dir})


@pytest.mark.parametrize("method, where", [("spawn", "main"), ("forkserver", "main"), ("spawn", "thread")])
def test_kill_9_of_the_owner_leaves_no_orphan(runtime_dir, method, where):
    middle = _middle(runtime_dir, method, where)
    descendants: list[int] = []
    try:
        actor_pid = int(_read_line(middle, 120))
        descendants = [p.pid for p in psutil.Process(middle.pid).children(recursive=True)]
        assert actor_pid in descendants
        middle.kill()
        middle.wait(60)
        for pid in descendants:
            wait_until(lambda pid=pid: gone(pid), 60, f"descendant {pid} of the killed owner to exit")
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait(60)
        for pid in descendants:       # never leave one behind, even when the test failed
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        for stream in (middle.stdin, middle.stdout, middle.stderr):
            stream.close()


def test_an_owner_that_exits_without_stopping_its_actor_takes_it_along(runtime_dir):
    middle = _middle(runtime_dir, "spawn", "main", "exit")
    actor_pid = None
    try:
        actor_pid = int(_read_line(middle, 120))
        middle.stdin.write("exit\n")
        middle.stdin.flush()
        assert middle.wait(60) == 0, middle.stderr.read()
        assert gone(actor_pid)          # reaped by the owner's exit hook before it returned
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait(60)
        if actor_pid is not None and not gone(actor_pid):
            psutil.Process(actor_pid).kill()
        for stream in (middle.stdin, middle.stdout, middle.stderr):
            stream.close()
