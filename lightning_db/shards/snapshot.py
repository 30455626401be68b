"""Cross-shard snapshots: one consistent cut, and the scans read at it (the caller's process).

A ``ShardSnapshot`` is a vector of per-shard sequence numbers taken while
the commit gate is held exclusive (gate.py): no commit that applies on
several shards is half applied at that moment, so the vector never shows
part of a batch or transaction. A commit whose coordinator died (or lost a
participant) after its decision can still be half applied without holding
the gate: each shard's answer lists what it holds prepared and what it
decided as primary, and a transaction decided at its primary with a part
still prepared (on another shard, or on the primary itself) is committed
there (under the gate, shared) before the cut is taken again. With one
shard no commit spans shards, and a cut takes neither the gate nor a look
for apply markers.

The cut is normally read from shared memory (``shared_cut``: every shard's
published visible seq, no message; the registrations follow as messages
not waited for, and a marked apply phase of a dead coordinator is finished
first); ``take_cut`` asks every shard when one does not serve from shared
memory. A transaction's snapshot (``tx=True``) is also registered on every
shard for its commit's checks (storage/txn.py), unless this process
registered one there lately (``KEEPALIVE_S``): the shards are tracking
writes then, and keep what a snapshot of the last SNAPSHOT_LAG_S seconds
reads, so a short transaction needs neither a registration nor a release;
one that stays open is registered late (``ShardSnapshot.fresh``).

Where the messages go. A transaction's registrations are tells on the
connections of the thread that took the snapshot (``tell_here``), and its
checks and release follow on the same connections when that thread sends
them: one connection keeps their order, and no message waits for the
mailbox's I/O thread. Another thread first registers again, waiting for
the answers (``ShardSnapshot.ordered``). Each registration carries a token
the caller drew, so the shard counts it once however often it arrives, and
a release that overtakes its registration (sent on another connection)
leaves nothing registered. A commit's checks carry the token too and end
the registration on their shards (``ended``): a committed transaction's
release goes only to the others. Other snapshots are registered and
released on the process's shared connection.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..db import ReadSugar, _scan_range
from ..errors import InvalidArgument, LightningError, Timeout, TransactionExpired, TransientError
from ..storage.engine import SNAPSHOT_LAG_S
from ..supervisor.retry import Backoff
from .coordinator import _quiet_call, settle_decided, settle_marked
from .resolve import _quiet, _send, _send_here

if TYPE_CHECKING:
    from .router import ShardRouter

__all__ = ["ShardSnapshot", "ScanIter", "take_cut"]

CUT_ATTEMPTS = 64
# A transaction's snapshot is registered on the shards (tracked writes for
# its commit's checks, versions kept for its reads) unless this process
# registered one on every shard in the last KEEPALIVE_S (the shards track
# writes then, and keep the versions of the last SNAPSHOT_LAG_S seconds for
# snapshots registered late). An unregistered one is registered at its
# first read after LATE_S (or first scan); past TOO_LATE_S unregistered it
# expired. A transaction of a few milliseconds sends no registration and
# no release.
KEEPALIVE_S = 1.0
LATE_S = 1.0
TOO_LATE_S = SNAPSHOT_LAG_S / 2
_SHARED = object()      # ShardSnapshot._thread: registered on the process's shared connection
_MIXED = object()       # ... some on the shared connection, some on this thread's own


def _tell(ref: Any, op: str, payload: Any, here: bool = False) -> bool:
    """A tell on the process's shared connection, or (*here*) on this
    thread's own (``ActorRef.tell_here``: in order with the thread's direct
    asks); True when it went on this thread's own."""
    try:
        if here:
            return ref.tell_here(op, payload)
        ref.tell(op, payload)
    except LightningError:
        return here             # a worker gone: nothing of ours stays registered there
    return False


def _here(routes: list[bool]) -> bool | None:
    """Registrations sent (``_tell``'s answers): True all on this thread's
    own connections, False none, None some."""
    return True if all(routes) else None if any(routes) else False


def _carrier(here: bool | None) -> Any:
    """Whose connections carried a snapshot's registrations (``ordered``):
    this thread's, the shared one's, or some on each kind: nobody's (the
    next check registers again first)."""
    return threading.current_thread() if here else _SHARED if here is False else _MIXED


