"""Plain SETs without a thread: one message per shard per event-loop turn.

Runs in a front-end process, on its event loop. A plain SET (``SET key
value``, no options, not inside MULTI), alone or in a pipelined run of
them (``set_many``), from any connection is queued for its key's shard; at
the end of a loop turn every queue of a shard with no message in flight goes
out as one "write" (one WAL record on the shard, with a write token; its ops
as columns, kinds bytes, keys and values, as pipelined runs send theirs)
straight through the shard's mailbox, and each connection is told (a
callback on the loop, no future or task) when the shard acknowledged.
Concurrent clients' SETs thus share messages, and none of them costs a hop
to a worker thread and back. A message writes each key once, with the
value of its last SET in the message: the shard applies the message as one
batch that readers see whole or not at all, so the earlier values would
never be read (one key written by 50 pipelining clients: 1.6x the SETs a
second; bench/RESULTS.md, fourteenth session).

When connections write pipelined runs (an
answered message carried LINGER_FROM SETs or more, two or more a call),
the next message waits for twice as many SETs (LINGER_UPTO at most), or
the last round trip (LINGER_MAX at most): a message costs both processes
far more than a SET in it, so fewer, larger messages serve more SETs on
busy cores (bench/RESULTS.md, tenth session); a lone client's SETs never
wait, and neither do single SETs from many connections: with one SET a
call, the connections just answered are what the next message would wait
for, and waiting for them left the cores idle (fourteenth session,
``redis-benchmark`` with 50, 100 and 200 connections: 1.04x, 1.12x and
0.97x the SETs a second without that wait and without a pause that came
before small flushes; bench/RESULTS.md).
The wait only pays where the cores are short: it trades each SET's
latency for fewer messages. So it applies only while the loop thread
waits for a CPU (``CoreGauge``: the kernel's run-queue wait of the thread,
CONTENDED_AT of its run time or more over the last GAUGE_S); with cores to
spare every SET goes at the end of the loop turn that read it (thirteenth
session, 16 CPUs: 1.0-1.3x the SETs a second with 50 clients, by shape).

The messages leave on the loop thread's own connection to each shard (a
direct client, mailbox/direct.py: the shard's lane, mailbox/lane.py, a Unix
socket with no zmq I/O thread on either side; 1.2x the unpipelined SETs a
second of a DEALER there, bench/RESULTS.md, eighteenth session) whose
socket the loop watches (``add_reader``): no hop through the mailbox's I/O
thread either way. A client closed or given up (a lane whose shard went
away) stops being watched before its socket closes. A
timer looks at them every ``LOST_POLL`` seconds while any is out, for a
dropped connection or a passed deadline. Where the mailbox has no direct
client to spare, the message is an ordinary ask whose answer comes back
through ``call_soon_threadsafe``.

A write that meets a transient error (a worker being restarted, a
deadline) is handed to a worker thread, which retries it with the same
token as the router retries its writes (so it is applied once); any other
error is each SET's error reply. A front end whose database is not sharded
has no SetWriter: its SETs take the ordinary path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any

from ..errors import LightningError, TransientError
from ..mailbox.direct import LOST_POLL, DirectClient, DirectFuture
from ..mailbox.lane import LaneClient

__all__ = ["SetWriter"]

log = logging.getLogger("lightning_db.server")

MAX_SETS = 4096               # SETs in one message
LINGER_FROM = 4               # an answered message of this many SETs or more (two or more a call): the next may wait
LINGER_MAX = 0.002            # seconds a held message waits at most (and at most its last round trip)
LINGER_UPTO = 64              # SETs a held message waits for at most (past that, waiting idles the shard)
CONTENDED_AT = 0.1            # run-queue wait per second run from which the loop thread counts as short of CPU
GAUGE_S = 0.1                 # seconds over which the CoreGauge compares its counters
# A message's ops as columns (what the shard's "write" takes, actor.py):
# [kinds (one byte per op; all plain values here), keys, values].
Ops = list[Any]
Answered = Callable[[BaseException | None], None]     # told a group's outcome: None, or its error
Done = Callable[[list[BaseException | None] | None], None]   # told a run's outcome (``set_many``)
Group = tuple[list[bytes], list[bytes], Answered]      # keys, values, whom to tell
Direct = DirectClient | LaneClient                      # a direct client the loop reads


class _Run:
    """A pipelined run of SETs over several shards: its outcome once every
    shard's group answered."""

    __slots__ = ("owners", "left", "done", "errors")

    def __init__(self, owners: list[int], groups: int, done: Done) -> None:
        self.owners, self.left, self.done = owners, groups, done
        self.errors: dict[int, BaseException] = {}

    def answered(self, shard: int, exc: BaseException | None) -> None:
        if exc is not None:
            self.errors[shard] = exc
        self.left -= 1
        if not self.left:
            errors = self.errors
            self.done([errors.get(s) for s in self.owners] if errors else None)


