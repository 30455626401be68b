"""Expiring values (``put(..., ttl=)`` / ``expire_at=``): invisible to every
read path once expired (point reads, get_many, scans, snapshots,
transactions, shared-memory reads of a sharded database), across flushes,
compactions and reopen; turned into tombstones by compaction; deleted by
the background sweep. Expiry is wall-clock time, so the tests use short
TTLs and wait on conditions."""

from __future__ import annotations

import time

import pytest

import lightning_db as ldb
from lightning_db import InvalidArgument
from tests.waiting import wait_until

SHORT = 0.3


def _all_reads(db, key):
    """What each read path says of *key*: all must agree."""
    with db.snapshot() as s:
        snap = (s.get(key), s.get_many([key])[0], dict(s.scan()).get(key))
    with db.transaction() as tx:
        txr = (tx.get(key), tx.get_many([key])[0], dict(tx.scan()).get(key))
    return {db.get(key), db.get_many([key])[0], dict(db.scan()).get(key), key in db and db[key] or None,
            *snap, *txr}


@pytest.fixture(params=[0, 2], ids=["in-process", "sharded"])
def db(request, tmp_path):
    d = ldb.open(tmp_path / "db", shards=request.param, ttl_sweep_interval=0.5)
    yield d
    d.close()


def test_a_value_disappears_at_its_expiry_on_every_read_path(db):
    db.put(b"keep", b"v")
    db.put(b"gone", b"v", ttl=SHORT)
    db.put(b"later", b"v", expire_at=time.time() + 3600)
    assert _all_reads(db, b"gone") == {b"v"}
    value, expiry = db.get_with_expiry(b"later")
    assert value == b"v" and abs(expiry - (time.time() + 3600)) < 60
    assert db.get_with_expiry(b"keep") == (b"v", None)
    wait_until(lambda: db.get(b"gone") is None, timeout=30, what="the value to expire")
    assert _all_reads(db, b"gone") == {None}
    assert db.get_with_expiry(b"gone") is None
    assert [k for k, _ in db.scan()] == [b"keep", b"later"]


def test_expired_values_hide_older_versions_through_flush_compaction_and_reopen(tmp_path):
    path = tmp_path / "db"
    with ldb.open(path, shards=0) as db:
        db.put(b"k", b"old")
        db.flush()
        db.put(b"k", b"new", ttl=SHORT)
        db.put(b"k2", b"stays", ttl=3600)
        db.flush()
        wait_until(lambda: db.get(b"k") is None, timeout=30, what="the value to expire")
        db.compact()
        assert db.get(b"k") is None and db.get(b"k2") == b"stays"
        assert db.stats()["records_expired"] >= 1          # became a tombstone in compaction
    with ldb.open(path, shards=0) as db:
        assert db.get(b"k") is None and list(db.scan()) == [(b"k2", b"stays")]


def test_the_sweep_deletes_expired_values(db):
    db.put_many({b"p%d" % i: b"v" for i in range(20)})
    for i in range(10):
        db.put(b"p%d" % i, b"v", ttl=SHORT)

    def swept():
        s = db.stats()
        return s["records_swept"] >= 10
    wait_until(swept, timeout=60, what="the sweep to delete the 10 expired values")
    assert [k for k, _ in db.scan()] == sorted(b"p%d" % i for i in range(10, 20))


def test_overwriting_without_ttl_makes_a_value_permanent(db):
    db.put(b"k", b"1", ttl=SHORT)
    db.put(b"k", b"2")
    time.sleep(SHORT * 2)                  # past the first value's expiry: the test is that nothing happens
    assert db.get(b"k") == b"2" and db.get_with_expiry(b"k") == (b"2", None)


def test_transactions_and_batches_write_expiring_values(db):
    with db.transaction() as tx:
        tx.put(b"t", b"v", ttl=SHORT)
        assert tx.get(b"t") == b"v" and tx.get_with_expiry(b"t")[0] == b"v"
    with db.batch() as b:
        b.put(b"b", b"v", ttl=SHORT)
    assert db.get(b"t") == b"v" and db.get(b"b") == b"v"
    wait_until(lambda: db.get(b"t") is None and db.get(b"b") is None, timeout=30, what="both to expire")
    with db.transaction() as tx:
        assert tx.get(b"t") is None and tx.get_with_expiry(b"t") is None


def test_bad_ttls_are_refused_and_write_nothing(db):
    for kw in ({"ttl": 0}, {"ttl": -1}, {"ttl": "5"}, {"ttl": True}, {"expire_at": 0},
               {"ttl": 1, "expire_at": time.time() + 5}, {"ttl": float("inf")}):
        with pytest.raises(InvalidArgument):
            db.put(b"k", b"v", **kw)
    # Under 1e11 seconds, but the expiry it gives falls past Unix time 1e11.
    with pytest.raises(InvalidArgument, match="before Unix time 1e[+]11"):
        db.put(b"k", b"v", ttl=99_000_000_000)
    with pytest.raises(InvalidArgument, match="before Unix time 1e[+]11"):
        with db.batch() as b:
            b.put(b"k", b"v", ttl=1e11 - 1)
    assert db.get(b"k") is None
