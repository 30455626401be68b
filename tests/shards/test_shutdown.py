"""Issue 3: exceeding the restart intensity shuts the database down, and a
caller learns it at once (DatabaseShutdown) instead of at its ask timeout."""

from __future__ import annotations

import os
import signal
import time

import pytest

import lightning_db as ldb
from lightning_db.errors import DatabaseShutdown
from tests.actors.util import gone
from tests.waiting import node_workers, wait_until


def shard_pids(db) -> list[int]:
    return [s["pid"] for s in node_workers(db)]


def test_restart_intensity_exceeded_gives_callers_database_shutdown(tmp_path):
    path = str(tmp_path / "db")
    db = ldb.open(path, shards=2, restart_intensity=1, restart_period=600.0)
    node_pid = db._session.node_pid
    try:
        db.put_many({b"k%03d" % i: b"v" for i in range(50)})
        first = shard_pids(db)
        os.kill(first[0], signal.SIGKILL)                  # one restart: within the intensity
        wait_until(lambda: shard_pids(db)[0] != first[0], what="the first restart")
        assert db.get(b"k001") == b"v"
        os.kill(shard_pids(db)[0], signal.SIGKILL)         # the second: over it, fatal
        wait_until(lambda: gone(first[1]), what="the node to stop every worker")
        started = time.monotonic()
        with pytest.raises(DatabaseShutdown):
            for i in range(50):                            # keys on both shards
                db.get(b"k%03d" % i)
        elapsed = time.monotonic() - started
        print(f"DatabaseShutdown reached the caller in {elapsed:.3f}s")
        assert elapsed < 5.0, f"DatabaseShutdown took {elapsed:.2f}s (ask timeout is 30s)"
        # Every other path says so too (not PeerLost, a transient error a
        # caller would retry for ever), while the node lingers and after.
        for name, call in (("flush", db.flush), ("compact", db.compact), ("stats", db.stats),
                           ("get_many", lambda: db.get_many([b"k001", b"k002"])),
                           ("scan", lambda: list(db.scan())), ("put_many", lambda: db.put_many({b"k001": b"w"}))):
            started = time.monotonic()
            with pytest.raises(DatabaseShutdown):
                call()
            assert time.monotonic() - started < 5.0, name
    finally:
        try:
            db.close()
        finally:
            wait_until(lambda: gone(node_pid), what="the node to exit")


@pytest.mark.crash
def test_a_killed_node_gives_database_shutdown_on_every_path(tmp_path):
    # Nothing restarts the workers of a node killed with -9: a lost
    # connection there is not transient. Batches, transactions and reads
    # say DatabaseShutdown (reopen), fast; reopening starts a new node.
    path = str(tmp_path / "db")
    db = ldb.open(path, shards=2)
    node_pid = db._session.node_pid
    keys = [b"n%03d" % i for i in range(40)]                 # on both shards
    try:
        db.put_many({k: b"old" for k in keys})
        tx = db.transaction()
        tx.__enter__()
        tx.get(keys[0])
        for k in keys:
            tx.put(k, b"tx")
        # An apply phase left marked (its coordinator met the kill inside it):
        # a snapshot tries to finish it first, and must not take that for a
        # transient failure either.
        db.gate.mark(b"\0\0" + os.getpid().to_bytes(4, "big") + os.urandom(10), [0, 1])
        os.kill(node_pid, signal.SIGKILL)
        wait_until(lambda: gone(node_pid), what="the node to be gone")
        started = time.monotonic()
        with pytest.raises(DatabaseShutdown, match="open the database again"):
            tx.__exit__(None, None, None)                    # a two-shard commit
        with pytest.raises(DatabaseShutdown):
            db.put_many({k: b"new" for k in keys})           # two-phase commit
        with pytest.raises(DatabaseShutdown):
            with db.transaction() as t2:
                t2.put(keys[0], b"x")                        # a one-shard commit
        with pytest.raises(DatabaseShutdown):
            db.snapshot()                                    # finishing the marked apply phase
        with pytest.raises(DatabaseShutdown):
            with db.transaction() as t3:
                t3.get(keys[1])                              # a transaction's snapshot
        elapsed = time.monotonic() - started
        assert elapsed < 10.0, f"DatabaseShutdown took {elapsed:.2f}s (ask timeout is 30s)"
    finally:
        db.close()
    again = ldb.open(path)
    try:
        assert again.get_many(keys) == [b"old"] * len(keys)   # nothing of the failed calls applied
    finally:
        again.close()