def new_token() -> int:
    """A transaction snapshot's name on the shards (actor.py: registered
    twice it is one; released before it arrives it holds nothing)."""
    return int.from_bytes(os.urandom(8), "big") >> 1 or 1


def _release(router: "ShardRouter", seqs: Sequence[Any], tx: bool, wait: bool = True,
             token: int | None = None, here: bool = False) -> list[Any]:
    """Release a snapshot's registrations; *here*: on this thread's own
    connections (those of the thread that registered them)."""
    def payload(seq: int) -> list[Any]:
        return [seq, tx, token] if tx else [seq]
    if not wait:
        for ref, seq in zip(router.refs, seqs):
            if isinstance(seq, int):
                _tell(ref, "release", payload(seq), here)
        return []
    send = _send_here if here else _send
    futs = [send(ref, "release", payload(seq), router.timeout)
            for ref, seq in zip(router.refs, seqs) if isinstance(seq, int)]
    return [_quiet(f) for f in futs]


def _hold_for_cut(router: "ShardRouter", deadline: float) -> Any:
    """What a cut holds while it reads the seqs: the commit gate, exclusive.
    With one shard no commit spans shards (every batch and transaction is
    checked and applied in one step there), so there is nothing to cut
    around, no apply marker, and no gate to take."""
    if len(router.refs) == 1:
        return contextlib.nullcontext()
    return router.gate.exclusive(max(0.001, deadline - time.monotonic()))


def shared_cut(router: "ShardRouter", tx: bool, token: int | None = None,
               register: bool = True) -> tuple[list[int], list[int | None], bool | None] | None:
    """The cut from the shards' published versions: every shard's visible
    seq read from shared memory under the gate held exclusive, then
    registered by a message that is not waited for (the shard keeps what a
    snapshot of the last SNAPSHOT_LAG_S seconds sees until it arrives, for
    as long as cuts are noted: ``note_cut``, storage/published.py). A
    marked apply phase (its coordinator died in it) is finished first. None
    when a shard is not serving from shared memory (ask instead).

    (seqs, incarnations, here): a transaction's registrations (*token*)
    go on this thread's own connections, in order with its direct asks,
    where it has them (*here*: True all, False none, None some).
    *register* False: none is sent (an unregistered transaction snapshot:
    ``ShardSnapshot``); *here* is then True."""
    n = len(router.refs)
    readers = [router._reader(s) for s in range(n)]
    if any(r is None for r in readers):
        return None
    deadline = time.monotonic() + router.timeout
    backoff = Backoff(attempts=CUT_ATTEMPTS, base=0.01, cap=0.5, deadline=deadline)
    while True:
        try:
            with _hold_for_cut(router, deadline):
                for r in readers:
                    r.note_cut()          # type: ignore[union-attr]  # before the seqs are read
                states = [r.state() for r in readers]          # type: ignore[union-attr]
                marks = router.gate.markers() if n > 1 else ()
        except (OSError, ValueError):
            return None
        if not all(st[0] for st in states):
            return None
        if not marks:
            seqs = [st[2] for st in states]
            if not register:
                return seqs, [st[0] for st in states], True
            payloads = [[seq, tx, token] if tx else [seq, tx] for seq in seqs]
            routes = [_tell(ref, "register", p, tx) for ref, p in zip(router.refs, payloads)]
            return seqs, [st[0] for st in states], _here(routes)
        for path, txid, shards in marks:
            settle_marked(router, path, txid, shards)
        delay = next(backoff, None)
        if delay is None:
            raise Timeout(f"a snapshot could not be cut: commits {[t.hex() for _, t, _ in marks]} "
                          "stayed half applied")
        router.retries += 1
        time.sleep(delay)


