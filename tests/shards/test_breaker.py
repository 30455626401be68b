"""Issue 3: a hung worker (SIGSTOP) opens its shard's breaker, so calls to
that shard fail fast well inside the call deadline while the other shard
keeps serving; after SIGCONT the breaker closes again."""

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
    worker = db.stats()["shards"][0]["worker"]["pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(CircuitOpen) as info:
            db.get(k0)
        opened_after = time.monotonic() - started
        assert isinstance(info.value, RecoverableError)
        assert opened_after < db.timeout * 0.75, f"the breaker opened after {opened_after:.1f}s"
        started = time.monotonic()
        with pytest.raises(CircuitOpen):
            db.get(k0)
        assert time.monotonic() - started < 1.0            # open: fails fast, nothing sent
        assert db.get(k1) == b"one"                        # the other shard keeps serving
        db.put(k1, b"still")
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: _answers(db, k0), timeout=60, what="the breaker to close after SIGCONT")
    assert db.breakers[0].state == "closed"
    assert db.get(k1) == b"still"
    db.close()
    wait_until(lambda: gone(node_pid), what="the node to exit")


def _answers(db, key: bytes) -> bool:
    try:
        return db.get(key) == b"zero"
    except CircuitOpen:
        return False
