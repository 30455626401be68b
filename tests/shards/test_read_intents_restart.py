"""Issue 5: a serializable transaction's read intents outlive a worker
restart between its validation and its commit, and go once it is done.

A transaction reads a key on one shard and writes elsewhere. Its
coordinator (this process) has validated the read when that shard's worker
is killed, before the commit. While the coordinator waits for the restarted
worker, another handle's transaction writes the key that was read: it must
meet the transaction's read intent (``TransactionConflict``), since the
first transaction is not applied yet and is serialized after the state it
read. Before the read intents were logged with the PREPARE, the restarted
worker had forgotten them and the write went through: a G2 cycle the
stress harness found (seed 6302, a worker killed 5 ms into a transaction).
Once the transaction returns, the key takes writes again: the coordinator
released the intents on the restarted worker too.

Two paths: the primary of a two-phase commit, killed after its decision
(the read checked there, with its part); and a shard that is only read, in
a transaction that writes on one other shard, killed after its prepare.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import Future

import psutil
import pytest

import lightning_db as ldb
from lightning_db.errors import TransactionConflict
from lightning_db.shards import coordinator
from tests.waiting import answers, node_workers, wait_until

RESTART_S = 60.0                                  # generous: a loaded 2-core machine


def _keys_on(db, shard: int, prefix: bytes, n: int) -> list[bytes]:
    out, i = [], 0
    while len(out) < n:
        k = b"%s-%04d" % (prefix, i)
        if db.ring.shard_of(k) == shard:
            out.append(k)
        i += 1
    return out


def _kill_and_wait(db, shard: int) -> None:
    """SIGKILL *shard*'s worker and wait until the node runs a new one that answers."""
    pid = node_workers(db)[shard]["pid"]
    os.kill(pid, signal.SIGKILL)
    try:
        psutil.Process(pid).wait(RESTART_S)
    except psutil.NoSuchProcess:
        pass

    def restarted() -> bool:
        now = node_workers(db)[shard]["pid"]
        return now not in (None, pid) and answers(db.refs[shard])

    wait_until(restarted, timeout=RESTART_S, what=f"shard {shard}'s worker to be restarted")


def _write(db, key: bytes, value: bytes) -> str:
    """A transaction's blind write of *key* (no snapshot: it takes no gate)."""
    try:
        with db.transaction(isolation="serializable") as tx:
            tx.put(key, value)
    except TransactionConflict as exc:
        return f"conflict: {exc}"
    return "committed"


@pytest.mark.crash
@pytest.mark.parametrize("path_", ["primary", "reader"])
def test_a_read_intent_outlives_a_restart_before_the_commit_and_goes_after(tmp_path, monkeypatch, path_):
    path = str(tmp_path / "db")
    db = other = None
    node_pid = None
    try:
        db = ldb.open(path, shards=2)
        node_pid = db.stats()["node"]["node_pid"]
        # primary: read on shard 0, write on both (two-phase commit, the read
        # checked on the primary with its decision); reader: read on shard 1,
        # write on shard 0 only (shard 1 prepares with no ops).
        victim = 0 if path_ == "primary" else 1
        (read,) = _keys_on(db, victim, b"read", 1)
        writes = _keys_on(db, 0, b"write", 2 if path_ == "reader" else 1)
        if path_ == "primary":
            writes += _keys_on(db, 1, b"write", 1)
        db.put_many({k: b"0" for k in [read, *writes]})
        other = ldb.open(path)
        seen: dict[str, object] = {}
        plain_here, plain = coordinator._send_here, coordinator._send

        def hook(send, ref, op, payload, timeout):
            shard = db.refs.index(ref)
            fire = "write" not in seen and (
                (path_ == "primary" and op == "commit")            # the decision is durable at the primary
                or (path_ == "reader" and op == "prepare" and shard == victim))
            if not fire:
                return send(ref, op, payload, timeout)
            if path_ == "reader":                                  # the read validated and held there
                done: Future = Future()
                done.set_result(send(ref, op, payload, timeout).result())
            _kill_and_wait(other, victim)
            seen["write"] = _write(other, read, b"written meanwhile")
            return done if path_ == "reader" else send(ref, op, payload, timeout)

        monkeypatch.setattr(coordinator, "_send_here", lambda *a: hook(plain_here, *a))
        monkeypatch.setattr(coordinator, "_send", lambda *a: hook(plain, *a))
        with db.transaction(isolation="serializable") as tx:
            assert tx.get(read) == b"0"
            for k in writes:
                tx.put(k, b"1")
        monkeypatch.undo()
        assert "write" in seen, "the hook never fired"
        assert str(seen["write"]).startswith("conflict: ") and "read by prepared transaction" in str(seen["write"]), seen
        # The transaction committed whole, and its read intent went with it.
        assert db.get_many([read, *writes]) == [b"0"] + [b"1"] * len(writes)
        assert _write(other, read, b"2") == "committed"
        assert db.get(read) == b"2"
        assert [len(db._ask_retry(s, "in_doubt", None)) for s in range(2)] == [0, 0]   # retried past the drop
    finally:
        monkeypatch.undo()
        for h in (other, db):
            if h is not None:
                h.close()
        if node_pid is not None:
            try:
                psutil.Process(node_pid).wait(RESTART_S)
            except psutil.NoSuchProcess:
                pass