def take_cut(router: "ShardRouter", tx: bool, token: int | None = None) -> list[int]:
    """One seq per shard, registered on each (released by the caller;
    a transaction's under *token*)."""
    refs, timeout = router.refs, router.timeout
    deadline = time.monotonic() + timeout
    backoff = Backoff(attempts=CUT_ATTEMPTS, base=0.01, cap=0.5, deadline=deadline)
    ask = [tx, token] if tx else [tx]
    while True:
        with _hold_for_cut(router, deadline):
            got = [_quiet(_send(ref, "snapshot", ask, timeout)) for ref in refs]
        errors = [g for g in got if isinstance(g, LightningError)]
        seqs = [g[0] if not isinstance(g, LightningError) else None for g in got]
        half: dict[bytes, list[int]] = {}
        if not errors:
            decided = [set(g[2]) for g in got]
            for s, g in enumerate(got):
                for txid in g[1]:
                    p = int.from_bytes(txid[:2], "big")
                    if p < len(refs) and txid in decided[p]:    # the primary's own part too
                        half.setdefault(txid, []).append(s)
            if not half:
                return seqs                      # type: ignore[return-value]
        _release(router, seqs, tx, token=token)  # give back what was acquired
        if errors and not all(isinstance(e, TransientError) for e in errors):
            raise next(e for e in errors if not isinstance(e, TransientError))
        # Decided at the primary, a part still prepared: finish it, then cut again.
        for txid, shards in half.items():
            if settle_decided(router, txid, shards):
                p = int.from_bytes(txid[:2], "big")
                _quiet_call(lambda p=p, txid=txid: router._ask(p, "forget", [txid]))
        if errors or half:
            delay = next(backoff, None)
            if delay is None:
                if errors:
                    router._gave_up(errors[0])
                    raise errors[0]
                raise Timeout(f"a snapshot could not be cut: transactions {[t.hex() for t in half]} "
                              "stayed half committed")
            if errors:
                router._on_retry(0, errors[0], delay)   # type: ignore[arg-type]  # (a node shut down: raises)
            else:
                router.retries += 1
            time.sleep(delay)


