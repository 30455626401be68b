"""A fault-injecting filesystem: power loss, crash points, EIO and ENOSPC.

This is a test seam (like LevelDB's FaultInjectionTestEnv or Pebble's vfs),
used by the storage tests and the stress harness. It works over a real
directory tree, so the engine's mmap readers keep working, and records what
a power loss would take away:

* File data. Durability is tracked per inode: the size last made durable by
  ``WritableFile.sync`` or ``truncate``. Bytes past it are lost at power loss
  (with ``torn=True`` and an rng a random prefix of them survives instead).
  Files this object never created or truncated are treated as durable.
* Directory entries. A create, rename, remove or link is durable only once
  ``sync_dir`` was called on its parent (both parents for a rename across
  directories). Until then it sits in a pending list and power loss undoes
  the pending operations in reverse order. A removed file, or the destination
  overwritten by a rename, is kept under a hidden trash name in the same
  directory (``.faultfs-trash-*``, hidden from ``listdir``) so that it can
  come back; the trash is deleted for real when the operation becomes durable.
  Directories themselves (``makedirs``) and lock files are assumed durable.

Crash points: ``ops`` counts mutating operations (create, each write call,
sync, sync_dir, rename, remove, link, truncate, map_segment). When it reaches
``crash_at`` that operation does not happen and ``SimulatedCrash`` (a
BaseException, so ``except Exception`` in the engine does not swallow it) is
raised; every later operation, from any thread, raises it too. Then call
``power_loss()``: it closes every handle, mapping and lock this object opened,
throws away what was not durable, and leaves the object unusable; reopen the
directory with a fresh filesystem object.

``inject`` makes matching operations fail with an OSError that surfaces
exactly as the real one would (``DiskFull`` for ENOSPC/EDQUOT, ``IOFault``
otherwise, ``FileNotFoundError`` for ENOENT). A failed operation changes
nothing on disk; a failed sync leaves the durable size where it was.
"""

from __future__ import annotations

import itertools
import mmap
import os
import random
import threading
import weakref
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from .fs import FileLock, OSFileSystem, ReadableFile, WritableFile, _io, wrap_oserror

__all__ = ["FaultInjectingFileSystem", "SimulatedCrash", "TRASH_PREFIX"]

T = TypeVar("T")

TRASH_PREFIX = ".faultfs-trash-"

_WHAT = {"write": "write", "sync": "fsync", "create": "create", "rename": "rename",
         "remove": "remove", "sync_dir": "fsync dir", "link": "link",
         "truncate": "truncate", "map_segment": "map", "read": "read"}
_OPS = frozenset(_WHAT) | {"*"}
_LIVE, _CRASHED, _OFF = 0, 1, 2
_trash_ids = itertools.count(1)


class SimulatedCrash(BaseException):
    """The simulated machine crashed; nothing more reaches the disk."""


class _Readable(ReadableFile):
    __slots__ = ("__weakref__",)


@dataclass
class _DirOp:
    kind: str                 # "create" | "rename" | "remove" | "link"
    path: str                 # the name created / removed / linked, or rename source
    dst: str = ""             # rename destination
    trash: str = ""           # where the removed or overwritten file is kept
    dirs: set[str] = field(default_factory=set)   # parents not yet synced


