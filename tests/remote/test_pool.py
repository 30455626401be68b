"""The connection pool: each strategy's order, idle timeout and maximum
lifetime, health checks, acquire timeout, replacement of broken
connections, statistics. Servers are ``NativeServer``s in this process
over in-process databases."""

from __future__ import annotations

import collections
import time

import pytest

import lightning_db as ldb
from lightning_db import InvalidArgument, TransientError
from lightning_db.errors import Timeout
from lightning_db.remote import STRATEGIES, NativeServer, Pool, connect

from ..waiting import wait_until
from .conftest import FAST


@pytest.fixture
def servers(tmp_path):
    """Three servers (A, B, C), each over its own database."""
    dbs = [ldb.open(tmp_path / f"db{i}", shards=0) for i in range(3)]
    srvs = [NativeServer(db, "tcp://127.0.0.1:*", workers=2).start() for db in dbs]
    yield srvs
    for s in srvs:
        s.stop()
    for db in dbs:
        db.close()


def make_pool(urls, **options):
    return Pool(urls, **{**FAST, "health_check_interval": None, **options})


def lend_order(pool, n, hold=False):
    """The servers (as indexes into pool.urls) of *n* acquires."""
    out, held = [], []
    for _ in range(n):
        conn = pool.acquire()
        out.append(pool.urls.index(conn.url))
        if hold:
            held.append(conn)
        else:
            pool.release(conn)
    for conn in held:
        pool.release(conn)
    return out


def test_options_are_checked():
    url = "tcp://127.0.0.1:1"
    for bad in (dict(min_size=3, max_size=2), dict(max_size=0), dict(min_size=-1), dict(strategy="fastest"),
                dict(strategy="weighted", weights=[1, 2]), dict(strategy="weighted", weights=[0]),
                dict(weights=[1]), dict(idle_timeout=0), dict(acquire_timeout=-1), dict(timeout="1")):
        with pytest.raises(InvalidArgument):
            Pool(url, start=False, **bad)
    with pytest.raises(InvalidArgument):
        Pool("http://example.com", start=False)
    with pytest.raises(InvalidArgument):
        Pool([], start=False)
    with pytest.raises(InvalidArgument):
        connect(url, no_such_option=1)
    # Each names what is wrong (no bare TypeError text, no fault class).
    for bad, says in ((dict(timeout=float("inf")), "timeout must be a finite number"),
                      (dict(connect_timeout=float("inf")), "connect_timeout must be a finite number"),
                      (dict(idle_timeout=float("inf")), "idle_timeout must be a finite number of seconds > 0 or "
                                                         "None"),
                      (dict(strategy="weighted", weights=5), "weights must be 1 positive numbers"),
                      (dict(strategy="weighted", weights={1: 1}), "weights must be 1 positive numbers")):
        with pytest.raises(InvalidArgument, match=says):
            Pool(url, start=False, **bad)
    for bad_url, says in (("tcp://127.0.0.1", "needs a port from 1 to 65535"),
                          ("tcp://127.0.0.1:99999", "needs a port from 1 to 65535"),
                          ("tcp://:7379", "needs a port"), (b"tcp://127.0.0.1:1", "got b'tcp")):
        with pytest.raises(InvalidArgument, match=says):
            connect(bad_url)
    assert STRATEGIES == ("round_robin", "least_recently_used", "random", "weighted")


def test_round_robin_order(servers):
    with make_pool([s.address for s in servers], min_size=0) as pool:
        assert lend_order(pool, 7, hold=True) == [0, 1, 2, 0, 1, 2, 0]
        assert lend_order(pool, 6) == [1, 2, 0, 1, 2, 0]


def test_round_robin_skips_an_unhealthy_server(servers):
    with make_pool([s.address for s in servers], min_size=0, connect_timeout=0.5) as pool:
        servers[1].stop()
        assert pool.health_check() == {servers[0].address: True, servers[1].address: False,
                                       servers[2].address: True}
        assert lend_order(pool, 6) == [0, 2, 0, 2, 0, 2]


