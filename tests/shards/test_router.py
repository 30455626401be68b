"""ShardRouter and resolve_in_doubt against real shard workers.

The test process is the client and 2PC coordinator (ShardRouter); each shard
is a ShardActor in its own worker process spawned here. Crash tests kill a
worker with SIGKILL and spawn a new ShardActor on the same shard directory.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import types

import pytest

from lightning_db.actors import ActorDead, spawn
from lightning_db.config import Config
from lightning_db.errors import CriticalError, DatabaseClosed, InvalidArgument
from lightning_db.shards import coordinator
from lightning_db.shards.actor import ShardActor
from lightning_db.shards.gate import CommitGate
from lightning_db.shards.ring import HashRing
from lightning_db.shards.router import ShardRouter, resolve_in_doubt

CONFIG = {"max_key_size": 64, "max_value_size": 256, "memtable_size": 64 * 1024}
T = 20.0
_names = itertools.count()


class Cluster:
    """n ShardActors in base/shard-NNN; ``restart(i)`` kills -9 and respawns."""

    def __init__(self, base: str, runtime_dir: str, n: int) -> None:
        self.base, self.runtime_dir = base, runtime_dir
        self.refs: list = []
        try:
            for i in range(n):
                self.refs.append(self._spawn(i))
        except BaseException:
            self.stop()
            raise
        self.ring = HashRing(n)

    def _spawn(self, i: int):
        return spawn(ShardActor, os.path.join(self.base, f"shard-{i:03d}"), CONFIG, i,
                     name=f"rt-shard-{i}-{next(_names)}", runtime_dir=self.runtime_dir)

    def router(self, **kw) -> ShardRouter:
        return ShardRouter(self.refs, self.ring, Config.from_dict(CONFIG), timeout=T, **kw)

    def restart(self, i: int) -> None:
        self.refs[i].kill()
        self.refs[i] = self._spawn(i)

    def stop(self) -> None:
        for r in self.refs:
            r.stop()


@pytest.fixture(scope="module")
def shared(runtime_dir, tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("shared")), runtime_dir, 3)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh(runtime_dir, tmp_path):
    c = Cluster(str(tmp_path), runtime_dir, 3)
    try:
        yield c
    finally:
        c.stop()


def keys_on_distinct_shards(ring: HashRing, tag: bytes) -> list[bytes]:
    """One key per shard, in shard order."""
    found: dict[int, bytes] = {}
    for i in itertools.count():
        k = tag + b"%d" % i
        found.setdefault(ring.shard_of(k), k)
        if len(found) == ring.shards:
            return [found[s] for s in range(ring.shards)]


def model_scan(model, start, end, prefix, reverse, limit):
    items = sorted(model.items(), reverse=reverse)
    out = [(k, v) for k, v in items if (start is None or k >= start) and (end is None or k < end)
           and (prefix is None or k.startswith(prefix))]
    return out if limit is None else out[:limit]


def test_model(fresh):
    rng = random.Random(1234)
    alphabet = b"\x00\x01a\xfe\xff"
    key = lambda: bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
    bound = lambda: None if rng.random() < 0.3 else key()
    model: dict[bytes, bytes] = {}
    db = fresh.router()
    for step in range(400):
        r = rng.random()
        if r < 0.25:
            k, v = key(), os.urandom(rng.randint(0, 8))
            db.put(k, v)
            model[k] = v
        elif r < 0.35:
            k = key()
            db.delete(k)
            model.pop(k, None)
        elif r < 0.45:
            items = {key(): os.urandom(4) for _ in range(rng.randint(1, 12))}
            db.put_many(items)
            model.update(items)
        elif r < 0.55:
            with db.batch() as b:
                for _ in range(rng.randint(1, 10)):
                    k = key()
                    if rng.random() < 0.3:
                        b.delete(k)
                        model.pop(k, None)
                    else:
                        v = os.urandom(3)
                        b.put(k, v)
                        model[k] = v
        elif r < 0.65:
            ks = [key() for _ in range(rng.randint(0, 10))]
            assert db.get_many(ks) == [model.get(k) for k in ks]
        elif r < 0.75:
            k = key()
            assert db.get(k) == model.get(k)
            assert (k in db) == (k in model)
        else:
            start, end = bound(), bound()
            prefix = None if rng.random() < 0.6 else bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 2)))
            reverse = rng.random() < 0.5
            limit = None if rng.random() < 0.5 else rng.randint(0, 20)
            got = list(db.scan(start=start, end=end, prefix=prefix, reverse=reverse, limit=limit))
            assert got == model_scan(model, start, end, prefix, reverse, limit), (step, start, end, prefix)
    assert list(db.scan()) == sorted(model.items())
    assert all(db.stats()["shards"][s]["snapshots"] == 0 for s in range(3))
    db.close()


def test_scan_many_pages(shared, monkeypatch):
    from lightning_db.shards import router as router_mod
    monkeypatch.setattr(router_mod, "SCAN_PAGE", 7)
    db = shared.router()
    items = {b"pg%04d" % i: b"%d" % i for i in range(300)}
    db.put_many(items)
    assert list(db.scan(prefix=b"pg")) == sorted(items.items())
    assert list(db.scan(prefix=b"pg", reverse=True)) == sorted(items.items(), reverse=True)
    assert list(db.scan(start=b"pg0100", end=b"pg0150", limit=13)) == sorted(items.items())[100:113]
    it = db.scan(prefix=b"pg")
    next(it)
    it.close()                                   # released early
    assert db.stats()["snapshots"] == 0


def test_get_many_order(shared):
    db = shared.router()
    items = {b"gm%03d" % i: b"v%d" % i for i in range(0, 200, 2)}
    db.put_many(items)
    ks = [b"gm%03d" % i for i in random.Random(5).sample(range(200), 150)] + [b"gm000", b"gm000", b"zz"]
    assert db.get_many(ks) == [items.get(k) for k in ks]
    assert db.get_many([]) == []
    assert db.get_many(iter([bytearray(b"gm002"), memoryview(b"gm004"), b"gm0", b"gm000"])) == \
        [items[b"gm002"], items[b"gm004"], None, items[b"gm000"]]
    for bad, what in (([b"ok", b""], "1 to 64 bytes"), ([b"ok", b"k" * 65], "got 65 bytes"),
                      ([b"ok", "str"], "bytes-like"), ([bytearray(b"ok"), b""], "got 0 bytes")):
        with pytest.raises(InvalidArgument, match=what):
            db.get_many(bad)


def test_validation_and_mapping(shared):
    db = shared.router()
    for bad in (lambda: db.put(b"", b"v"), lambda: db.put(b"k" * 65, b"v"), lambda: db.put(b"k", b"v" * 257),
                lambda: db.put("k", b"v"), lambda: db.put_many([(b"a", b"1"), (b"b",)]),
                lambda: db.put(b"k", b"v", sync="yes"), lambda: list(db.scan(limit=-1)),
                lambda: list(db.scan(reverse=1))):
        with pytest.raises(InvalidArgument):
            bad()
    db[b"mp"] = b"1"
    assert db[b"mp"] == b"1" and b"mp" in db
    del db[b"mp"]
    with pytest.raises(KeyError):
        _ = db[b"mp"]
    with pytest.raises(KeyError):
        del db[b"mp"]
    with pytest.raises(ZeroDivisionError), db.batch() as b:
        b.put(b"discarded", b"1")
        raise ZeroDivisionError
    assert db.get(b"discarded") is None


def test_snapshot_isolation_across_shards(shared):
    db = shared.router()
    ks = keys_on_distinct_shards(shared.ring, b"iso")
    db.put_many({k: b"old" for k in ks})
    with db.snapshot() as snap:
        assert len(snap.seqs) == 3
        db.put_many({k: b"new" for k in ks})
        db.delete(ks[0])
        assert [snap.get(k) for k in ks] == [b"old"] * 3
        assert snap.get_many(ks) == [b"old"] * 3
        assert list(snap.scan(prefix=b"iso")) == sorted((k, b"old") for k in ks)
        assert list(snap.scan(prefix=b"iso", reverse=True, limit=2)) == sorted(((k, b"old") for k in ks),
                                                                               reverse=True)[:2]
        assert db.get_many(ks) == [None, b"new", b"new"]
        assert db.stats()["snapshots"] >= 3
    with pytest.raises(InvalidArgument):
        snap.get(ks[0])
    assert db.stats()["snapshots"] == 0
    s2 = db.snapshot()
    db.close()                                   # releases what it still holds
    assert shared.router().stats()["snapshots"] == 0
    with pytest.raises(DatabaseClosed):          # the handle went, and its snapshots with it
        s2.get(ks[1])


def test_maintenance(shared, tmp_path):
    db = shared.router()
    db.put_many({b"mt%03d" % i: b"x" * 50 for i in range(100)})
    db.flush()
    db.compact()
    assert db.verify()["tables"] >= 3
    st = db.stats()
    assert len(st["shards"]) == 3 and [s["shard_id"] for s in st["shards"]] == [0, 1, 2]
    assert st["keys_estimate"] == sum(s["keys_estimate"] for s in st["shards"]) >= 100
    info = db.checkpoint(tmp_path / "ck", shards_file=b"shards=3\n")
    assert len(info["shards"]) == 3
    assert sorted(os.listdir(tmp_path / "ck")) == ["SHARDS", "shard-000", "shard-001", "shard-002"]
    assert (tmp_path / "ck" / "SHARDS").read_bytes() == b"shards=3\n"
    with pytest.raises(InvalidArgument):
        db.checkpoint(tmp_path / "ck")


# --- two-phase commit --------------------------------------------------------------------------

def ask(ref, op, payload=None):
    return ref.ask(op, payload, T).result()


def visible(c: Cluster, ks: list[bytes]) -> list[bytes | None]:
    return [ask(c.refs[c.ring.shard_of(k)], "get", [k, None]) for k in ks]


def no_doubt(c: Cluster) -> bool:
    return all(ask(r, "in_doubt") == [] for r in c.refs)


def test_invalid_op_on_one_shard_aborts_everywhere(shared):
    db = shared.router()
    ks = keys_on_distinct_shards(shared.ring, b"inv")
    parts = {0: [(1, ks[0], b"v")], 1: [(1, ks[1], b"v")], 2: [(1, ks[2], b"x" * 1000)]}   # oversized
    with pytest.raises(InvalidArgument):
        db._two_phase(parts)
    assert visible(shared, ks) == [None] * 3 and no_doubt(shared)
    db.put_many({k: b"ok" for k in ks})          # the same keys commit fine afterwards
    assert visible(shared, ks) == [b"ok"] * 3 and no_doubt(shared)
    assert all(not ask(r, "stats")["prepared_transactions"] for r in shared.refs)


def test_dead_participant_fails_batch(fresh):
    db = fresh.router()
    ks = keys_on_distinct_shards(fresh.ring, b"dead")
    fresh.refs[2].kill()
    with pytest.raises(CriticalError):           # ActorDead
        db.put_many({k: b"v" for k in ks})
    assert [ask(fresh.refs[s], "get", [ks[s], None]) for s in (0, 1)] == [None, None]
    assert all(ask(fresh.refs[s], "in_doubt") == [] for s in (0, 1))
    fresh.restart(2)
    assert resolve_in_doubt(fresh.refs) == {"committed": 0, "aborted": 0, "failed": 0}


def prepare_all(c: Cluster, ks: list[bytes], val: bytes) -> bytes:
    txid = (0).to_bytes(2, "big") + os.urandom(14)
    for s, k in enumerate(ks):
        ask(c.refs[s], "prepare", [txid, [[1, k, val]]])
    return txid


@pytest.mark.parametrize("victim", [0, 1, 2])
def test_kill_after_prepare_resolves_to_abort(fresh, victim):
    """Coordinator gone after prepare (never decided), one shard killed and
    restarted: presumed abort everywhere."""
    ks = keys_on_distinct_shards(fresh.ring, b"kp")
    prepare_all(fresh, ks, b"v")
    fresh.restart(victim)
    assert len(ask(fresh.refs[victim], "in_doubt")) == 1     # the prepare was durable
    counts = resolve_in_doubt(fresh.refs)
    assert counts["aborted"] == 3 and counts["failed"] == 0
    assert visible(fresh, ks) == [None] * 3 and no_doubt(fresh)
    assert not ask(fresh.refs[0], "decided", [b"\x00\x00" + b"\x00" * 14])


@pytest.mark.parametrize("victim", [None, 0, 2])
def test_coordinator_dies_after_primary_commit(fresh, victim):
    """The primary committed (durable decision), commits to the others never
    sent; optionally a shard is killed and restarted too: resolve commits the rest."""
    ks = keys_on_distinct_shards(fresh.ring, b"pc")
    txid = prepare_all(fresh, ks, b"w")
    ask(fresh.refs[0], "commit", [txid, True, True])
    if victim is not None:
        fresh.restart(victim)
    assert visible(fresh, ks)[0] == b"w"
    counts = resolve_in_doubt(fresh.refs)
    assert counts == {"committed": 2, "aborted": 0, "failed": 0}
    assert visible(fresh, ks) == [b"w"] * 3 and no_doubt(fresh)
    assert resolve_in_doubt(fresh.refs)["committed"] == 0     # idempotent


@pytest.mark.parametrize("victim", [None, 0, 1])
def test_coordinator_dies_after_the_decision(fresh, victim):
    """The primary made the decision durable, nothing is applied anywhere
    (the coordinator died before the apply phase); optionally a shard is
    killed and restarted too: the primary refuses an abort, and resolution
    commits every part, the primary's own included."""
    ks = keys_on_distinct_shards(fresh.ring, b"dc")
    txid = prepare_all(fresh, ks, b"d")
    ask(fresh.refs[0], "decide", [txid])
    if victim is not None:
        fresh.restart(victim)
    assert visible(fresh, ks) == [None] * 3
    assert ask(fresh.refs[0], "decided", [txid]) and len(ask(fresh.refs[0], "in_doubt")) == 1
    assert ask(fresh.refs[0], "abort", [txid]) is False            # a decided transaction only commits
    gate = CommitGate()
    try:
        counts = resolve_in_doubt(fresh.refs, gate=gate)
        assert gate.markers() == []                                 # the apply marker went with it
    finally:
        gate.close()
    assert counts == {"committed": 3, "aborted": 0, "failed": 0}
    assert visible(fresh, ks) == [b"d"] * 3 and no_doubt(fresh)
    assert resolve_in_doubt(fresh.refs)["committed"] == 0     # idempotent


