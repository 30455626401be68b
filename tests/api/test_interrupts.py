"""Ctrl-C (SIGINT, KeyboardInterrupt) in the middle of a write
(lightning_db/interrupts.py): a cross-shard commit and a large in-process
write finish whole first, then the KeyboardInterrupt is raised; a small
in-process write stopped between its WAL record and its memtable refuses
further writes until a reopen, which applies it. The signal is sent from
inside the write (a patched step), so where it lands is not left to chance."""

from __future__ import annotations

import os
import signal

import pytest

import lightning_db as ldb
from lightning_db.errors import BackgroundError
from lightning_db.shards import coordinator
from lightning_db.storage.memtable import Memtable


@pytest.fixture(autouse=True)
def default_sigint():
    """Python's own SIGINT handler (the one a program has unless it set another)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_at_first(monkeypatch, module, name, op):
    """Send SIGINT to this process as the first *op* ask goes out through *module.name*."""
    real = getattr(module, name)
    fired = []

    def wrapper(ref, o, payload, timeout):
        if o == op and not fired:
            fired.append(o)
            os.kill(os.getpid(), signal.SIGINT)
        return real(ref, o, payload, timeout)

    monkeypatch.setattr(module, name, wrapper)
    return fired


def test_a_cross_shard_put_many_finishes_whole_before_the_interrupt(tmp_path, monkeypatch):
    with ldb.open(tmp_path / "db", shards=2) as db:
        pairs = {b"k%04d" % i: b"v" * 50 for i in range(2000)}
        fired = _interrupt_at_first(monkeypatch, coordinator, "_send_here", "commit")
        with pytest.raises(KeyboardInterrupt):
            db.put_many(pairs)
        assert fired == ["commit"]
        monkeypatch.undo()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert len(list(db.scan(prefix=b"k"))) == 2000          # the whole batch, not part of it
        db.put_many({b"k0000": b"after", b"k1999": b"after"})   # nothing held: writes go on
        assert db.get_many([b"k0000", b"k1999"]) == [b"after", b"after"]


def test_a_cross_shard_transaction_finishes_whole_before_the_interrupt(tmp_path, monkeypatch):
    from tests.shards.test_router import keys_on_distinct_shards
    with ldb.open(tmp_path / "db", shards=2) as db:
        a, b = keys_on_distinct_shards(db.ring, b"acct")[:2]
        db.put_many({a: b"10", b: b"10"})
        _interrupt_at_first(monkeypatch, coordinator, "_send_here", "commit")
        with pytest.raises(KeyboardInterrupt):
            with db.transaction() as tx:
                tx.put(a, b"%d" % (int(tx.get(a)) - 3))
                tx.put(b, b"%d" % (int(tx.get(b)) + 3))
        monkeypatch.undo()
        assert db.get_many([a, b]) == [b"7", b"13"]
        db.put(a, b"0", sync=True)                              # no intent left behind
        assert db.get(a) == b"0"


def test_a_large_in_process_write_finishes_before_the_interrupt(tmp_path, monkeypatch):
    with ldb.open(tmp_path / "db", shards=0) as db:
        real = Memtable.add_batch

        def add_batch(self, first_seq, ops):
            os.kill(os.getpid(), signal.SIGINT)                  # lands inside the write
            return real(self, first_seq, ops)

        monkeypatch.setattr(Memtable, "add_batch", add_batch)
        with pytest.raises(KeyboardInterrupt):
            db.put_many({b"big%04d" % i: b"v" for i in range(500)})
        monkeypatch.undo()
        assert len(list(db.scan(prefix=b"big"))) == 500
        db.put(b"after", b"1")                                  # writes go on
        assert db.get(b"after") == b"1"


def test_a_small_in_process_write_stopped_half_way_refuses_writes_until_reopened(tmp_path, monkeypatch):
    path = tmp_path / "db"
    db = ldb.open(path, shards=0)
    try:
        db.put(b"before", b"0")
        real = Memtable.add_batch

        def add_batch(self, first_seq, ops):
            real(self, first_seq, ops[:1])                        # part of it added, then stopped
            raise KeyboardInterrupt

        monkeypatch.setattr(Memtable, "add_batch", add_batch)
        with pytest.raises(KeyboardInterrupt):
            db.put_many({b"s1": b"1", b"s2": b"2", b"s3": b"3"})
        monkeypatch.undo()
        with pytest.raises(BackgroundError, match="interrupted"):
            db.put(b"next", b"x")                               # it would reuse the stopped write's seqs
        assert db.get(b"before") == b"0" and db.get(b"s2") is None
    finally:
        db.close()
    with ldb.open(path, shards=0) as again:                     # the WAL record applies whole
        assert again.get_many([b"s1", b"s2", b"s3", b"next"]) == [b"1", b"2", b"3", None]
        again.put(b"next", b"x")
        assert again.get(b"next") == b"x"
