"""A ``NativeServer`` over a sharded database (``shards=2``): the same
calls give the same results as the handle itself, across shards."""

from __future__ import annotations

import threading

import pytest

import lightning_db as ldb
from lightning_db import TransactionConflict
from lightning_db.remote import NativeServer, connect
from lightning_db.remote.protocol import PAGE_ROWS

from ..waiting import wait_until
from .conftest import FAST, OURS

CLIENT = ("ldb-native-pool", "ldb-mailbox native-")


def ours(prefixes):
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    db = ldb.open(tmp_path_factory.mktemp("remote") / "db", shards=2)
    srv = NativeServer(db, "tcp://127.0.0.1:*", workers=4).start()
    yield db, srv
    srv.stop()
    db.close()
    assert not ours(OURS), "the module's server left threads behind"


@pytest.fixture(autouse=True)
def no_stray_threads():
    """Here the server belongs to the module (its handler threads start on
    first use and live until it stops): a test checks only its clients'."""
    before = set(ours(CLIENT))
    yield
    wait_until(lambda: set(ours(CLIENT)) <= before, 10, "the clients' threads to end")


@pytest.fixture
def pair(sharded):
    db, srv = sharded
    remote = connect(srv.address, **FAST)
    yield db, remote, srv
    remote.close()


def test_sharded_database_over_the_native_protocol(pair):
    local, remote, srv = pair
    n = PAGE_ROWS + 300
    remote.put_many({b"r%05d" % i: b"%d" % i for i in range(n)})
    with remote.batch() as b:                  # a cross-shard batch: two-phase commit on the server
        b.put(b"ra", b"1")
        b.put(b"rb", b"2")
        b.delete(b"r00000")
    for opts in ({"prefix": b"r"}, {"prefix": b"r", "reverse": True}, {"start": b"r00100", "limit": PAGE_ROWS + 5},
                 {"prefix": b"r0", "end": b"r00500", "reverse": True, "limit": 7}):
        assert list(remote.scan(**opts)) == list(local.scan(**opts))
    assert remote.get_many([b"ra", b"rb", b"r00000", b"r00001"]) == [b"1", b"2", None, b"1"]
    remote.put(b"rt", b"v", ttl=60)
    assert remote.get_with_expiry(b"rt")[1] is not None
    assert local.get(b"rt") == b"v"            # acknowledged, so visible to the handle at once

    with remote.snapshot() as snap:
        remote.put(b"ra", b"changed")
        assert snap.get(b"ra") == b"1" and local.get(b"ra") == b"changed"
        assert len(list(snap.scan(prefix=b"r0"))) == n - 1

    other = connect(srv.address, **FAST)
    try:
        tx = remote.transaction()
        assert tx.get(b"ra") == b"changed"
        other.run_transaction(lambda t: t.put(b"ra", b"other"))
        tx.put(b"ra", b"mine")
        tx.put(b"rb", b"mine")
        with pytest.raises(TransactionConflict):
            tx.commit()
        assert remote.get_many([b"ra", b"rb"]) == [b"other", b"2"]
        assert remote.run_transaction(lambda t: t.put(b"rb", t.get(b"ra") + b"!")) is None
        assert local.get(b"rb") == b"other!"
    finally:
        other.close()
    remote.flush()
    s = remote.stats()
    assert len(s["shards"]) == 2 and s["native_server"]["objects"] == {"snapshot": 0, "tx": 0, "cursor": 0}
