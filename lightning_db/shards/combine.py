"""Write combining: concurrent acknowledged writes to one shard share a message.

Runs in the caller's process, on the threads that call ``put(sync=...)``,
``delete(sync=...)``, ``put_many`` or a single-shard ``batch``. The first
thread to write to a shard while nothing is in flight to it becomes the
leader: it takes every write queued for that shard (up to ``MAX_OPS`` ops
and ``MAX_BYTES``), sends them as one "write" (one WAL record, one token,
one fsync when any of them asked for one) and wakes the others with the
outcome. Threads that arrive while a write is in flight queue up and the
next leader sends them together: group commit across threads. A lone
writer pays nothing extra but a lock. (A server front end runs each
connection's request on a pool thread, so concurrent SETs of many
connections reach a shard as one message.)

A process forked from the caller (os.fork) starts with an empty combiner:
the leader threads did not come along, and what the parent had queued is
the parent's to send (the lock, maybe held by one of them, is made anew).

Each write still applies atomically; the writes of one combined message
are applied together, in queue order, and all fail together when the
message fails (an error of the shard, not of one write: the ops were
validated by the router before they were queued).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BYTES", "MAX_OPS", "WriteCombiner"]

MAX_OPS = 4096
MAX_BYTES = 1 << 20
_OVERHEAD = 32

Op = tuple[int, bytes, bytes]


class _Entry:
    __slots__ = ("ops", "sync", "done", "error")

    def __init__(self, ops: list[Op], sync: bool) -> None:
        self.ops = ops
        self.sync = sync
        self.done = False
        self.error: BaseException | None = None


_LIVE: "weakref.WeakSet[WriteCombiner]" = weakref.WeakSet()


def _forked() -> None:
    for combiner in list(_LIVE):
        combiner._reset()


os.register_at_fork(after_in_child=_forked)


class WriteCombiner:
    """Per shard: a queue of writes waiting and whether one is in flight.
    *send(shard, ops, sync)* delivers one combined write (retried as the
    router retries writes)."""

    def __init__(self, shards: int, send: Callable[[int, list[Op], bool], Any]) -> None:
        self._send = send
        self._shards = shards
        self._reset()
        self.messages = 0            # combined writes sent (stats)
        self.writes = 0              # writes they carried
        _LIVE.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queues: list[list[_Entry]] = [[] for _ in range(self._shards)]
        self._busy = [False] * self._shards

    def write(self, shard: int, ops: list[Op], sync: bool) -> None:
        entry = _Entry(ops, sync)
        cond, queue = self._cond, self._queues[shard]
        with cond:
            queue.append(entry)
        while True:
            with cond:
                while not entry.done and self._busy[shard]:
                    cond.wait()
                if entry.done:
                    if entry.error is not None:
                        raise entry.error
                    return
                self._busy[shard] = True      # this thread sends the next message
                batch = _take(queue)          # its own write, unless earlier ones fill it
            error: BaseException | None = None
            try:
                ops = batch[0].ops if len(batch) == 1 else [op for e in batch for op in e.ops]
                self._send(shard, ops, any(e.sync for e in batch))
            except BaseException as exc:  # noqa: BLE001 - handed to every writer of the batch
                error = exc
            with cond:
                for e in batch:
                    e.done = True
                    e.error = error
                self._busy[shard] = False
                self.messages += 1
                self.writes += len(batch)
                cond.notify_all()

    def stats(self) -> dict[str, int]:
        return {"combined_messages": self.messages, "combined_writes": self.writes}


def _take(queue: list[_Entry]) -> list[_Entry]:
    """The writes at the head of *queue* that fit one message (at least one)."""
    n = ops = nbytes = 0
    for e in queue:
        size = sum(len(op[1]) + len(op[2]) + _OVERHEAD for op in e.ops)
        if n and (ops + len(e.ops) > MAX_OPS or nbytes + size > MAX_BYTES):
            break
        n += 1
        ops += len(e.ops)
        nbytes += size
    batch = queue[:n]
    del queue[:n]
    return batch
