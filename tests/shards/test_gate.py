"""The commit gate's directory (shards/gate.py): a private one goes with its gate."""

from __future__ import annotations

import gc
import os

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


def test_the_same_transaction_marked_by_many_at_once(tmp_path):
    """Snapshots in several processes may finish (and so mark) one
    transaction at the same time: each marking replaces the marker with
    the same contents, none fails, and one unmark removes it."""
    import threading

    gate = CommitGate(str(tmp_path))
    txid = b"\x00\x01" + bytes(14)
    errors: list[BaseException] = []

    def mark_often() -> None:
        try:
            for _ in range(300):
                gate.mark(txid, [0, 1])
        except BaseException as exc:      # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=mark_often) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (marker,) = gate.markers()
    assert marker[1:] == (txid, [0, 1])
    gate.unmark(marker[0])
    assert gate.markers() == [] and [n for n in os.listdir(tmp_path) if "applying" in n] == []
