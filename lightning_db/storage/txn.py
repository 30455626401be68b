"""Optimistic transactions on one shard: the conflict tracker.

Runs inside the engine, every method under the engine's write lock (the
engine calls them; nothing here locks). Two jobs:

**Writes since a snapshot.** A transaction reads at a snapshot seq S and
commits later; it may commit only if nothing it checks was written after S.
While any transaction is registered, every applied write is recorded (key
-> seq of its newest write, plus a log of (seq, keys) for ranges), from
``tracked_from`` on: a check against S < ``tracked_from`` cannot be answered
and raises ``TransactionExpired``. Registrations older than
``transaction_max_age`` seconds, and the oldest ones while more than
``transaction_max_keys`` keys are tracked, are dropped (a transaction held
open forever must not stop compaction or grow this without bound); the
records older than the oldest registration left are pruned.

**Intents.** A cross-shard commit validates on every participant first
(prepare) and applies later; between the two its keys are held as intents:
write intents (the prepared ops) and, for serializable transactions, read
intents (keys read and scanned ranges), both logged with the PREPARE and
held again after a restart. A transaction whose checks meet another one's intents
conflicts (first to prepare wins); a plain write to a key under a write
intent is refused with ``TransactionConflict`` (transient: the router
retries it until the intent is decided).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import eq
from typing import Any

from ..errors import TransactionConflict, TransactionExpired

__all__ = ["ConflictTracker", "TxCheck"]

Range = tuple[bytes | None, bytes | None]     # [lo, hi); None: unbounded
_consume = deque(maxlen=0).extend              # runs an iterator to its end, in C


@dataclass
class TxCheck:
    """What a commit must validate: nothing in *keys* (read or written) nor
    in *ranges* (scanned) was written after *snapshot* on this shard, and
    none of them meets another transaction's intents."""

    snapshot: int | None                 # None: a transaction that read nothing here (blind writes)
    reads: Sequence[bytes] = ()
    ranges: Sequence[Range] = ()
    serializable: bool = False
    writes: Sequence[bytes] = field(default=())


def _in(key: bytes, r: Range) -> bool:
    lo, hi = r
    return (lo is None or key >= lo) and (hi is None or key < hi)


