"""Commits across shards: two-phase commit and transaction commits (the caller's process).

The router (``router.py``) is the coordinator; these functions take it as
their first argument. txid = primary shard id (2 bytes, big-endian) + the
coordinator's pid (4 bytes, so the node can settle what a dead caller left:
``txid_pid``) + 10 random bytes; the primary is the lowest shard that
writes.

Two-phase commit (``two_phase``): prepare everywhere (fsynced, but on the
primary, whose decision's fsync covers its prepare; each participant also
validates the transaction's check and takes its keys as intents,
storage/txn.py); any failure -> abort every participant, raise.
Else "decide" at the primary (a DECISION record, synced: the durable
decision, nothing applied yet). A primary's part of at most
``router.merge_ops`` ops is not prepared beside the others but goes with
the decision ("decide" [txid, ops, check]: prepared and decided in one WAL
write, one fsync), once every other participant prepared; its check
failing there aborts the others. Then, inside the gate, commit on every
participant at once, the primary too (not synced: the decision covers
them), then forget on the primary, later: a lost commit record on a participant whose
primary already forgot would be resolved as an abort, so the forget waits
until each other participant made a later record durable (a later
prepare's fsync covers every record before it, or an explicit "sync" at
close). ``settle_forgets`` sends the forgets that are due at each batch
and every one at close, without waiting on the batch's critical path. A
participant that only validates reads (a serializable transaction's)
prepares with no ops, not fsynced. Every participant's PREPARE carries the
read intents of its check (keys read, ranges scanned): a worker restarted
before the commit holds them again until the commit or abort releases
them, so no write of a key the transaction read slips in between its
validation and its commit. (After a power loss no coordinator is left,
and each caller's open settles what they left before it runs anything.)

A commit that spans shards holds the commit gate shared (gate.py) over
its apply phase (two-phase commit: the commits after the decision, no
fsync among them; one writing shard with read-only participants: its write),
so a snapshot (an exclusive cut) never sees half of one, nor one without a
commit it depended on: what it depended on was applied before its own
snapshot was cut, and its validation holds intents until it applies.
Commits on one shard only are checked and applied in one step and need no
gate.

Failures: prepare and the decision are never retried (a failed prepare
aborts; a TransactionConflict there is the answer). What follows a
failure is: abort toward a participant that died, the question "decided?"
to a primary that died (a decided transaction refuses abort; asked on the
decision's connection, so a merged decision still on its way is taken
before the question or never, and an abort of a txid the primary did not
know is remembered there: a decision arriving later is refused), and, once
the decision is durable, commit toward a participant that died (the
primary included) and forget at the primary, each retried until the
restarted worker answers (its PREPARE or decision is in its WAL), so a
coordinator that lives on leaves nothing in doubt. Only when a worker stays
unreachable past the deadline is the rest left to ``resolve_in_doubt``.

A transaction with one writing shard and nothing to validate elsewhere
commits with one "txwrite" (check and write in one step on that shard);
with read-only participants it prepares those first, then "txwrite"s, then
releases them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FatalError, InvalidArgument, LightningError, TransactionConflict, TransientError
from ..interrupts import held_interrupts
from .resolve import _quiet, _send, _send_here, resolve_in_doubt

if TYPE_CHECKING:
    from .router import ShardRouter

__all__ = ["MERGE_OPS", "commit_transaction", "make_txid", "settle_commit", "settle_decided", "settle_forgets", "settle_marked",
           "two_phase"]

Op = tuple[int, bytes, bytes]
CLOSE_SETTLE_S = 5.0        # closing: how long the last syncs and forgets may take
FORGET_BATCH = 32           # due forgets to one primary sent together (settle_forgets) ...
FORGET_WAIT_S = 0.2         # ... or once the oldest of them committed this long ago
MERGE_OPS = 64              # a primary's part of at most this many ops is prepared with its decision
ABANDONED_RETRY_S = 1.0     # a commit given up on with its outcome unknown is settled again at most this often


def make_txid(primary: int) -> bytes:
    return primary.to_bytes(2, "big") + os.getpid().to_bytes(4, "big") + os.urandom(10)


def _quiet_call(fn: Any) -> Any:
    try:
        return fn()
    except LightningError as exc:
        return exc


def two_phase(router: "ShardRouter", parts: dict[int, list[Op]], checks: dict[int, list[Any]] | None = None,
              here: bool = True) -> None:
    """Apply *parts* (shard -> ops, two shards or more; or one writing
    shard with read-only participants in *checks*) atomically. *here*: the
    checks go on this thread's own connections (else on the process's
    shared one: ``ShardSnapshot.ordered``). A Ctrl-C meanwhile is raised
    once the commit is whole or aborted (interrupts.py): stopped half way,
    it would leave some shards applied and the others' intents held for
    as long as this process lives."""
    with held_interrupts():
        _two_phase(router, parts, checks or {}, here)


def _two_phase(router: "ShardRouter", parts: dict[int, list[Op]], checks: dict[int, list[Any]],
               here: bool) -> None:
    shards = sorted(set(parts) | set(checks))
    for s in shards:                # a shard known to be down: fail fast, before anything is prepared
        router.breakers[s].refuse_if_open()
    if router.abandoned:
        settle_abandoned(router)
    primary = min(parts)
    txid = make_txid(primary)
    refs, timeout = router.refs, router.timeout

    def prepare(s: int) -> list[Any]:
        return [txid, parts.get(s, []), checks[s]] if s in checks else [txid, parts[s]]

    # A small part at the primary goes with its decision, in one message
    # once the others prepared (one round trip fewer for the primary, one
    # WAL write); a large one is prepared beside the others, in parallel.
    merged = len(parts[primary]) <= router.merge_ops
    # The others first: their prepares are fsynced, the primary's is not.
    first = [s for s in shards if s != primary] + ([] if merged else [primary])
    sent = time.monotonic_ns()
    # A transaction's checks go the way its snapshot's registrations went
    # (asks after tells on one connection: in order); a plain batch's
    # prepares are asked on this thread's own connection.
    in_order = not here and bool(checks)
    send = _send if in_order else _send_here
    futs = [send(refs[s], "prepare", prepare(s), timeout) for s in first]
    errors = [r for r in map(_quiet, futs) if isinstance(r, LightningError)]
    if errors:
        abort_all(router, txid, first)
        conflicts = [e for e in errors if isinstance(e, TransactionConflict)]
        raise (conflicts or errors)[0]
    # Each other writing participant's prepare was synced, and all before it
    # (the primary's was not: its decision's fsync covers it).
    router.note_durable([s for s in parts if s != primary], sent)
    # Earlier batches' forgets that this made due, once enough may be to send
    # (settle_forgets would otherwise look through the queue for nothing).
    if _forgets_may_be_due(router, sent):
        settle_forgets(router, False)
    # The decision, durable at the primary before anything is applied: from
    # here the batch commits, whoever finishes it. Merged, it goes where the
    # primary's check must go (after its registration); a failure's
    # questions follow it on the same connection, so a decision still on
    # its way is taken before them or never.
    decided = time.monotonic_ns()
    ask = router._ask_in_order if merged and in_order else router._ask
    try:
        ask(primary, "decide", prepare(primary) if merged else [txid])
        router.note_durable([primary], decided)     # the decision was synced, and all before it
    except LightningError as exc:
        if merged and isinstance(exc, TransactionConflict):
            abort_all(router, txid, first)      # the primary's check failed: nothing written there
            raise
        outcome = _settle_primary(router, txid, primary, ask)
        if outcome is None:          # unreachable primary: decided later (settle_abandoned)
            router.abandoned.add(txid)
            raise
        if outcome is False:
            abort_all(router, txid, [s for s in shards if s != primary])
            if isinstance(exc, InvalidArgument):   # aborted under us by resolve_in_doubt
                raise TransactionConflict(f"batch {txid.hex()} was aborted by in-doubt resolution") from None
            raise
    with router.gate.shared(timeout):       # the apply phase: no snapshot is cut inside it
        marker = router.gate.mark(txid, shards)
        # Every participant at once, the primary too; none syncs (the decision covers them).
        applies = {s: _send_here(refs[s], "commit", [txid, False, False], timeout) for s in shards}
        failed = [s for s, f in applies.items() if isinstance(_quiet(f), LightningError)]
        committed = time.monotonic_ns()
        if not failed:
            router.gate.unmark(marker)      # before the gate opens: no snapshot finds it and settles it again
    # The decision is durable at the primary: a participant that died
    # meanwhile is committed again once its worker is back (its PREPARE
    # is in its WAL), so the batch is whole when this call returns.
    if all([settle_commit(router, txid, s) for s in failed]):
        if failed:
            router.gate.unmark(marker)
        # Later: the batch is whole already; the primary only stops keeping
        # the decision, once the other commits are durable (settle_forgets;
        # its own commit record comes before the forget in its WAL).
        router.forgets.append([primary, txid, committed, [s for s in parts if s != primary], None])
    # else: still unreachable; a snapshot or resolve_in_doubt commits the rest later


def settle_abandoned(router: "ShardRouter", force: bool = False) -> None:
    """Settle the two-phase commits this process gave up on with their
    outcome unknown (``router.abandoned``: the primary did not answer, or
    an abort did not reach a participant), whose intents would otherwise
    hold their keys for as long as this process lives (nothing settles a
    live coordinator's transactions but itself): decided at the primary ->
    committed everywhere, else aborted (``resolve_in_doubt``). Tried at
    most every ABANDONED_RETRY_S (*force*: now, as when closing), by one
    thread at a time; kept for the next try while a shard does not answer."""
    now = time.monotonic()
    if not router.abandoned or (not force and now - router.abandoned_tried < ABANDONED_RETRY_S):
        return
    if not router.abandoned_lock.acquire(blocking=False):
        return
    try:
        router.abandoned_tried = now
        mine = set(router.abandoned)
        counts = resolve_in_doubt(router.refs, router.attempt_timeout, only=mine.__contains__, gate=router.gate)
        if not counts["failed"]:
            router.abandoned -= mine
    finally:
        router.abandoned_lock.release()


def _forgets_may_be_due(router: "ShardRouter", now: int) -> bool:
    queue = router.forgets
    try:            # another thread may take the queue's entries meanwhile
        return len(queue) >= router.forget_batch or queue[0][2] <= now - int(FORGET_WAIT_S * 1e9)
    except IndexError:
        return False


def settle_forgets(router: "ShardRouter", wait: bool) -> None:
    """Send the forgets that are due: a batch's once each other writing
    participant made a record durable after its commit (``note_durable``);
    send again one that failed. The due forgets of one primary go as one
    message, once ``router.forget_batch`` of them are due or the oldest
    committed FORGET_WAIT_S ago (a decision kept a little longer costs the
    primary nothing but a few bytes). Never blocks unless *wait*
    (closing): then every forget goes, the participants still behind are
    asked to sync first, and the syncs and forgets are waited for, each at
    most CLOSE_SETTLE_S (all at once). A forget leaves the queue only once
    answered; one that could not be sent leaves its decision kept at the
    primary, which is safe."""
    queue = router.forgets
    entries = []
    for _ in range(len(queue)):
        try:
            entries.append(queue.popleft())
        except IndexError:          # another thread took the rest
            break
    if not entries:
        return
    limit = CLOSE_SETTLE_S if wait else router.timeout
    if wait:
        behind = sorted({s for e in entries if e[4] is None for s in e[3] if router.durable[s] <= e[2]})
        asked = time.monotonic_ns()
        syncs = {s: _send(router.refs[s], "sync", None, limit) for s in behind}
        router.note_durable([s for s, f in syncs.items() if not isinstance(_quiet(f), LightningError)], asked)
    due: dict[int, list[list[Any]]] = {}
    for e in entries:                           # [primary, txid, commit time, others, future]
        if e[4] is not None and e[4].done() and isinstance(_quiet(e[4]), LightningError):
            e[4] = None                         # failed: sent again
        if e[4] is None and all(router.durable[s] > e[2] for s in e[3]):
            due.setdefault(e[0], []).append(e)
    oldest = time.monotonic_ns() - int(FORGET_WAIT_S * 1e9)
    for primary, group in due.items():
        if wait or len(group) >= router.forget_batch or min(e[2] for e in group) <= oldest:
            fut = _send(router.refs[primary], "forget", [e[1] for e in group], limit)
            for e in group:
                e[4] = fut
    for e in entries:
        fut = e[4]
        if fut is not None and (wait or fut.done()) and not isinstance(_quiet(fut), LightningError):
            continue                            # forgotten
        queue.append(e)


def settle_commit(router: "ShardRouter", txid: bytes, shard: int) -> bool:
    """Commit *txid* on *shard* after an earlier commit ask failed,
    retrying transient errors; True once it is committed there. A shard
    that no longer holds it prepared committed it already (the reply was
    lost, or in-doubt resolution got there first: the decision is commit)."""
    def attempt() -> None:
        with router.gate.shared(router.timeout):
            try:
                router._ask(shard, "commit", [txid, True, False])
            except InvalidArgument:
                pass                     # no such prepared transaction: committed before
    try:
        router._retry(attempt)
        return True
    except FatalError:
        raise                            # the database is gone: nothing to settle here
    except LightningError:
        return False


def settle_decided(router: "ShardRouter", txid: bytes, shards: list[int]) -> bool:
    """Commit a *txid* decided at its primary on each of *shards* (those
    holding a part prepared), behind an apply marker written first: a
    snapshot cut between two of these commits finds the marker and
    finishes the rest before it cuts. True once every part is committed
    (the marker is gone); else the marker stays for a later snapshot."""
    marker = router.gate.mark(txid, shards)
    if all([settle_commit(router, txid, s) for s in shards]):
        router.gate.unmark(marker)
        return True
    return False


def _settle_primary(router: "ShardRouter", txid: bytes, primary: int, ask: Any) -> bool | None:
    """After a failed decision at the primary: True decided (it commits),
    False aborted, None unknown. *ask*: on the decision's connection (an
    abort of a txid the primary does not know is remembered there, so a
    decision arriving later is refused)."""
    try:       # retried: a primary that died is asked again once its worker is back
        if router._retry(lambda: ask(primary, "abort", [txid])):
            return False
        return bool(router._retry(lambda: ask(primary, "decided", [txid])))
    except LightningError:
        return None


def abort_all(router: "ShardRouter", txid: bytes, shards: Iterable[int]) -> None:
    """Abort everywhere; a participant that died is asked again once its
    worker is back (a PREPARE it made durable must not stay in doubt)."""
    futs = {s: _send_here(router.refs[s], "abort", [txid], router.timeout) for s in shards}
    for s, f in futs.items():
        if isinstance(_quiet(f), TransientError):
            if isinstance(_quiet_call(lambda s=s: router._retry(lambda: router._ask(s, "abort", [txid]))),
                          LightningError):
                router.abandoned.add(txid)      # its intents there: released later (settle_abandoned)


def commit_transaction(router: "ShardRouter", seqs: Sequence[int] | None, ops: list[Op], reads: list[bytes],
                       ranges: list[tuple[bytes | None, bytes | None]], serializable: bool, sync: bool,
                       here: bool = True, token: int | None = None) -> set[int]:
    """A transaction's writes, validated on every shard they or its checks
    touch (snapshot *seqs*: None for a transaction that read nothing).
    *here*: the checks go on this thread's own connections, else on the
    process's shared one (where the snapshot's registrations went:
    ``ShardSnapshot.ordered``). *token*: the snapshot's registrations;
    each check carries it and ends the registration on its shard. Returns
    the shards whose registration a check ended (all answered)."""
    ask = router._ask if here else router._ask_in_order
    send = _send_here if here else _send
    ring = router.ring
    parts = {s: [ops[i] for i in pos] for s, pos in ring.split([op[1] for op in ops]).items()}
    per_reads: dict[int, list[bytes]] = {}
    if serializable:
        for s, pos in ring.split(reads).items():
            per_reads[s] = [reads[i] for i in pos]
    wire_ranges = [[lo, hi] for lo, hi in ranges] if serializable else []
    shards = set(parts) | set(per_reads) | (set(range(len(router.refs))) if wire_ranges else set())
    end = [token] if token is not None and seqs is not None else []
    checks = {s: [None if seqs is None else seqs[s], per_reads.get(s, []), wire_ranges, serializable, *end]
              for s in shards}
    ended = shards if end else set()
    if len(shards) == 1:        # checked and applied in one step: no cut can split it
        (s,) = shards
        ask(s, "txwrite", [parts[s], sync, checks[s]])
        return ended
    if len(parts) >= 2:
        two_phase(router, parts, checks, here)
        return ended
    (writer,) = parts
    readers = sorted(shards - {writer})
    txid = make_txid(writer)
    refs, timeout = router.refs, router.timeout
    with held_interrupts():         # the readers' intents must not outlive a Ctrl-C here
        futs = [send(refs[s], "prepare", [txid, [], checks[s]], timeout) for s in readers]
        errors = [r for r in map(_quiet, futs) if isinstance(r, LightningError)]
        try:
            if errors:
                conflicts = [e for e in errors if isinstance(e, TransactionConflict)]
                raise (conflicts or errors)[0]
            # Under the gate: a snapshot cut between another shard's read and
            # this write could otherwise order it before what it depended on.
            with router.gate.shared(timeout):
                ask(writer, "txwrite", [parts[writer], sync, checks[writer]])
        finally:   # read intents go either way (commit and abort both release them)
            abort_all(router, txid, readers)      # a reader restarted meanwhile holds them again: asked again
    return ended


def settle_marked(router: "ShardRouter", path: str, txid: bytes, shards: list[int]) -> bool:
    """Finish a two-phase commit whose apply phase is still marked (its
    coordinator died or gave up there): decided at the primary -> commit
    on every participant; prepared there undecided -> abort everywhere;
    neither -> it was committed everywhere and forgotten. True once settled
    (the marker is gone)."""
    p = int.from_bytes(txid[:2], "big")
    try:        # each commit holds the gate (settle_commit); asks, aborts and forgets need not
        if router._ask(p, "decided", [txid]):
            if not all([settle_commit(router, txid, s) for s in shards]):    # the primary's part too
                return False
            router._ask(p, "forget", [txid])
        elif router._ask(p, "abort", [txid]):
            abort_all(router, txid, [s for s in shards if s != p])
    except FatalError:
        raise                   # the database is gone (DatabaseShutdown): the caller reopens
    except LightningError:
        return False
    router.gate.unmark(path)
    return True
