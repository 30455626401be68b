"""The tree over real child processes (spawn start method): a SIGKILLed
child is found dead and restarted, a SIGSTOPped one is found hung by its
heartbeats, killed and restarted, and stop() falls back to SIGKILL. Every
test stops its tree in a finally; ``no_leftover_processes`` checks that no
child process survives it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import psutil
import pytest

from lightning_db.supervisor import ChildSpec, Exit, PidChild, ProcessChild, Supervisor, spawn_child

from . import _children
from .conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

CTX = multiprocessing.get_context("spawn")


def start_beating(target=_children.beat) -> ProcessChild:
    """Spawn a child that counts heartbeats into shared memory; return once
    it has counted one (OTP's start_link also waits for init)."""
    counter = CTX.Value("Q", 0, lock=False)
    child = spawn_child(target, (counter,))
    child.counter = counter  # type: ignore[attr-defined]
    try:
        wait_until(lambda: counter.value > 0, what="the child's first heartbeat")
    except BaseException:
        child.kill()
        raise
    return child


class CounterHeartbeat:
    """A heartbeat answered when the child's counter moved since last asked."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def __call__(self, child: ProcessChild) -> bool:
        value = child.counter.value  # type: ignore[attr-defined]
        moved = self.seen.get(child.pid) != value
        self.seen[child.pid] = value
        return moved


def test_a_sigkilled_child_is_found_dead_and_restarted():
    sup = Supervisor([ChildSpec("w", start_beating, shutdown_timeout=2.0)])
    try:
        sup.start()
        old = sup.which_children()[0].child
        os.kill(old.pid, signal.SIGKILL)
        events = []
        wait_until(lambda: events.extend(sup.poll()) or events, what="the exit to be seen")
        assert events == [Exit("root", "w", "killed by SIGKILL")]
        new = sup.which_children()[0].child
        assert new.pid != old.pid and new.is_alive() and not old.is_alive()
    finally:
        sup.stop()
    assert not new.is_alive() and new.exit_reason == "killed by SIGTERM"


def test_a_sigstopped_child_misses_heartbeats_and_is_killed_and_restarted():
    sup = Supervisor([ChildSpec("w", start_beating, shutdown_timeout=2.0)], heartbeat=CounterHeartbeat(),
                     heartbeat_interval=0.05, max_missed_heartbeats=3)
    try:
        sup.start()
        old = sup.which_children()[0].child
        for _ in range(3):                         # a beating child is left alone
            wait_until(lambda: sup.stats()["children"]["w"]["missed_heartbeats"] == 0)
            assert sup.poll() == []
        os.kill(old.pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(old.pid).status() == psutil.STATUS_STOPPED, what="SIGSTOP")
        assert old.is_alive()                      # stopped is not dead: only heartbeats notice
        events = []
        wait_until(lambda: events.extend(sup.poll()) or events, what="the hang to be seen")
        assert events == [Exit("root", "w", "hung")]
        assert old.exitcode == -signal.SIGKILL
        new = sup.which_children()[0].child
        assert new.pid != old.pid and new.is_alive()
        before = new.counter.value
        wait_until(lambda: new.counter.value > before, what="the replacement to beat")
        assert sup.stats()["children"]["w"]["hang_kills"] == 1
    finally:
        sup.stop()


def test_stop_kills_a_child_that_ignores_sigterm():
    child = start_beating(_children.beat_ignoring_sigterm)
    try:
        child.stop(0.2)
        assert not child.is_alive() and child.exit_reason == "killed by SIGKILL"
    finally:
        child.kill()


def test_pid_child_watches_a_process_by_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child = PidChild(proc.pid)
        assert child.pid == proc.pid and child.is_alive() and child.exit_reason is None
        child.kill()
        assert not child.is_alive() and child.exit_reason == "killed by SIGKILL"
    finally:
        proc.kill()
        proc.wait()
