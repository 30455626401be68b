"""Transaction snapshots that go unregistered (shards/snapshot.py): while
this process registered one on every shard lately, the next ones send no
registration and no release; they are registered at a read after LATE_S or
at a scan, expire past TOO_LATE_S or when a shard restarted, and the
shards keep what they read and still catch their conflicts."""

from __future__ import annotations

import time

import pytest

import lightning_db as ldb
from lightning_db import TransactionConflict, TransactionExpired
from lightning_db.actors.runtime import ActorRef
from lightning_db.shards import snapshot as snapshot_module
from tests.shards.test_router import keys_on_distinct_shards


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    db = ldb.open(tmp_path_factory.mktemp("reg") / "db", shards=2)
    yield db
    db.close()


@pytest.fixture
def sent(monkeypatch):
    """The ops of every tell sent meanwhile (registrations and releases go as tells)."""
    ops: list[str] = []
    tell, tell_here = ActorRef.tell, ActorRef.tell_here
    monkeypatch.setattr(ActorRef, "tell", lambda self, op, *a, **k: (ops.append(op), tell(self, op, *a, **k))[1])
    monkeypatch.setattr(ActorRef, "tell_here",
                        lambda self, op, *a, **k: (ops.append(op), tell_here(self, op, *a, **k))[1])
    return ops


def _registered(db) -> int:
    return db.stats()["tx_registered"]


@pytest.fixture
def quiet(sharded, monkeypatch):
    """One registered transaction (the shards track writes), then the next
    ones go unregistered whatever the time they take."""
    sharded.tx_registered = (-1e9, [])
    with sharded.transaction() as tx:
        tx.get(b"any key")
    incs = [sharded._incarnation(s) for s in range(len(sharded.refs))]
    monkeypatch.setattr(sharded, "tx_registered", (time.monotonic() + 3600, incs))
    return sharded


def test_a_transaction_after_a_registered_one_sends_neither_registration_nor_release(sharded, sent):
    a, b = keys_on_distinct_shards(sharded.ring, b"quiet")[:2]
    sharded.put_many({a: b"0", b: b"0"})
    sharded.tx_registered = (-1e9, [])
    with sharded.transaction() as tx:               # registered: it keeps the shards tracking
        assert tx.get(a) == b"0"
        tx.put(a, b"1")
    assert sent.count("register") == 2
    del sent[:]
    for n in range(5):
        with sharded.transaction() as tx:
            assert tx.get(a) == b"%d" % (n + 1) and tx.get(b) == b"%d" % n
            assert not tx._view.snap.registered
            tx.put(a, b"%d" % (n + 2))
            tx.put(b, b"%d" % (n + 1))
    assert "register" not in sent and "release" not in sent
    assert sharded.get_many([a, b]) == [b"6", b"5"]


def test_an_unregistered_transaction_still_meets_its_conflicts(quiet):
    sharded = quiet
    a, b = keys_on_distinct_shards(sharded.ring, b"lost")[:2]
    sharded.put_many({a: b"0", b: b"0"})
    tx = sharded.transaction()
    assert tx.get(a) == b"0" and not tx._view.snap.registered
    tx.put(a, b"from the transaction")
    tx.put(b, b"from the transaction")
    sharded.put(a, b"written after its snapshot")
    with pytest.raises(TransactionConflict):
        tx.commit()
    assert sharded.get_many([a, b]) == [b"written after its snapshot", b"0"]


def test_one_open_past_LATE_S_is_registered_at_its_next_read(quiet, monkeypatch, sent):
    sharded = quiet
    a, b = keys_on_distinct_shards(sharded.ring, b"late")[:2]
    sharded.put_many({a: b"0", b: b"0"})
    base = _registered(sharded)
    monkeypatch.setattr(snapshot_module, "LATE_S", 0.0)
    tx = sharded.transaction()
    snap = tx._snap().snap
    assert not snap.registered
    del sent[:]
    assert tx.get(b) == b"0"
    assert snap.registered and sent.count("register") == 2
    assert _registered(sharded) == base + 2        # the stats go after the tells
    tx.put(a, b"1")
    tx.commit()
    assert _registered(sharded) == base


def test_a_scan_registers_first(quiet, sent):
    sharded = quiet
    a, b = keys_on_distinct_shards(sharded.ring, b"scan")[:2]
    sharded.put_many({a: b"0", b: b"0"})
    del sent[:]
    with sharded.transaction() as tx:
        snap = tx._snap().snap
        assert not snap.registered
        assert dict(tx.scan(prefix=b"scan"))[a] == b"0"
        assert snap.registered and sent.count("register") == 2


