"""Decisions a dead coordinator left kept at its primary are forgotten once
nothing of it is in doubt (shards/resolve.py ``forget_settled``); those of a
live coordinator are its own to forget."""

from __future__ import annotations

import os
import subprocess
import sys

import lightning_db as ldb
from lightning_db.shards.client import _coordinator_gone
from lightning_db.shards.resolve import forget_settled, resolve_in_doubt


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _txid(primary: int, pid: int) -> bytes:
    return primary.to_bytes(2, "big") + pid.to_bytes(4, "big") + os.urandom(10)


def _commit_on_both(db, txid: bytes, keys: dict[int, bytes], value: bytes) -> None:
    """A two-phase commit whose coordinator stops after the other
    participant's commit (no forget): the primary (shard 0) keeps the decision."""
    for s, k in keys.items():
        db.refs[s].ask("prepare", [txid, [[1, k, value]]], 30).result(30)
    db.refs[0].ask("commit", [txid, True, True], 30).result(30)
    db.refs[1].ask("commit", [txid, False, False], 30).result(30)


def test_a_dead_coordinators_decisions_are_forgotten_and_a_live_ones_kept(tmp_path):
    with ldb.open(tmp_path / "db", shards=2) as db:
        keys = {}
        for i in range(100):
            keys.setdefault(db.ring.shard_of(b"k%d" % i), b"k%d" % i)
        assert sorted(keys) == [0, 1]
        dead, live = _txid(0, _dead_pid()), _txid(0, os.getpid())
        _commit_on_both(db, dead, keys, b"dead")
        assert db.refs[0].ask("decisions", None, 30).result(30) == [dead]
        _commit_on_both(db, live, keys, b"live")
        assert sorted(db.refs[0].ask("decisions", None, 30).result(30)) == sorted([dead, live])

        assert resolve_in_doubt(db.refs, only=_coordinator_gone)["failed"] == 0
        assert forget_settled(db.refs, only=_coordinator_gone) == 1
        assert db.refs[0].ask("decisions", None, 30).result(30) == [live]
        assert forget_settled(db.refs, only=_coordinator_gone) == 0          # nothing more: idempotent
        assert [db.get(k) for k in keys.values()] == [b"live", b"live"]      # the data is untouched
        db.refs[0].ask("forget", [live], 30).result(30)


def test_open_forgets_what_a_coordinator_that_died_with_the_node_left(tmp_path):
    path = tmp_path / "db"
    with ldb.open(path, shards=2) as db:
        keys = {}
        for i in range(100):
            keys.setdefault(db.ring.shard_of(b"k%d" % i), b"k%d" % i)
        dead = _txid(0, _dead_pid())
        _commit_on_both(db, dead, keys, b"v")
    # The node stopped with the decision kept (in its WAL); the next open forgets it.
    with ldb.open(path) as db:
        assert [r.ask("decisions", None, 30).result(30) for r in db.refs] == [[], []]
        assert [db.get(k) for k in keys.values()] == [b"v", b"v"]