class ScanIter:
    """A scan's iterator; releases its snapshot when exhausted, closed or collected."""

    def __init__(self, router: "ShardRouter", rng: Any, reverse: bool, seqs: Sequence[int],
                 snap: "ShardSnapshot | None") -> None:
        self._it = router._scan_at(rng, reverse, seqs)
        self._snap = snap

    def __iter__(self) -> "ScanIter":
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        snap, self._snap = self._snap, None
        if snap is not None:
            snap.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class ShardSnapshot(ReadSugar):
    """A read view: one seq per shard from one cut; ``close`` (or ``with``)
    releases them. ``tx=True``: a transaction's snapshot (see module doc)."""

    def __init__(self, router: "ShardRouter", tx: bool = False) -> None:
        self._router = router
        self._tx = tx
        self.token = new_token() if tx else None
        self.ended: set[int] = set()        # shards where a commit's check ended the registration
        self._cut_at = time.monotonic()
        # A transaction's snapshot goes unregistered while this process
        # registered one on every shard lately (they track writes then).
        last, incs = router.tx_registered
        self.registered = not (tx and self._cut_at - last < KEEPALIVE_S)
        cut = shared_cut(router, tx, self.token, self.registered)
        if cut is not None:
            self.seqs, self.incs, here = cut
            if not self.registered and self.incs != incs:       # a shard restarted: its tracking too
                self.registered = True
                here = self._register()
            elif tx and self.registered:      # only a registration keeps the shards tracking
                router.tx_registered = (self._cut_at, list(self.incs))
            self._thread: Any = _carrier(here)
        else:
            self.registered = True
            self.seqs = take_cut(router, tx, self.token)
            # The engine each seq belongs to: reads from shared memory only while
            # the shard still runs it (a restarted worker does not hold our seq).
            self.incs = [router._incarnation(s) for s in range(len(router.refs))]
            self._thread = None             # registered by answered asks: before anything sent now
        self._closed = False
        router._snapshots.add(self)

    def _register(self) -> bool | None:
        """Register this transaction snapshot on every shard now (tells on
        this thread's connections); *here* as ``shared_cut``."""
        r = self._router
        routes = [_tell(ref, "register", [seq, True, self.token], True) for ref, seq in zip(r.refs, self.seqs)]
        r.tx_registered = (time.monotonic(), list(self.incs))
        return _here(routes)

    def fresh(self, now: bool = False) -> None:
        """Before a read of an unregistered transaction snapshot: one open
        LATE_S (or, *now*, at once) is registered first; one open
        TOO_LATE_S, or whose shards restarted meanwhile, expired (the
        versions it reads are kept that long for it: storage/published.py)."""
        if self.registered:
            return
        age = time.monotonic() - self._cut_at
        if age < LATE_S and not now:
            return
        self._expire_if_stale(age)
        self.registered = True
        self._thread = _carrier(self._register())

    def check_unregistered(self) -> None:
        """Before the commit of an unregistered transaction snapshot: its
        shards still run the engines it read (TransactionExpired)."""
        if not self.registered:
            self._expire_if_stale(0.0)

    def _expire_if_stale(self, age: float) -> None:
        r = self._router
        if age >= TOO_LATE_S or [r._incarnation(s) for s in range(len(r.refs))] != list(self.incs):
            raise TransactionExpired(
                f"the transaction's snapshot went unregistered for {age:.1f} s (at most {TOO_LATE_S:g} s) "
                "or a shard restarted meanwhile")

    def ordered(self) -> bool:
        """Where a message that must find this snapshot's registrations on
        the shards (a transaction's checks) goes: True on this thread's own
        connections (``ask_here``), False on the process's shared one,
        which carried them. A thread other than the one whose connections
        carried them registers again first, waiting for the answers (the
        token keeps it one registration)."""
        t = self._thread
        if t is None or t is threading.current_thread() or not self.registered:
            return True
        if t is _SHARED:
            return False
        r = self._router
        futs = [_send_here(ref, "register", [seq, True, self.token], r.timeout)
                for ref, seq in zip(r.refs, self.seqs) if isinstance(seq, int)]
        for f in futs:
            _quiet(f)
        self._thread = None
        return True

    def _check(self) -> None:
        self._router._check_open()         # a closed handle first: its snapshots went with it
        if self._closed:
            raise InvalidArgument("snapshot was released")

    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        return self._router._get(key, default, self.seqs, True, self.incs)

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        self._check()
        return self._router._get_many(keys, self.seqs, self.incs)

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check()
        rng = _scan_range(self._router._limits, start, end, prefix, reverse, limit)
        return self._scan(rng, reverse)

    def _scan(self, rng: Any, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        r = self._router
        shared = r._shared_scan(rng, reverse, self.seqs, self.incs)
        return shared if shared is not None else ScanIter(r, rng, reverse, self.seqs, None)

    def close(self, wait: bool = True) -> bool:
        """Release the seqs; False when a transaction's registration had
        expired on some shard (or its worker restarted). ``wait=False``:
        the releases are sent and not waited for (True is returned)."""
        if self._closed:
            return True
        self._closed = True
        r = self._router
        r._snapshots.discard(self)
        if not self.registered:          # nothing to release; its reads hold if no shard restarted
            if not wait:
                return True              # nobody asks (a committed or rolled back transaction's view)
            try:
                self._expire_if_stale(0.0)
            except TransactionExpired:
                return False
            return True
        seqs = [None if s in self.ended else seq for s, seq in enumerate(self.seqs)] if self.ended else self.seqs
        answers = _release(r, seqs, self._tx, wait, self.token, self._thread is threading.current_thread())
        return not self._tx or all(a is True for a in answers)


class TxView:
    """A transaction's view on the sharded database (transaction.py's backend view)."""

    def __init__(self, router: "ShardRouter") -> None:
        self.snap = ShardSnapshot(router, tx=True)
        self.seqs = self.snap.seqs
        self._router = router

    def get(self, key: bytes) -> bytes | None:
        self.snap.fresh()
        return self._router._get(key, None, self.seqs, True, self.snap.incs)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        self.snap.fresh()
        return self._router._get_many(keys, self.seqs, self.snap.incs)

    def get_entry(self, key: bytes) -> tuple[bytes, float | None] | None:
        self.snap.fresh()
        return self._router._get_entry(key, self.seqs)

    def scan(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        self.snap.fresh(now=True)        # a scan may be read for a long time: registered first
        return self.snap._scan((lo, hi, None), reverse)

    def release(self, wait: bool = True) -> bool:
        return self.snap.close(wait)
