"""Model-based test: the database against a plain dict (the backbone test).

A hypothesis ``RuleBasedStateMachine`` drives one in-process database
(``shards=0``) with every public operation and checks each read against a
dict. The key alphabet is tiny (``a``..``e`` and ``\\xff``, 1 to 3 bytes) so
overwrites, deletes of live keys and prefix edge cases (``\\xff`` has no
successor byte) happen all the time. The memtable and tables are tiny too,
and a ``bulk`` rule writes the whole keyspace with larger values, so
flushes, compactions, multi-level reads and snapshots that pin old versions
across compactions really happen inside the state machine.
"""

from __future__ import annotations

import itertools
import random
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import lightning_db as ldb
from lightning_db import DatabaseClosed, InvalidArgument

# Small enough that a few bulk writes rotate the memtable, fill L0, and push
# data through L1 into L2.
SMALL = dict(
    memtable_size=64 * 1024,
    l0_compaction_trigger=2,
    target_file_size=8 * 1024,
    block_size=512,
    max_bytes_for_level_base=32 * 1024,
)

ALPHABET = [b"a", b"b", b"c", b"d", b"e", b"\xff"]
ALL_KEYS = sorted(b"".join(p) for n in (1, 2, 3) for p in itertools.product(ALPHABET, repeat=n))

keys = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3).map(b"".join)
values = st.binary(min_size=0, max_size=24)
# Bounds and prefixes may also be empty: b"" as start means "from the first
# key", as end "nothing", as prefix "every key".
bounds = st.none() | st.just(b"") | keys
limits = st.none() | st.integers(min_value=0, max_value=6)
ops = st.lists(
    st.tuples(st.just("put"), keys, values) | st.tuples(st.just("delete"), keys, st.just(b"")),
    min_size=1,
    max_size=8,
)

MAX_SNAPSHOTS = 3


class Boom(Exception):
    """Raised inside a ``with db.batch()`` block to abort it."""


def model_scan(model: dict[bytes, bytes], start, end, prefix, reverse, limit) -> list[tuple[bytes, bytes]]:
    items = sorted(
        (k, v)
        for k, v in model.items()
        if (start is None or k >= start)
        and (end is None or k < end)
        and (prefix is None or k.startswith(prefix))
    )
    if reverse:
        items.reverse()
    return items if limit is None else items[:limit]


