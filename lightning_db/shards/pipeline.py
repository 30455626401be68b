"""Pipelined writes: ``put`` and ``delete`` return before the shard answers.

Which thread runs what (all in the caller's process): the caller's threads
append writes to the open run of their shard (the ops of one message, up to
``BATCH_OPS`` ops or ``BATCH_BYTES`` bytes, then the next run starts); each
run also keeps the newest of its writes per key, and the runs buffered or
in flight make the overlay, so this process reads its own writes at once
(``mine``). One sender thread per shard, started on first use, sends the
oldest runs, each as one "write" (one WAL record on the shard), keeping up
to ``DEPTH`` of them unanswered (so the shard has the next run queued while
it applies one), and settles the answers in the order the runs were sent. A
run whose answer is a transient error is sent again through the router's
retried, breaker-guarded ask until the router's timeout has passed (a
worker restart never drops writes). Writes to a shard stay in the order
they were made, even across a worker restart: a run sent while the one
before it is unanswered names that one (``after``) and the shard applies it
only once that one is settled there (applied, or given up by this writer),
else answers ``OutOfOrder``; such a run is sent again only after the one
before it is settled, and then without ``after``. Once answered, a run
leaves the overlay whole. Batching is natural: while runs are on the wire
the next one fills.

A process forked from the caller (os.fork) starts with empty runs: the
sender threads did not come along, and what the parent queued is the
parent's to send.

``barrier()`` waits until every buffer is empty and nothing is in flight,
then raises the first error any pipelined write met (once). The router calls
it before batches, scans, snapshots, flush, compaction, checkpoints and
close, and before a ``sync=True`` write. A fatal error (the database shut
down) is raised by every later ``put`` at once as well.

Backpressure: a caller that writes faster than a shard applies waits while
that shard has more than ``MAX_BUFFERED_BYTES`` buffered.

Every "write" this process sends, pipelined or not, carries a write token
from ``WriteTokens`` (storage/dedupe.py): every attempt of one write has the
same token, so a retry of a write the shard had applied before its answer
was lost (the worker killed after applying it, a deadline passed while it
was queued) is not applied a second time, after a newer write of the same
key from another process.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import BackgroundError, DatabaseClosed, FatalError, LightningError, OutOfOrder, TransientError
from ..storage.dedupe import new_writer_id
from ..storage.format import Kind
from .resolve import _failed, _send

if TYPE_CHECKING:
    from .router import ShardRouter

__all__ = ["BATCH_BYTES", "BATCH_OPS", "MAX_BUFFERED_BYTES", "TokenSource", "WritePipeline"]

DEPTH = 2                          # runs sent to a shard and not yet answered, at most
BATCH_OPS = 4096
BATCH_BYTES = 1 << 20
MAX_BUFFERED_BYTES = 16 << 20
_OVERHEAD = 32                     # bytes charged per op beside key and value
_VALUE, _DELETE = int(Kind.VALUE), int(Kind.DELETE)
_TOMBSTONE = (_DELETE, b"")


class TokenSource:
    """Write tokens [writer, n, lo] of this process, per shard (storage/dedupe.py):
    ``n`` counts the writes sent to the shard, ``lo`` is the smallest ``n``
    still in flight. Thread-safe; a forked child gets a writer id of its own."""

    def __init__(self, shards: int) -> None:
        self._lock = threading.Lock()
        self._shards = shards
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self.writer = new_writer_id()
        self._next = [0] * self._shards
        self._in_flight: list[set[int]] = [set() for _ in range(self._shards)]

    def take(self, shard: int) -> list[Any]:
        """The token of a new write to *shard*; ``done`` it once answered (or given up)."""
        if self._pid != os.getpid():        # before the lock: a fork may have copied it held
            self._lock = threading.Lock()
            self._reset()
        with self._lock:
            self._next[shard] += 1
            n = self._next[shard]
            live = self._in_flight[shard]
            live.add(n)
            return [self.writer, n, min(live)]

    def done(self, shard: int, token: list[Any]) -> None:
        with self._lock:
            if token[0] == self.writer:
                self._in_flight[shard].discard(token[1])


def _ask_once(router: "ShardRouter", shard: int, op: str, payload: Any) -> Future:
    """One attempt of an ask through the shard's breaker, not waited for:
    its future (failed at once when the breaker or the mailbox refuses it).
    The breaker hears how it ended; an ``OutOfOrder`` answer counts as a
    healthy shard."""
    breaker = router.breakers[shard]
    try:
        breaker.before_call()
    except LightningError as exc:
        return _failed(exc)
    fut = _send(router.refs[shard], op, payload, router.attempt_timeout)

    def ended(f: Future) -> None:
        exc = f.exception()
        if exc is None or isinstance(exc, OutOfOrder):
            breaker.on_success()
        else:
            breaker.on_failure(exc)
    fut.add_done_callback(ended)
    return fut


class _Run:
    """Pipelined writes to one shard that go out as one message: the ops in
    order as three columns (kinds, keys, values: a put allocates no
    container the caller's garbage collector would track), and the newest
    of them for each key (the overlay's part: the value of a plain put, the
    (kind, value) pair of any other write)."""

    __slots__ = ("kinds", "keys", "nbytes", "newest", "vals")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.keys: list[bytes] = []
        self.vals: list[bytes] = []
        self.newest: dict[bytes, bytes | tuple[int, bytes]] = {}
        self.nbytes = 0

    def columns(self) -> list[Any]:
        """The ops as a "write" message carries them: [kinds, keys, values]
        (``ShardActor._ops``)."""
        return [bytes(self.kinds), self.keys, self.vals]


_LIVE: "weakref.WeakSet[WritePipeline]" = weakref.WeakSet()


def _forked() -> None:
    """In a child process (os.fork): the sender threads did not come along,
    and what the parent had queued is the parent's to send."""
    for pipe in list(_LIVE):
        pipe._reset()


os.register_at_fork(after_in_child=_forked)


class WritePipeline:
    def __init__(self, router: "ShardRouter", shards: int) -> None:
        self._router = router
        self._shards = shards
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        shards = self._shards
        self._lock = threading.Lock()
        self._wake = [threading.Condition(self._lock) for _ in range(shards)]
        self._idle = threading.Condition(self._lock)
        self._runs: list[list[_Run]] = [[] for _ in range(shards)]      # buffered, oldest first
        self._flying: list[list[_Run]] = [[] for _ in range(shards)]     # sent, not answered
        # Per shard, the newest-first ``newest`` dicts of its buffered and
        # flying runs: replaced whole (under the lock) when a run starts or
        # is answered, read without the lock (the overlay).
        self._views: list[tuple[dict[bytes, bytes | tuple[int, bytes]], ...]] = [()] * shards
        self._bytes = [0] * shards
        self._threads: list[threading.Thread | None] = [None] * shards
        self._error: LightningError | None = None
        self._closing = False
        # Writes of this process not yet answered (0: reads need not look
        # at the overlay); changed under the lock, read without it.
        self.live = 0
        self.batches = 0
        self.ops = 0

    def _publish(self, shard: int) -> None:
        runs = self._flying[shard] + self._runs[shard]
        self._views[shard] = tuple(r.newest for r in reversed(runs))

    def mine(self, key: bytes, shard: int | None = None) -> tuple[int, bytes] | None:
        """(kind, value) of this process's newest write of *key* still in
        flight (its shard *shard*, where the caller knows it), or None."""
        for views in (self._views if shard is None else (self._views[shard],)):
            for newest in views:
                w = newest.get(key)
                if w is not None:
                    return (_VALUE, w) if type(w) is bytes else w
        return None

    def write(self, shard: int, kind: int, key: bytes, value: bytes, newest: Any = None) -> None:
        """Queue one write to *shard*. *newest*: its entry in the overlay
        where the caller has it (a plain put of bytes: the value itself)."""
        size = len(key) + len(value) + _OVERHEAD
        with self._lock:
            if self._closing:
                raise DatabaseClosed("the database is closed")
            if isinstance(self._error, FatalError):
                raise self._error
            while self._bytes[shard] > MAX_BUFFERED_BYTES and self._error is None:
                self._idle.wait()
            runs = self._runs[shard]
            run = runs[-1] if runs else None
            if run is None or len(run.keys) >= BATCH_OPS or run.nbytes >= BATCH_BYTES:
                run = _Run()
                runs.append(run)
                self._publish(shard)
            run.kinds.append(kind)
            run.keys.append(key)
            run.vals.append(value)
            # A plain put's value alone (mine() reads a bytes entry as one).
            run.newest[key] = newest if newest is not None else (
                value if kind == _VALUE and type(value) is bytes else
                _TOMBSTONE if kind == _DELETE and not value else (kind, value))
            run.nbytes += size
            self._bytes[shard] += size
            self.live += 1
            if self._threads[shard] is None:
                t = threading.Thread(target=self._send_loop, args=(shard,), daemon=True,
                                     name=f"ldb-pipeline-{shard}")
                self._threads[shard] = t
                t.start()
            elif len(run.keys) == 1 and len(runs) == 1 and not self._flying[shard]:
                self._wake[shard].notify()

    def barrier(self) -> None:
        """Wait for every pipelined write to be answered; raise the first
        error one of them met."""
        with self._lock:
            while self.live:
                self._idle.wait()
            err, self._error = self._error, None
            if isinstance(err, FatalError):
                self._error = err             # the database stays unusable
        if err is not None:
            raise err

    def pending(self) -> int:
        with self._lock:
            return self.live

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"buffered_ops": sum(len(r.keys) for runs in self._runs for r in runs),
                    "in_flight": sum(map(bool, self._flying)), "batches_sent": self.batches, "ops_sent": self.ops,
                    "overlay_keys": sum(len(d) for views in self._views for d in views)}

    def close(self) -> None:
        """Barrier, then stop the sender threads (also when the barrier
        raises, after which the error is raised)."""
        try:
            self.barrier()
        finally:
            with self._lock:
                self._closing = True
                for c in self._wake:
                    c.notify_all()
            for t in self._threads:
                if t is not None:
                    t.join(30)

    def _closing_now(self) -> bool:
        return isinstance(self._error, FatalError)

    def _send_loop(self, shard: int) -> None:
        """Send the shard's runs in order, up to ``DEPTH`` unanswered at once,
        and settle each answer in order (see the module docstring)."""
        wake, runs = self._wake[shard], self._runs[shard]
        tokens = self._router.tokens
        flying: deque[tuple[_Run, list[Any], Future]] = deque()
        while True:
            with self._lock:
                while not flying and not runs and not self._closing:
                    wake.wait()
                if not flying and not runs:
                    return
                launch = []
                while runs and len(flying) + len(launch) < DEPTH:
                    run = runs.pop(0)
                    self._flying[shard].append(run)
                    self._bytes[shard] -= run.nbytes
                    launch.append(run)
                if launch:
                    self._idle.notify_all()       # writers held back by the buffer limit
            for run in launch:
                token = tokens.take(shard)
                # Applied only after the run sent just before it, if that one
                # is still unanswered (the shard checks: OutOfOrder otherwise).
                payload = [run.columns(), False, token] + ([flying[-1][1][1]] if flying else [])
                flying.append((run, token, _ask_once(self._router, shard, "write", payload)))
            run, token, first = flying.popleft()
            error = self._settle(shard, run, token, first)
            tokens.done(shard, token)
            with self._lock:
                self._flying[shard].remove(run)
                self._publish(shard)
                self.live -= len(run.keys)
                if error is not None and self._error is None:
                    self._error = error
                self.batches += 1
                self.ops += len(run.keys)
                self._idle.notify_all()

    def _settle(self, shard: int, run: _Run, token: list[Any], first: Future) -> LightningError | None:
        """Wait for the first attempt of *run*; if it met a transient error,
        send the run again until it is answered or the router's timeout has
        passed. The runs before it are settled by now, so a resend needs no
        order check. Returns the error the run ended with, or None."""
        try:
            first.result()
            return None
        except TransientError:
            pass
        except LightningError as exc:
            return exc
        except BaseException as exc:  # noqa: BLE001 - never leave a barrier waiting
            return BackgroundError(f"pipelined write to shard {shard} failed: {exc!r}")
        payload = [run.columns(), False, token]
        deadline = time.monotonic() + self._router.timeout
        while True:
            try:
                self._router._ask_retry(shard, "write", payload)
                return None
            except TransientError as exc:
                # A worker being restarted: the batch was not applied (or
                # was, and writing it again sets the same values). Keep
                # trying for the router's whole timeout, not only its
                # retry attempts: nobody can send these writes again.
                if time.monotonic() < deadline and not self._closing_now():
                    time.sleep(0.05)
                    continue
                return exc
            except LightningError as exc:
                return exc
            except BaseException as exc:  # noqa: BLE001 - never leave a barrier waiting
                return BackgroundError(f"pipelined write to shard {shard} failed: {exc!r}")
