"""Write tokens: a retried write is applied once.

Runs in the shard process, under the engine's write lock. A caller that
may send a write again (the shard router retries a write whose answer was
lost: a worker killed after applying it, a deadline passed while it was
queued) tags it with a token ``(writer, n, lo)``:

* ``writer``: 12 bytes naming one router instance: its pid (4 bytes,
  big-endian) and 8 random bytes;
* ``n``: the writer's number for this write on this shard (1, 2, ...);
  every attempt of one write carries the same ``n``;
* ``lo``: the smallest ``n`` the writer still has in flight to this shard;
  every write below it has been answered, so it will never be sent again.

The engine asks ``seen`` before it applies a tagged write and answers a
duplicate without writing anything; otherwise the token goes into the
write's WAL record (``WalOp.TOKENED``) and ``add`` remembers it. So a
duplicate is recognised across worker restarts: recovery rebuilds the
state from the WALs it replays, and every new WAL starts with a
``WalOp.TOKENS`` record holding the whole state (recovery and memtable
rotation write it), because the WALs that held the tokens are unlinked
once their memtables are flushed.

The state stays small: per writer, the numbers at or above its ``lo``
(its writes in flight), and writers whose process is gone are dropped
(a process that no longer exists sends nothing again) when a new WAL
starts. ``MAX_WRITERS`` bounds the table; past it the writers not heard
from for longest are dropped first.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import psutil

from .wal import encode_tokens

__all__ = ["MAX_WRITERS", "WRITER_ID_BYTES", "WriteTokens", "new_writer_id", "writer_pid"]

MAX_WRITERS = 65536
WRITER_ID_BYTES = 12


def new_writer_id() -> bytes:
    """A writer id for this process: its pid and 8 random bytes."""
    return struct.pack(">I", os.getpid() & 0xFFFFFFFF) + os.urandom(8)


def writer_pid(writer: bytes) -> int:
    return struct.unpack_from(">I", writer)[0]


class _Writer:
    __slots__ = ("lo", "applied", "tick")

    def __init__(self, lo: int, tick: int) -> None:
        self.lo = lo
        self.applied: set[int] = set()
        self.tick = tick


class WriteTokens:
    """The tokens of the writes a shard applied that may still be retried."""

    def __init__(self, alive: Callable[[int], bool] = psutil.pid_exists) -> None:
        self._writers: dict[bytes, _Writer] = {}
        self._tick = 0
        self._alive = alive
        self.duplicates = 0          # writes answered without being applied again (stats)

    def __len__(self) -> int:
        return len(self._writers)

    def _advance(self, writer: bytes, lo: int) -> _Writer:
        self._tick += 1
        w = self._writers.get(writer)
        if w is None:
            if len(self._writers) >= MAX_WRITERS:
                self._evict()
            w = self._writers[writer] = _Writer(lo, self._tick)
        w.tick = self._tick
        if lo > w.lo:
            w.lo = lo
            if w.applied:
                w.applied = {n for n in w.applied if n >= lo}
        return w

    def seen(self, writer: bytes, n: int, lo: int) -> bool:
        """Whether the write (writer, n) was applied already, or belongs to
        the writes the writer has finished with (below its lo)."""
        w = self._advance(writer, lo)
        if n < w.lo or n in w.applied:
            self.duplicates += 1
            return True
        return False

    def settled(self, writer: bytes, n: int) -> bool:
        """Whether the write (writer, n) was applied here, or the writer has
        finished with it (below its lo: answered, applied or not)."""
        w = self._writers.get(writer)
        return w is not None and (n < w.lo or n in w.applied)

    def add(self, writer: bytes, n: int, lo: int) -> None:
        w = self._advance(writer, lo)
        if n >= w.lo:
            w.applied.add(n)

    def _evict(self) -> None:
        by_age = sorted(self._writers.items(), key=lambda item: item[1].tick)
        for writer, _ in by_age[: max(1, len(by_age) // 8)]:
            del self._writers[writer]

    def prune(self) -> None:
        """Drop the writers whose process is gone."""
        for writer in [w for w in self._writers if not self._alive(writer_pid(w))]:
            del self._writers[writer]

    def carry_into(self, wal: Any) -> None:
        """Start *wal* (a new one) with the state of the writers still alive.
        Not synced: a retry needs it only after a process kill, which keeps
        the page cache, never after a power loss."""
        self.prune()
        if self._writers:
            wal.append(encode_tokens(self.dump()))

    def dump(self) -> bytes:
        """The whole state, for a ``WalOp.TOKENS`` record."""
        return msgpack.packb([[w, s.lo, sorted(s.applied)] for w, s in self._writers.items()],
                             use_bin_type=True)

    def load(self, state: bytes) -> None:
        """Merge a ``dump`` (recovery, in WAL order)."""
        for writer, lo, applied in msgpack.unpackb(state, raw=False):
            w = self._advance(bytes(writer), lo)
            w.applied.update(n for n in applied if n >= w.lo)