def test_one_open_past_TOO_LATE_S_expired(quiet, monkeypatch):
    sharded = quiet
    a = keys_on_distinct_shards(sharded.ring, b"expired")[0]
    sharded.put(a, b"0")
    monkeypatch.setattr(snapshot_module, "LATE_S", 0.0)
    monkeypatch.setattr(snapshot_module, "TOO_LATE_S", 0.0)
    tx = sharded.transaction()
    assert not tx._snap().snap.registered
    with pytest.raises(TransactionExpired, match="unregistered"):
        tx.get(a)
    tx.rollback()


@pytest.mark.parametrize("writes", [True, False])
def test_a_shard_restarted_under_one_expires_it(quiet, monkeypatch, writes):
    """An unregistered snapshot's shards must still run the engines it read
    (a new one neither tracks its writes nor keeps its versions)."""
    sharded = quiet
    a, b = keys_on_distinct_shards(sharded.ring, b"restart%d" % writes)[:2]
    sharded.put_many({a: b"0", b: b"0"})
    tx = sharded.transaction()
    assert tx.get(a) == b"0" and not tx._view.snap.registered
    real = type(sharded)._incarnation
    monkeypatch.setattr(type(sharded), "_incarnation", lambda self, s: (real(self, s) or 0) + 1000 * (s == 1))
    if writes:
        tx.put(a, b"1")
        tx.put(b, b"1")
    with pytest.raises(TransactionExpired, match="restarted"):
        tx.commit()
    monkeypatch.undo()
    assert sharded.get_many([a, b]) == [b"0", b"0"]


def test_the_shards_keep_what_an_unregistered_snapshot_reads(quiet, monkeypatch):
    """Overwritten, flushed and compacted meanwhile, a key still reads as
    the snapshot saw it (the shards keep the versions of the last
    SNAPSHOT_LAG_S seconds), or the transaction expired: never a newer
    value."""
    sharded = quiet
    monkeypatch.setattr(snapshot_module, "LATE_S", snapshot_module.TOO_LATE_S)    # unregistered throughout
    keys = keys_on_distinct_shards(sharded.ring, b"kept")[:2]
    sharded.put_many({k: b"old" for k in keys})
    tx = sharded.transaction()
    assert tx.get(keys[0]) == b"old"
    unregistered = not tx._view.snap.registered
    assert unregistered
    for n in range(3):
        sharded.put_many({k: b"new %d" % n for k in keys})
        sharded.flush()
    sharded.compact()
    try:
        assert tx.get_many(keys) == [b"old", b"old"]
        assert not tx._view.snap.registered
    except TransactionExpired:          # (past TOO_LATE_S on a slow machine)
        pass
    tx.rollback()


def test_a_stream_of_transactions_registers_again_every_keepalive(sharded, sent, monkeypatch):
    """Only a registration keeps the shards tracking: a process whose
    transactions all go unregistered still registers one every
    KEEPALIVE_S (an unregistered one must not count as one)."""
    monkeypatch.setattr(snapshot_module, "KEEPALIVE_S", 0.2)
    sharded.tx_registered = (-1e9, [])
    deadline = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < deadline:
        with sharded.transaction() as tx:
            tx.put(b"stream", (tx.get(b"stream") or b"")[:4] + b"x")
        n += 1
    registrations = sent.count("register")
    assert n > 10
    assert registrations >= 3 * len(sharded.refs), (n, registrations)    # about one a 0.2 s, on each shard


def test_transactions_go_on_past_transaction_max_age(tmp_path):
    """A shard stops tracking writes only when no process registered a
    transaction for max(transaction_max_age, the lag): a steady stream of
    short transactions (most unregistered) never meets TransactionExpired,
    even with a max age below KEEPALIVE_S and past the shard's periodic
    expiry (every 1024 commits)."""
    db = ldb.open(tmp_path / "db", shards=2, transaction_max_age=0.5)
    try:
        start, n, expired = time.monotonic(), 0, 0
        while (n < 1500 or time.monotonic() - start < 2.0) and time.monotonic() - start < 120:
            try:
                with db.transaction() as tx:
                    tx.put(b"k", (tx.get(b"k") or b"")[:4] + b"x")
                n += 1
            except TransactionExpired:
                expired += 1
        assert n >= 1500 and expired == 0, (n, expired)
    finally:
        db.close()
