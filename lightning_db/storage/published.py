"""Published versions: a shard's read state, shared with every process.

Which process runs what. ``Publisher`` runs in the shard process, inside the
engine: at open (``not serving`` first, then the recovered state), whenever
the engine installs a new super version (memtable rotation, flush,
compaction) and after every write (the visible sequence number).
``PublishedReader`` runs in any process that attached to the database: it
maps the superblock, the memtable segments and the table files of the
published version and answers point reads and scans from them without a
message.

The superblock (layout in ``format.py``) is one page guarded by a seqlock:
the writer makes ``seq`` odd, writes incarnation, generation and visible,
then makes ``seq`` even; a reader copies the fields between two reads of an
even, unchanged ``seq``. A new version goes to the file
``<superblock>.<generation>`` (written beside and renamed in), then the
superblock names it, then the previous version file is removed.

Why a reader never sees a half-written record or a reused file: segment
records are published record-then-slot (``memtable.py``) and reads filter by
the visible sequence number, which the shard raises only after a whole batch
is in the memtable; file numbers are never reused within an incarnation (a
new engine, e.g. after a restore, starts a new incarnation and readers drop
everything they mapped); the shard unlinks a file only after publishing a
version without it, a file already mapped stays readable after the unlink,
and a reader that finds a file gone reads the superblock again.

Snapshot cuts. A process that takes a snapshot from shared memory (a cut
of every shard's visible sequence number) registers it on the shards by a
message it does not wait for, so a shard keeps every version of the last
``SNAPSHOT_LAG_S`` seconds for snapshots not registered yet. Before it
reads the sequence numbers of a cut, the process stores the time (the
system-wide monotonic clock) in ``<superblock>.cuts`` (``note_cut``); the
shard keeps that window only while the last cut is that recent
(``Publisher.cut_within``), so a shard no snapshot is taken of compacts
overwritten versions at once. Storing before reading is what makes it safe:
a compaction that saw no recent cut drops only versions older than the
newest one at that moment, and a cut noted later reads sequence numbers
at least that new.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import threading
import time
from itertools import chain
from typing import Any

import msgpack

from ..errors import CorruptionError
from .batch import values_many
from .cache import make_cache
from .format import (FORMAT_VERSION, PUBLISHED_HEADER, PUBLISHED_MAGIC, PUBLISHED_SIZE,
                     segment_name, table_name)
from .fs import OSFileSystem
from .lookup import lookup
from .segment_reader import SegmentReader
from .scan import CHUNK_MIN, version_chunks
from .table import TableReader
from .ttl import visible
from .version import FileMeta, Version

__all__ = ["UNAVAILABLE", "Publisher", "PublishedReader"]

UNAVAILABLE = object()      # PublishedReader.get: ask the shard instead
_OFF_SEQ = 16
_Q_SEQ = _OFF_SEQ // 8                      # seq, incarnation, generation, visible as u64 slots 2..5
_SEQ = struct.Struct("<Q")
_STATE = struct.Struct("<QQQQ")             # seq incarnation generation visible
_VALUE = 1
_RETRIES = 8                                # superblock re-reads when a file is gone


CUTS_SUFFIX = ".cuts"
_CUT = struct.Struct("<q")       # monotonic nanoseconds of the last snapshot cut


def last_cut(path: str) -> float | None:
    """When (``time.monotonic()`` seconds) a process last noted a snapshot
    cut of the shard whose superblock is *path*; None: never."""
    try:
        fd = os.open(path + CUTS_SUFFIX, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        raw = os.pread(fd, _CUT.size, 0)
    finally:
        os.close(fd)
    return _CUT.unpack(raw)[0] / 1e9 if len(raw) == _CUT.size else None


class Publisher:
    """The shard's side. Thread-safe (the write path and the background
    thread both publish)."""

    def cut_within(self, seconds: float) -> bool:
        """Whether a process noted a snapshot cut in the last *seconds*
        (an unreadable note counts as one: the window is kept)."""
        try:
            t = last_cut(self.path)
        except OSError:
            return True
        return t is not None and time.monotonic() - t <= seconds

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != PUBLISHED_SIZE:
                os.ftruncate(fd, PUBLISHED_SIZE)
            self._mm = mmap.mmap(fd, PUBLISHED_SIZE)
        finally:
            os.close(fd)
        self._q = memoryview(self._mm).cast("Q")
        self._lock = threading.Lock()
        seq, _inc, gen, _vis = _STATE.unpack_from(self._mm, _OFF_SEQ)
        self._seq = seq + (seq & 1)          # a writer killed mid-update left it odd
        self._gen = gen
        self._inc = 0
        self._visible = 0
        self._store(0, gen, 0)               # not serving until the first publish
        self._mm[:16] = PUBLISHED_HEADER.pack(PUBLISHED_MAGIC, FORMAT_VERSION, 0, 0, 0, 0, 0)[:16]

    def _store(self, inc: int, gen: int, visible: int) -> None:
        # Single aligned 8-byte stores through a u64 view: struct.pack_into
        # zeroes its target before writing, and a reader could see the zeros
        # (an even seq of 0 around zeroed fields would pass the seqlock).
        q, seq = self._q, self._seq
        q[_Q_SEQ] = seq + 1
        q[_Q_SEQ + 1] = inc
        q[_Q_SEQ + 2] = gen
        q[_Q_SEQ + 3] = visible
        q[_Q_SEQ] = seq + 2
        self._seq = seq + 2

    def publish(self, shard_dir: str, segments: list[int], version: Version, visible: int) -> None:
        """Name a new version: segment numbers newest first, the tables."""
        levels = [[f.encode() for f in lvl] for lvl in version.levels]
        data = msgpack.packb([shard_dir, segments, levels], use_bin_type=True)
        with self._lock:
            if not self._inc:
                self._inc = random.getrandbits(62) + 1
            gen = self._gen + 1
            target = f"{self.path}.{gen}"
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            old, self._gen = self._gen, gen
            self._visible = max(self._visible, visible)
            self._store(self._inc, gen, self._visible)
        if old:
            try:
                os.remove(f"{self.path}.{old}")
            except FileNotFoundError:
                pass

    def visible(self, seq: int) -> None:
        """Every write up to *seq* is complete: readers may see it."""
        with self._lock:
            if seq > self._visible:
                self._visible = seq
                if self._inc:
                    self._store(self._inc, self._gen, seq)

    def close(self) -> None:
        """Not serving any more (readers ask the shard)."""
        with self._lock:
            if self._mm is None:
                return
            self._inc = 0
            self._store(0, self._gen, self._visible)
            self._q.release()
            self._mm.close()
            self._mm = None  # type: ignore[assignment]
        try:
            os.remove(f"{self.path}.{self._gen}")
        except FileNotFoundError:
            pass


class _Loaded:
    __slots__ = ("inc", "gen", "mems", "version")

    def __init__(self, inc: int, gen: int, mems: tuple[SegmentReader, ...], version: Version) -> None:
        self.inc, self.gen, self.mems, self.version = inc, gen, mems, version


class PublishedReader:
    """Point reads from a shard's published version (any process, any
    thread). ``get`` returns the value, None, or ``UNAVAILABLE`` (the shard
    is not serving, or its files moved on faster than this reader could
    follow): the caller then asks the shard."""

    def __init__(self, path: str, cache_size: int = 32 << 20) -> None:
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, PUBLISHED_SIZE, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if self._mm[:8] != PUBLISHED_MAGIC:
            self._mm.close()
            raise CorruptionError("not a published-version superblock", path)
        self._fs = OSFileSystem()
        self._cache_size = cache_size
        self._cache = make_cache("clock", cache_size)
        self._loaded: _Loaded | None = None
        self._tables: dict[int, TableReader] = {}
        self._segments: dict[int, SegmentReader] = {}
        self._lock = threading.Lock()           # loading only; reads take no lock
        self._cut_fd = -1
        self.loads = 0

    def state(self) -> tuple[int, int, int]:
        """(incarnation, generation, visible), consistent (the seqlock)."""
        mm = self._mm
        while True:
            s1, inc, gen, vis = _STATE.unpack_from(mm, _OFF_SEQ)
            if not s1 & 1 and _SEQ.unpack_from(mm, _OFF_SEQ)[0] == s1:
                return inc, gen, vis

    def _view(self, seq: int | None, expect: int | None = None) -> tuple[_Loaded, int] | None:
        """The loaded current version and the sequence number to read at,
        or None when the shard is not serving, serves another incarnation
        than *expect* (a snapshot's sequence number means nothing to a new
        engine), or its files moved on faster than this reader could follow."""
        for _ in range(_RETRIES):
            inc, gen, vis = self.state()
            if not inc or (expect is not None and inc != expect):
                return None
            cur = self._loaded
            if cur is None or cur.gen != gen or cur.inc != inc:
                cur = self._load(inc, gen)
                if cur is None:
                    continue
            return cur, (vis if seq is None else min(seq, vis))
        return None

    def get(self, key: bytes, seq: int | None = None, copy: bool = True, expect: int | None = None,
            h: int | None = None) -> Any:
        """The value of *key* (latest, or as of *seq* in incarnation
        *expect*), None, or UNAVAILABLE. ``copy=False``: a memoryview into
        the mapped file instead of bytes. *h*: the key's ``key_hash`` where
        the caller has it."""
        mm, cur = self._mm, self._loaded
        s1, inc, gen, vis = _STATE.unpack_from(mm, _OFF_SEQ)      # the common case, inline
        if (cur is not None and inc and cur.gen == gen and cur.inc == inc and not s1 & 1
                and _SEQ.unpack_from(mm, _OFF_SEQ)[0] == s1 and (expect is None or inc == expect)):
            at = vis if seq is None else min(seq, vis)
        else:
            view = self._view(seq, expect)
            if view is None:
                return UNAVAILABLE
            cur, at = view
        r = lookup(cur.mems, cur.version, key, at, copy, h)
        return None if r is None else r[1] if r[0] == _VALUE else visible(*r)

    def get_many(self, keys: list[bytes], seq: int | None = None, expect: int | None = None,
                 hashes: Any = None, lens: Any = None) -> Any:
        """Values in order, or UNAVAILABLE. Each source of the version is
        asked once for the whole batch (``batch.values_many``); *hashes*
        and *lens*: the keys' ``key_hash`` values and lengths (numpy
        arrays) where the caller has them."""
        view = self._view(seq, expect)
        if view is None:
            return UNAVAILABLE
        cur, at = view
        return values_many(cur.mems, cur.version, keys, at, hashes, lens)

    def scan(self, start: bytes | None, end: bytes | None, reverse: bool = False, seq: int | None = None,
             expect: int | None = None) -> Any:
        """Live (key, value) pairs with start <= key < end in key order, as
        of now (or of *seq* in incarnation *expect*), or UNAVAILABLE. The
        iterator holds the version it started from (its files stay mapped):
        a consistent view, whatever the shard flushes or compacts meanwhile."""
        chunks = self.scan_chunks(start, end, reverse, seq, expect)
        return chunks if chunks is UNAVAILABLE else chain.from_iterable(chunks)

    def scan_chunks(self, start: bytes | None, end: bytes | None, reverse: bool = False,
                    seq: int | None = None, expect: int | None = None, first: int = CHUNK_MIN) -> Any:
        """``scan`` in lists of pairs (storage/scan.py; the first of about
        *first* pairs), or UNAVAILABLE."""
        view = self._view(seq, expect)
        if view is None:
            return UNAVAILABLE
        cur, at = view
        return version_chunks(list(cur.mems), cur.version, start, end, reverse, at, first)

    def _load(self, inc: int, gen: int) -> _Loaded | None:
        """Map the version *gen* names; None when a file is already gone."""
        with self._lock:
            cur = self._loaded
            if cur is not None and cur.inc == inc and cur.gen == gen:
                return cur
            if cur is not None and cur.inc != inc:          # a new engine: numbers may repeat
                self._tables, self._segments = {}, {}
                self._cache = make_cache("clock", self._cache_size)
            try:
                with open(f"{self.path}.{gen}", "rb") as f:
                    shard_dir, seg_numbers, levels = msgpack.unpackb(f.read(), raw=False)
                segments = {n: self._segments.get(n) or SegmentReader(os.path.join(shard_dir, segment_name(n)))
                            for n in seg_numbers}
                tables: dict[int, TableReader] = {}
                files = []
                for lvl in levels:
                    metas = []
                    for row in lvl:
                        meta = FileMeta.decode(row)
                        reader = self._tables.get(meta.number) or tables.get(meta.number)
                        if reader is None:
                            reader = TableReader.open(self._fs, os.path.join(shard_dir, table_name(meta.number)),
                                                      meta.number, self._cache)
                        tables[meta.number] = meta.reader = reader
                        metas.append(meta)
                    files.append(metas)
            except FileNotFoundError:
                return None                 # superseded meanwhile: read the superblock again
            # Readers of files that left the version are dropped, not closed: a
            # lookup on another thread may still hold the old version.
            self._tables, self._segments = tables, segments
            loaded = _Loaded(inc, gen, tuple(segments[n] for n in seg_numbers), Version(files))
            self._loaded = loaded
            self.loads += 1
            return loaded

    def note_cut(self) -> None:
        """A snapshot cut is about to read this shard's visible sequence
        number (see the module docstring). Raises OSError."""
        fd = self._cut_fd
        if fd < 0:
            fd = os.open(self.path + CUTS_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with self._lock:
                if self._cut_fd < 0:
                    self._cut_fd = fd
                else:
                    os.close(fd)
                    fd = self._cut_fd
        os.pwrite(fd, _CUT.pack(time.monotonic_ns()), 0)

    def close(self) -> None:
        with self._lock:
            if self._cut_fd >= 0:
                os.close(self._cut_fd)
                self._cut_fd = -1
            self._loaded = None
            self._tables, self._segments = {}, {}
            if self._mm is not None:
                self._mm.close()
                self._mm = None  # type: ignore[assignment]
