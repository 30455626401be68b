"""``connect(url)`` against a ``NativeServer`` over an in-process database:
every method of the Database API, with the local database's results and
errors for the same calls (the differential test), scans across pages,
snapshots, transactions between two clients, batches, bad input."""

from __future__ import annotations

import random
import threading
import time

import pytest

import lightning_db as ldb
from lightning_db import (
    DatabaseClosed,
    InvalidArgument,
    TransactionConflict,
    TransientError,
)
from lightning_db.remote import RemoteDatabase, connect
from lightning_db.remote import server as server_module
from lightning_db.remote.protocol import PAGE_ROWS

from ..waiting import wait_until
from .conftest import FAST, SMALL_VALUE_LIMIT


def objects(server) -> dict[str, int]:
    return server.registry.stats()["objects"]


def no_objects(server) -> bool:
    return not any(objects(server).values())


# --- the methods ------------------------------------------------------------------------------------


def test_single_key_methods_and_mapping_sugar(client):
    assert isinstance(client, RemoteDatabase)
    assert client.get(b"k") is None and client.get(b"k", b"d") == b"d"
    client.put(b"k", b"v")
    client.put(bytearray(b"k2"), memoryview(b"v2"), sync=True)
    assert client.get(b"k") == b"v" and client[b"k2"] == b"v2"
    view = client.get(b"k", copy=False)
    assert isinstance(view, memoryview) and bytes(view) == b"v"
    assert b"k" in client and b"nope" not in client
    client[b"k3"] = b"v3"
    del client[b"k3"]
    with pytest.raises(KeyError):
        client[b"k3"]
    with pytest.raises(KeyError):
        del client[b"k3"]
    client.delete(b"absent")                  # not an error
    client.delete(b"k2")
    assert list(client) == [b"k"]
    client.put_many({b"a": b"1", b"b": b"2"})
    client.put_many([(b"c", b"3")])
    client.put_many({})                       # nothing to do
    assert client.get_many([b"a", b"x", b"c"]) == [b"1", None, b"3"]
    assert client.get_many([]) == []


def test_expiry(client):
    client.put(b"t", b"v", ttl=60)
    value, expiry = client.get_with_expiry(b"t")
    assert value == b"v" and time.time() + 50 < expiry < time.time() + 70
    client.put(b"p", b"v")
    assert client.get_with_expiry(b"p") == (b"v", None)
    assert client.get_with_expiry(b"absent") is None
    client.put(b"soon", b"v", expire_at=time.time() + 0.2)
    wait_until(lambda: client.get(b"soon") is None, 10, "the value to expire")
    with client.batch() as b:
        b.put(b"bt", b"v", ttl=60)
    assert client.get_with_expiry(b"bt")[1] is not None


def test_maintenance_stats_health(client, server):
    client.put_many({b"%03d" % i: b"x" * 100 for i in range(200)})
    client.flush()
    client.compact()
    assert isinstance(client.verify(), dict)
    s = client.stats()
    assert s["shards"] == 0 and "native_server" in s and s["pool"]["size"] >= 1
    assert s["native_server"]["requests"] > 0
    assert client.health()["status"] == "ok"
    assert client.config.max_value_size == SMALL_VALUE_LIMIT
    assert server.stats()["address"] == server.address


def test_close(server):
    db = connect(server.address, **FAST)
    db.put(b"k", b"v")
    with db:
        pass
    assert db.closed
    db.close()                                # idempotent
    for call in (lambda: db.get(b"k"), lambda: db.put(b"k", b"v"), lambda: db.scan(),
                 lambda: db.snapshot(), lambda: db.transaction(), lambda: db.stats()):
        with pytest.raises(DatabaseClosed):
            call()


def test_what_was_open_at_close_says_database_closed(server, filled):
    """A transaction of a closed client is DatabaseClosed and rolled back
    (as a local one); a scan's next page is DatabaseClosed, not the pool's
    MailboxClosed (a fatal class)."""
    db = connect(server.address, **FAST)
    tx = db.transaction()
    tx.get(b"k00000")
    tx.put(b"k00000", b"changed")
    it = db.scan()
    first = next(it)
    db.close()
    for call in (lambda: tx.get(b"k00000"), lambda: tx.put(b"k", b"v"), tx.commit):
        with pytest.raises(DatabaseClosed):
            call()
    assert tx.state == "rolled back"
    with pytest.raises(DatabaseClosed):
        list(it)
    assert first is not None


