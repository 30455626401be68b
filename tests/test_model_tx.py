"""Model-based test with transactions: the dict model of ``test_model``
extended with ``db.transaction()`` (begin, reads, writes, scans, commit,
rollback, conflicts).

The model keeps a write clock per key (every put, delete, batch op and
committed transaction write ticks it). A transaction's snapshot is the
model as of its first read; at commit the model predicts the outcome
exactly: with writes, a conflict when a key it wrote (snapshot isolation)
or also read or scanned (serializable) was written after its snapshot;
read-only and write-only transactions always commit. Conflicts change
nothing; commits apply every write at once.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

import lightning_db as ldb
from lightning_db import InvalidArgument, TransactionConflict
from lightning_db.db import _scan_range
from tests.test_model import ALL_KEYS, SMALL, Boom, bounds, keys, limits, model_scan, ops, values

MAX_TXS = 3


class ClockedDict(dict):
    """A dict that remembers when each key was last written."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.clock = 0
        self.written: dict[bytes, int] = {}

    def _tick(self, k: bytes) -> None:
        self.clock += 1
        self.written[k] = self.clock

    def __setitem__(self, k, v) -> None:
        self._tick(k)
        super().__setitem__(k, v)

    def __delitem__(self, k) -> None:
        self._tick(k)
        super().__delitem__(k)

    def pop(self, k, *default):
        self._tick(k)
        return super().pop(k, *default)

    def update(self, items=(), **kw) -> None:
        for k, v in dict(items, **kw).items():
            self[k] = v


class TxModel:
    def __init__(self, tx, isolation: str) -> None:
        self.tx, self.isolation = tx, isolation
        self.snap: dict[bytes, bytes] | None = None
        self.clock = 0
        self.writes: dict[bytes, bytes | None] = {}        # None: a delete
        self.reads: set[bytes] = set()
        self.ranges: list[tuple[bytes | None, bytes | None]] = []

    def view(self) -> dict[bytes, bytes]:
        v = dict(self.snap or {})
        for k, val in self.writes.items():
            if val is None:
                v.pop(k, None)
            else:
                v[k] = val
        return v


