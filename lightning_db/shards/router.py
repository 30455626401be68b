"""``ShardRouter``: the Database API over shard actors (the caller's process).

Runs in any process holding ``ActorRef``s to the shards (index = shard id):
it validates arguments (with ``db.py``'s helpers), routes keys with the
``HashRing`` and asks the ``ShardActor``s (``shards/actor.py``, one per worker
process); every ask has a timeout, a timed-out one raises the mailbox's
``Timeout`` (a ``TransientError``); asks to several shards are sent together,
then awaited. put/get/delete go to one shard; put_many and batches are split
per shard (one shard: a plain "write", several: two-phase commit). Reads
come first from each shard's published version in shared memory
(``storage/published.py``: get, get_many, scan, no message); a shard that is
not serving is asked instead: get_many sends one ask per shard, a scan
merges per-shard paged iterators (the next page is requested before the
current one is consumed) with ``storage.scan.merge_chunks``, all read at
one snapshot vector. put/delete are pipelined (``pipeline.py``).

Cross-shard commits (two-phase commit for batches and transactions, the
transaction commit paths) are in ``coordinator.py``, with this router as
the coordinator; snapshots are cuts taken under the commit gate
(``snapshot.py``, ``gate.py``); ``transaction()`` comes from
``transaction.py`` with ``_tx_view``/``_tx_commit`` here.

Retries. A shard worker killed (kill -9) and restarted by the node loses
the asks it had received: the mailbox fails them with ``PeerLost`` as soon
as the connection drops (or ``Timeout`` at their deadline). Idempotent
single-shard asks are retried on ``TransientError`` with
``supervisor.retry`` (full jitter, RETRY_ATTEMPTS calls, deadline = now +
the router's timeout): get, get_many (only the shards that failed are asked
again), scan pages, single-shard writes (each carries a write token: the
shard applies a write once however many times it arrives, pipeline.py),
flush, compact, stats and verify. A
snapshot's cut is taken again as a whole after a transient error
(snapshot.py); a release is never retried. A retried scan
page is read again at the scan's snapshot seq; a restarted worker no longer
has that snapshot registered, so the page is correct only while compaction
has not dropped versions newer than it (accepted: the window is the restart
plus the next compaction). The steps of two-phase commit are retried as
coordinator.py says. A cross-shard batch that meets a transaction's intents (a TransactionConflict
at prepare) is tried again as a whole: its writes are blind.
Checkpoint is never retried.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from itertools import chain
from operator import itemgetter
from typing import Any

from ..actors import ActorRef
from ..config import Config
from ..db import Batch, MappingSugar, _limited, _Limits, _scan_range
from ..errors import (CircuitOpen, DatabaseClosed, InvalidArgument, LightningError, RecoverableError, Timeout,
                      TransactionConflict, TransactionExpired, TransientError)
from ..storage.bloom import key_hash
from ..storage.format import Kind
from ..storage.published import UNAVAILABLE, PublishedReader
from ..storage.scan import first_chunk, merge_chunks
from ..storage.checkpoint import check_target
from ..storage.fs import OSFileSystem
from ..storage.stats import shard_totals
from ..storage.ttl import visible
from ..supervisor.breaker import CircuitBreaker
from ..supervisor.retry import Backoff, retry
from ..transaction import Transactional
from .combine import WriteCombiner
from .coordinator import (FORGET_BATCH, MERGE_OPS, commit_transaction, settle_abandoned, settle_forgets,
                          two_phase)
from .gate import CommitGate
from .pipeline import TokenSource, WritePipeline
from .resolve import _failed, _quiet, _send, resolve_in_doubt, txid_pid
from .ring import SLICE_SHIFT, HashRing
from .snapshot import ScanIter, ShardSnapshot, TxView

__all__ = ["DEFAULT_TIMEOUT", "SCAN_PAGE", "ShardRouter", "ShardSnapshot", "resolve_in_doubt", "txid_pid"]

DEFAULT_TIMEOUT = 30.0
ATTEMPT_TIMEOUT = 5.0         # one attempt of a point call; retries run until DEFAULT_TIMEOUT
BREAKER_THRESHOLD = 3         # consecutive timed-out attempts that open a shard's breaker
BREAKER_RESET_S = 1.0         # open -> half-open: one probe call decides
SCAN_PAGE = 1024
RETRY_ATTEMPTS, RETRY_BASE, RETRY_CAP = 8, 0.05, 1.0
_VALUE = int(Kind.VALUE)
_DELETE = int(Kind.DELETE)
_op_key = itemgetter(1)
Op = tuple[int, bytes, bytes]


def _hung(exc: BaseException) -> bool:
    """What a shard's breaker counts: an attempt that timed out."""
    return isinstance(exc, Timeout)