# --- the differential test ------------------------------------------------------------------------


KEYS = [b"a", b"b", b"ab", b"abc", b"b\x00", b"c", b"\xff", b"\xff\xff", b"zz"]
BAD_KEYS = ["str", b"", 5, None, b"k" * (64 * 1024 + 1)]


def _random_call(rng: random.Random):
    """One (description, function of a db) drawn at random, bad ones included."""
    k, v = rng.choice(KEYS), rng.choice([b"", b"v", b"w" * 50, b"x" * SMALL_VALUE_LIMIT])
    k2 = rng.choice(KEYS)
    bad = rng.choice(BAD_KEYS)
    bound = rng.choice(["start", "end", "prefix"])
    bad_limit = rng.choice([-1, 1.5, True])
    scan_opts = {name: rng.choice(choices) for name, choices in (
        ("start", [None, b"a", b"b", b"zz", b""]), ("end", [None, b"b", b"c", b"\xff", b"a"]),
        ("prefix", [None, b"a", b"b", b"\xff", b""]), ("reverse", [False, True]),
        ("limit", [None, 0, 1, 2, 100]))}
    calls = [
        ("put", lambda db: db.put(k, v)),
        ("put sync", lambda db: db.put(k, v, sync=True)),
        ("put bad key", lambda db: db.put(bad, v)),
        ("put big value", lambda db: db.put(k, b"x" * (SMALL_VALUE_LIMIT + 1))),
        ("put bad value", lambda db: db.put(k, "str")),
        ("put bad sync", lambda db: db.put(k, v, sync="yes")),
        ("put bad ttl", lambda db: db.put(k, v, ttl=-1)),
        ("put ttl and expire_at", lambda db: db.put(k, v, ttl=5, expire_at=time.time() + 5)),
        ("get", lambda db: db.get(k)),
        ("get default", lambda db: db.get(k, b"dflt")),
        ("get bad", lambda db: db.get(bad)),
        ("getitem", lambda db: db[k]),
        ("contains", lambda db: k in db),
        ("delete", lambda db: db.delete(k)),
        ("delete bad", lambda db: db.delete(bad)),
        ("delitem", lambda db: db.__delitem__(k)),
        ("put_many", lambda db: db.put_many({k: v, k2: b"m"})),
        ("put_many bad pair", lambda db: db.put_many([(k, v), (bad, v)])),
        ("put_many not pairs", lambda db: db.put_many(5)),
        ("get_many", lambda db: db.get_many([k, k2, k])),
        ("get_many bad", lambda db: db.get_many([k, bad])),
        ("batch", lambda db: _batch(db, [(k, v), (k2, None)])),
        ("batch bad", lambda db: _batch(db, [(k, v), (bad, v)])),
        ("scan", lambda db: list(db.scan(**scan_opts))),
        ("scan bad", lambda db: db.scan(**{bound: 5})),
        ("scan bad limit", lambda db: db.scan(limit=bad_limit)),
        ("scan bad reverse", lambda db: db.scan(reverse="yes")),
        ("keys", lambda db: list(db)),
        ("transaction", lambda db: _tx(db, k, v)),
        ("transaction bad isolation", lambda db: db.transaction(isolation="dirty")),
    ]
    return rng.choice(calls)


def _batch(db, ops):
    with db.batch() as b:
        for key, value in ops:
            if value is None:
                b.delete(key)
            else:
                b.put(key, value)
    return len(ops)


def _tx(db, k, v):
    with db.transaction() as tx:
        before = tx.get(k)
        tx.put(k, v + b"!")
        return before, tx.get(k), list(tx.scan(limit=3))


def _outcome(fn, db):
    try:
        return ("ok", fn(db))
    except Exception as exc:  # noqa: BLE001 - the outcome is compared, whatever it is
        return ("error", type(exc).__name__, str(exc))