@pytest.mark.parametrize("applied", [(), (1,), (0, 2)])
def test_a_snapshot_finishes_a_decided_transaction_before_it_cuts(fresh, applied):
    """Decided at the primary, applied on none, some or all but one of its
    shards (its coordinator died in between): a snapshot asked of the
    shards (this router has no published versions) commits the remaining
    parts before it cuts, so it sees the whole transaction, never a part."""
    ks = keys_on_distinct_shards(fresh.ring, b"sd")
    db = fresh.router()
    db.put_many({k: b"old" for k in ks})
    txid = prepare_all(fresh, ks, b"new")
    ask(fresh.refs[0], "decide", [txid])
    for s in applied:
        ask(fresh.refs[s], "commit", [txid, False, False])
    with db.snapshot() as snap:
        assert snap.get_many(ks) == [b"new"] * 3
    assert visible(fresh, ks) == [b"new"] * 3 and no_doubt(fresh)
    assert not ask(fresh.refs[0], "decided", [txid])         # finished and forgotten
    assert db.gate.markers() == []


def test_partial_commit_then_resolve(fresh):
    """Primary and one participant committed, the last one killed before its
    commit: after restart resolve commits it."""
    ks = keys_on_distinct_shards(fresh.ring, b"pp")
    txid = prepare_all(fresh, ks, b"z")
    ask(fresh.refs[0], "commit", [txid, True, True])
    ask(fresh.refs[1], "commit", [txid, True, False])
    fresh.restart(2)
    assert resolve_in_doubt(fresh.refs)["committed"] == 1
    assert visible(fresh, ks) == [b"z"] * 3 and no_doubt(fresh)