class DatabaseMachine(RuleBasedStateMachine):
    OPTIONS: dict = SMALL
    BASE_DIR: str | None = None
    SHARDS = 0            # 0: the in-process engine; N: N worker processes under a node

    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="model-", dir=self.BASE_DIR)
        self.db = ldb.open(self.dir, shards=self.SHARDS, **self.OPTIONS)
        self.model: dict[bytes, bytes] = {}
        self.live_snapshots = 0
        self.reopens = 0
        self.last_seq: list[int] = []

    def teardown(self) -> None:
        try:
            if not self.db.closed:
                # Everything the model holds is in the database and nothing else.
                assert list(self.db.scan()) == sorted(self.model.items())
                for st in self._shard_stats():
                    deepest = max((lv["level"] for lv in st["levels"] if lv["files"]), default=-1)
                    event(f"deepest level with files: {deepest}")
                event(f"reopens: {min(self.reopens, 2)}")
                self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- writes -------------------------------------------------------------------
    @rule(key=keys, value=values)
    def put(self, key, value):
        self.db.put(key, value)
        self.model[key] = value

    @rule(key=keys, value=values)
    def setitem(self, key, value):
        self.db[key] = value
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key):
        # Absent keys are not an error.
        self.db.delete(key)
        self.model.pop(key, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_present(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.db.delete(key)
        del self.model[key]
        assert self.db.get(key) is None

    @rule(key=keys)
    def delitem(self, key):
        if key in self.model:
            del self.db[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.db[key]
        assert key not in self.db

    @rule(items=st.dictionaries(keys, values, max_size=8))
    def put_many_dict(self, items):
        self.db.put_many(items)
        self.model.update(items)

    @rule(pairs=st.lists(st.tuples(keys, values), max_size=8))
    def put_many_pairs(self, pairs):
        # Duplicate keys in one call: the last one wins.
        self.db.put_many(iter(pairs))
        for k, v in pairs:
            self.model[k] = v

    @rule(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.25, 0.5, 1.0]))
    def bulk(self, seed, fraction):
        """Write a large share of the whole keyspace with values of up to
        ~600 bytes: this fills the 64 KiB memtable and pushes data down."""
        r = random.Random(seed)
        chosen = [k for k in ALL_KEYS if r.random() < fraction]
        items = {k: r.randbytes(r.randrange(600)) for k in chosen}
        self.db.put_many(items)
        self.model.update(items)

    @rule(ops=ops)
    def batch(self, ops):
        with self.db.batch() as b:
            for kind, k, v in ops:
                if kind == "put":
                    b.put(k, v)
                else:
                    b.delete(k)
        for kind, k, v in ops:
            if kind == "put":
                self.model[k] = v
            else:
                self.model.pop(k, None)

    @rule(ops=ops)
    def batch_aborted(self, ops):
        seqs = [st["sequence"] for st in self._shard_stats()]
        with pytest.raises(Boom):
            with self.db.batch() as b:
                for kind, k, v in ops:
                    if kind == "put":
                        b.put(k, v)
                    else:
                        b.delete(k)
                raise Boom()
        assert [st["sequence"] for st in self._shard_stats()] == seqs
        for _, k, _ in ops:
            assert self.db.get(k) == self.model.get(k)

    # --- reads ---------------------------------------------------------------------
    @rule(key=keys)
    def get(self, key):
        assert self.db.get(key) == self.model.get(key)
        assert self.db.get(key, b"<default>") == self.model.get(key, b"<default>")

    @rule(key=keys)
    def getitem_contains(self, key):
        assert (key in self.db) == (key in self.model)
        if key in self.model:
            assert self.db[key] == self.model[key]
        else:
            with pytest.raises(KeyError):
                self.db[key]

    @rule(ks=st.lists(keys, max_size=8))
    def get_many(self, ks):
        assert self.db.get_many(ks) == [self.model.get(k) for k in ks]

    @rule(start=bounds, end=bounds, prefix=bounds, reverse=st.booleans(), limit=limits)
    def scan(self, start, end, prefix, reverse, limit):
        got = list(self.db.scan(start=start, end=end, prefix=prefix, reverse=reverse, limit=limit))
        assert got == model_scan(self.model, start, end, prefix, reverse, limit)

    @rule(prefix=keys, reverse=st.booleans())
    def scan_prefix_only(self, prefix, reverse):
        got = list(self.db.scan(prefix=prefix, reverse=reverse))
        assert got == model_scan(self.model, None, None, prefix, reverse, None)

    # --- snapshots -------------------------------------------------------------------
    @precondition(lambda self: self.live_snapshots < MAX_SNAPSHOTS)
    @rule(target=snapshots)
    def take_snapshot(self):
        self.live_snapshots += 1
        return (self.db.snapshot(), dict(self.model), self.db)

    @rule(snap=snapshots, key=keys)
    def snapshot_get(self, snap, key):
        s, model, db = snap
        if db is not self.db:
            return self._check_stale(s)
        assert s.get(key) == model.get(key)
        assert (key in s) == (key in model)

    @rule(snap=snapshots, ks=st.lists(keys, max_size=6))
    def snapshot_get_many(self, snap, ks):
        s, model, db = snap
        if db is not self.db:
            return self._check_stale(s)
        assert s.get_many(ks) == [model.get(k) for k in ks]

    @rule(snap=snapshots, start=bounds, end=bounds, prefix=bounds, reverse=st.booleans(), limit=limits)
    def snapshot_scan(self, snap, start, end, prefix, reverse, limit):
        s, model, db = snap
        if db is not self.db:
            return self._check_stale(s)
        got = list(s.scan(start=start, end=end, prefix=prefix, reverse=reverse, limit=limit))
        assert got == model_scan(model, start, end, prefix, reverse, limit)

    @rule(snap=consumes(snapshots), key=keys)
    def release_snapshot(self, snap, key):
        s, model, db = snap
        if db is not self.db:
            return self._check_stale(s)
        s.close()
        self.live_snapshots -= 1
        with pytest.raises(InvalidArgument):
            s.get(key)
        with pytest.raises(InvalidArgument):
            s.scan()
        s.close()  # releasing twice is harmless

    def _check_stale(self, s):
        """A snapshot of a handle that was closed (before a reopen)."""
        with pytest.raises(DatabaseClosed):
            s.get(b"a")

    # --- maintenance ------------------------------------------------------------------
    @rule()
    def flush(self):
        self.db.flush()
        assert all(st["memtable_entries"] == 0 for st in self._shard_stats())

    @rule()
    def compact(self):
        self.db.compact()

    @rule()
    def reopen(self):
        old = self.db
        old.close()
        assert old.closed
        self.live_snapshots = 0   # they belong to the closed handle now
        self.db = ldb.open(self.dir, shards=self.SHARDS, **self.OPTIONS)
        self.reopens += 1
        assert list(self.db.scan()) == sorted(self.model.items())

    def _shard_stats(self) -> list[dict]:
        s = self.db.stats()
        return s["shards"] if self.SHARDS else [s]

    @invariant()
    def sequence_never_decreases(self):
        seqs = [st["sequence"] for st in self._shard_stats()]
        assert all(a >= b for a, b in zip(seqs, self.last_seq))  # reopening included
        self.last_seq = seqs


def _machine(options: dict, base_dir: str, shards: int = 0) -> type[DatabaseMachine]:
    return type("DatabaseMachine", (DatabaseMachine,),
                {"OPTIONS": options, "BASE_DIR": base_dir, "SHARDS": shards})


@pytest.mark.parametrize(
    "options, examples",
    [
        pytest.param(SMALL, 300, id="none"),
        pytest.param(dict(SMALL, compression="zstd"), 100, id="zstd"),
    ],
)
def test_database_matches_dict_model(options, examples, tmp_path):
    run_state_machine_as_test(
        _machine(options, str(tmp_path)),
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_sharded_database_matches_dict_model(tmp_path):
    """The same machine over two worker processes: every example starts a
    node, so fewer examples (LDB_MODEL_SHARDED_EXAMPLES for more)."""
    run_state_machine_as_test(
        _machine(SMALL, str(tmp_path), shards=2),
        settings=settings(
            max_examples=int(os.environ.get("LDB_MODEL_SHARDED_EXAMPLES", "15")),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_small_config_reaches_deep_levels(tmp_path):
    """The tiny configuration the model test uses really flushes and compacts
    into levels below L0, and reads stay correct across those levels."""
    r = random.Random(7)
    model: dict[bytes, bytes] = {}
    with ldb.open(tmp_path / "db", shards=0, **SMALL) as db:
        for _ in range(12):
            items = {k: r.randbytes(r.randrange(600)) for k in ALL_KEYS if r.random() < 0.7}
            db.put_many(items)
            model.update(items)
        db.flush()
        stats = db.stats()
        assert stats["flushes"] > 1
        db.compact()
        stats = db.stats()
        deep = [lv for lv in stats["levels"] if lv["level"] > 0 and lv["files"] > 0]
        assert deep, stats["levels"]
        assert sum(lv["files"] for lv in deep) > 1
        assert stats["compactions"] + stats["trivial_moves"] > 0
        assert list(db.scan()) == sorted(model.items())
        assert db.get_many(ALL_KEYS) == [model.get(k) for k in ALL_KEYS]
