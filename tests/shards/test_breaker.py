"""Issue 3: a hung worker (SIGSTOP) opens its shard's breaker, so calls to
that shard fail fast well inside the call deadline while the other shard
keeps serving; after SIGCONT the breaker closes again. Writes (here
``sync=True``, which waits for the answer) go through the worker; point reads are answered from the shard's published version in
shared memory, so they keep working while the worker is stopped."""

from __future__ import annotations

import os
import signal
import time

import pytest

import lightning_db as ldb
from lightning_db.errors import CircuitOpen, RecoverableError
from tests.actors.util import gone
from tests.waiting import wait_until


def key_on(db, shard: int) -> bytes:
    return next(k for k in (b"key-%d" % i for i in range(1000)) if db.ring.shard_of(k) == shard)


def test_a_stopped_worker_opens_its_breaker_and_sigcont_closes_it(tmp_path):
    # The node would kill a worker that misses heartbeats; here it must not.
    db = ldb.open(str(tmp_path / "db"), shards=2, heartbeat_misses=100_000)
    node_pid = db._session.node_pid
    k0, k1 = key_on(db, 0), key_on(db, 1)
    db.put(k0, b"zero")
    db.put(k1, b"one")
    db.flush()                                             # every pipelined write answered
    worker = db.stats()["shards"][0]["worker"]["pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(CircuitOpen) as info:
            db.put(k0, b"lost", sync=True)
        opened_after = time.monotonic() - started
        assert isinstance(info.value, RecoverableError)
        assert opened_after < db.timeout * 0.75, f"the breaker opened after {opened_after:.1f}s"
        started = time.monotonic()
        with pytest.raises(CircuitOpen):
            db.put(k0, b"lost", sync=True)
        assert time.monotonic() - started < 1.0            # open: fails fast, nothing sent
        # Calls that go around the per-call breaker fail fast too: a
        # cross-shard batch (nothing prepared), flush, and stats (which
        # answers for the shard with its error).
        for call in (lambda: db.put_many({k0: b"lost", k1: b"lost"}), db.flush):
            started = time.monotonic()
            with pytest.raises(CircuitOpen):
                call()
            assert time.monotonic() - started < 1.0
        started = time.monotonic()
        shards = db.stats()["shards"]
        assert time.monotonic() - started < 5.0
        assert "CircuitOpen" in shards[0]["error"] and "error" not in shards[1]
        reads = db.shared_reads
        assert db.get(k0) == b"zero"                       # reads need no worker
        assert db.shared_reads == reads + 1
        assert db.get(k1) == b"one"                        # the other shard keeps serving
        db.put(k1, b"still", sync=True)
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: _answers(db, k0), timeout=60, what="the breaker to close after SIGCONT")
    assert db.breakers[0].state == "closed"
    assert db.get(k1) == b"still" and db.get(k0) == b"back"
    db.close()
    wait_until(lambda: gone(node_pid), what="the node to exit")


def _answers(db, key: bytes) -> bool:
    try:
        db.put(key, b"back", sync=True)
        return True
    except CircuitOpen:
        return False


def test_a_batch_given_up_with_its_outcome_unknown_does_not_hold_its_keys(tmp_path, monkeypatch):
    """The primary does not answer a batch's decision: the call fails, and
    the other participant holds the batch prepared. This process settles
    it later (decided or, here, aborted), so a plain write to its keys gets
    through instead of meeting its intent for as long as the process lives."""
    from lightning_db.errors import Timeout
    from lightning_db.shards import coordinator

    with ldb.open(str(tmp_path / "db"), shards=2) as db:
        k0, k1 = key_on(db, 0), key_on(db, 1)
        real_ask = db._ask

        def ask(shard, op, payload=None):
            if op == "decide":
                raise Timeout("no answer from the primary (test)")
            return real_ask(shard, op, payload)

        monkeypatch.setattr(db, "_ask", ask)
        monkeypatch.setattr(coordinator, "_settle_primary", lambda *a: None)      # unreachable
        with pytest.raises(Timeout):
            db.put_many({k0: b"batch", k1: b"batch"})
        monkeypatch.undo()
        assert db.abandoned
        assert db.stats()["shards"][1]["prepared_transactions"] == 1
        db.put(k1, b"after", sync=True)                    # meets the intent, settles it, goes on
        assert not db.abandoned
        assert db.get_many([k0, k1]) == [None, b"after"]
        assert [s["prepared_transactions"] for s in db.stats()["shards"]] == [0, 0]