def test_least_recently_used_order(servers):
    with make_pool([s.address for s in servers], min_size=0, strategy="least_recently_used") as pool:
        assert lend_order(pool, 3) == [0, 1, 2]
        # Use B out of turn: A and C are now less recently used than B.
        conns = [pool.acquire(), pool.acquire()]
        assert [c.url for c in conns] == [servers[0].address, servers[1].address]
        for c in conns:
            pool.release(c)
        assert lend_order(pool, 3) == [2, 0, 1]


def test_least_recently_used_connection_on_one_server(servers):
    url = servers[0].address
    for strategy, expect_first in (("least_recently_used", True), ("round_robin", False)):
        with make_pool(url, min_size=0, strategy=strategy) as pool:
            c1, c2 = pool.acquire(), pool.acquire()
            pool.release(c1)
            pool.release(c2)
            again = pool.acquire()
            assert (again is c1) == expect_first, strategy    # LRU: the older; others: the warmest
            pool.release(again)


def test_weighted_order(servers):
    urls = [servers[0].address, servers[1].address]
    with make_pool(urls, min_size=0, strategy="weighted", weights=[3, 1]) as pool:
        assert lend_order(pool, 8, hold=True) == [0, 0, 1, 0, 0, 0, 1, 0]
    with make_pool([s.address for s in servers], min_size=0, strategy="weighted", weights=[1, 2, 1]) as pool:
        counts = collections.Counter(lend_order(pool, 40))
        assert counts == {0: 10, 1: 20, 2: 10}


def test_random_order(servers):
    with make_pool([s.address for s in servers], min_size=0, strategy="random", max_size=3) as pool:
        order = lend_order(pool, 300)
    counts = collections.Counter(order)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 50
    assert order[:9] not in ([0, 1, 2] * 3, [2, 1, 0] * 3)


def test_warm_up_spreads_min_size(servers):
    with make_pool([s.address for s in servers], min_size=4) as pool:
        s = pool.stats()
        assert s["size"] == s["idle"] == 4 and s["created"] == 4
        assert [x["connections"] for x in s["servers"]] == [2, 1, 1]


def test_acquire_timeout(servers):
    with make_pool(servers[0].address, max_size=1) as pool:
        conn = pool.acquire()
        started = time.monotonic()
        with pytest.raises(Timeout, match="no connection free") as err:
            pool.acquire(timeout=0.2)
        assert isinstance(err.value, TransientError)
        assert time.monotonic() - started < 2.0
        pool.release(conn)
        with pool.connection(timeout=0.2) as again:
            assert again is conn
        s = pool.stats()
        assert s["acquire_timeouts"] == 1 and s["acquire_waits"] >= 1


def test_waiting_acquire_gets_a_released_connection(servers):
    import threading

    with make_pool(servers[0].address, max_size=1) as pool:
        conn = pool.acquire()
        threading.Timer(0.2, pool.release, args=(conn,)).start()
        got = pool.acquire(timeout=5)
        assert got is conn
        pool.release(got)
        assert pool.stats()["acquire_waits"] == 1


def test_idle_timeout_closes_and_replaces(servers):
    with make_pool(servers[0].address, min_size=1, idle_timeout=0.2) as pool:
        first = pool.acquire()
        pool.release(first)
        wait_until(lambda: pool.stats()["closed_idle"] >= 1 and pool.stats()["size"] == 1, 10,
                   "the idle connection to be replaced")
        with pool.connection() as conn:
            assert conn is not first
        assert pool.stats()["created"] >= 2


def test_max_lifetime_closes_and_replaces(servers):
    with make_pool(servers[0].address, min_size=1, max_lifetime=0.3) as pool:
        lent = pool.acquire()
        wait_until(lambda: time.monotonic() - lent.created > 0.3, 10, "the lifetime to pass")
        assert lent.call("ping", [lent.session]) is True      # still usable while lent
        pool.release(lent)                                   # closed on release
        wait_until(lambda: pool.stats()["closed_lifetime"] >= 1 and pool.stats()["size"] >= 1, 10,
                   "the old connection to be replaced")
        with pool.connection() as conn:
            assert conn is not lent