def test_router_batch_after_resolution_and_dead_ref(fresh):
    """A router whose shard was restarted fails with ActorDead on the old ref;
    with the new refs cross-shard batches work and leave nothing in doubt."""
    ks = keys_on_distinct_shards(fresh.ring, b"rb")
    old = fresh.router()
    fresh.restart(1)
    old.put(ks[1], b"x")                   # pipelined: the error comes at the next barrier
    with pytest.raises(ActorDead):
        old.flush()
    db = fresh.router()
    with db.batch() as b:
        for k in ks:
            b.put(k, b"y")
        b.delete(ks[0])
    assert visible(fresh, ks) == [None, b"y", b"y"] and no_doubt(fresh)
    assert not any(ask(r, "decided", [b"\x00\x00" + b"\x00" * 14]) for r in fresh.refs)


@pytest.mark.parametrize("merged", [True, False])
def test_resolution_racing_live_coordinator(fresh, merged):
    """resolve_in_doubt runs between the prepares and the primary's
    decision: the coordinator sees its decision refused, treats it as an
    abort and raises TransactionConflict; nothing is applied anywhere.
    Merged (the primary's small part goes with its decision), resolution
    aborts the txid at the primary before the primary ever saw it: the
    abort is remembered there and the decision arriving later is refused."""
    from lightning_db.errors import TransactionConflict

    class Racing(ShardRouter):
        def _ask(self, shard, op, payload=None):
            if op == "decide":
                assert resolve_in_doubt(self.refs)["aborted"] == (2 if merged else 3)
            return super()._ask(shard, op, payload)

    db = Racing(fresh.refs, fresh.ring, Config.from_dict(CONFIG), timeout=T)
    db.merge_ops = 64 if merged else 0
    ks = keys_on_distinct_shards(fresh.ring, b"race")
    with pytest.raises(TransactionConflict):
        db.put_many({k: b"v" for k in ks})
    assert visible(fresh, ks) == [None] * 3 and no_doubt(fresh)
    db.close()


