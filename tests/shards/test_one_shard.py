"""One worker (``shards=1``): no commit spans shards, so a snapshot's cut
takes neither the commit gate nor a look for apply markers
(shards/snapshot.py), and snapshots, transactions and batches keep their
guarantees without them."""

from __future__ import annotations

import threading

import pytest

import lightning_db as ldb
from lightning_db import TransactionConflict


@pytest.fixture
def one(tmp_path, monkeypatch):
    db = ldb.open(tmp_path / "db", shards=1)

    def refused(*args, **kwargs):
        raise AssertionError("a cut on one shard took the commit gate")

    monkeypatch.setattr(db.gate, "exclusive", refused)
    monkeypatch.setattr(db.gate, "markers", refused)
    try:
        yield db
    finally:
        db.close()


def test_a_snapshot_is_a_cut_without_the_gate(one):
    one.put_many({b"a": b"1", b"b": b"1"})
    with one.snapshot() as snap:
        with one.batch() as b:
            b.put(b"a", b"2")
            b.put(b"b", b"2")
        assert snap.get(b"a") == b"1" and snap.get(b"b") == b"1"
        assert list(snap.scan()) == [(b"a", b"1"), (b"b", b"1")]
    assert one.get_many([b"a", b"b"]) == [b"2", b"2"]


def test_transactions_still_conflict_and_isolate(one):
    one.put(b"n", b"0")
    with pytest.raises(TransactionConflict):
        with one.transaction() as t1:
            assert t1.get(b"n") == b"0"
            with one.transaction() as t2:
                t2.put(b"n", b"t2")
            assert t1.get(b"n") == b"0"          # its snapshot, not t2's write
            t1.put(b"n", b"t1")
    assert one.get(b"n") == b"t2"


def test_concurrent_increments_lose_nothing(one):
    one.put(b"counter", b"0")
    per_thread, threads = 60, 4

    def incr(tx):
        tx.put(b"counter", b"%d" % (int(tx.get(b"counter")) + 1))

    def work():
        for _ in range(per_thread):
            one.run_transaction(incr, retries=1000)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts)
    assert one.get(b"counter") == b"%d" % (per_thread * threads)
