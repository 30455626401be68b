"""Transactions (``db.transaction()``, ``db.run_transaction``) in process and
over two shards: semantics, the conflicts each isolation level must raise
and the ones it must not, expiry, and consistent cross-shard snapshots
under concurrent batches. Histories of concurrent list-append transactions
are checked for Adya's anomalies by ``lightning_db.check``."""

from __future__ import annotations

import os
import threading
import time

import pytest

import lightning_db as ldb
from lightning_db import InvalidArgument, TransactionConflict, TransactionExpired, TransientError
from lightning_db.check import check_run
from tests.shards.test_router import keys_on_distinct_shards

ELLE_RUNS = int(os.environ.get("LDB_ELLE_RUNS", "50"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    db = ldb.open(tmp_path_factory.mktemp("tx") / "db", shards=2)
    yield db
    db.close()


@pytest.fixture(params=["in-process", "sharded"])
def db(request, tmp_path, sharded):
    if request.param == "sharded":
        yield Prefixed(sharded, f"{request.node.name}:".encode())
    else:
        d = ldb.open(tmp_path / "db", shards=0)     # the module's sharded one is started first
        yield Prefixed(d, b"")
        d.close()


class Prefixed:
    """The module's sharded database is shared: each test works under its
    own key prefix (``k(b"x")``)."""

    def __init__(self, db, prefix: bytes) -> None:
        self.db, self.prefix = db, prefix

    def k(self, key: bytes) -> bytes:
        return self.prefix + key

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_commit_applies_everything_and_reads_see_own_writes(db):
    a, b, c = db.k(b"a"), db.k(b"b"), db.k(b"c")
    db.put(a, b"1")
    with db.transaction() as tx:
        assert tx.get(a) == b"1" and tx.get(b) is None
        tx.put(b, b"2")
        tx[c] = b"3"
        del tx[a]
        assert tx.get(b) == b"2" and tx.get(a) is None and a not in tx and tx[c] == b"3"
        assert tx.get_many([a, b, c]) == [None, b"2", b"3"]
        assert list(tx.scan(prefix=db.prefix or None)) == [(b, b"2"), (c, b"3")]
        assert db.get(b) is None            # nothing visible before the commit
    assert tx.state == "committed"
    assert db.get_many([a, b, c]) == [None, b"2", b"3"]
    with pytest.raises(InvalidArgument):
        tx.put(a, b"again")


def test_exception_rolls_back(db):
    a = db.k(b"a")
    with pytest.raises(ZeroDivisionError):
        with db.transaction() as tx:
            tx.put(a, b"x")
            1 / 0
    assert tx.state == "rolled back" and db.get(a) is None


def test_scan_merges_own_writes_in_both_directions(db):
    db.put_many({db.k(b"%d" % i): b"db" for i in range(0, 10, 2)})
    with db.transaction() as tx:
        tx.put(db.k(b"3"), b"tx")
        tx.delete(db.k(b"4"))
        tx.put(db.k(b"6"), b"tx")
        fwd = [(k[len(db.prefix):], v) for k, v in tx.scan(prefix=db.prefix or None)]
        assert fwd == [(b"0", b"db"), (b"2", b"db"), (b"3", b"tx"), (b"6", b"tx"), (b"8", b"db")]
        rev = [k[len(db.prefix):] for k, _ in tx.scan(prefix=db.prefix or None, reverse=True, limit=3)]
        assert rev == [b"8", b"6", b"3"]


def test_lost_update_is_a_conflict_and_changes_nothing(db):
    a = db.k(b"a")
    db.put(a, b"0")
    t1, t2 = db.transaction(), db.transaction()
    t1.put(a, t1.get(a) + b"1")
    t2.put(a, t2.get(a) + b"2")
    t2.put(db.k(b"other"), b"x")
    t1.commit()
    with pytest.raises(TransactionConflict) as info:
        t2.commit()
    assert isinstance(info.value, TransientError)
    assert db.get(a) == b"01" and db.get(db.k(b"other")) is None and t2.state == "rolled back"


def test_write_skew_allowed_under_snapshot_forbidden_under_serializable(db):
    x, y = db.k(b"x"), db.k(b"y")
    for isolation, skew_allowed in (("snapshot", True), ("serializable", False)):
        db.put_many({x: b"1", y: b"1"})
        t1, t2 = db.transaction(isolation=isolation), db.transaction(isolation=isolation)
        if t1.get(x) == b"1" and t1.get(y) == b"1":
            t1.put(x, b"0")
        if t2.get(x) == b"1" and t2.get(y) == b"1":
            t2.put(y, b"0")
        t1.commit()
        if skew_allowed:
            t2.commit()
            assert db.get_many([x, y]) == [b"0", b"0"]
        else:
            with pytest.raises(TransactionConflict):
                t2.commit()
            assert db.get_many([x, y]) == [b"0", b"1"]


def test_serializable_scan_sees_phantoms_as_conflicts(db):
    lo = db.k(b"p/")
    db.put(db.k(b"p/1"), b"1")
    t1 = db.transaction(isolation="serializable")
    count = len(list(t1.scan(prefix=lo)))
    t1.put(db.k(b"count"), b"%d" % count)
    db.put(db.k(b"p/2"), b"1")                    # a phantom in the scanned range
    with pytest.raises(TransactionConflict):
        t1.commit()
    # Outside the range observed by a limited scan: no conflict.
    t2 = db.transaction(isolation="serializable")
    assert [k for k, _ in t2.scan(prefix=lo, limit=1)] == [db.k(b"p/1")]
    t2.put(db.k(b"count"), b"1")
    db.put(db.k(b"p/3"), b"1")
    t2.commit()


def test_reads_and_blind_writes_do_not_conflict(db):
    a = db.k(b"a")
    db.put(a, b"0")
    ro = db.transaction(isolation="serializable")
    assert ro.get(a) == b"0"
    blind = db.transaction()
    blind.put(a, b"blind")                        # never read: no snapshot, no conflict
    db.put(a, b"1")
    ro.commit()                                   # read-only: commits at its snapshot
    blind.commit()
    assert db.get(a) == b"blind"


def test_run_transaction_retries_conflicts(db):
    a = db.k(b"n")
    db.put(a, b"0")
    calls = []

    def bump(tx):
        v = int(tx.get(a))
        calls.append(v)
        if len(calls) == 1:
            db.put(a, b"%d" % (v + 100))           # someone else wins the first attempt
        tx.put(a, b"%d" % (v + 1))
        return v + 1

    assert db.run_transaction(bump) == 101
    assert db.get(a) == b"101" and calls == [0, 100]

    def always(tx):
        tx.put(a, tx.get(a) + b"!")
        db.put(a, b"x")
    with pytest.raises(TransactionConflict):
        db.run_transaction(always, retries=2)


def test_bad_arguments(db):
    with pytest.raises(InvalidArgument, match="isolation"):
        db.transaction(isolation="read committed")
    with pytest.raises(InvalidArgument, match="retries"):
        db.run_transaction(lambda tx: None, retries=-1)
    with db.transaction() as tx:
        with pytest.raises(InvalidArgument):
            tx.put(b"", b"v")
        with pytest.raises(InvalidArgument):
            tx.get(123)


def test_expired_transaction_raises_and_writes_nothing(tmp_path):
    for shards in (0, 2):
        with ldb.open(tmp_path / f"db{shards}", shards=shards, transaction_max_age=0.3) as db:
            tx = db.transaction()
            assert tx.get(b"a") is None
            time.sleep(0.5)                       # the limit itself is what is tested
            with pytest.raises(TransactionExpired, match="transaction_max_age"):
                tx.put(b"a", b"1")
            assert db.get(b"a") is None and tx.state == "rolled back"
            assert db.stats()["tx_registered"] == 0


def test_shards_expire_registrations_of_transactions_left_open(tmp_path):
    """A transaction whose caller never ends it stops holding the shard
    (compaction, the tracker) after transaction_max_age."""
    from lightning_db.storage.engine import Engine
    from lightning_db.storage.txn import TxCheck
    cfg = ldb.Config(transaction_max_age=0.2)
    e = Engine(str(tmp_path / "e"), cfg)
    try:
        seq = e.begin_tx()
        e.write([(1, b"k", b"v")])
        assert e.stats()["tx_tracked_keys"] == 1
        time.sleep(0.3)
        seq2 = e.begin_tx()                        # any later registration expires the stale one
        assert e.stats()["tx_registered"] == 1 and e.stats()["tx_expired"] == 1
        with pytest.raises(TransactionExpired, match="transaction_max_age"):
            e.write([(1, b"k", b"w")], check=TxCheck(seq, [b"k"]))
        assert e.get(b"k") == b"v"
        assert e.end_tx(seq) is False and e.end_tx(seq2) is True
        assert e.stats()["tx_registered"] == 0 and e.stats()["tx_tracked_keys"] == 0
    finally:
        e.close()


def test_plain_writes_wait_for_a_prepared_transactions_keys(sharded):
    """A key under a prepared cross-shard transaction's write intent: a plain
    write to it is refused on the shard and retried until the transaction
    is decided, so it lands after it."""
    ks = keys_on_distinct_shards(sharded.ring, b"intent")[:2]
    txid = b"\x00\x00" + os.getpid().to_bytes(4, "big") + os.urandom(10)
    shard = sharded.ring.shard_of(ks[0])
    ref = sharded.refs[shard]
    ref.ask("prepare", [txid, [[1, ks[0], b"tx"]]], 30).result()
    with pytest.raises(TransactionConflict):
        ref.ask("write", [[[1, ks[0], b"plain"]], False], 30).result()
    done = threading.Event()
    t = threading.Thread(target=lambda: (sharded.put(ks[0], b"plain", sync=True), done.set()))
    t.start()
    try:
        assert not done.wait(0.3)
        ref.ask("commit", [txid, True, False], 30).result()
        assert done.wait(30)
    finally:
        ref.ask("abort", [txid], 30).result()
        t.join(30)
    assert sharded.get(ks[0]) == b"plain"


def _commit_in_a_thread(tx) -> list[BaseException]:
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            tx.commit()
        except BaseException as exc:
            errors.append(exc)
    t = threading.Thread(target=commit)
    t.start()
    t.join(60)
    assert not t.is_alive()
    return errors


def _registered_next(db) -> None:
    """The next transaction snapshot of *db* (sharded) is registered on the
    shards (else one is only while none was lately: shards/snapshot.py)."""
    db.tx_registered = (-1e9, [])


@pytest.mark.parametrize("registered", [True, False])
@pytest.mark.parametrize("writes", [True, False])
def test_a_transaction_taken_in_one_thread_commits_from_another(sharded, writes, registered):
    """A transaction's snapshot is registered on the connections of the
    thread that took it. Committed from another thread, its checks still
    find the registrations (that thread registers again first: one
    registration, by its token), a conflict is still one, and nothing
    stays registered. Unregistered, the same holds with nothing sent."""
    a, b = keys_on_distinct_shards(sharded.ring, b"xthread%d%d-" % (writes, registered))[:2]
    base = sharded.stats()["tx_registered"]
    sharded.put_many({a: b"0", b: b"0"})
    if registered:
        _registered_next(sharded)
    tx = sharded.transaction()
    assert tx.get(a) == b"0" and tx.get(b) == b"0"
    assert tx._view.snap.registered is registered
    if writes:
        tx.put(a, b"1")
        tx.put(b, b"1")
    assert _commit_in_a_thread(tx) == []
    assert sharded.get_many([a, b]) == ([b"1", b"1"] if writes else [b"0", b"0"])
    if registered:
        _registered_next(sharded)
    tx = sharded.transaction()
    assert tx.get(a) is not None
    tx.put(a, b"2")                         # a lost update if it committed
    if writes:
        tx.put(b, b"2")
    sharded.put(a, b"written after the snapshot")
    errors = _commit_in_a_thread(tx)
    assert len(errors) == 1 and isinstance(errors[0], TransactionConflict)
    assert sharded.get_many([a, b]) == [b"written after the snapshot", b"1" if writes else b"0"]
    # Released on the shared connection (by the thread that committed, now
    # ended) or waited for: the stats asked there come after.
    assert sharded.stats()["tx_registered"] == base


def test_registrations_split_between_connections_are_made_again_before_the_checks(sharded, monkeypatch):
    """A thread without a direct connection to one shard (the client's limit
    of them reached) registers there on the shared one: its checks cannot
    rely on one connection's order, so it registers again, waited for."""
    a, b = keys_on_distinct_shards(sharded.ring, b"mixed")[:2]
    base = sharded.stats()["tx_registered"]
    ref = sharded.refs[1]
    monkeypatch.setattr(ref, "tell_here", lambda op, payload=None: ref.tell(op, payload) or False, raising=False)
    asked: list[str] = []
    ask_here = type(ref).ask_here
    monkeypatch.setattr(type(ref), "ask_here", lambda self, op, *a, **k: (asked.append(op), ask_here(self, op, *a, **k))[1])
    _registered_next(sharded)
    with sharded.transaction() as tx:
        tx.get(a)
        tx.put(a, b"1")
        tx.put(b, b"1")
    assert asked.count("register") == 2 and sharded.get_many([a, b]) == [b"1", b"1"]
    assert sharded.stats()["tx_registered"] == base


def test_stats_after_a_commit_count_its_release(sharded):
    """A commit's release goes on the committing thread's own connections;
    the stats asked next (on the shared one) come after it."""
    a, b = keys_on_distinct_shards(sharded.ring, b"released")[:2]
    base = sharded.stats()["tx_registered"]
    for n in range(20):
        _registered_next(sharded)
        with sharded.transaction() as tx:
            tx.get(a)
            tx.put(b, b"%d" % n)
        assert sharded.stats()["tx_registered"] == base


def test_snapshots_never_see_part_of_a_cross_shard_batch(sharded):
    ks = keys_on_distinct_shards(sharded.ring, b"cut")[:2]
    sharded.put_many({k: b"0" for k in ks})
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        i = 0
        try:
            while not stop.is_set():
                i += 1
                sharded.put_many({k: b"%d" % i for k in ks})
        except BaseException as exc:      # reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or len(seen) < 20:
            with sharded.snapshot() as s:
                a, b = s.get_many(ks)
                assert a == b, f"a snapshot saw half a batch: {a!r} vs {b!r}"
                assert [v for _, v in s.scan(start=min(ks), end=max(ks) + b"\x00") if _ in ks] == [a, a]
            seen.add(a)
            if time.monotonic() > deadline + 30:
                break
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert len(seen) >= 20, f"the writer hardly ran: {len(seen)} distinct values seen"


@pytest.mark.parametrize("level", ["serializable", "snapshot-isolation"])
def test_list_append_histories_show_no_forbidden_anomaly(sharded, tmp_path, level):
    """ELLE_RUNS runs per level (LDB_ELLE_RUNS), each of concurrent list
    appends over few keys across both shards and the in-process engine."""
    with ldb.open(tmp_path / "local", shards=0) as local:
        totals = {"ok": 0, "fail": 0}
        for run in range(ELLE_RUNS):
            target = sharded if run % 2 else local
            r = check_run(target, level, threads=4, txns=24, keys=5, max_ops=4, seed=run,
                          prefix=f"elle:{level}:{run}:".encode())
            assert r.valid, f"run {run} ({'sharded' if run % 2 else 'in process'}): {r.summary()}"
            for t in r.history or ():
                totals[t["type"]] = totals.get(t["type"], 0) + 1
        assert totals["ok"] > 0 and totals["fail"] > 0, totals    # real contention happened
