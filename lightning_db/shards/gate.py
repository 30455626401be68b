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

A ``flock`` belongs to an open file description, so threads of one process
must not share one: each thread keeps descriptors of its own for the two
files, opened at its first acquisition and unlocked (not closed) after
each, and closed when the thread ends or the gate goes (reusing them: 1.9
against 8.6 µs a commit's hold on tmpfs); an acquisition nested in one of
the same thread's opens fresh ones. A process forked from one holding
such descriptors closes its copies at once: they share the parent's
locks, and a lock stays while any descriptor of its description is open,
so a child living on would keep the gate a dead parent held. A process
that dies releases what it held. Waiting polls up to a deadline,
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
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import msgpack

from ..errors import Timeout

__all__ = ["CommitGate"]

T = TypeVar("T")

_MARK = "applying."
_NAME_MAX = 255           # a marker's name holds its participants up to this length
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
        self._local = threading.local()         # each thread's _ThreadFds

    def _mine(self, path: str) -> tuple[int, _ThreadFds] | None:
        """This thread's descriptor of *path* (and their keeper), marked in
        use; None while it is in use already (a nested acquisition). In a
        process forked since they were opened, new ones (the inherited
        copies were closed at the fork)."""
        fds = getattr(self._local, "fds", None)
        if fds is None or fds.pid != os.getpid():
            fds = self._local.fds = _ThreadFds(self.directory)
        if path in fds.busy:
            return None
        fd = fds.fd(path)
        fds.busy.add(path)
        return fd, fds

    def _done(self, path: str, fd: int, kept: _ThreadFds | None) -> None:
        """Let go of *path* taken with *fd* (*kept*: the keeper of a thread's
        own descriptor, None for a fresh one)."""
        if kept is None:
            os.close(fd)                # releases the lock
            return
        try:
            if kept.pid == os.getpid():         # else taken before a fork: the copy was closed then
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            kept.busy.discard(path)

    def _open(self, path: str) -> int:
        return _open_in(self.directory, path)

    def _lock(self, path: str, mode: int, deadline: float, what: str) -> tuple[int, _ThreadFds | None]:
        """(descriptor, its keeper where it is this thread's own, else None)
        holding *path* locked in *mode*; give both to ``_done``."""
        mine = self._mine(path)
        fd, kept = mine if mine is not None else (self._open(path), None)
        try:
            spin_until = i = 0
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    return fd, kept
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
            if kept is not None:
                kept.busy.discard(path)
            else:
                os.close(fd)
            raise

    @contextlib.contextmanager
    def shared(self, timeout: float) -> Iterator[None]:
        """Held by a commit from its first step to its last apply."""
        deadline = time.monotonic() + timeout
        self._done(self._turnstile, *self._lock(self._turnstile, fcntl.LOCK_EX, deadline, "a commit waited to start"))
        fd, kept = self._lock(self._gate, fcntl.LOCK_SH, deadline, "a commit waited to start")
        try:
            yield
        finally:
            self._done(self._gate, fd, kept)

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        """Held by a snapshot while it reads every shard's seq."""
        deadline = time.monotonic() + timeout
        turn, turn_kept = self._lock(self._turnstile, fcntl.LOCK_EX, deadline, "a snapshot waited for commits")
        try:
            fd, kept = self._lock(self._gate, fcntl.LOCK_EX, deadline, "a snapshot waited for commits")
            try:
                yield
            finally:
                self._done(self._gate, fd, kept)
        finally:
            self._done(self._turnstile, turn, turn_kept)

    # --- apply markers ----------------------------------------------------------------------------
    def mark(self, txid: bytes, shards: list[int]) -> str:
        """A two-phase commit is entering its apply phase: a file naming it
        and its participants, so that a snapshot finds it if the coordinator
        dies before ``unmark`` (its shared hold on the gate dies with it).
        The marker is an empty file whose name says it all (one ``mknod``:
        the apply phase holds the gate, and every snapshot waits for it),
        or, past NAME_MAX, a file holding the participants."""
        name = f"{_MARK}{txid.hex()}.{'-'.join(map(str, shards))}"
        if len(name) > _NAME_MAX:
            return self._mark_in_file(txid, shards)
        path = os.path.join(self.directory, name)
        _in_dir(self.directory, lambda: _create_empty(path))
        return path

    def _mark_in_file(self, txid: bytes, shards: list[int]) -> str:
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
            hexid, named, parts = n[len(_MARK):].partition(".")
            try:
                if named:
                    txid, shards = bytes.fromhex(hexid), [int(x) for x in parts.split("-")]
                else:
                    with open(path, "rb") as f:
                        txid, shards = msgpack.unpackb(f.read())
            except (OSError, ValueError, msgpack.UnpackException):
                continue
            out.append((path, txid, list(shards)))
        return out

    def close(self) -> None:
        if self._remove is not None:
            self._remove()


class _ThreadFds:
    """One thread's descriptors of a gate's files (closed when the thread's
    locals go, or the gate does), and which of them it holds now."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self.pid = os.getpid()
        self.fds: dict[str, int] = {}
        self.busy: set[str] = set()
        # Runs in a forked child too, for the other threads' descriptors
        # (their locals go at the fork): their copies are closed there.
        self._close = weakref.finalize(self, _close_all, self.fds)
        _ALL_FDS.add(self)

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = _open_in(self._directory, path)
        return fd

    def forget(self) -> None:
        """Inherited across a fork (in the child): close the copies, so that
        a parent that dies holding the gate releases it even while the
        child lives on (a lock stays while any descriptor of its open file
        description is open); the parent's locks stay with the parent's."""
        self._close()


# Every thread's descriptors in this process: a forked child closes its
# copies of those still referenced after the fork (the forking thread's).
_ALL_FDS: "weakref.WeakSet[_ThreadFds]" = weakref.WeakSet()


def _forked() -> None:
    for fds in list(_ALL_FDS):
        fds.forget()


os.register_at_fork(after_in_child=_forked)


def _create_empty(path: str) -> None:
    """Create the empty regular file *path* (one system call); one that
    exists already is the same marker, made by another settler."""
    try:
        os.mknod(path, stat.S_IFREG | 0o600)
    except FileExistsError:
        pass


def _in_dir(directory: str, make: Callable[[], T]) -> T:
    """``make()``, which creates a file in *directory*; where the directory
    went (with a stopped node: the runtime directory), made again first."""
    try:
        return make()
    except FileNotFoundError:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return make()


def _open_in(directory: str, path: str) -> int:
    """Open (creating) one of the gate's files in *directory*."""
    return _in_dir(directory, lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _remove_private(directory: str, owner: int) -> None:
    """Remove a private gate's directory, in the process that made it only
    (a forked child exiting leaves its parent's alone)."""
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)