def test_timeout_is_transient(shared):
    from lightning_db.errors import Timeout, TransientError
    db = ShardRouter(shared.refs, shared.ring, Config.from_dict(CONFIG), timeout=1e-6)
    db.put(b"to", b"v" * 200)                      # pipelined: the error comes at the barrier
    with pytest.raises(Timeout) as info:
        db.flush()
    assert isinstance(info.value, TransientError)
    with pytest.raises(Timeout):
        db.put(b"to", b"v" * 200, sync=True)       # a synchronous write raises it itself
    db.close()


# --- retries of idempotent asks (no processes: refs that fail on cue) ------------------------


class _FlakyRef:
    """Answers asks from *answers* (op -> value); the first *fail* asks of
    each op in *flaky* fail with PeerLost. Records every ask."""

    def __init__(self, answers, flaky=(), fail=1) -> None:
        self.answers, self.flaky, self.fail = answers, set(flaky), fail
        self.asks: list[str] = []

    def ask(self, op, payload=None, timeout=None):
        from concurrent.futures import Future

        from lightning_db.errors import PeerLost
        self.asks.append(op)
        f = Future()
        if op in self.flaky and self.asks.count(op) <= self.fail:
            f.set_exception(PeerLost("gone"))
        else:
            f.set_result(self.answers.get(op))
        return f

    ask_here = ask

    def barrier_here(self, timeout=None):
        return None                 # one queue: every ask in the order sent