def test_health_checks_mark_a_dead_server_and_find_it_again(servers, tmp_path):
    a, b = servers[0], servers[1]
    address = b.address
    with make_pool([a.address, address], min_size=2, health_check_interval=0.1, connect_timeout=0.5) as pool:
        assert [x["healthy"] for x in pool.stats()["servers"]] == [True, True]
        db, b.db = b.db, None
        b.stop()
        wait_until(lambda: pool.stats()["servers"][1]["healthy"] is False, 10, "B to be marked unhealthy")
        s = pool.stats()["servers"][1]
        assert s["failures"] >= 1 and s["last_error"] and s["connections"] == 0
        assert pool.stats()["healthy"] is True                # A still is
        assert pool.stats()["health_checks"] >= 1
        b2 = NativeServer(db, address, workers=2).start()
        try:
            wait_until(lambda: pool.stats()["servers"][1]["healthy"] is True, 10, "B to be healthy again")
        finally:
            b2.stop()


def test_connect_to_nothing_raises_a_transient_error():
    started = time.monotonic()
    with pytest.raises(TransientError):
        connect("tcp://127.0.0.1:9", connect_timeout=0.3)
    assert time.monotonic() - started < 5


def test_broken_connection_is_replaced(servers, tmp_path):
    srv = servers[0]
    address = srv.address
    with make_pool(address, min_size=2, connect_timeout=0.5) as pool:
        db_handle = srv.db
        conn = pool.acquire()
        srv.stop()
        with pytest.raises(TransientError):
            conn.call("get", [b"k"])
        assert conn.broken
        pool.release(conn)
        wait_until(lambda: all(c.dropped for c in pool._idle), 10, "the idle connection to see the drop")
        with pytest.raises(TransientError):
            pool.acquire()                    # the idle one is dropped, a new one gets no answer
        s = pool.stats()
        assert s["closed_broken"] == 2 and s["size"] == 0 and s["servers"][0]["healthy"] is False
        back = NativeServer(db_handle, address, workers=2).start()
        try:
            with pool.connection() as conn:
                assert conn.call("get", [b"k"]) is None and not conn.dropped
            assert pool.stats()["servers"][0]["healthy"] is True
        finally:
            back.stop()


def test_stats(servers):
    with make_pool([s.address for s in servers[:2]], min_size=1, max_size=4) as pool:
        with pool.connection():
            s = pool.stats()
            assert s["in_use"] == 1 and s["size"] == s["in_use"] + s["idle"]
        s = pool.stats()
        for name in ("size", "in_use", "idle", "created", "closed", "acquires", "acquire_waits",
                     "acquire_timeouts", "connect_failures", "health_checks", "healthy", "strategy"):
            assert name in s
        assert s["acquires"] == 1 and s["max_size"] == 4 and s["min_size"] == 1
        assert [set(x) >= {"url", "healthy", "failures", "connections", "in_use", "idle"} for x in s["servers"]]
    assert pool.stats()["size"] == 0
    with pytest.raises(ldb.errors.MailboxClosed):
        pool.acquire()


def test_objects_pin_their_connection_without_holding_it(servers):
    with connect(servers[0].address, **{**FAST, "max_size": 1, "acquire_timeout": 0.5}) as db:
        db.put_many({b"%05d" % i: b"v" for i in range(3000)})
        with db.snapshot() as snap, db.transaction() as tx:
            it = db.scan()
            assert next(it) == (b"00000", b"v")
            tx.get(b"00001")
            db.put(b"k", b"v")                # the only connection is pinned, not lent
            assert snap.get(b"k") is None and tx.get(b"k") is None and db.get(b"k") == b"v"
            s = db.pool.stats()
            assert s["size"] == 1 and s["pinned"] == 1 and s["in_use"] == 0
            assert len(list(it)) == 2999
        assert db.pool.stats()["pinned"] == 0


def test_a_pinned_connection_is_retired_not_closed(servers):
    with connect(servers[0].address, **{**FAST, "min_size": 1, "idle_timeout": 0.2,
                                         "health_check_interval": None}) as db:
        pool = db.pool
        snap = db.snapshot()
        first = snap._conn
        wait_until(lambda: pool.stats()["retired"] == 1, 10, "the idle connection to be retired")
        assert snap.get(b"k") is None                 # still served: its objects live on
        with pool.connection() as conn:
            assert conn is not first                  # a retired connection is not lent
        closed = pool.stats()["closed_idle"]
        snap.close()
        s = pool.stats()
        assert s["retired"] == 0 and s["closed_idle"] == closed + 1 and first.client._closed