def test_differential_against_the_local_database(client, tmp_path):
    reference = ldb.open(tmp_path / "reference", shards=0, max_value_size=SMALL_VALUE_LIMIT)
    try:
        rng = random.Random(1234)
        for step in range(400):
            name, fn = _random_call(rng)
            expected, got = _outcome(fn, reference), _outcome(fn, client)
            assert got == expected, f"step {step}: {name}"
        assert list(client.scan()) == list(reference.scan())
    finally:
        reference.close()


# --- scans ----------------------------------------------------------------------------------------


@pytest.fixture
def filled(client, local):
    """2.5 pages of keys, written locally (the served database)."""
    n = PAGE_ROWS * 2 + PAGE_ROWS // 2
    local.put_many({b"k%05d" % i: b"v%d" % i for i in range(n)})
    local.put_many({b"p%03d" % i: b"x" for i in range(10)})
    return n


@pytest.mark.parametrize("opts", [
    {}, {"reverse": True}, {"limit": 0}, {"limit": 1}, {"limit": PAGE_ROWS}, {"limit": PAGE_ROWS + 1},
    {"limit": 2500, "reverse": True}, {"start": b"k00500"}, {"end": b"k02000", "reverse": True},
    {"start": b"k00100", "end": b"k02100", "limit": 1500}, {"prefix": b"k01"}, {"prefix": b"p", "reverse": True},
    {"prefix": b"k0", "start": b"k015", "end": b"k0205"}, {"start": b"z"}, {"start": b"b", "end": b"a"},
])
def test_scan_options_across_pages(client, local, server, filled, opts):
    assert list(client.scan(**opts)) == list(local.scan(**opts))
    assert no_objects(server)                 # finished scans leave no cursor behind


def test_scan_pages_by_bytes(client, local, server, filled, monkeypatch):
    monkeypatch.setattr(server_module, "PAGE_BYTES", 1000)      # ~60 rows a page
    assert list(client.scan(prefix=b"k")) == list(local.scan(prefix=b"k"))


def test_scan_reads_the_view_taken_when_called(client, filled):
    it = client.scan(prefix=b"k")
    client.put(b"k00000-new", b"x")
    client.delete(b"k02000")
    rows = list(it)
    assert len(rows) == filled and b"k00000-new" not in dict(rows) and dict(rows)[b"k02000"] == b"v2000"


def test_scan_abandoned_early_releases_its_cursor_and_connection(client, server, filled):
    for key, _ in client.scan():
        if key == b"k00010":
            break
    wait_until(lambda: no_objects(server), 10, "the cursor to be released")
    it = client.scan()
    next(it)
    it.close()
    wait_until(lambda: no_objects(server), 10, "the cursor to be released")
    wait_until(lambda: client.pool.stats()["in_use"] == 0, 10, "the connections to come back")


# --- batches and bad input -------------------------------------------------------------------------


def test_batch_is_atomic_and_sent_once(client, server):
    requests = server.requests
    with client.batch() as b:
        for i in range(100):
            b.put(b"b%03d" % i, b"v")
        b.delete(b"b000")
        assert len(b) == 101
    assert server.requests - requests == 1
    assert client.get(b"b000") is None and client.get(b"b099") == b"v"
    with pytest.raises(RuntimeError):
        with client.batch() as b:
            b.put(b"never", b"v")
            raise RuntimeError("discarded")
    with pytest.raises(InvalidArgument, match="max_value_size"):
        with client.batch() as b:
            b.put(b"never", b"v")
            b.put(b"never2", b"x" * (SMALL_VALUE_LIMIT + 1))
    assert client.get(b"never") is None
    b = client.batch()
    b.commit()
    with pytest.raises(InvalidArgument, match="already committed"):
        b.put(b"k", b"v")