def _flaky_router(refs) -> ShardRouter:
    return ShardRouter(refs, HashRing(len(refs)), Config.from_dict(CONFIG), timeout=30)


def test_idempotent_asks_are_retried_after_peer_lost():
    ref = _FlakyRef({"get": b"v", "write": 1, "get_many": [b"a"], "flush": None}, {"get", "write", "get_many", "flush"},
                    fail=2)
    r = _flaky_router([ref])
    assert r.get(b"k") == b"v"
    r.put(b"k", b"v", sync=True)             # waits (a pipelined put is retried by its sender)
    assert r.get_many([b"k"]) == [b"a"]
    r.flush()
    assert [ref.asks.count(op) for op in ("get", "write", "get_many", "flush")] == [3, 3, 3, 3]
    assert r.retries == 8


def test_get_many_asks_again_only_the_shards_that_failed():
    good, bad = _FlakyRef({"get_many": []}), _FlakyRef({"get_many": []}, {"get_many"})
    r = _flaky_router([good, bad])
    keys = [b"k%03d" % i for i in range(64)]
    r.get_many(keys)
    assert good.asks.count("get_many") == 1 and bad.asks.count("get_many") == 2


@pytest.mark.parametrize("merged", [True, False])
def test_two_phase_commit_steps_are_not_retried(merged):
    """A lost prepare is not sent again: the batch aborts where it prepared
    and raises. Merged, the primary's part would have gone with its
    decision, after the others prepared: it never hears of the batch."""
    from lightning_db.errors import PeerLost
    flaky = 1 if merged else 0         # a shard that gets a prepare
    refs = [_FlakyRef({"prepare": True, "abort": True}, {"prepare"} if s == flaky else (), fail=1) for s in (0, 1)]
    r = _flaky_router(refs)
    r.merge_ops = 64 if merged else 0
    keys = [b"k%03d" % i for i in range(64)]        # both shards: two-phase commit
    with pytest.raises(PeerLost):
        r.put_many({k: b"v" for k in keys})
    assert refs[1].asks == ["prepare", "abort"]
    assert refs[0].asks == ([] if merged else ["prepare", "abort"])