class TransactionMachine(RuleBasedStateMachine):
    OPTIONS: dict = SMALL
    BASE_DIR: str | None = None
    SHARDS = 0

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="model-tx-", dir=self.BASE_DIR)
        self.db = ldb.open(self.dir, shards=self.SHARDS, **self.OPTIONS)
        self.model = ClockedDict()
        self.txs: list[TxModel] = []
        self.commits = self.conflicts = 0

    def teardown(self) -> None:
        try:
            for m in self.txs:
                m.tx.rollback()
            self.txs.clear()
            s = self.db.stats()
            assert s["tx_registered"] == 0 and s["tx_intents"] == 0
            assert list(self.db.scan()) == sorted(self.model.items())
            event(f"commits: {min(self.commits, 3)}, conflicts: {min(self.conflicts, 2)}")
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- plain operations (under the transactions' feet) ---------------------------------
    @rule(key=keys, value=values)
    def put(self, key, value):
        self.db.put(key, value)
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key):
        self.db.delete(key)
        self.model.pop(key, None)

    @rule(batch_ops=ops)
    def batch(self, batch_ops):
        with self.db.batch() as b:
            for kind, k, v in batch_ops:
                if kind == "put":
                    b.put(k, v)
                else:
                    b.delete(k)
        for kind, k, v in batch_ops:
            if kind == "put":
                self.model[k] = v
            else:
                self.model.pop(k, None)

    @rule(seed=st.integers(0, 2**32 - 1))
    def bulk(self, seed):
        r = random.Random(seed)
        items = {k: r.randbytes(r.randrange(600)) for k in ALL_KEYS if r.random() < 0.5}
        self.db.put_many(items)
        self.model.update(items)

    @rule(key=keys)
    def get(self, key):
        assert self.db.get(key) == self.model.get(key)

    @rule()
    def flush(self):
        self.db.flush()

    @rule()
    def compact(self):
        self.db.compact()

    def _snap(self, m: TxModel) -> None:
        if m.snap is None:
            m.snap = dict(self.model)
            m.clock = self.model.clock

    def _pick(self, data) -> TxModel:
        return self.txs[data.draw(st.integers(0, len(self.txs) - 1))]

    @precondition(lambda self: len(self.txs) < MAX_TXS)
    @rule(isolation=st.sampled_from(["snapshot", "serializable"]))
    def tx_begin(self, isolation):
        self.txs.append(TxModel(self.db.transaction(isolation=isolation), isolation))

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), key=keys)
    def tx_get(self, data, key):
        self.tx_get_for(self._pick(data), key)

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), ks=st.lists(keys, max_size=5))
    def tx_get_many(self, data, ks):
        m = self._pick(data)
        todo = [k for k in ks if k not in m.writes]
        if todo:
            self._snap(m)
            m.reads.update(todo)
        assert m.tx.get_many(ks) == [m.view().get(k) for k in ks]

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), key=keys, value=values)
    def tx_read_modify_write(self, data, key, value):
        m = self._pick(data)
        self.tx_get_for(m, key)
        m.tx.put(key, value)
        m.writes[key] = value

    def tx_get_for(self, m: TxModel, key: bytes) -> None:
        if key in m.writes:
            expected = m.writes[key]
        else:
            self._snap(m)
            m.reads.add(key)
            expected = m.snap.get(key)
        assert m.tx.get(key) == expected

    @precondition(lambda self: any(m.writes or m.reads for m in self.txs))
    @rule(data=st.data(), value=values)
    def put_a_key_an_open_transaction_uses(self, data, value):
        """A plain write under an open transaction's feet (its commit must see it)."""
        used = sorted({k for m in self.txs for k in (*m.writes, *m.reads)})
        key = data.draw(st.sampled_from(used))
        self.db.put(key, value)
        self.model[key] = value

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), key=keys, value=values)
    def tx_put(self, data, key, value):
        m = self._pick(data)
        m.tx.put(key, value)
        m.writes[key] = value

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), key=keys)
    def tx_delete(self, data, key):
        m = self._pick(data)
        m.tx.delete(key)
        m.writes[key] = None

    @precondition(lambda self: self.txs)
    @rule(data=st.data(), start=bounds, end=bounds, prefix=bounds, reverse=st.booleans(), limit=limits)
    def tx_scan(self, data, start, end, prefix, reverse, limit):
        m = self._pick(data)
        lo, hi, n = _scan_range(self.db._limits, start, end, prefix, reverse, limit)
        if not ((lo is not None and hi is not None and lo >= hi) or n == 0):
            self._snap(m)
        expected = model_scan(m.view(), start, end, prefix, reverse, limit)
        assert list(m.tx.scan(start=start, end=end, prefix=prefix, reverse=reverse, limit=limit)) == expected
        if m.snap is None or (lo is not None and hi is not None and lo >= hi) or n == 0:
            return
        if n is not None and len(expected) == n:          # stopped early: read up to its last key
            last = expected[-1][0]
            m.ranges.append((last, hi) if reverse else (lo, last + b"\x00"))
        else:
            m.ranges.append((lo, hi))

    def _conflicts(self, m: TxModel) -> bool:
        if m.snap is None or not m.writes:
            return False
        changed = {k for k, c in self.model.written.items() if c > m.clock}
        checked = set(m.writes) | (m.reads if m.isolation == "serializable" else set())
        if changed & checked:
            return True
        if m.isolation == "serializable":
            return any((lo is None or k >= lo) and (hi is None or k < hi) for k in changed for lo, hi in m.ranges)
        return False

    @precondition(lambda self: self.txs)
    @rule(data=st.data())
    def tx_commit(self, data):
        m = self._pick(data)
        self.txs.remove(m)
        if self._conflicts(m):
            before = list(self.db.scan())
            with pytest.raises(TransactionConflict):
                m.tx.commit()
            assert list(self.db.scan()) == before
            self.conflicts += 1
        else:
            m.tx.commit()
            for k, v in m.writes.items():
                if v is None:
                    self.model.pop(k, None)
                else:
                    self.model[k] = v
            self.commits += 1
        assert m.tx.state in ("committed", "rolled back")
        with pytest.raises(InvalidArgument):
            m.tx.get(b"a")

    @precondition(lambda self: self.txs)
    @rule(data=st.data())
    def tx_rollback(self, data):
        m = self._pick(data)
        self.txs.remove(m)
        m.tx.rollback()
        assert m.tx.state == "rolled back"

    @rule(key=keys, value=values)
    def tx_with_block_raises(self, key, value):
        with pytest.raises(Boom):
            with self.db.transaction() as tx:
                tx.put(key, value)
                raise Boom()
        assert self.db.get(key) == self.model.get(key)

    @rule(key=keys, value=values)
    def run_transaction_appends(self, key, value):
        def fn(tx):
            old = tx.get(key) or b""
            tx.put(key, (old + value)[-24:])
            return (old + value)[-24:]
        self.model[key] = self.db.run_transaction(fn)

    @rule()
    def reopen(self):
        for m in self.txs:
            m.tx.rollback()
        self.txs.clear()
        self.db.close()
        self.db = ldb.open(self.dir, shards=self.SHARDS, **self.OPTIONS)
        assert list(self.db.scan()) == sorted(self.model.items())


def _machine(shards: int, base_dir: str) -> type[TransactionMachine]:
    return type("TransactionMachine", (TransactionMachine,),
                {"OPTIONS": SMALL, "BASE_DIR": base_dir, "SHARDS": shards})


def _settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_transactions_match_the_model(tmp_path):
    run_state_machine_as_test(_machine(0, str(tmp_path)),
                              settings=_settings(int(os.environ.get("LDB_MODEL_TX_EXAMPLES", "80")), 50))


def test_sharded_transactions_match_the_model(tmp_path):
    """Over two worker processes (a node per example: fewer examples;
    LDB_MODEL_TX_SHARDED_EXAMPLES for more)."""
    run_state_machine_as_test(_machine(2, str(tmp_path)),
                              settings=_settings(int(os.environ.get("LDB_MODEL_TX_SHARDED_EXAMPLES", "5")), 40))