def test_bad_input_is_refused_before_anything_is_sent(client, server):
    requests = server.requests
    bad_calls = [
        lambda: client.put("str", b"v"), lambda: client.put(b"", b"v"),
        lambda: client.put(b"k", b"x" * (SMALL_VALUE_LIMIT + 1)), lambda: client.put(b"k", b"v", sync=1),
        lambda: client.put(b"k", b"v", ttl=0), lambda: client.get(5), lambda: client.delete(None),
        lambda: client.get_many([b"a", b""]), lambda: client.put_many({b"a": b"1", b"": b"2"}),
        lambda: client.scan(limit=-1), lambda: client.scan(reverse=None), lambda: client.scan(start="a"),
        lambda: client.transaction(isolation="nope"), lambda: client.transaction(sync="no"),
        lambda: client.run_transaction(lambda tx: None, retries=-1),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgument):
            call()
    assert server.requests == requests
    assert list(client.scan()) == []


# --- snapshots ------------------------------------------------------------------------------------


def test_snapshot_isolation(client, server, filled):
    client.put(b"s", b"old")
    with client.snapshot() as snap:
        client.put(b"s", b"new")
        client.put(b"s2", b"new")
        client.delete(b"k00001")
        assert snap.get(b"s") == b"old" and snap[b"s"] == b"old" and b"s2" not in snap
        assert snap.get(b"s2", b"d") == b"d"
        assert snap.get_many([b"s", b"s2", b"k00001"]) == [b"old", None, b"v1"]
        assert snap.get_many([]) == []
        rows = list(snap.scan(prefix=b"k"))
        assert len(rows) == filled and rows[1] == (b"k00001", b"v1")
        assert list(snap.scan(prefix=b"s")) == [(b"s", b"old")]
        assert list(snap.scan(limit=0)) == []
        assert objects(server)["snapshot"] == 1
    assert objects(server)["snapshot"] == 0
    with pytest.raises(InvalidArgument, match="snapshot was released"):
        snap.get(b"s")
    assert client.get(b"s") == b"new"


def test_dropped_snapshot_is_released(client, server):
    snap = client.snapshot()
    assert objects(server)["snapshot"] == 1
    del snap
    client.get(b"x")                          # an acquire carries out deferred releases
    wait_until(lambda: no_objects(server), 10, "the snapshot to be released")


# --- transactions ---------------------------------------------------------------------------------


@pytest.fixture
def other(server):
    db = connect(server.address, **FAST)
    yield db
    db.close()


def test_transaction_reads_its_writes_and_commits_atomically(client, server):
    client.put_many({b"a": b"1", b"b": b"2"})
    with client.transaction() as tx:
        assert tx.get(b"a") == b"1" and tx[b"b"] == b"2" and b"c" not in tx
        tx.put(b"c", b"3")
        tx[b"d"] = b"4"
        del tx[b"a"]
        assert tx.get_many([b"a", b"c", b"d"]) == [None, b"3", b"4"]
        assert list(tx.scan()) == [(b"b", b"2"), (b"c", b"3"), (b"d", b"4")]
        assert list(tx.scan(reverse=True, limit=1)) == [(b"d", b"4")]
        assert tx.get_with_expiry(b"c") == (b"3", None)
        assert client.get(b"c") is None                  # not before the commit
    assert tx.state == "committed"
    assert client.get_many([b"a", b"c", b"d"]) == [None, b"3", b"4"]
    with pytest.raises(InvalidArgument, match="already committed"):
        tx.get(b"a")
    assert no_objects(server)


def test_write_only_transaction_is_one_round_trip(client, server):
    requests = server.requests
    with client.transaction() as tx:
        tx.put(b"w", b"1")
        tx.delete(b"x")
    assert server.requests - requests == 1 and client.get(b"w") == b"1"
    with client.transaction() as tx:
        pass                                  # nothing read, nothing written: no round trip
    assert server.requests - requests == 2


def test_rollback_and_error_in_block(client, server):
    with client.transaction() as tx:
        tx.get(b"r")
        tx.put(b"r", b"1")
        tx.rollback()
    assert tx.state == "rolled back" and client.get(b"r") is None
    with pytest.raises(RuntimeError):
        with client.transaction() as tx:
            tx.put(b"r", b"1")
            tx.get(b"r")
            raise RuntimeError
    assert client.get(b"r") is None and no_objects(server)