def test_forgets_go_out_without_waiting_and_closing_waits_for_them(fresh):
    r = fresh.router()
    keys = keys_on_distinct_shards(fresh.ring, b"fg")
    txids: list[bytes] = []
    r.forgets = _Recording(r.forgets, txids)
    try:
        for i in range(5):
            r.put_many({k: b"%d" % i for k in keys})
        assert len(txids) == 5                      # each batch left its forget to be checked later
        assert len(r.forgets) <= 5
    finally:
        r.close()
    assert not r.forgets                            # closing settled every one
    for t in txids:                                 # and the primary (the lowest shard) keeps no decision
        assert fresh.refs[0].ask("decided", [t], T).result() is False


def test_the_forget_check_meets_a_queue_another_thread_emptied():
    class Emptied(list):                  # len() said one entry; another thread took it since
        def __len__(self):
            return 1

    router = types.SimpleNamespace(forgets=Emptied(), forget_batch=32)
    assert coordinator._forgets_may_be_due(router, time.monotonic_ns()) is False
    router.forgets = [[0, b"t", 0, [1], None]]
    assert coordinator._forgets_may_be_due(router, time.monotonic_ns()) is True     # old enough


class _Recording:
    """A deque that also records the txid of each forget appended."""

    def __init__(self, dq, seen):
        self._dq, self._seen = dq, seen

    def append(self, item):                         # settle_forgets puts back the unanswered ones
        if item[1] not in self._seen:
            self._seen.append(item[1])
        self._dq.append(item)

    def __getattr__(self, name):
        return getattr(self._dq, name)

    def __len__(self):
        return len(self._dq)

    def __getitem__(self, i):
        return self._dq[i]

    def __bool__(self):
        return bool(self._dq)