class ConflictTracker:
    def __init__(self, max_age: float, max_keys: int, lag: float = 0.0) -> None:
        """*lag* > 0 (a shard serving other processes): snapshots may be
        registered after they were taken from shared memory, up to *lag*
        seconds late; writes stay tracked, and versions kept, that long."""
        self.max_age = max_age
        self.max_keys = max_keys
        self.lag = lag
        self.tracked_from: int | None = None        # every write with seq > this is recorded
        # The oldest snapshot compaction must keep (registrations, and the
        # seq of *lag* seconds ago); one attribute, so the engine's
        # background thread reads it without a lock.
        self.floor: int | None = None
        self._regs: dict[int, dict[Any, float]] = {}    # snapshot seq -> {token: registration time}
        self._tokens: dict[Any, int] = {}           # token -> the seq it registered
        self._ended: set[int] = set()               # tokens released (before or after they registered)
        self._ended_at: deque[tuple[float, int]] = deque()      # ... in the order they were
        self._gone: dict[int, float] = {}           # tokens whose registration expired -> when
        self._last: dict[bytes, int] = {}           # key -> seq of its newest recorded write
        self._log: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._samples: deque[tuple[float, int]] = deque()    # (monotonic time, last seq), with a lag
        self.lag_floor: int | None = None          # the seq of *lag* seconds ago (or older)
        self._idle_until = 0.0                      # tracking goes on until then without registrations
        self._write_intents: dict[bytes, bytes] = {}     # key -> txid
        # key -> txids of the prepared transactions that read it (several may)
        self._read_intents: dict[bytes, set[bytes]] = {}
        self._range_intents: dict[bytes, list[Range]] = {}
        self._held: dict[bytes, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}   # txid -> (writes, reads)
        self._records = 0
        self.expired = 0                             # registrations dropped by age or size (stats)
        self.conflicts = 0

    # --- registrations --------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.tracked_from is not None

    def begin(self, seq: int, last_seq: int, token: int | None = None) -> None:
        """Register a snapshot at *seq* (the shard is at *last_seq*). A
        shard that was not tracking starts at *last_seq*: a snapshot older
        than that cannot be checked (its commit raises TransactionExpired).

        *token* (a caller's: its registrations and its release may arrive
        on different connections, in any order) makes the registration
        one: registered again, it stays one; a registration that arrives
        after the release holds nothing."""
        self.expire()
        now = time.monotonic()
        if token is None:
            token = object()
        elif token in self._tokens or token in self._ended or token in self._gone:
            return
        if self.tracked_from is None:
            self.tracked_from = last_seq
        # Unregistered transaction snapshots (shards/snapshot.py) count on
        # tracking going on between a process's registrations, at least
        # as long as one may go unregistered (the lag).
        self._idle_until = now + max(self.max_age, self.lag)
        self._regs.setdefault(seq, {})[token] = now
        self._tokens[token] = seq
        self._prune()

    def end(self, seq: int, token: int | None = None) -> bool:
        """Drop one registration at *seq* (the one of *token*, where
        given); False when it had expired."""
        if token is None:
            regs = self._regs.get(seq)
            token = next(iter(regs)) if regs else None
        at = self._tokens.pop(token, None) if token is not None else None
        if at is not None:
            regs = self._regs[at]
            del regs[token]
            if not regs:
                del self._regs[at]
                self._prune()
            live = True
        else:       # expired, or not arrived (yet: registered again, or late)
            live = token is not None and self._gone.pop(token, None) is None
        if type(token) is int and token not in self._ended:
            self._ended.add(token)
            self._ended_at.append((time.monotonic(), token))
        self.expire()
        return live

    def expire(self) -> None:
        """Drop registrations older than max_age, and the oldest ones while
        more than max_keys keys are tracked; stop tracking when idle."""
        now = time.monotonic()
        cutoff = now - self.max_age
        if self._ended_at or self._gone:
            self._forget_tokens(now)
        if self.tracked_from is None:
            return
        old = [s for s, ts in self._regs.items() if next(reversed(ts.values())) < cutoff]
        for s in old:
            self._drop(s, now)
        if len(self._last) > self.max_keys:
            while len(self._last) > self.max_keys and self._regs:
                self._drop(min(self._regs), now)
                old.append(0)
                self._prune()
            if len(self._last) > self.max_keys:       # the lag window alone holds too much
                self._cut_to(self._log[len(self._log) // 2][0])
        if old:
            self.expired += len(old)
        self._prune()

    def _drop(self, seq: int, now: float) -> None:
        """Expire every registration at *seq* (their tokens' releases answer False)."""
        for token in self._regs.pop(seq):
            del self._tokens[token]
            if type(token) is int:
                self._gone[token] = now

    def _forget_tokens(self, now: float) -> None:
        """Tokens released longer than the lag ago (no registration of
        theirs can still be on its way), and tokens expired longer than
        max_age ago (their transactions ended on the caller's side by then)."""
        ended, order = self._ended, self._ended_at
        cutoff = now - (self.lag or self.max_age)
        while order and order[0][0] < cutoff:
            ended.discard(order.popleft()[1])
        gone = self._gone
        if gone:
            cutoff = now - self.max_age
            for token in [t for t, at in gone.items() if at < cutoff]:
                del gone[token]

    def sample(self, last_seq: int) -> None:
        """The shard is at *last_seq* now (every write, with a lag): keeps
        ``lag_floor``, the seq of at least *lag* seconds ago, current."""
        now = time.monotonic()
        samples = self._samples
        if samples and now - samples[-1][0] < 0.05:
            return
        samples.append((now, last_seq))
        while len(samples) > 1 and samples[1][0] <= now - self.lag:
            samples.popleft()
        self.lag_floor = samples[0][1]

    def _prune(self) -> None:
        if self.tracked_from is None:
            return
        now = time.monotonic()
        if not self._regs and now >= self._idle_until:
            self.tracked_from = self.floor = None      # idle: stop tracking
            self._last.clear()
            self._log.clear()
            return
        floors = [f for f in (min(self._regs) if self._regs else None, self.lag_floor) if f is not None]
        if not floors:
            floors = [self._log[-1][0]] if self._log else [self.tracked_from]
        self._cut_to(min(floors))
        self.floor = min(floors)

    def _cut_to(self, floor: int) -> None:
        """Forget the writes at or below *floor*: checks of snapshots older
        than it raise TransactionExpired."""
        log, last = self._log, self._last
        while log and log[0][0] <= floor:
            seq, keys = log.popleft()
            for k in keys:
                if last.get(k, floor + 1) <= floor:
                    del last[k]
        if self.tracked_from is not None and floor > self.tracked_from:
            self.tracked_from = floor

    # --- recording ------------------------------------------------------------------------
    def record(self, first_seq: int, keys: Sequence[bytes]) -> None:
        """Writes applied with seqs first_seq, first_seq+1, ... (one per key)."""
        last = self._last
        seq = first_seq
        for k in keys:
            last[k] = seq
            seq += 1
        self._log.append((seq - 1, tuple(keys)))
        self._records += 1
        if len(last) > self.max_keys or not self._records & 1023:
            self.expire()

    # --- validation -----------------------------------------------------------------------
    def check(self, check: TxCheck, txid: bytes | None = None) -> None:
        """Raise TransactionConflict (or TransactionExpired) when *check*
        fails; else return (nothing recorded: see ``hold``)."""
        snap = check.snapshot
        if snap is not None:
            if self.tracked_from is None or snap < self.tracked_from:
                raise TransactionExpired(
                    f"the transaction's snapshot (seq {snap}) is no longer tracked on this shard: it was "
                    f"open longer than transaction_max_age ({self.max_age:g} s) or more than "
                    f"transaction_max_keys ({self.max_keys}) keys were written meanwhile")
            last = self._last
            for k in (*check.writes, *check.reads):
                if last.get(k, 0) > snap:
                    self._conflict(f"key {k[:40]!r} was written after the transaction's snapshot")
            if check.ranges:
                self._check_ranges(snap, check.ranges)
        wi = self._write_intents
        if wi:
            keys = (*check.writes, *check.reads)
            if not wi.keys().isdisjoint(keys):
                for k in keys:
                    other = wi.get(k)
                    if other is not None and other != txid:
                        self._conflict(f"key {k[:40]!r} is held by prepared transaction {other.hex()}")
            for r in check.ranges:
                for k, other in wi.items():
                    if other != txid and _in(k, r):
                        self._conflict(f"key {k[:40]!r} in a scanned range is held by transaction {other.hex()}")
        if check.writes and (self._read_intents or self._range_intents):
            ri = self._read_intents
            for k in check.writes:
                readers = ri.get(k)
                if readers:
                    other = next((t for t in readers if t != txid), None)
                    if other is not None:
                        self._conflict(f"key {k[:40]!r} was read by prepared transaction {other.hex()}")
            for other, ranges in self._range_intents.items():
                if other != txid and any(_in(k, r) for r in ranges for k in check.writes):
                    self._conflict(f"a written key is in a range scanned by prepared transaction {other.hex()}")

    def _check_ranges(self, snap: int, ranges: Sequence[Range]) -> None:
        for seq, keys in reversed(self._log):
            if seq <= snap:
                break
            for k in keys:
                if any(_in(k, r) for r in ranges):
                    self._conflict(f"key {k[:40]!r} in a scanned range was written after the snapshot")

    def _conflict(self, why: str) -> None:
        self.conflicts += 1
        raise TransactionConflict(why)

    def check_plain(self, keys: Sequence[bytes]) -> None:
        """A write outside any transaction: refused under another's write intent."""
        wi = self._write_intents
        if wi.keys().isdisjoint(keys):
            return
        for k in keys:
            other = wi.get(k)
            if other is not None:
                raise TransactionConflict(f"key {k[:40]!r} is held by prepared transaction {other.hex()}; "
                                          "retry once it is decided")

    # --- intents --------------------------------------------------------------------------
    def hold(self, txid: bytes, writes: Sequence[bytes], reads: Sequence[bytes] = (),
             ranges: Sequence[Range] = ()) -> None:
        self.release(txid)
        self._write_intents.update(zip(writes, repeat(txid)))
        ri = self._read_intents
        for k in reads:
            readers = ri.get(k)
            if readers is None:
                ri[k] = {txid}
            else:
                readers.add(txid)
        if ranges:
            self._range_intents[txid] = list(ranges)
        self._held[txid] = (tuple(writes), tuple(reads))

    def release(self, txid: bytes) -> bool:
        held = self._held.pop(txid, None)
        self._range_intents.pop(txid, None)
        if held is None:
            return False
        writes, reads = held
        wi = self._write_intents
        if all(map(eq, map(wi.get, writes), repeat(txid))):        # every one still ours: in C
            _consume(map(wi.pop, writes, repeat(None)))            # (a key twice: popped once)
        else:
            for k in writes:
                if wi.get(k) == txid:
                    del wi[k]
        ri = self._read_intents
        for k in reads:
            readers = ri.get(k)
            if readers is not None:
                readers.discard(txid)
                if not readers:
                    del ri[k]
        return True

    def holds(self, txid: bytes) -> bool:
        return txid in self._held

    def read_intents(self, txid: bytes) -> tuple[list[bytes], list[Range]] | None:
        """The keys read and the ranges scanned that prepared *txid* holds
        as read intents here (its PREPARE record logs them), or None."""
        held = self._held.get(txid)
        ranges = self._range_intents.get(txid, [])
        if held is None or not (held[1] or ranges):
            return None
        return list(held[1]), list(ranges)

    def stats(self) -> dict[str, int]:
        return {"tx_registered": sum(len(t) for t in self._regs.values()), "tx_tracked_keys": len(self._last),
                "tx_intents": len(self._held), "tx_expired": self.expired, "tx_conflicts": self.conflicts}

