"""The commit gate: cross-shard snapshots are cuts no commit straddles.

Runs in every process attached to a node (callers, the node's settler):
two lock files in the node's runtime directory, taken with ``flock``.

- A commit that spans shards holds the gate **shared** over its apply
  phase (coordinator.py): any number of them at once.
- Taking a snapshot (``ShardSnapshot``) holds it **exclusive** while it
  asks every shard for its sequence number: no such commit is half applied
  at that moment, so the vector of seqs never shows part of a batch or
  transaction, and every commit a transaction depended on is in it.
- Writer preference: both first pass a turnstile (exclusive, held for an
  instant by commits, for the whole cut by snapshots), so a stream of
  commits cannot starve snapshots.

A two-phase commit also leaves a marker file for its apply phase
(``mark``/``unmark``): a coordinator that dies there releases its hold on
the gate with its life, and the next snapshot finds the marker and
finishes the commit (or aborts it) before it cuts.

Each acquisition opens its own file descriptors (a ``flock`` belongs to an
open file description: threads of one process must not share one), and a
process that dies releases what it held. Waiting polls up to a deadline,
then raises ``Timeout`` (transient): a commit stopped by SIGSTOP while
holding the gate does not hang snapshots forever. The first 2 ms of a wait
poll between yields of the CPU (``sched_yield``: the holders, a commit's
apply phase or a cut, mostly let go within a round trip, and a sleep's
wake-up came late: ~10% of the transactions' throughput with four
clients), then with sleeps that grow to 1 ms.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator

import msgpack

from ..errors import Timeout

__all__ = ["CommitGate"]

_MARK = "applying."
_YIELD_S = 0.002          # first, give the CPU up this long, then sleep
_SPIN = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001)


class CommitGate:
    def __init__(self, directory: str | None = None) -> None:
        """*directory*: where the lock files live (shared by every process
        of a node); None: a private one for this process, removed by
        ``close``, or when the gate is collected or the process exits."""
        self.directory = tempfile.mkdtemp(prefix="ldb-gate-") if directory is None else directory
        self._remove = (weakref.finalize(self, _remove_private, self.directory, os.getpid())
                        if directory is None else None)
        self._gate = os.path.join(self.directory, "commit.gate")
        self._turnstile = os.path.join(self.directory, "commit.turnstile")

    def _open(self, path: str) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:            # the runtime directory went with a stopped node
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _lock(self, path: str, mode: int, deadline: float, what: str) -> int:
        fd = self._open(path)
        try:
            spin_until = i = 0
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    return fd
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                        raise
                now = time.monotonic()
                if now >= deadline:
                    raise Timeout(f"the commit gate stayed held past the deadline while {what}")
                if not spin_until:
                    spin_until = now + _YIELD_S
                if now < spin_until:        # holders let go within a round trip or so: stay close
                    os.sched_yield()
                    continue
                time.sleep(min(_SPIN[min(i, len(_SPIN) - 1)], deadline - now))
                i += 1
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def shared(self, timeout: float) -> Iterator[None]:
        """Held by a commit from its first step to its last apply."""
        deadline = time.monotonic() + timeout
        os.close(self._lock(self._turnstile, fcntl.LOCK_EX, deadline, "a commit waited to start"))
        fd = self._lock(self._gate, fcntl.LOCK_SH, deadline, "a commit waited to start")
        try:
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        """Held by a snapshot while it reads every shard's seq."""
        deadline = time.monotonic() + timeout
        turn = self._lock(self._turnstile, fcntl.LOCK_EX, deadline, "a snapshot waited for commits")
        try:
            fd = self._lock(self._gate, fcntl.LOCK_EX, deadline, "a snapshot waited for commits")
            try:
                yield
            finally:
                os.close(fd)
        finally:
            os.close(turn)

    # --- apply markers ----------------------------------------------------------------------------
    def mark(self, txid: bytes, shards: list[int]) -> str:
        """A two-phase commit is entering its apply phase: a file naming it
        and its participants, so that a snapshot finds it if the coordinator
        dies before ``unmark`` (its shared hold on the gate dies with it)."""
        path = os.path.join(self.directory, _MARK + txid.hex())
        # A temporary name of this thread's own: several processes may mark
        # the same transaction at once (snapshots finishing it), each
        # replacing the marker with the same contents.
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = self._open(tmp)
        try:
            os.write(fd, msgpack.packb([txid, shards]))
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return path

    def unmark(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def markers(self) -> list[tuple[str, bytes, list[int]]]:
        """(path, txid, participants) of every apply phase still marked."""
        out = []
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(_MARK) and not n.endswith(".tmp")]
        except FileNotFoundError:
            return out
        for n in names:
            path = os.path.join(self.directory, n)
            try:
                with open(path, "rb") as f:
                    txid, shards = msgpack.unpackb(f.read())
            except (OSError, ValueError, msgpack.UnpackException):
                continue
            out.append((path, txid, list(shards)))
        return out

    def close(self) -> None:
        if self._remove is not None:
            self._remove()


def _remove_private(directory: str, owner: int) -> None:
    """Remove a private gate's directory, in the process that made it only
    (a forked child exiting leaves its parent's alone)."""
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)