class CoreGauge:
    """Whether the thread that made it waits for a CPU: the kernel's counters
    of its time on a CPU and its time runnable but waiting for one
    (``/proc/<pid>/task/<tid>/schedstat``, nanoseconds), compared every
    GAUGE_S at most. Where they cannot be read (not Linux, no schedstat),
    the cores always count as short, and the writer batches as much as it
    can."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path or f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"
        self._last = self._read()
        self._at = time.monotonic()
        self.short = True

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self._path, "rb") as f:
                run, wait = f.read().split()[:2]
            return int(run), int(wait)
        except (OSError, ValueError):
            return None

    def busy(self, now: float) -> bool:
        """Whether the cores are short, as of the last GAUGE_S (*now*: the
        monotonic clock)."""
        if self._last is not None and now - self._at >= GAUGE_S:
            counters = self._read()
            if counters is not None:
                run, wait = counters[0] - self._last[0], counters[1] - self._last[1]
                if run > 0:
                    self.short = wait >= CONTENDED_AT * run
                self._last, self._at = counters, now
        return self.short


class SetWriter:
    def __init__(self, router: Any, loop: asyncio.AbstractEventLoop, pool: Executor) -> None:
        self._router = router
        self._loop = loop
        self._pool = pool
        # shard -> queued groups: the SETs of one call for that shard, whom to tell each
        self._pending: dict[int, list[Group]] = {}
        self._in_flight: set[int] = set()      # shards with a message out
        self._scheduled = False
        # shard -> (answer, ops, token, whom to tell, SETs carried) of a message sent directly
        self._direct: dict[int, tuple[DirectFuture, Ops, list[Any], list[Answered], int]] = {}
        self._watched: dict[int, Direct] = {}     # fd -> the direct client the loop reads there
        self._timer: asyncio.TimerHandle | None = None
        self._queued: dict[int, int] = {}          # shard -> SETs queued
        self._sent_at: dict[int, float] = {}       # shard -> when its message in flight left
        self._held: dict[int, tuple[int, asyncio.TimerHandle]] = {}   # shard -> (SETs awaited, timer)
        config = router.config
        self._max_key, self._max_value = config.max_key_size, config.max_value_size
        self.cores = CoreGauge()                # made on the loop thread: whether it waits for a CPU
        self.holds = 0
        self.flushes = 0
        self.short = 0                          # flushes that found the cores short
        self.messages = 0
        self.sets = 0

    def plain(self, argv: list[bytes]) -> bool:
        """Whether *argv* is a SET this writer takes (valid key and value
        sizes; ``ready`` says whether it may take one now)."""
        return (len(argv) == 3 and (argv[0] == b"SET" or argv[0] == b"set" or argv[0].lower() == b"set")
                and 0 < len(argv[1]) <= self._max_key and len(argv[2]) <= self._max_value)

    def ready(self) -> bool:
        """Whether SETs may go this way now (no pipelined write of this
        process in flight, which a SET must not overtake)."""
        return not self._router._pipe.live

    def set_one(self, key: bytes, value: bytes, done: Answered) -> None:
        """Write one key; *done* is called on the loop with None once its
        shard acknowledged, else with the error its write met."""
        self._queue(self._router.ring.shard_of(key), [key], [value], done)

    def set_many(self, keys: list[bytes], vals: list[bytes], done: Done) -> None:
        """Write each key with its value, in order (the later SET of a key
        wins). *done* is called on the loop once every shard involved
        answered: with None when every SET was written, else with each
        SET's None or the error its shard's write met."""
        n = len(keys)
        owners = self._router.ring.shards_list(keys)
        first = owners[0]
        if owners.count(first) == n:            # one shard: one group
            self._queue(first, keys, vals, lambda exc: done(None if exc is None else [exc] * n))
            return
        groups: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for s, k, v in zip(owners, keys, vals):
            group = groups.get(s)
            if group is None:
                groups[s] = ([k], [v])
            else:
                group[0].append(k)
                group[1].append(v)
        run = _Run(owners, len(groups), done)
        for s, group in groups.items():
            self._queue(s, *group, partial(run.answered, s))

    def _queue(self, shard: int, keys: list[bytes], vals: list[bytes], done: Answered) -> None:
        self._pending.setdefault(shard, []).append((keys, vals, done))
        queued = self._queued[shard] = self._queued.get(shard, 0) + len(keys)
        held = self._held.get(shard)
        if held is not None:
            if queued < held[0]:
                return
            self._release(shard)
        else:
            self._schedule()

    def _flush(self) -> None:
        self._scheduled = False
        self.flushes += 1
        self.short += self.cores.busy(time.monotonic())
        for shard in [s for s in self._pending if s not in self._in_flight and s not in self._held]:
            self._send(shard, self._take(shard))

    def _release(self, shard: int) -> None:
        held = self._held.pop(shard, None)
        if held is not None:
            held[1].cancel()
        self._schedule()

    def _schedule(self) -> None:
        """Flush the queues at the end of this loop turn (once however often asked)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _take(self, shard: int) -> list[Group]:
        """The groups queued for *shard* that fit one message of MAX_SETS
        SETs (at least one group; the rest wait)."""
        items = self._pending.pop(shard, [])
        n = 0
        for i, (keys, _, _) in enumerate(items):
            n += len(keys)
            if n > MAX_SETS and i:
                self._pending[shard] = items[i:]
                self._queued[shard] -= n - len(keys)
                return items[:i]
        self._queued[shard] = 0
        return items

    def _send(self, shard: int, items: list[Group]) -> None:
        router = self._router
        self._in_flight.add(shard)
        self._sent_at[shard] = self._loop.time()
        if len(items) == 1:
            keys, vals, _ = items[0]
        else:
            keys = [k for group in items for k in group[0]]
            vals = [v for group in items for v in group[1]]
        n = len(keys)
        if n > 1:
            # The last SET of a key wins: the message is one batch, which no
            # reader sees a part of, so the earlier values of a key in it
            # would never be read (as execute_sets does on the thread path).
            latest = dict(zip(keys, vals))
            if len(latest) < n:
                keys, vals = list(latest), list(latest.values())
        ops: Ops = [b"\x01" * len(keys), keys, vals]        # every op a plain value (kind 1)
        tell = [f for _, _, f in items]
        token = router.tokens.take(shard)
        self.messages += 1
        self.sets += n
        try:
            cf = router.refs[shard].ask_here("write", [ops, False, token], router.attempt_timeout)
        except LightningError as exc:
            self._finish(shard, ops, token, tell, n, exc)
            return
        if isinstance(cf, DirectFuture):
            self._direct[shard] = (cf, ops, token, tell, n)
            self._watch(cf.client)
            return
        cf.add_done_callback(self._on_answer(shard, ops, token, tell, n))

    # --- messages sent directly (the loop reads their answers) ------------------------------
    def _watch(self, direct: Direct) -> None:
        fd = direct.fileno()
        if self._watched.get(fd) is not direct:
            self._loop.add_reader(fd, self._pump, direct)
            self._watched[fd] = direct
        if self._timer is None:
            self._timer = self._loop.call_later(LOST_POLL, self._tick)
        if direct.readable():   # zmq's descriptor is edge-triggered: an answer may be in already
            self._pump(direct)

    def _pump(self, direct: Direct) -> None:
        direct.pump()
        for shard, (answer, ops, token, tell, n) in list(self._direct.items()):
            if answer.client is direct and answer.done():
                del self._direct[shard]
                self._finish(shard, ops, token, tell, n, answer.exception())
        if direct.closed:
            self._unwatch(direct)

    def _unwatch(self, direct: Direct) -> None:
        """Stop reading a closed direct client (before its descriptor is
        closed: a lane's closes with the client, after this)."""
        for fd, d in list(self._watched.items()):
            if d is direct:
                self._loop.remove_reader(fd)
                del self._watched[fd]
        direct.close()

    def _tick(self) -> None:
        self._timer = None
        for direct in list(self._watched.values()):
            self._pump(direct)
        if self._direct and self._timer is None:
            self._timer = self._loop.call_later(LOST_POLL, self._tick)

    def close(self) -> None:
        """Stop watching the direct clients' sockets (the loop thread, before
        the database closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, timer in self._held.values():
            timer.cancel()
        self._held.clear()
        for fd in self._watched:
            self._loop.remove_reader(fd)
        self._watched.clear()

    def _on_answer(self, shard: int, ops: Ops, token: list[Any], tell: list[Answered],
                   n: int) -> Callable[[Future[Any]], None]:
        def done(cf: Future[Any]) -> None:          # the mailbox's I/O thread
            exc = cf.exception()
            self._loop.call_soon_threadsafe(self._finish, shard, ops, token, tell, n, exc)
        return done

    def _finish(self, shard: int, ops: Ops, token: list[Any], tell: list[Answered], n: int,
                exc: BaseException | None) -> None:
        """A message answered (*n*: the SETs it carried)."""
        if isinstance(exc, TransientError):
            # Retried in a worker thread with the same token, as any write of the router.
            retry = self._loop.run_in_executor(self._pool, self._router._send_write, shard, ops, False, token)
            retry.add_done_callback(lambda f: self._answered(shard, tell, f.exception()))
            return
        self._router.tokens.done(shard, token)
        self._answered(shard, tell, exc, n if exc is None else 0)

    def _answered(self, shard: int, tell: list[Answered], exc: BaseException | None,
                  sets: int = 0) -> None:
        self._settle(tell, exc)
        self._in_flight.discard(shard)
        if shard not in self._pending:
            return
        # What queued up meanwhile goes at the end of this loop turn, as one
        # message with the SETs of the connections read in the same turn;
        # after a message of pipelined runs (LINGER_FROM SETs or more, two
        # or more a call), it waits for twice as many (LINGER_UPTO at most),
        # or as long as that message's round trip (LINGER_MAX at most):
        # fewer, larger messages while the cores are short (CoreGauge).
        target = min(2 * sets, LINGER_UPTO)
        if (sets >= LINGER_FROM and sets >= 2 * len(tell) and self._queued.get(shard, 0) < target
                and shard not in self._held and self.cores.busy(time.monotonic())):
            now = self._loop.time()
            wait = min(LINGER_MAX, now - self._sent_at.get(shard, now))
            self.holds += 1
            self._held[shard] = (target, self._loop.call_later(wait, self._release, shard))
            return
        self._schedule()

    @staticmethod
    def _settle(tell: list[Answered], exc: BaseException | None) -> None:
        for answered in tell:
            try:
                answered(exc)
            except Exception:  # noqa: BLE001 - one connection's failure must not strand the others
                log.exception("telling a SET's outcome failed")

    def reset_stats(self) -> None:
        self.messages = self.sets = self.flushes = self.short = self.holds = 0

    def stats(self) -> dict[str, int]:
        """Counters since start (or RESETSTAT): messages sent and the SETs
        they carried, flushes and those that found the cores short, and
        holds."""
        return {"messages": self.messages, "sets": self.sets, "flushes": self.flushes, "short": self.short,
                "holds": self.holds}
