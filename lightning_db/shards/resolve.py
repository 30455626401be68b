"""Settling cross-shard transactions left in doubt (presumed abort).

Runs in any process that holds refs to every shard: a caller's open
(``ShardedDatabase``), the node after a caller died (only that caller's
transactions: ``txid_pid``), tests. A participant's in-doubt txid is settled
by its primary (the txid's first two bytes): decided there -> commit here;
else abort at the primary, then here. The primary itself may hold its own
part prepared beside the decision (its coordinator died between the
decision and the apply phase): committed there too. The parts of one txid
are settled behind an apply marker, so a snapshot cut between two of
them finishes the rest first and never sees some parts applied and
others not.

Once nothing of a dead coordinator is in doubt any more, the decisions its
primaries still keep (it died between a commit and its forget) are
forgotten too (``forget_settled``): every shard is synced first, so each
participant's commit record is durable before the decision it answers to
goes. Without this a dead coordinator's decisions would stay kept for
good (and be carried into every new WAL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..actors import ActorRef
from ..errors import InvalidArgument, LightningError

__all__ = ["forget_settled", "resolve_in_doubt", "settle_gone", "txid_pid"]

DEFAULT_TIMEOUT = 30.0
FORGET_CHUNK = 512         # txids per "forget" message


def _failed(exc: LightningError) -> Future:
    """A future that already failed with *exc*."""
    f: Future = Future()
    f.set_exception(exc)
    return f


def _send(ref: ActorRef, op: str, payload: Any, timeout: float) -> Future:
    """``ref.ask``; an error raised while sending (a dead ref) goes into the future."""
    try:
        return ref.ask(op, payload, timeout)
    except LightningError as exc:
        return _failed(exc)


def _send_here(ref: ActorRef, op: str, payload: Any, timeout: float) -> Any:
    """``_send`` for an answer this thread waits for itself (``ref.ask_here``:
    no hop through the mailbox's I/O thread); never hand it to another thread."""
    try:
        return ref.ask_here(op, payload, timeout)
    except LightningError as exc:
        return _failed(exc)


def _quiet(f: Any) -> Any:
    """The result, or the LightningError it failed with (returned, not raised)."""
    try:
        return f.result()
    except LightningError as exc:
        return exc


def txid_pid(txid: bytes) -> int | None:
    """The pid of the process that coordinated *txid* (None: not recorded)."""
    return int.from_bytes(txid[2:6], "big") if len(txid) == 16 else None


def resolve_in_doubt(refs: Sequence[ActorRef], timeout: float = DEFAULT_TIMEOUT,
                     only: Callable[[bytes], bool] | None = None, gate: Any = None) -> dict[str, int]:
    """Settle every in-doubt txid (those *only* accepts, if given) on every
    shard by asking its primary (txid's first 2 bytes): decided there ->
    commit here; else abort at the primary (presumed abort: its coordinator
    is gone) and here. Safe to run any time, beside a live coordinator too.
    Each settlement holds *gate* (a ``CommitGate``) shared, as any commit
    does, behind an apply marker for the txid's parts, as any commit's
    apply phase. Returns counts of parts: committed, aborted, failed."""
    counts = {"committed": 0, "aborted": 0, "failed": 0}
    futs = [_send(ref, "in_doubt", None, timeout) for ref in refs]
    holders: dict[bytes, list[int]] = {}
    for s, f in enumerate(futs):
        entries = _quiet(f)
        if isinstance(entries, LightningError):
            counts["failed"] += 1
            continue
        for txid, _ops in entries:
            if only is None or only(txid):
                holders.setdefault(txid, []).append(s)
    for txid, shards in holders.items():
        # The marker first: a snapshot cut between two parts' commits finds
        # it and finishes the rest before it cuts.
        marker = gate.mark(txid, shards) if gate is not None else None
        settled = True
        for s in shards:
            try:
                if gate is None:
                    counts[_resolve_one(refs, s, txid, timeout)] += 1
                else:
                    with gate.shared(timeout):
                        counts[_resolve_one(refs, s, txid, timeout)] += 1
            except LightningError:
                counts["failed"] += 1
                settled = False
        if marker is not None and settled:
            gate.unmark(marker)
    return counts


def _resolve_one(refs: Sequence[ActorRef], shard: int, txid: bytes, timeout: float) -> str:
    here = refs[shard]
    p = int.from_bytes(txid[:2], "big")
    if p != shard and p < len(refs):
        primary = refs[p]
        if not primary.ask("decided", [txid], timeout).result():
            primary.ask("abort", [txid], timeout).result()
        if primary.ask("decided", [txid], timeout).result():   # again: a coordinator may have raced us
            return _commit_part(here, txid, timeout)
    elif p == shard and here.ask("decided", [txid], timeout).result():
        return _commit_part(here, txid, timeout)                      # the primary's own part
    here.ask("abort", [txid], timeout).result()
    return "aborted"


def _commit_part(ref: ActorRef, txid: bytes, timeout: float) -> str:
    """Commit a decided *txid* on one shard, synced; a shard that no longer
    holds it prepared committed it meanwhile (its coordinator lives on)."""
    try:
        ref.ask("commit", [txid, True, False], timeout).result()
    except InvalidArgument:
        pass
    return "committed"


def forget_settled(refs: Sequence[ActorRef], timeout: float = DEFAULT_TIMEOUT,
                   only: Callable[[bytes], bool] | None = None) -> int:
    """Forget the decisions the shards keep for the txids *only* accepts
    (those of coordinators that are gone; every txid if None), once
    ``resolve_in_doubt`` settled them without a failure. First every shard
    syncs its WAL: a participant's commit record that is not durable yet
    must not outlive the decision (after a power cut it would be asked
    again, and a forgotten decision reads as an abort). Returns how many
    were forgotten; raises the LightningError of a shard that did not
    answer (nothing after it is forgotten; safe to run again)."""
    kept: dict[int, list[bytes]] = {}
    for s, f in enumerate([_send(ref, "decisions", None, timeout) for ref in refs]):
        mine = [t for t in f.result() if only is None or only(t)]
        if mine:
            kept[s] = mine
    if not kept:
        return 0
    for f in [_send(ref, "sync", None, timeout) for ref in refs]:
        f.result()
    n = 0
    for s, txids in kept.items():
        chunks = [txids[i:i + FORGET_CHUNK] for i in range(0, len(txids), FORGET_CHUNK)]
        for chunk, f in [(c, _send(refs[s], "forget", c, timeout)) for c in chunks]:
            f.result()
            n += len(chunk)
    return n


def settle_gone(refs: Sequence[ActorRef], timeout: float, only: Callable[[bytes], bool],
                gate: Any = None) -> dict[str, int]:
    """What coordinators that are gone left (*only* accepts their txids):
    ``resolve_in_doubt``, then, once that had no failure,
    ``forget_settled`` (a shard that did not answer counts as a failure:
    run it again later). Counts: committed, aborted, forgotten, failed."""
    counts = resolve_in_doubt(refs, timeout, only=only, gate=gate)
    counts["forgotten"] = 0
    if not counts["failed"]:
        try:
            counts["forgotten"] = forget_settled(refs, timeout, only=only)
        except LightningError:
            counts["failed"] += 1
    return counts