def test_the_primary_forgets_only_once_the_other_commits_are_durable(fresh):
    # The other participants' commits are not synced; a later prepare there
    # (synced) makes them durable, and only then does the forget go out.
    r = fresh.router()
    r.forget_batch = 1                      # each forget goes out once it is due
    keys = keys_on_distinct_shards(fresh.ring, b"dur")
    try:
        r.put_many({k: b"1" for k in keys})
        (entry,) = list(r.forgets)
        first = entry[1]
        assert entry[3] == [1, 2] and entry[4] is None          # waiting for shards 1 and 2
        assert fresh.refs[0].ask("decided", [first], T).result() is True
        r.put_many({k: b"2" for k in keys})                     # prepares on 1 and 2: synced
        assert first not in [e[1] for e in r.forgets if e[4] is None]
        # The forget went out before this question, on the same connection.
        assert fresh.refs[0].ask("decided", [first], T).result() is False
        assert r.get_many(keys) == [b"2"] * len(keys)
    finally:
        r.close()
    assert not r.forgets


def test_due_forgets_go_to_the_primary_together(fresh, monkeypatch):
    # Each batch's forget is due once the next batch's prepares (synced)
    # reach the other participants; they go out as one message per primary
    # once forget_batch of them are due, or once the oldest is FORGET_WAIT_S old.
    r = fresh.router()
    r.forget_batch = 3
    monkeypatch.setattr(coordinator, "FORGET_WAIT_S", 3600.0)
    keys = keys_on_distinct_shards(fresh.ring, b"grp")
    decided = lambda t: fresh.refs[0].ask("decided", [t], T).result()      # noqa: E731
    try:
        txids = []
        for i in range(3):
            r.put_many({k: b"%d" % i for k in keys})
            txids.append(r.forgets[-1][1])
        assert all(decided(t) for t in txids)                 # two due, one not: none sent
        r.put_many({k: b"3" for k in keys})                   # the third is due: all three go
        assert [decided(t) for t in txids] == [False] * 3
        assert [e[1] for e in r.forgets if e[4] is None] == [r.forgets[-1][1]]    # only the newest waits
        monkeypatch.setattr(coordinator, "FORGET_WAIT_S", 0.0)
        last = r.forgets[-1][1]
        r.put_many({k: b"4" for k in keys})                   # one due, old enough: it goes alone
        assert decided(last) is False
        assert r.get_many(keys) == [b"4"] * len(keys)
    finally:
        r.close()
    assert not r.forgets


@pytest.mark.parametrize("bad, message", [
    ([(b"k", "text")], "value must be bytes-like"),
    ([(b"", b"v")], "key must be 1 to 64 bytes"),
    ([(b"k" * 65, b"v")], "key must be 1 to 64 bytes"),
    ([(b"k", b"v" * 257)], "value must be at most 256 bytes"),
    ([(b"k", b"v", b"extra")], "put_many takes"),
    ([b"kv"], r"put_many takes \(key, value\) pairs"),    # two bytes unpack as two ints
])
def test_put_many_checks_every_pair_and_writes_nothing_on_error(shared, bad, message):
    r = shared.router()
    try:
        tag = os.urandom(4).hex().encode()
        pairs = [(b"pm-%s-%d" % (tag, i), b"v") for i in range(50)] + bad
        with pytest.raises(InvalidArgument, match=message):
            r.put_many(pairs)
        assert r.get_many([p[0] for p in pairs[:50]]) == [None] * 50
        r.put_many(pairs[:50])                  # the fast path (plain bytes pairs) writes them all
        assert r.get_many([p[0] for p in pairs[:50]]) == [b"v"] * 50
        r.put_many([(bytearray(b"pm-ba"), memoryview(b"mv"))])     # bytes-like: the checked path
        assert r.get(b"pm-ba") == b"mv"
    finally:
        r.close()
