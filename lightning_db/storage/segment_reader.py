"""Reading a memtable segment from any process: ``SegmentReader``.

A shard's ``Memtable`` (memtable.py) writes the segment; a reader maps the
same file read-only and answers point reads, batch lookups and ordered
reads from its bytes alone, without the writer's help. The layout and the
writer's publication order are in ``format.py``: a reader that sees a slot
sees the complete record it points to, and the header's ``arena_used``
bounds the records only once the segment is frozen.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from itertools import repeat
from operator import eq
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import xxhash

from ..errors import CorruptionError
from .format import (FORMAT_VERSION, KIND_BITS, SEGMENT_FLAG_IMMUTABLE, SEGMENT_HEADER, SEGMENT_HEADER_SIZE,
                     SEGMENT_MAGIC, SEGMENT_OFF_FLAGS, SEGMENT_OFF_USED, SEGMENT_RECORD)
from .fs import wrap_oserror
from .keyruns import KeyRuns

if TYPE_CHECKING:
    from .batch import KeyBatch

__all__ = ["SegmentReader"]

_key_hash = xxhash.xxh3_64_intdigest   # the writer's slot hash (bloom.key_hash)
_REC_SIZE = SEGMENT_RECORD.size        # 24
_KIND_MASK = (1 << KIND_BITS) - 1
_SCALAR_PROBES = 8                     # get_many: this few keys go on one by one
_OFF_FLAGS, _OFF_USED = SEGMENT_OFF_FLAGS, SEGMENT_OFF_USED
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_USED_COUNT = struct.Struct("<QQ")     # arena_used, count (adjacent)
_FLAGS_TO_USED = struct.Struct("<IQQQ")  # flags, capacity, slots, arena_used: one read


class SegmentReader:
    """Read-only view of a segment from any process (no writer help needed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise wrap_oserror(exc, "open", path) from exc
        try:
            size = os.fstat(fd).st_size
            if size < SEGMENT_HEADER_SIZE:
                raise CorruptionError(f"segment too short ({size} bytes)", path)
            self._mm = mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise wrap_oserror(exc, "mmap", path) from exc
        finally:
            os.close(fd)
        magic, version, _flags, capacity, nslots, _used, _count, gen = \
            SEGMENT_HEADER.unpack_from(mm, 0)
        problem = None
        if magic != SEGMENT_MAGIC:
            problem = f"bad segment magic {magic!r}"
        elif version != FORMAT_VERSION:
            problem = f"unsupported segment format version {version}"
        elif nslots < 1 or nslots & (nslots - 1):
            problem = f"segment slot count {nslots} is not a power of two"
        elif SEGMENT_HEADER_SIZE + 8 * nslots + capacity != size:
            problem = f"segment size {size} does not match its header"
        if problem is not None:
            mm.close()
            raise CorruptionError(problem, path)
        self.capacity = capacity
        self.generation = gen
        self._mask = nslots - 1
        self._base = SEGMENT_HEADER_SIZE + 8 * nslots
        self._mv = memoryview(mm)
        self._slots = self._mv[SEGMENT_HEADER_SIZE:self._base].cast("Q")
        # The whole segment as u64 words, for batch probes (over a slice of
        # the view, so that the view itself can be released).
        self._words: np.ndarray | None = np.frombuffer(self._mv[:size & ~7], dtype=np.uint64)
        # Ordered reads (built on the first scan, then extended): every key
        # seen so far, sorted, and the newest record of each, from the part
        # of the append-only arena read up to ``_done``.
        self._done = 0
        self._keys = KeyRuns([])
        self._newest: dict[bytes, int] = {}
        self._scan_lock = threading.Lock()

    @property
    def is_immutable(self) -> bool:
        return bool(_U32.unpack_from(self._mm, _OFF_FLAGS)[0] & SEGMENT_FLAG_IMMUTABLE)

    @property
    def arena_used(self) -> int:
        return _U64.unpack_from(self._mm, _OFF_USED)[0]

    @property
    def entries(self) -> int:
        return _USED_COUNT.unpack_from(self._mm, _OFF_USED)[1]

    def get_many(self, kb: KeyBatch, idx: np.ndarray, snapshot_seq: int) -> None:
        """``get`` for the keys ``kb.keys[i]``, i in *idx*, at once: each key
        found goes to *kb* (``KeyBatch.add``). The probe sequences are walked
        for the batch in numpy (the last few keys alone); only a key whose
        newest version is too new for *snapshot_seq* walks its chain alone."""
        flags, _, _, used = _FLAGS_TO_USED.unpack_from(self._mm, _OFF_FLAGS)
        if not used or not idx.size:
            return
        limit = used if flags & SEGMENT_FLAG_IMMUTABLE else self.capacity
        words, mask, at0, keys = self._words, self._mask, self._base - 1, kb.keys
        getb = self._mm.__getitem__
        si = (kb.hashes[idx] & np.uint64(mask)).astype(np.int64)
        lens = kb.lens()[idx]
        for _ in range(mask + 1):
            if idx.size <= _SCALAR_PROBES:
                for i in idx.tolist():
                    r = self.get(keys[i], snapshot_seq)
                    if r is not None:
                        kb.add([i], [r[0]], [r[1]])
                return
            ref = words[(SEGMENT_HEADER_SIZE >> 3) + si].astype(np.int64)
            live = ref != 0
            if not live.all():
                if not live.any():
                    return
                idx, si, ref, lens = idx[live], si[live], ref[live], lens[live]
            if (((ref & 7) != 1) | (ref - 1 + _REC_SIZE > limit)).any():
                list(map(self._record, ref.tolist(), repeat(limit)))   # raises for the first bad one
            off = at0 + ref
            w0 = words[off >> 3]
            klen = (w0 & np.uint64(0xFFFFFFFF)).astype(np.int64)
            if (ref - 1 + _REC_SIZE + klen + (w0 >> np.uint64(32)).astype(np.int64) > limit).any():
                list(map(self._record, ref.tolist(), repeat(limit)))
            at = np.flatnonzero(klen == lens)
            if at.size:
                ks = off[at] + _REC_SIZE
                mine = map(keys.__getitem__, idx[at].tolist())
                at = at[np.fromiter(map(eq, map(getb, map(slice, ks.tolist(), (ks + klen[at]).tolist())), mine),
                                    dtype=bool, count=at.size)]
            if at.size:                             # found: the newest visible version, or none
                self._newest_many(kb, idx[at], off[at], w0[at], snapshot_seq, limit)
                keep = np.ones(idx.size, dtype=bool)
                keep[at] = False
                idx, si, lens = idx[keep], si[keep], lens[keep]
                if not idx.size:
                    return
            si = (si + 1) & mask

    def _newest_many(self, kb: KeyBatch, idx: np.ndarray, off: np.ndarray, w0: np.ndarray,
                     snapshot_seq: int, limit: int) -> None:
        """The newest version with seq <= snapshot_seq of each key found
        (its newest record at *off*, first header word *w0*) goes to *kb*."""
        sk = self._words[(off >> 3) + 1]
        fresh = (sk >> np.uint64(8)) <= np.uint64(snapshot_seq)
        mm = self._mm
        if fresh.any():
            p = off[fresh] + _REC_SIZE + (w0[fresh] & np.uint64(0xFFFFFFFF)).astype(np.int64)
            q = p + (w0[fresh] >> np.uint64(32)).astype(np.int64)
            kb.add(idx[fresh].tolist(), (sk[fresh] & np.uint64(_KIND_MASK)).tolist(),
                   map(mm.__getitem__, map(slice, p.tolist(), q.tolist())))
        if not fresh.all():
            for i, o in zip(idx[~fresh].tolist(), off[~fresh].tolist()):
                klen, vlen, seqkind, prev = SEGMENT_RECORD.unpack_from(mm, o)
                while seqkind >> 8 > snapshot_seq and prev:
                    o, (klen, vlen, seqkind, prev) = self._record(prev, limit)
                if seqkind >> 8 <= snapshot_seq:
                    p = o + 24 + klen
                    kb.add([i], [seqkind & _KIND_MASK], [mm[p:p + vlen]])

    def get(self, key: bytes, snapshot_seq: int, copy: bool = True, h: int | None = None) -> tuple[int, Any] | None:
        """Same answer as ``Memtable.get`` on the writer's side; *h*: the
        key's ``key_hash`` where the caller has it."""
        mm = self._mm
        slots = self._slots
        mask = self._mask
        # Records are only bounded by arena_used once the segment is frozen
        # (the header counters are published after the slots).
        flags, _, _, used = _FLAGS_TO_USED.unpack_from(mm, _OFF_FLAGS)
        if not used:
            # Empty, or nothing published yet: a record the header does not
            # count yet is newer than any visible sequence number.
            return None
        limit = used if flags & SEGMENT_FLAG_IMMUTABLE else self.capacity
        klen_want = len(key)
        si = (_key_hash(key) if h is None else h) & mask
        for _ in range(mask + 1):
            ref = slots[si]
            if not ref:
                return None
            off, (klen, vlen, seqkind, prev) = self._record(ref, limit)
            p = off + 24
            if klen == klen_want and mm[p:p + klen] == key:
                while True:
                    if seqkind >> 8 <= snapshot_seq:
                        p = off + 24 + klen
                        return seqkind & _KIND_MASK, mm[p:p + vlen] if copy else self._mv[p:p + vlen]
                    if not prev:
                        return None
                    off, (klen, vlen, seqkind, prev) = self._record(prev, limit)
            si = (si + 1) & mask
        return None

    def _catch_up(self) -> tuple[KeyRuns, dict[bytes, int]]:
        """Read the arena records published since the last call (up to the
        header's arena_used, which the writer raises after the slots)."""
        with self._scan_lock:
            mm, base = self._mm, self._base
            used = _U64.unpack_from(mm, _OFF_USED)[0]
            if used > self.capacity:
                raise CorruptionError(f"segment arena_used {used} beyond its capacity", self.path)
            off = self._done
            if off >= used:
                return self._keys, self._newest
            newest, new = self._newest, []
            unpack = SEGMENT_RECORD.unpack_from
            while off < used:
                klen, vlen, _seqkind, _prev = unpack(mm, base + off)
                size = (31 + klen + vlen) & -8
                if off + size > used:
                    raise CorruptionError(f"segment record at {off} overruns the arena", self.path)
                p = base + off + 24
                key = mm[p:p + klen]
                if key not in newest:
                    new.append(key)
                newest[key] = off + 1
                off += size
            self._done = off
            if new:
                new.sort()
                self._keys = self._keys.add(new)          # new runs: iterators keep theirs
            return self._keys, newest

    def iter_visible(self, start: bytes | None, end: bytes | None, reverse: bool,
                     snapshot_seq: int) -> Iterator[tuple[bytes, int, bytes]]:
        """Same contract as ``Memtable.iter_visible``, from the bytes alone."""
        runs, newest = self._catch_up()
        return self._iter_keys(runs.range(start, end, reverse), newest, snapshot_seq)

    def _iter_keys(self, keys: Iterator[bytes], newest: dict[bytes, int],
                   snapshot_seq: int) -> Iterator[tuple[bytes, int, bytes]]:
        mm = self._mm
        limit = self.capacity
        base = self._base - 1
        unpack = SEGMENT_RECORD.unpack_from
        for key in keys:
            ref = newest[key]
            while ref:
                # ``_record`` inline (the scan's hot loop): bounds first.
                if ref & 7 != 1 or ref - 1 + _REC_SIZE > limit:
                    self._record(ref, limit)                      # raises
                off = base + ref
                klen, vlen, seqkind, prev = unpack(mm, off)
                if ref - 1 + _REC_SIZE + klen + vlen > limit:
                    self._record(ref, limit)                      # raises
                if seqkind >> 8 <= snapshot_seq:
                    p = off + 24 + klen
                    yield key, seqkind & _KIND_MASK, mm[p:p + vlen]
                    break
                ref = prev

    def _record(self, ref: int, limit: int) -> tuple[int, tuple[int, int, int, int]]:
        """(file offset, header fields) of the record *ref* points to, bounds-checked."""
        if ref & 7 != 1 or ref - 1 + _REC_SIZE > limit:
            raise CorruptionError(f"segment record reference {ref} out of bounds", self.path)
        off = self._base - 1 + ref
        rec = SEGMENT_RECORD.unpack_from(self._mm, off)
        if ref - 1 + _REC_SIZE + rec[0] + rec[1] > limit:
            raise CorruptionError(f"segment record at {ref - 1} overruns the arena", self.path)
        return off, rec

    def close(self) -> None:
        if self._mm is None:
            return
        self._words = None
        self._slots.release()
        self._mv.release()
        try:
            self._mm.close()
        except BufferError:
            pass
        self._mm = None  # type: ignore[assignment]

    def __enter__(self) -> "SegmentReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
