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
