"""Issue 3: kill -9 a participant (a shard worker) of a cross-shard batch at
each step of its two-phase commit. The coordinator (this process, through
``db.batch()``) lives on. Once the node has restarted the worker, the batch
is all or nothing in the caller's own handle, an acknowledged batch is fully
applied, nothing is left in doubt and the primary keeps no decision (the
coordinator asks a restarted worker again), and the keys read the same
through a new handle and after closing and reopening the database.

The caller is instrumented in this process: ``coordinator._send`` and
``ShardRouter._ask`` are wrapped (as the coordinator test does in its child)
and SIGKILL the participant's worker, by the pid the database's own stats
report, at the chosen step. After the kill the test waits until the
caller's connection to that worker has seen the drop, so what the
coordinator sends it next is lost (fails at once with ``PeerLost``) instead
of being delivered, by luck of timing, to the restarted worker.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import lightning_db as ldb
from lightning_db.errors import LightningError
from lightning_db.shards import coordinator, router
from tests.waiting import answers, node_workers, wait_until

# Spread over both shards. Small: the primary's part goes with its decision
# (one message, after the other prepared); large: more than MERGE_OPS keys
# on the primary, prepared beside the other's.
SIZES = {"small": 40, "large": 200}
OLD, NEW = b"old", b"new"
PARTICIPANTS = {"primary": 0, "other": 1}         # the primary is the lowest shard id
STEPS = {
    "a": "before its prepare (the primary's, small: with the decision) is sent",
    "b": "right after its prepare (the primary's, small: with the decision) was sent, before the reply is used",
    "c": "after every prepare was acked, before the primary's decision",
    "d": "after the primary's decision, before any commit",
    "e": "after the commits, before forget",
    "f": "after the commit to the primary was sent, before the other's",
}
RESTART_S = 60.0                                  # generous: a loaded 2-core machine


def _workers(db) -> list[dict]:
    return node_workers(db)



def _disconnects(ref) -> int:
    client = ref._client                          # the caller's connection to that worker
    return client.stats()["disconnects"] if client is not None else 0


def _in_doubt(db) -> list[int]:
    """How many transactions each shard holds prepared and undecided."""
    return [len(ref.ask("in_doubt", None, 30).result(30)) for ref in db.refs]


def _state(values: list[bytes | None]) -> str:
    if values == [NEW] * len(values):
        return "applied"
    if values == [OLD] * len(values):
        return "absent"
    return f"PARTIAL ({sum(v == NEW for v in values)}/{len(values)} new, others {set(values) - {NEW}})"


class Killer:
    """Wraps the router's 2PC sends; SIGKILLs shard *victim*'s worker (pid
    *pid*) once, at *step*, while armed."""

    def __init__(self, db, victim: int, step: str, pid: int) -> None:
        self.db, self.victim, self.step, self.pid = db, victim, step, pid
        self.armed = False
        self.fired: str | None = None
        self.sent: list[str] = []                 # the 2PC messages of the armed batch, in order
        self.txid: bytes | None = None

    def kill(self, where: str) -> None:
        if not self.armed or self.fired is not None:
            return
        ref = self.db.refs[self.victim]
        seen = _disconnects(ref)
        os.kill(self.pid, signal.SIGKILL)
        self.fired = where
        try:
            psutil.Process(self.pid).wait(RESTART_S)   # gone (the node reaps it)
        except psutil.NoSuchProcess:
            pass
        wait_until(lambda: _disconnects(ref) > seen, timeout=RESTART_S,
                   what=f"the caller to see shard {self.victim}'s connection drop")

    def send_here(self, ref, op: str, payload, timeout: float):
        return self.send(ref, op, payload, timeout, plain_here)

    def send(self, ref, op: str, payload, timeout: float, plain=None):
        shard = self.db.refs.index(ref) if ref in self.db.refs else None
        mine = self.armed and shard == self.victim
        if self.armed and op in ("prepare", "commit", "abort", "forget"):
            self.sent.append(f"{op}@{shard}")
            if op == "prepare" and self.txid is None:
                self.txid = payload[0]
        if mine and self.step == "a" and op == "prepare":
            self.kill(f"before the prepare to shard {shard}")
        if self.armed and (self.step, op) in (("d", "commit"), ("e", "forget")):
            self.kill(f"before the {op} to shard {shard}")   # whoever the victim is
        if self.armed and self.step == "f" and op == "commit" and shard != 0:
            self.kill(f"after the commit to the primary, before the {op} to shard {shard}")
        fut = (plain or plain_send)(ref, op, payload, timeout)
        if mine and self.step == "b" and op == "prepare":
            self.kill(f"right after the prepare to shard {shard}")
        return fut

    def ask(self, rtr, shard: int, op: str, payload=None):
        if self.armed and rtr is self.db:
            self.sent.append(f"{op}@{shard}(ask)")
            # The primary's small part goes with its decision: its prepare.
            prepare = op == "decide" and len(payload) > 1 and shard == self.victim
            if self.txid is None and op == "decide":
                self.txid = payload[0]
            if self.step == "c" and op == "decide":
                self.kill(f"before the primary's decision to shard {shard}")
            if self.step == "a" and prepare:
                self.kill(f"before the prepare with the decision to shard {shard}")
            if self.step == "e" and op == "forget":
                self.kill(f"before the forget to shard {shard}")
            if self.step == "b" and prepare:
                fut = rtr.refs[shard].ask_here(op, payload, rtr.timeout)
                self.kill(f"right after the prepare with the decision to shard {shard}")
                return fut.result()
        return plain_ask(rtr, shard, op, payload)


plain_send, plain_here, plain_ask = coordinator._send, coordinator._send_here, router.ShardRouter._ask


def _close(*handles) -> None:
    for h in handles:
        if h is not None:
            h.close()


def _wait_node_exit(pid: int | None) -> None:
    if pid is None:
        return
    try:
        psutil.Process(pid).wait(RESTART_S)
    except psutil.NoSuchProcess:
        pass


@pytest.mark.crash
@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("who", sorted(PARTICIPANTS, reverse=True))
@pytest.mark.parametrize("size", sorted(SIZES, reverse=True))
def test_participant_killed_at_every_step_leaves_all_or_nothing(tmp_path, monkeypatch, size, who, step):
    keys = [b"pk-%03d" % i for i in range(SIZES[size])]
    victim = PARTICIPANTS[who]
    path = str(tmp_path / "db")
    db = again = None
    node_pid = None
    try:
        db = ldb.open(path, shards=2)
        node_pid = db.stats()["node"]["node_pid"]
        assert {db.ring.shard_of(k) for k in keys} == {0, 1}
        on_primary = sum(db.ring.shard_of(k) == 0 for k in keys)
        assert (on_primary > coordinator.MERGE_OPS) == (size == "large"), on_primary
        with db.batch() as b:                     # the previous round: a cross-shard batch too
            for k in keys:
                b.put(k, OLD)
        assert db.get_many(keys) == [OLD] * len(keys)
        before = _workers(db)[victim]
        assert before["pid"] and before["restarts"] == 0, before

        killer = Killer(db, victim, step, before["pid"])
        monkeypatch.setattr(coordinator, "_send", killer.send)
        monkeypatch.setattr(coordinator, "_send_here", killer.send_here)
        monkeypatch.setattr(router.ShardRouter, "_ask",
                            lambda rtr, shard, op, payload=None: killer.ask(rtr, shard, op, payload))
        killer.armed = True
        raised: LightningError | None = None
        try:
            with db.batch() as b:
                for k in keys:
                    b.put(k, NEW)
        except LightningError as exc:             # a failed batch may have been applied or not
            raised = exc
        finally:
            try:                                  # the forget goes out once the commits are durable
                coordinator.settle_forgets(db, True)
            finally:
                killer.armed = False
        call = "acked" if raised is None else f"raised {type(raised).__name__}"
        case = f"{size}: {who} (shard {victim}) killed {STEPS[step]} [{step}]: batch {call}, sent {killer.sent}"
        assert ("prepare@0" in killer.sent) == (size == "large"), f"{case}: not the path meant"
        assert killer.fired, f"{case}: the kill never fired"
        case += f", the kill came {killer.fired}"

        def restarted() -> bool:
            try:
                now = _workers(db)[victim]
            except LightningError:
                return False
            return (now["pid"] not in (None, before["pid"]) and now["restarts"] > before["restarts"]
                    and answers(db.refs[victim]))

        wait_until(restarted, timeout=RESTART_S, what=f"{case}: shard {victim}'s worker to be restarted")

        # 1. The caller's own handle once the worker is back, before anyone opens the
        #    database again: the coordinator finished (or undid) the batch itself.
        reads = {"caller, after the restart": _state(db.get_many(keys))}
        doubt = {"after the restart": _in_doubt(db)}
        # A forget that met the dead primary goes again at the caller's next
        # batch or when it closes (settle_forgets); settle it now.
        coordinator.settle_forgets(db, True)
        kept = db.refs[0].ask("decided", [killer.txid], 30).result(30)   # a decision nobody forgot

        # 2. In-doubt resolution (a new open settles what is in doubt), read through both handles.
        again = ldb.open(path)
        doubt["after resolution"] = _in_doubt(again)
        reads["new handle, after resolution"] = _state(again.get_many(keys))
        reads["caller, after resolution"] = _state(db.get_many(keys))
        _close(again, db)
        again = db = None
        _wait_node_exit(node_pid)
        node_pid = None

        # 3. Closed and reopened (a new node, the workers recover from disk): the same.
        db = ldb.open(path)
        node_pid = db.stats()["node"]["node_pid"]
        doubt["after reopening"] = _in_doubt(db)
        reads["after reopening"] = _state(db.get_many(keys))

        summary = (f"{case}; read: {reads}; txids in doubt per shard: {doubt}"
                   + ("; the primary still keeps the decision" if kept else ""))
        # The coordinator lived on: it finished (or undid) the batch itself, so
        # nothing waits for the next open and no decision is kept.
        problems = ["the primary still keeps the decision"] if kept else []
        problems += [f"{when}: {got}" for when, got in reads.items() if got not in ("applied", "absent")]
        if raised is None:
            problems += [f"acknowledged, but {when}: {got}" for when, got in reads.items() if got != "applied"]
        final = {when: got for when, got in reads.items() if when != "caller, after the restart"}
        if len(set(final.values())) != 1:
            problems.append(f"no single outcome once resolved: {final}")
        problems += [f"in doubt {when}: {n}" for when, n in doubt.items() if n != [0, 0]]
        assert not problems, f"{summary}\nPROBLEMS: {problems}"
        print(f"\n{summary}")
    finally:
        monkeypatch.undo()
        _close(again, db)
        _wait_node_exit(node_pid)