def _quiet_call(fn: Callable[[], Any]) -> Any:
    """fn(), or the LightningError it raised (returned, not raised)."""
    try:
        return fn()
    except LightningError as exc:
        return exc


class ShardRouter(Transactional, MappingSugar):
    """The client side of a sharded database; ``close`` releases snapshots, not the actors."""

    def __init__(self, refs: Sequence[ActorRef], ring: HashRing, config: Config | None = None,
                 timeout: float = DEFAULT_TIMEOUT, published: Sequence[str] | None = None,
                 gate: CommitGate | None = None) -> None:
        if len(refs) != ring.shards:
            raise InvalidArgument(f"{len(refs)} refs for a ring of {ring.shards} shards")
        self.refs = list(refs)
        # Snapshots are cuts no multi-shard commit straddles (gate.py): shared
        # by every process of a node; None: private to this router.
        self.gate = gate or CommitGate()
        # The last registration of a transaction's snapshot on every shard:
        # (monotonic time, incarnations); keeps the shards tracking writes
        # for the unregistered ones (snapshot.py).
        self.tx_registered: tuple[float, list[int | None]] = (-1e9, [])
        # Reads without messages: each shard's published version (superblock
        # paths, storage/published.py), mapped on first use; None: ask only.
        self._published = list(published) if published is not None else None
        self._readers: list[PublishedReader | None] = [None] * len(self.refs)
        self._reader_tried = [0.0] * len(self.refs)
        self.shared_reads = 0       # reads answered from shared memory (stats, tests)
        self.ring = ring
        self._direct = ring.direct            # hash slice -> shard, -1: ask the ring (ring.py)
        self.config = config or Config()
        # put/delete return before the shard answers (shards/pipeline.py),
        # unless the call asks for sync=True or the database for sync="always".
        self.tokens = TokenSource(len(self.refs))       # one write applied once per token
        self._combiner = WriteCombiner(len(self.refs), self._send_write)
        self._pipe = WritePipeline(self, len(self.refs))
        self._pipelined = self.config.sync != "always"
        self.timeout = timeout
        self._limits = _Limits(self.config)
        self._max_key = self.config.max_key_size
        self._max_value = self.config.max_value_size
        self._closed = False
        self._snapshots: set[ShardSnapshot] = set()
        self.retries = 0            # transient failures retried by this router (metrics, tests)
        # Forgets of two-phase commits not yet settled (coordinator.py):
        # [primary, txid, commit time, other writing shards, future or None].
        self.forgets: deque[list[Any]] = deque()
        self.forget_batch = FORGET_BATCH    # due forgets to one primary sent as one message
        # Two-phase commits this process gave up on with their outcome unknown
        # (the primary did not answer): settled later (coordinator.settle_abandoned).
        self.abandoned: set[bytes] = set()
        self.abandoned_tried = 0.0
        self.abandoned_lock = threading.Lock()
        self.merge_ops = MERGE_OPS          # a primary's part this small goes with its decision
        # Per shard: the send time (monotonic ns) of the latest answered
        # synced request, so every record written there before it is durable.
        self.durable = [0] * len(self.refs)
        # Point calls (get, single-shard writes, scan pages) go through a
        # breaker per shard and wait at most ATTEMPT_TIMEOUT per attempt: a
        # shard that keeps timing out (a hung worker) opens its breaker and
        # its calls fail fast with CircuitOpen while the others keep serving.
        # A lost connection (PeerLost: a worker being restarted) does not count.
        self.attempt_timeout = min(timeout, ATTEMPT_TIMEOUT)
        self.breakers = [CircuitBreaker(BREAKER_THRESHOLD, BREAKER_RESET_S, name=f"shard-{i}",
                                        is_failure=_hung) for i in range(len(self.refs))]

    # --- plumbing -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed("the shard router is closed")

    def _ask(self, shard: int, op: str, payload: Any = None) -> Any:
        """One ask, never retried (the two-phase-commit steps), on this
        thread's own connection to the shard."""
        return self.refs[shard].ask_here(op, payload, self.timeout).result()

    def _ask_in_order(self, shard: int, op: str, payload: Any = None) -> Any:
        """``_ask`` through the process's shared connection, which keeps
        the order of the messages sent on it: for an ask that must arrive
        after a tell sent there (a transaction's check after its snapshot's
        registration, where it went there: snapshot.py)."""
        return self.refs[shard].ask(op, payload, self.timeout).result()

    def _on_retry(self, calls: int, exc: TransientError, delay: float) -> None:
        self.retries += 1
        if self.abandoned and isinstance(exc, TransactionConflict):
            settle_abandoned(self)      # the intent met may be one of this process's own

    def _refused(self, shard: int) -> Future | None:
        """A failed future when *shard*'s breaker is open, else None."""
        try:
            self.breakers[shard].refuse_if_open()
        except CircuitOpen as exc:
            return _failed(exc)
        return None

    def _gave_up(self, exc: LightningError) -> None:
        """An error about to reach the caller after its retries (a hook:
        ShardedDatabase turns one of a node that shut down into
        DatabaseShutdown)."""

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return retry(fn, attempts=RETRY_ATTEMPTS, base=RETRY_BASE, cap=RETRY_CAP,
                     deadline=time.monotonic() + self.timeout, on_retry=self._on_retry)

    def _ask_retry(self, shard: int, op: str, payload: Any = None) -> Any:
        """One idempotent ask through the shard's breaker, retried on
        TransientError; CircuitOpen (recoverable) is not retried."""
        ref, timeout, breaker = self.refs[shard], self.attempt_timeout, self.breakers[shard]

        def attempt() -> Any:
            breaker.before_call()
            try:
                r = ref.ask_here(op, payload, timeout).result()
            except LightningError as exc:
                breaker.on_failure(exc)
                raise
            breaker.on_success()
            return r
        return self._retry(attempt)

    def _barrier(self, shards: list[int]) -> None:
        """Tells this thread sent on its own connections (a transaction's
        registrations and release, snapshot.py) have arrived at *shards*
        once this returns: what is sent after it, on any connection, comes
        after them."""
        futs = []
        for s in shards:
            if self.breakers[s].state == "open":
                continue            # not asked at all (_refused): nothing to wait for there
            try:
                f = self.refs[s].barrier_here(self.attempt_timeout)     # a hung worker: the ask itself fails
            except LightningError:
                continue            # that connection is gone, and what it carried with it
            if f is not None:
                futs.append(f)
        for f in futs:
            _quiet(f)

    def _ask_all(self, op: str, payloads: Mapping[int, Any] | None = None, *,
                 idempotent: bool = False, partial: bool = False) -> dict[int, Any]:
        """The same op on several shards, sent together. *idempotent*: the
        shards that failed with a TransientError are asked again (together,
        after a backoff delay) while attempts and the deadline allow.
        *partial*: a shard that still fails with a transient or recoverable
        error (a worker being restarted) gets its error as its answer
        instead of the call raising it."""
        shards = list(range(len(self.refs))) if payloads is None else list(payloads)
        backoff = Backoff(attempts=RETRY_ATTEMPTS, base=RETRY_BASE, cap=RETRY_CAP,
                          deadline=time.monotonic() + self.timeout) if idempotent else None
        out: dict[int, Any] = {}
        todo = shards
        self._barrier(shards)
        while True:
            # The shared connection: these (stats, flush, ...) come after this
            # process's tells (a snapshot's release), as they were sent. A
            # shard whose breaker is open is not asked: CircuitOpen at once.
            futs = [self._refused(s) or _send(self.refs[s], op, None if payloads is None else payloads[s],
                                              self.timeout) for s in todo]
            failed: list[int] = []
            first: LightningError | None = None
            for s, r in zip(todo, map(_quiet, futs)):
                out[s] = r
                if not isinstance(r, LightningError):
                    continue
                if first is None or (isinstance(first, TransientError) and not isinstance(r, TransientError)):
                    first = r
                failed.append(s)
            if first is None:
                return {s: out[s] for s in shards}
            delay = next(backoff, None) if backoff is not None and isinstance(first, TransientError) else None
            if delay is None:
                self._gave_up(first)
                if partial and isinstance(first, (TransientError, RecoverableError)):
                    return {s: out[s] for s in shards}
                raise first
            self._on_retry(0, first, delay)       # type: ignore[arg-type]  # transient: retried
            time.sleep(delay)
            todo = failed

    def _write(self, ops: list[Op], sync: bool | None) -> None:
        self._check_open()
        if sync is not None and not isinstance(sync, bool):
            raise InvalidArgument(f"sync must be None or a bool, got {type(sync).__name__}")
        self._pipe.barrier()        # after every pipelined write of this handle, in order
        if not ops:
            return
        _, groups = self.ring.split_hashed(list(map(_op_key, ops)))
        if len(groups) == 1:
            (s,) = groups
            self._combiner.write(s, ops, bool(sync))     # with other threads' writes to s (combine.py)
        else:
            # Blind writes: a batch that met a transaction's intents (the
            # TransactionConflict of a prepare) is simply tried again.
            parts = {s: list(map(ops.__getitem__, pos.tolist())) for s, pos in groups.items()}
            backoff = Backoff(attempts=RETRY_ATTEMPTS * 4, base=RETRY_BASE / 10, cap=RETRY_CAP,
                              deadline=time.monotonic() + self.timeout)
            while True:
                try:
                    return self._two_phase(parts)
                except TransactionConflict:
                    delay = next(backoff, None)
                    if delay is None:
                        raise
                    self.retries += 1
                    time.sleep(delay)

    def _send_write(self, shard: int, ops: list[Op], sync: bool, token: list[Any] | None = None) -> None:
        """One "write" to *shard* with its token (a new one, or the token of
        an attempt that already went out), retried; combine.py sends these."""
        token = token or self.tokens.take(shard)
        try:
            self._ask_retry(shard, "write", [ops, sync, token])
        finally:
            self.tokens.done(shard, token)

    def note_durable(self, shards: Iterable[int], sent: int) -> None:
        """A synced request sent at *sent* (monotonic ns) was answered by each of *shards*."""
        durable = self.durable
        for s in shards:
            if durable[s] < sent:
                durable[s] = sent

    def _two_phase(self, parts: dict[int, list[Op]]) -> None:
        two_phase(self, parts)

    # --- single keys ------------------------------------------------------------------------
    def put(self, key: Any, value: Any, sync: bool | None = None, *, ttl: float | None = None,
            expire_at: float | None = None) -> None:
        if (sync is None and type(key) is bytes and type(value) is bytes and 0 < len(key) <= self._max_key
                and len(value) <= self._max_value and ttl is None and expire_at is None
                and self._pipelined and not self._closed):      # the common case, checked inline
            self._pipe.write(self.ring.shard_of(key), _VALUE, key, value, value)
        elif ttl is None and expire_at is None:
            self._single(_VALUE, self._limits.key(key), self._limits.value(value), sync)
        else:
            self._single(*self._limits.op(key, value, ttl, expire_at), sync)

    def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None) of *key*, or None when it
        is absent or expired (asked of the shard, after this handle's
        pipelined writes)."""
        self._check_open()
        key = self._limits.key(key)
        self._pipe.barrier()
        return self._get_entry(key, None)

    def _get_entry(self, key: bytes, seqs: Sequence[int] | None) -> tuple[bytes, float | None] | None:
        s = self.ring.shard_of(key)
        r = self._ask_retry(s, "get_entry", [key, None if seqs is None else seqs[s]])
        return None if r is None else (r[0], r[1])

    def _single(self, kind: int, key: bytes, value: bytes, sync: bool | None) -> None:
        if sync is None and self._pipelined and not self._closed:
            self._pipe.write(self.ring.shard_of(key), kind, key, value)
        else:
            self._write([(kind, key, value)], sync)

    def get(self, key: Any, default: Any = None, *, copy: bool = True) -> Any:
        """The value of *key*, or *default*. ``copy=False`` returns a
        memoryview into the shard's mapped data (no copy; valid for as long as
        it is held) when the read is served from shared memory, else a
        memoryview of the bytes that came back."""
        if type(key) is bytes and 0 < len(key) <= self._max_key and not self._closed and not self._pipe.live:
            # The hot path, inline: one hash picks the shard and probes its
            # published version (memtable segments, point indexes).
            h = key_hash(key)
            s = self._direct[h >> SLICE_SHIFT]
            r = self._readers[s if s >= 0 else self.ring.owner(h)]
            if r is not None:
                try:
                    v = r.get(key, None, copy, None, h)
                except (OSError, LightningError):
                    v = UNAVAILABLE
                if v is not UNAVAILABLE:
                    self.shared_reads += 1
                    if v is None:
                        return default
                    return v if copy or not isinstance(v, bytes) else memoryview(v)
        if self._closed:
            self._check_open()
        v = self._get(key, default, None, copy)
        return memoryview(v) if not copy and isinstance(v, bytes) and v is not default else v

    def _reader(self, shard: int) -> PublishedReader | None:
        r = self._readers[shard]
        if r is None and self._published is not None and not self._closed:
            now = time.monotonic()
            if now - self._reader_tried[shard] >= 1.0:      # at most one try a second while missing
                self._reader_tried[shard] = now
                try:
                    r = self._readers[shard] = PublishedReader(self._published[shard])
                except (OSError, LightningError):
                    return None
        return r

    def _shared(self, shard: int, op: str, arg: Any, *extra: Any) -> Any:
        """A read from the shard's published version; UNAVAILABLE: ask the
        shard (not serving, or damage met: the shard restores itself)."""
        r = self._reader(shard)
        if r is None:
            return UNAVAILABLE
        try:
            v = getattr(r, op)(arg, *extra)
        except (OSError, LightningError):
            return UNAVAILABLE
        if v is not UNAVAILABLE:
            self.shared_reads += 1
        return v

    def _incarnation(self, shard: int) -> int | None:
        """The incarnation the shard's published version is at (None: no reader)."""
        r = self._reader(shard)
        if r is None:
            return None
        try:
            return r.state()[0] or None
        except (OSError, LightningError):
            return None

    def _get(self, key: Any, default: Any, seqs: Sequence[int] | None, copy: bool = True,
             incs: Sequence[int | None] | None = None) -> Any:
        if type(key) is not bytes or not 0 < len(key) <= self._max_key:
            key = self._limits.key(key)
        s = self.ring.shard_of(key)
        if seqs is None and self._pipe.live:
            mine = self._pipe.mine(key, s)              # this process's write still in flight
            if mine is not None:
                v = visible(mine[0], mine[1])
                return default if v is None else v
        if seqs is None or (incs is not None and incs[s] is not None):
            # The hot path: the shard's published version (a snapshot: only its own engine's).
            r = self._readers[s] or self._reader(s)
            if r is not None:
                try:
                    v = r.get(key, None, copy) if seqs is None else r.get(key, seqs[s], copy, incs[s])
                except (OSError, LightningError):
                    v = UNAVAILABLE
                if v is not UNAVAILABLE:
                    self.shared_reads += 1
                    return default if v is None else v
        v = self._ask_retry(s, "get", [key, None if seqs is None else seqs[s]])
        return default if v is None else v

    def delete(self, key: Any, sync: bool | None = None) -> None:
        self._single(_DELETE, self._limits.key(key), b"", sync)

    def put_many(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], sync: bool | None = None) -> None:
        """Store every pair atomically (one batch; 2PC when it spans shards)."""
        pairs = items.items() if isinstance(items, Mapping) else items
        try:
            ops = self._limits.value_ops(pairs)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument(f"put_many takes a mapping or an iterable of (key, value) pairs: {exc}") from None
        self._write(ops, sync)

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        """Values in the order of *keys* (None for absent ones)."""
        self._check_open()
        return self._get_many(keys, None)

    def _get_many(self, keys: Iterable[Any], seqs: Sequence[int] | None,
                  incs: Sequence[int | None] | None = None) -> list[bytes | None]:
        keys, lens = self._limits.keys_and_lengths(keys)
        if not keys:
            return []
        # This process's writes still in flight, taken before the shards are
        # read: one answered meanwhile is then in what the shards return.
        pipe = self._pipe
        mine = ({i: w for i, k in enumerate(keys) if (w := pipe.mine(k)) is not None}
                if seqs is None and pipe.live else {})
        hashes, groups = self.ring.split_hashed(keys)
        parts: dict[int, tuple[list[int], list[bytes], Any, Any]] = {}
        for s, pos in groups.items():
            if len(groups) == 1:
                parts[s] = (list(range(len(keys))), keys, hashes, lens)
            else:
                at = pos.tolist()
                parts[s] = (at, list(map(keys.__getitem__, at)), hashes[pos], lens[pos])
        answers: dict[int, Any] = {}
        for s, (_, sub, subh, subl) in parts.items():
            if seqs is None:
                v = self._shared(s, "get_many", sub, None, None, subh, subl)
            elif incs is not None and incs[s] is not None:
                v = self._shared(s, "get_many", sub, seqs[s], incs[s], subh, subl)
            else:
                continue
            if v is not UNAVAILABLE:
                answers[s] = v
        ask = {s: [sub, None if seqs is None else seqs[s]] for s, (_, sub, _, _) in parts.items() if s not in answers}
        if ask:
            answers.update(self._ask_all("get_many", ask, idempotent=True))
        if len(parts) == 1:
            out = list(answers.popitem()[1])
        else:
            out = [None] * len(keys)
            for s, (at, _, _, _) in parts.items():
                list(map(out.__setitem__, at, answers[s]))
        for i, (kind, value) in mine.items():
            out[i] = visible(kind, value)
        return out

    def batch(self, sync: bool | None = None) -> Batch:
        self._check_open()
        return Batch(self, sync)  # type: ignore[arg-type]

    # --- ordered reads ----------------------------------------------------------------------
    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end (and *prefix*), in key order across
        shards, at most *limit*; read at one snapshot vector taken now."""
        rng = _scan_range(self._limits, start, end, prefix, reverse, limit)
        self._check_open()
        self._pipe.barrier()        # this handle's pipelined writes are in
        shared = self._shared_scan(rng, reverse)
        if shared is not None:
            return shared
        snap = self.snapshot()
        return ScanIter(self, rng, reverse, snap.seqs, snap)

    def _shared_scan(self, rng: tuple[bytes | None, bytes | None, int | None], reverse: bool,
                     seqs: Sequence[int] | None = None,
                     incs: Sequence[int | None] | None = None) -> Iterator[tuple[bytes, bytes]] | None:
        """The scan merged from every shard's published version (at *seqs*
        in engines *incs*, for a snapshot), or None when a shard does not
        serve it: then the workers are asked, a page at a time."""
        lo, hi, n = rng
        if (lo is not None and hi is not None and lo >= hi) or n == 0 or (incs is not None and None in incs):
            return None
        ways = len(self.refs)
        at = [(None, None)] * ways if seqs is None else [(q, i) for q, i in zip(seqs, incs or ())]
        first = first_chunk(n, ways)
        its = [self._shared(s, "scan_chunks", lo, hi, reverse, *at[s], first) for s in range(ways)]
        if any(it is UNAVAILABLE for it in its):
            return None
        # A key lives on one shard only: merge_chunks merges the shards'
        # runs a few hundred pairs at a time, in C.
        return _limited(chain.from_iterable(merge_chunks(its, reverse)), n)

    def _scan_at(self, rng: tuple[bytes | None, bytes | None, int | None], reverse: bool,
                 seqs: Sequence[int]) -> Iterator[tuple[bytes, bytes]]:
        start, end, limit = rng
        if (start is not None and end is not None and start >= end) or limit == 0:
            return iter(())
        page = SCAN_PAGE if limit is None else max(1, min(limit, SCAN_PAGE))
        its = [self._pages(s, start, end, reverse, seqs[s], page) for s in range(len(self.refs))]
        return _limited(chain.from_iterable(merge_chunks(its, reverse)), limit)

    def _pages(self, shard: int, start: bytes | None, end: bytes | None, reverse: bool, seq: int,
               page: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """The shard's pairs at *seq*, one page per list."""
        ref, timeout = self.refs[shard], self.timeout

        def ask(after: bytes | None) -> Future:
            return _send(ref, "scan", [start, end, reverse, seq, page, after], timeout)

        after: bytes | None = None
        fut = ask(after)
        while True:
            try:
                rows = fut.result()
            except TransientError:      # the same page again, at the same seq
                self.retries += 1
                rows = self._retry(lambda after=after: ask(after).result())
            if len(rows) >= page:       # prefetch the next page while this one is consumed
                after = rows[-1][0]
                fut = ask(after)
            if rows:                    # msgpack gives lists; the API yields tuples
                yield list(map(tuple, rows))
            if len(rows) < page:
                return

    def snapshot(self) -> ShardSnapshot:
        self._check_open()
        self._pipe.barrier()        # the snapshot covers this handle's pipelined writes
        return ShardSnapshot(self)

    # --- transactions (transaction.py, coordinator.py) -----------------------------------------------
    def _tx_view(self) -> TxView:
        self._check_open()
        self._pipe.barrier()        # the transaction reads this handle's pipelined writes
        return TxView(self)

    def _tx_commit(self, view: TxView | None, ops: list[Op], reads: list[bytes],
                   ranges: list[tuple[bytes | None, bytes | None]], serializable: bool, sync: bool | None) -> None:
        self._check_open()
        self._pipe.barrier()        # after every pipelined write of this handle, in order
        if view is None:
            commit_transaction(self, None, ops, reads, ranges, serializable, bool(sync))
            return
        snap = view.snap
        snap.check_unregistered()
        # The checks end the snapshot's registrations where they go; its
        # release then skips those shards (after a failure, it goes everywhere).
        try:
            snap.ended = commit_transaction(self, view.seqs, ops, reads, ranges, serializable, bool(sync),
                                            snap.ordered(), snap.token if snap.registered else None)
        except TransactionExpired:
            if not snap.registered:     # a shard stopped tracking: the next transaction registers
                self.tx_registered = (-1e9, [])
            raise

    # --- maintenance ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait for every pipelined write, then write the memtables to tables."""
        self._check_open()
        self._pipe.barrier()
        self._ask_all("flush", idempotent=True)

    def compact(self) -> None:
        self._check_open()
        self._pipe.barrier()
        self._ask_all("compact", idempotent=True)

    def checkpoint(self, path: str | os.PathLike[str], shards_file: bytes | None = None) -> dict[str, Any]:
        """Every shard into ``path/shard-NNN`` (not at one instant), plus
        *shards_file* (the caller's description) as ``path/SHARDS``."""
        self._check_open()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"checkpoint path must be a str or path, got {type(path).__name__}")
        if shards_file is not None and not isinstance(shards_file, bytes):
            raise InvalidArgument(f"shards_file must be bytes, got {type(shards_file).__name__}")
        target = os.path.abspath(os.fspath(path))
        check_target(OSFileSystem(), target)
        os.makedirs(target, exist_ok=True)
        self._pipe.barrier()
        results = self._ask_all("checkpoint", {s: [os.path.join(target, f"shard-{s:03d}")]
                                               for s in range(len(self.refs))})
        if shards_file is not None:
            with open(os.path.join(target, "SHARDS"), "wb") as f:
                f.write(shards_file)
                os.fsync(f.fileno())
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        return {"path": target, "shards": [results[s] for s in range(len(self.refs))]}

    def stats(self) -> dict[str, Any]:
        """{"shards": [per-shard stats], ...their totals (``shard_totals``)}. A
        shard that does not answer (its worker is being restarted) is
        ``{"shard_id": i, "error": "..."}``, left out of the totals: stats
        are for watching such a shard too."""
        self._check_open()
        per = self._ask_all("stats", idempotent=True, partial=True)
        shards = [{"shard_id": s, "error": f"{type(r).__name__}: {r}"} if isinstance(r, LightningError) else r
                  for s, r in sorted(per.items())]
        out: dict[str, Any] = {"shards": shards}
        out.update(shard_totals([s for s in shards if "error" not in s]))
        out["pipeline"] = self._pipe.stats()
        out["write_combining"] = self._combiner.stats()
        out["shared_reads"] = self.shared_reads
        return out

    def verify(self) -> dict[str, int]:
        self._check_open()
        out: dict[str, int] = {}
        for r in self._ask_all("verify", idempotent=True).values():
            for k, v in r.items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        """Wait for every pipelined write (raising the first error one met,
        after closing all the same), release this handle's snapshots and its
        connections to the shards (the shard actors run on)."""
        if self._closed:
            return
        try:
            self._pipe.close()
        finally:
            settle_abandoned(self, force=True)
            settle_forgets(self, True)
            for s in list(self._snapshots):
                s.close()
            self._closed = True
            for ref in self.refs:
                ref.disconnect()
            self.gate.close()
            for i, r in enumerate(self._readers):
                if r is not None:
                    self._readers[i] = None
                    r.close()

    @property
    def closed(self) -> bool:
        return self._closed
