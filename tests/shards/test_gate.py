"""The commit gate (shards/gate.py): its directory, apply markers, waiting on holders."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from lightning_db.errors import Timeout
from lightning_db.shards.gate import CommitGate


def test_a_private_directory_goes_on_close_and_when_the_gate_is_collected(tmp_path):
    g = CommitGate()
    d = g.directory
    with g.shared(5.0):
        pass
    assert os.path.isdir(d)
    g.close()
    assert not os.path.exists(d)
    g.close()                                         # twice is fine

    g = CommitGate()
    d = g.directory
    with g.shared(5.0):
        pass
    del g                                             # never closed: a router a caller forgot
    gc.collect()
    assert not os.path.exists(d)


def test_a_shared_directory_stays(tmp_path):
    d = str(tmp_path / "runtime")
    os.makedirs(d)
    g = CommitGate(d)
    with g.shared(5.0):
        pass
    g.close()
    del g
    gc.collect()
    assert os.path.isdir(d)


@pytest.mark.parametrize("shards", [[0, 1], list(range(0, 400, 3))])
def test_the_same_transaction_marked_by_many_at_once(tmp_path, shards):
    """Snapshots in several processes may finish (and so mark) one
    transaction at the same time: each marking replaces the marker with
    the same contents, none fails, and one unmark removes it (for a few
    participants and for many)."""
    import threading

    gate = CommitGate(str(tmp_path))
    txid = b"\x00\x01" + bytes(14)
    errors: list[BaseException] = []

    def mark_often() -> None:
        try:
            for _ in range(300):
                gate.mark(txid, shards)
        except BaseException as exc:      # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=mark_often) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (marker,) = gate.markers()
    assert marker[1:] == (txid, shards)
    gate.unmark(marker[0])
    assert gate.markers() == [] and [n for n in os.listdir(tmp_path) if "applying" in n] == []


def test_marking_recreates_a_runtime_directory_that_went(tmp_path):
    gate = CommitGate(str(tmp_path / "gone"))       # the node stopped: its runtime directory went
    assert not os.path.exists(gate.directory)
    path = gate.mark(b"\x00\x00" + bytes(14), [0, 2])
    assert gate.markers() == [(path, b"\x00\x00" + bytes(14), [0, 2])]


def test_a_held_gate_is_taken_once_let_go_and_times_out_while_held(tmp_path):
    """A snapshot waiting on commits gets the gate once the last one lets go
    (while the wait still yields the CPU, or later, sleeping), and raises
    Timeout if they hold it past its deadline."""
    gate = CommitGate(str(tmp_path))
    held, release = threading.Event(), threading.Event()

    def commit() -> None:
        with gate.shared(5):
            held.set()
            release.wait(30)

    for pause in (0.0005, 0.05):        # let go inside the yielding window, then after it
        t = threading.Thread(target=commit)
        t.start()
        assert held.wait(30)
        threading.Timer(pause, release.set).start()
        with gate.exclusive(30):
            assert release.is_set()     # only once the commit let go
        t.join(30)
        held.clear()
        release.clear()
    t = threading.Thread(target=commit)
    t.start()
    try:
        assert held.wait(30)
        start = time.monotonic()
        with pytest.raises(Timeout):
            with gate.exclusive(0.2):
                pass
        assert time.monotonic() - start >= 0.2
    finally:
        release.set()
        t.join(30)


def test_a_thread_reuses_its_descriptors_and_they_close_when_it_ends(tmp_path):
    import psutil

    gate = CommitGate(str(tmp_path))
    me = psutil.Process()
    seen: list[int] = []

    def commits() -> None:
        with gate.shared(5):
            pass
        seen.append(me.num_fds())
        for _ in range(50):
            with gate.shared(5):
                pass
            with gate.exclusive(5):
                pass
        seen.append(me.num_fds())

    before = me.num_fds()
    t = threading.Thread(target=commits)
    t.start()
    t.join(30)
    assert seen[0] == seen[1] == before + 2          # the two files, opened once
    gc.collect()
    assert me.num_fds() == before                     # closed with the thread


def test_a_nested_hold_on_one_thread_does_not_let_go_of_the_outer_one(tmp_path):
    gate = CommitGate(str(tmp_path))
    with gate.shared(5):
        with gate.shared(5):                          # fresh descriptors: the kept one is in use
            pass
        got: list[BaseException] = []

        def snapshot() -> None:
            try:
                with gate.exclusive(0.2):
                    pass
            except Timeout as exc:
                got.append(exc)

        t = threading.Thread(target=snapshot)
        t.start()
        t.join(30)
        assert len(got) == 1                          # the outer hold still holds
    with gate.exclusive(5):                           # and lets go at its end
        pass


def test_a_forked_child_opens_descriptors_of_its_own(tmp_path):
    """Descriptors inherited across a fork share one lock with the parent's:
    a child holding the gate exclusive through them would have it turned
    shared by the parent's next commit. The child opens its own, so the
    parent's commit waits for the child's snapshot."""
    gate = CommitGate(str(tmp_path))
    with gate.shared(5):                              # this thread keeps its descriptors
        pass
    held_r, held_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child: a snapshot held until told, twice
        code = 0
        try:
            for _ in range(2):
                with gate.exclusive(5):
                    os.write(held_w, b"x")
                    os.read(go_r, 1)
                os.write(held_w, b"-")                # let go, and still alive
                os.read(go_r, 1)
        except BaseException:                         # noqa: BLE001 - reported by the exit code
            code = 2
        os._exit(code)
    try:
        for _ in range(2):
            assert os.read(held_r, 1) == b"x"
            with pytest.raises(Timeout):
                with gate.shared(0.3):
                    pass
            os.write(go_w, b"x")
            assert os.read(held_r, 1) == b"-"
            with gate.shared(5):                      # the child's snapshot let go of the gate
                pass
            os.write(go_w, b"x")
    finally:
        os.write(go_w, b"xxxx")
        _, status = os.waitpid(pid, 0)
        for fd in (held_r, held_w, go_r, go_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    with gate.exclusive(5):
        pass


def test_a_forked_child_keeps_no_copy_of_any_threads_descriptors(tmp_path):
    """A lock stays while any descriptor of its open file description is
    open: a child holding copies of the parent's kept descriptors would
    keep a gate the parent held when it died locked for as long as the
    child lives. Every thread's copies are closed in the child."""
    gate = CommitGate(str(tmp_path))
    started, stop = threading.Event(), threading.Event()

    def committer() -> None:
        with gate.shared(5):
            pass
        started.set()
        stop.wait(30)

    t = threading.Thread(target=committer)
    t.start()
    try:
        assert started.wait(30)
        with gate.exclusive(5):
            pass
        files = {os.path.realpath(gate._gate), os.path.realpath(gate._turnstile)}
        pid = os.fork()
        if pid == 0:
            held = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    held += os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) in files
                except OSError:
                    pass
            os._exit(min(held, 100))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        t.join(30)