def test_conflict_between_two_clients(client, other, server):
    client.put(b"acct", b"100")
    tx = client.transaction()
    assert tx.get(b"acct") == b"100"
    with other.transaction() as tx2:
        tx2.put(b"acct", b"50")
    tx.put(b"acct", b"200")
    with pytest.raises(TransactionConflict):
        tx.commit()
    assert tx.state == "rolled back"
    assert client.get(b"acct") == b"50" and no_objects(server)


def test_serializable_prevents_write_skew(client, other):
    client.put_many({b"x": b"1", b"y": b"1"})
    t1 = client.transaction(isolation="serializable")
    t2 = other.transaction(isolation="serializable")
    assert t1.get(b"y") == b"1" and t2.get(b"x") == b"1"
    t1.put(b"x", b"0")
    t2.put(b"y", b"0")
    t1.commit()
    with pytest.raises(TransactionConflict):
        t2.commit()
    assert client.get_many([b"x", b"y"]) == [b"0", b"1"]


def test_run_transaction_retries_on_conflict(client, other):
    client.put(b"n", b"0")
    calls = []

    def incr(tx):
        n = int(tx.get(b"n"))
        calls.append(n)
        if len(calls) == 1:
            other.put(b"n", b"10")            # someone else wins the first attempt
        tx.put(b"n", b"%d" % (n + 1))
        return n + 1

    assert client.run_transaction(incr) == 11
    assert calls == [0, 10] and client.get(b"n") == b"11"
    with pytest.raises(TransactionConflict):
        client.run_transaction(lambda tx: (tx.get(b"n"), other.put(b"n", b"0"), tx.put(b"n", b"x")), retries=2)


def test_concurrent_increments_from_threads(client, other):
    client.put(b"counter", b"0")

    def incr(tx):
        tx.put(b"counter", b"%d" % (int(tx.get(b"counter")) + 1))

    def worker(db):
        for _ in range(10):
            db.run_transaction(incr, retries=100)

    threads = [threading.Thread(target=worker, args=(db,)) for db in (client, other, client)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get(b"counter") == b"30"


def test_dropped_transaction_is_rolled_back(client, server):
    tx = client.transaction()
    tx.get(b"a")
    tx.put(b"a", b"1")
    assert objects(server)["tx"] == 1
    del tx
    client.get(b"a")
    wait_until(lambda: no_objects(server), 10, "the transaction to be released")
    assert client.get(b"a") is None


# --- the link -------------------------------------------------------------------------------------


def test_slow_call_does_not_block_others(client, server, local):
    class Slow:
        def __getattr__(self, name):
            return getattr(local, name)

        def compact(self):
            time.sleep(1.5)

    server.db = Slow()
    t = threading.Thread(target=client.compact)
    t.start()
    time.sleep(0.1)
    started = time.monotonic()
    client.put(b"quick", b"1")
    assert client.get(b"quick") == b"1"
    assert time.monotonic() - started < 1.0
    t.join()


def test_server_going_away_raises_a_transient_error(local, tmp_path):
    from lightning_db.remote import NativeServer

    srv = NativeServer(local, "tcp://127.0.0.1:*").start()
    address = srv.address
    db = connect(address, **{**FAST, "timeout": 2.0})
    try:
        db.put(b"k", b"v")
        snap = db.snapshot()
        srv.stop()
        with pytest.raises(TransientError):
            db.get(b"k")
        with pytest.raises(TransientError):
            snap.get(b"k")                              # the link's error, once
        srv = NativeServer(local, address).start()
        wait_until(lambda: _answers(db), 30, "the client to reach the new server")
        assert db.get(b"k") == b"v"
        with pytest.raises(InvalidArgument, match="snapshot was lost with its connection"):
            snap.get(b"k")                              # not a transient error retrying would fix
        snap.close()
        s = db.pool.stats()
        assert s["closed_broken"] >= 1 and s["created"] >= 2
    finally:
        db.close()
        srv.stop()


def _answers(db) -> bool:
    try:
        db.get(b"k")
        return True
    except TransientError:
        return False