@dataclass
class _Fault:
    op: str
    errno: int
    path_contains: str
    count: int
    after: int


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class FaultInjectingFileSystem(OSFileSystem):
    def __init__(self, crash_at: int | None = None, *, torn_write_at_crash: bool = False,
                 rng: random.Random | int | None = None) -> None:
        self.crash_at = crash_at
        self.torn_write_at_crash = torn_write_at_crash
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.ops = 0
        self._mu = threading.RLock()
        self._idle = threading.Condition(self._mu)
        self._state = _LIVE
        self._inflight = 0
        self._synced: dict[tuple[int, int], int] = {}
        self._pending: list[_DirOp] = []
        self._dirs: set[str] = set()
        self._faults: list[_Fault] = []
        self._files: set[WritableFile] = set()
        self._readables: weakref.WeakSet[_Readable] = weakref.WeakSet()
        self._maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
        self._locks: list[FileLock] = []

    # --- gate: crash point, injected faults, in-flight tracking ------------------
    def _enter(self, op: str, path: str, path2: str = "", count: bool = True,
               on_crash=None) -> None:
        with self._mu:
            if self._state == _CRASHED:
                raise SimulatedCrash(f"filesystem crashed at operation {self.ops}; call power_loss()")
            if self._state == _OFF:
                raise SimulatedCrash("filesystem lost power; reopen with a fresh filesystem object")
            if count:
                self.ops += 1
                if self.crash_at is not None and self.ops >= self.crash_at:
                    self._state = _CRASHED
                    if on_crash is not None:
                        with suppress(OSError):
                            on_crash()
                    raise SimulatedCrash(f"simulated crash at operation {self.ops}: {op} {path}")
            err = self._take_fault(op, path, path2)
            if err is None:
                self._inflight += 1
        if err is not None:
            exc = OSError(err, os.strerror(err), path)
            raise wrap_oserror(exc, _WHAT[op], path) from exc

    def _exit(self) -> None:
        with self._mu:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def _call(self, op: str, path: str, fn: Callable[[], T]) -> T:
        """Run a non-mutating operation through the gate (not counted in ops)."""
        self._enter(op, path, count=False)
        try:
            return fn()
        finally:
            self._exit()

    def _take_fault(self, op: str, path: str, path2: str) -> int | None:
        if op not in _WHAT:
            return None
        for f in self._faults:
            if f.op not in ("*", op) or (f.op == "*" and op == "read"):
                continue
            if f.path_contains not in path and f.path_contains not in path2:
                continue
            if f.after > 0:
                f.after -= 1
                continue
            f.count -= 1
            if f.count <= 0:
                self._faults.remove(f)
            return f.errno
        return None

    def inject(self, op: str, errno: int, path_contains: str = "", count: int = 1,
               after: int = 0) -> None:
        """Fail the next *count* operations *op* (or any, for ``'*'``) whose path
        contains *path_contains*, after letting *after* of them through."""
        if op not in _OPS:
            raise ValueError(f"unknown operation {op!r}; expected one of {sorted(_OPS)}")
        with self._mu:
            self._faults.append(_Fault(op, errno, path_contains, count, after))

    def clear_faults(self) -> None:
        with self._mu:
            self._faults.clear()

    # --- statistics ----------------------------------------------------------------
    def synced_size(self, path: str) -> int | None:
        """Durable size of *path*, or None when it is not tracked (never created
        or truncated here: treated as durable)."""
        with self._mu:
            return self._synced.get(_key(os.stat(path)))

    def pending_dir_ops(self, dir: str) -> list[tuple[str, ...]]:
        """Directory operations in *dir* not yet made durable by ``sync_dir``,
        oldest first: ``(kind, path)`` or ``('rename', src, dst)``."""
        d = os.path.abspath(dir)
        with self._mu:
            return [(op.kind, op.path, op.dst) if op.kind == "rename" else (op.kind, op.path)
                    for op in self._pending if d in op.dirs]

    # --- bookkeeping helpers ---------------------------------------------------------
    def _record(self, op: _DirOp) -> None:
        with self._mu:
            self._dirs |= op.dirs
            self._pending.append(op)

    def _trash_name(self, directory: str) -> str:
        return os.path.join(directory, f"{TRASH_PREFIX}{os.getpid()}-{next(_trash_ids)}")

    def _delete_trash(self, trash: str) -> None:
        try:
            st = os.lstat(trash)
            os.remove(trash)
        except OSError:
            return
        if st.st_nlink <= 1:
            with self._mu:
                self._synced.pop(_key(st), None)

    # --- files -------------------------------------------------------------------------
    def create(self, path: str, reserve: int = 0) -> WritableFile:
        self._enter("create", path)
        try:
            existed = os.path.lexists(path)
            f = super().create(path, reserve)
            with self._mu:
                self._synced[_key(os.fstat(f.fd))] = 0
                self._files.add(f)
                self._dirs.add(_parent(path))
            if not existed:
                self._record(_DirOp("create", path, dirs={_parent(path)}))
            return f
        finally:
            self._exit()

    def _write(self, f: WritableFile, data: bytes | bytearray | memoryview) -> None:
        def torn() -> None:
            view = memoryview(data).cast("B")
            if self.torn_write_at_crash and len(view) > 1:
                OSFileSystem._write(self, f, view[:self.rng.randint(1, len(view) - 1)])
        self._enter("write", f.path, on_crash=torn)
        try:
            super()._write(f, data)
        finally:
            self._exit()

    def _sync(self, f: WritableFile) -> None:
        self._enter("sync", f.path)
        try:
            size = f.size
            super()._sync(f)
            with self._mu:
                self._synced[_key(os.fstat(f.fd))] = size
        finally:
            self._exit()

    def _close(self, f: WritableFile) -> None:
        # Closing never fails, even after a crash: it changes nothing on disk,
        # and power_loss has closed (or will close) the descriptor anyway.
        with self._mu:
            if f not in self._files:
                return
            self._files.discard(f)
        super()._close(f)

    def open_readable(self, path: str) -> ReadableFile:
        self._enter("read", path, count=False)
        try:
            fd = _io("open", path, lambda: os.open(path, os.O_RDONLY))
            try:
                r = _io("mmap", path, lambda: _Readable(path, fd))
            finally:
                os.close(fd)
            with self._mu:
                self._readables.add(r)
            return r
        finally:
            self._exit()

    def read_file(self, path: str) -> bytes:
        return self._call("read", path, lambda: OSFileSystem.read_file(self, path))

    def map_segment(self, path: str, size: int) -> mmap.mmap:
        self._enter("map_segment", path)
        try:
            existed = os.path.lexists(path)
            m = super().map_segment(path, size)
            with self._mu:
                self._maps.add(m)
                self._synced.pop(_key(os.stat(path)), None)   # contents not tracked
            if not existed:
                self._record(_DirOp("create", path, dirs={_parent(path)}))
            return m
        finally:
            self._exit()

    def truncate(self, path: str, size: int) -> None:
        self._enter("truncate", path)
        try:
            super().truncate(path, size)
            with self._mu:
                self._synced[_key(os.stat(path))] = size
                self._dirs.add(_parent(path))
        finally:
            self._exit()

    def file_size(self, path: str) -> int:
        return self._call("stat", path, lambda: OSFileSystem.file_size(self, path))

    def exists(self, path: str) -> bool:
        return self._call("stat", path, lambda: OSFileSystem.exists(self, path))

    def isdir(self, path: str) -> bool:
        return self._call("stat", path, lambda: OSFileSystem.isdir(self, path))

    # --- directory entries -------------------------------------------------------------
    def rename(self, src: str, dst: str) -> None:
        self._enter("rename", src, dst)
        try:
            if os.path.lexists(dst) and os.path.lexists(src) and os.path.samefile(src, dst):
                return super().rename(src, dst)   # a no-op for the OS too
            trash = ""
            if os.path.lexists(dst) and not os.path.isdir(dst):
                trash = self._trash_name(_parent(dst))
                _io("rename", dst, lambda: os.link(dst, trash))   # keep the victim
            try:
                super().rename(src, dst)
            except BaseException:
                if trash:
                    os.remove(trash)
                raise
            self._record(_DirOp("rename", src, dst, trash, {_parent(src), _parent(dst)}))
            if os.path.isdir(dst):
                with self._mu:
                    self._dirs.update(os.path.abspath(d) for d, _, _ in os.walk(dst))
        finally:
            self._exit()

    def remove(self, path: str) -> None:
        self._enter("remove", path)
        try:
            if not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path)):
                return super().remove(path)   # raises the real error
            trash = self._trash_name(_parent(path))
            _io("remove", path, lambda: os.rename(path, trash))
            self._record(_DirOp("remove", path, trash=trash, dirs={_parent(path)}))
        finally:
            self._exit()

    def link(self, src: str, dst: str) -> None:
        self._enter("link", src, dst)
        try:
            super().link(src, dst)
            self._record(_DirOp("link", dst, dirs={_parent(dst)}))
        finally:
            self._exit()

    def listdir(self, path: str) -> list[str]:
        names = self._call("listdir", path, lambda: OSFileSystem.listdir(self, path))
        return [n for n in names if not n.startswith(TRASH_PREFIX)]

    def makedirs(self, path: str) -> None:
        self._call("makedirs", path, lambda: OSFileSystem.makedirs(self, path))

    def sync_dir(self, path: str) -> None:
        self._enter("sync_dir", path)
        try:
            super().sync_dir(path)
            d = os.path.abspath(path)
            with self._mu:
                done = []
                for op in self._pending:
                    op.dirs.discard(d)
                    if not op.dirs:
                        done.append(op)
                self._pending = [op for op in self._pending if op.dirs]
            for op in done:
                if op.trash:
                    self._delete_trash(op.trash)
        finally:
            self._exit()

    def lock(self, path: str) -> FileLock:
        lk = self._call("lock", path, lambda: OSFileSystem.lock(self, path))
        with self._mu:
            self._locks.append(lk)
        return lk

    # --- power loss ----------------------------------------------------------------------
    def power_loss(self, rng: random.Random | None = None, torn: bool = True) -> None:
        """Simulate losing power: release every handle, undo pending directory
        operations, cut files back to their durable size (or, when *torn* and
        *rng* is given, to a random prefix of the unsynced tail). Afterwards
        every operation raises SimulatedCrash. Calling it again does nothing."""
        with self._mu:
            if self._state == _OFF:
                return
            self._state = _OFF
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=30):
                raise RuntimeError("filesystem operations still in flight after 30 s")
            files, self._files = list(self._files), set()
            readables, maps = list(self._readables), list(self._maps)
            locks, self._locks = self._locks, []
            pending, self._pending = self._pending, []
        for f in files:
            f.closed = True
            with suppress(OSError):
                os.close(f.fd)
        for r in readables:
            r.close()
        for m in maps:
            with suppress(BufferError):   # a caller still holds a view of it
                m.close()
        for lk in locks:
            with suppress(OSError):
                lk.release()
        for op in reversed(pending):
            with suppress(OSError):
                self._undo(op)
        seen: set[tuple[int, int]] = set()
        for d in self._dirs:
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                p = os.path.join(d, name)
                try:
                    if name.startswith(TRASH_PREFIX):
                        os.remove(p)
                        continue
                    st = os.lstat(p)
                    durable = self._synced.get(_key(st))
                    if durable is None or st.st_size <= durable or _key(st) in seen:
                        continue
                    seen.add(_key(st))
                    keep = durable
                    if torn and rng is not None:
                        keep += rng.randint(0, st.st_size - durable)
                    os.truncate(p, keep)
                except OSError:
                    pass

    @staticmethod
    def _undo(op: _DirOp) -> None:
        if op.kind in ("create", "link"):
            if os.path.lexists(op.path):
                os.remove(op.path)
        elif op.kind == "remove":
            os.rename(op.trash, op.path)
        elif op.kind == "rename":
            os.rename(op.dst, op.path)
            if op.trash:
                os.rename(op.trash, op.dst)
