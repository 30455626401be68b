"""Issue 5: a serializable transaction's read intents outlive a worker
restart between its decision and its commits.

A transaction reads a key on the primary shard and writes on both shards.
Its coordinator (this process) has the decision durable at the primary
when the primary's worker is killed, before any commit went out. While the
coordinator waits for the restarted worker, another handle's transaction
writes the key that was read: it must meet the transaction's read intent
(``TransactionConflict``), since the first transaction's writes are not
applied yet and it is serialized after the state it read. Before the read
intents were logged with the PREPARE, the restarted worker had forgotten
them and the write went through: a G2 cycle the stress harness found
(seed 6302, a worker killed 5 ms into a transaction).
"""

from __future__ import annotations

import os
import signal

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


@pytest.mark.crash
def test_a_read_intent_outlives_the_primarys_restart_before_the_commit(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    db = other = None
    node_pid = None
    try:
        db = ldb.open(path, shards=2)
        node_pid = db.stats()["node"]["node_pid"]
        (read0,) = _keys_on(db, 0, b"read", 1)
        (w0,) = _keys_on(db, 0, b"write", 1)
        (w1,) = _keys_on(db, 1, b"write", 1)
        db.put_many({read0: b"0", w0: b"0", w1: b"0"})
        other = ldb.open(path)
        before = node_workers(db)[0]
        seen: dict[str, object] = {}
        plain = coordinator._send_here

        def send_here(ref, op, payload, timeout):
            if op == "commit" and "killed" not in seen:
                # The decision is durable at the primary; nothing is applied yet.
                seen["killed"] = before["pid"]
                os.kill(before["pid"], signal.SIGKILL)
                try:
                    psutil.Process(before["pid"]).wait(RESTART_S)
                except psutil.NoSuchProcess:
                    pass

                def restarted() -> bool:
                    now = node_workers(other)[0]
                    return now["pid"] not in (None, before["pid"]) and answers(other.refs[0])

                wait_until(restarted, timeout=RESTART_S, what="the primary's worker to be restarted")
                try:
                    with other.transaction(isolation="serializable") as tx:
                        tx.put(read0, b"written meanwhile")     # a blind write: no snapshot, no gate
                    seen["write"] = "committed"
                except TransactionConflict as exc:
                    seen["write"] = f"conflict: {exc}"
            return plain(ref, op, payload, timeout)

        monkeypatch.setattr(coordinator, "_send_here", send_here)
        with db.transaction(isolation="serializable") as tx:
            assert tx.get(read0) == b"0"
            tx.put(w0, b"1")
            tx.put(w1, b"1")
        monkeypatch.undo()
        assert seen.get("killed"), "the commit never went out"
        assert str(seen.get("write", "")).startswith("conflict: "), seen
        assert "read by prepared transaction" in str(seen["write"]), seen
        # The transaction committed whole; its read intent went with it.
        assert db.get_many([read0, w0, w1]) == [b"0", b"1", b"1"]
        with other.transaction(isolation="serializable") as tx:
            tx.put(read0, b"2")
        assert db.get(read0) == b"2"
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
