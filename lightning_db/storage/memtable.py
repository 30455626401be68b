"""The memtable: recent writes of one shard, kept in a memory-mapped segment.

Layout (frozen, see ``format.py``): a 64-byte header, an open-addressing hash
index of u64 slots (linear probing on ``xxh3_64(key) & (slots - 1)``; 0 =
empty, else 1 + arena offset of the NEWEST record of that key) and an
append-only arena of 8-byte aligned records
``klen:u32 vlen:u32 seqkind:u64 prev:u64 key value`` where ``prev`` links to
the previous version of the same key (1 + offset, 0 = none).

Who runs what:

* ``Memtable`` -- shard process. ``add``/``add_batch``/``freeze`` run on the
  writer thread under the engine's write lock (one writer, no internal lock).
  ``get``/``iter_visible``/``iter_internal`` may run on any thread of the
  shard process concurrently with that writer.
* ``SegmentReader`` (segment_reader.py) -- any process. It maps the segment
  read-only and answers ``get`` from the bytes alone, without the writer's help.

Publication order in the writer is record bytes, then slot, then the header
counters (``arena_used``, ``count``), so a concurrent reader that sees a slot
sees a complete record. Within the shard process the writer also inserts a
key into its Python index (key -> slot number) only after the slot is set.
Records of one key are appended in sequence order, so a ``prev`` chain runs
from the newest to the oldest version (seq descending).
"""

from __future__ import annotations

import mmap
import struct
from array import array
from typing import Any, Iterator

import numpy as np
import xxhash

from ..errors import InvalidArgument
from .format import (FORMAT_VERSION, SEGMENT_FLAG_IMMUTABLE, SEGMENT_HEADER, SEGMENT_HEADER_SIZE,
                     SEGMENT_MAGIC, SEGMENT_OFF_FLAGS, SEGMENT_OFF_USED, SEGMENT_RECORD)
from .fs import OSFileSystem
from . import gil, keyruns
from .keyruns import KeyRuns, order_rows, sort_keys, sort_order
from .memtable_bulk import BULK_MIN, add_bulk

__all__ = ["Memtable", "segment_slots", "segment_size"]

_key_hash = xxhash.xxh3_64_intdigest   # same function as bloom.key_hash
_REC_SIZE = SEGMENT_RECORD.size        # 24
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 3, 4    # index load factor limit: 0.75
_MIN_SLOTS = 1024
_U32 = struct.Struct("<I")
_Q_USED, _Q_COUNT = SEGMENT_OFF_USED // 8, SEGMENT_OFF_USED // 8 + 1      # header fields as u64 slots

assert SEGMENT_HEADER.size <= SEGMENT_HEADER_SIZE and _REC_SIZE == 24


def segment_slots(capacity: int) -> int:
    """Number of index slots for an arena of *capacity* bytes: the next power
    of two >= max(1024, capacity // 64)."""
    n = max(_MIN_SLOTS, capacity // 64)
    return 1 << (n - 1).bit_length()


def segment_size(capacity: int) -> int:
    """Total file size of a segment with an arena of *capacity* bytes."""
    return SEGMENT_HEADER_SIZE + 8 * segment_slots(capacity) + capacity


class Memtable:
    """A shard's mutable (later frozen) memtable over a writable segment."""

    def __init__(self, fs: OSFileSystem, path: str, number: int, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 8:
            raise InvalidArgument(f"memtable capacity must be an integer >= 8, got {capacity!r}")
        self.number = number
        self.path = path
        self.capacity = capacity
        self._nslots = nslots = segment_slots(capacity)
        self._mask = nslots - 1
        self._max_keys = nslots * _MAX_LOAD_NUM // _MAX_LOAD_DEN
        self._base = SEGMENT_HEADER_SIZE + 8 * nslots       # arena start in the file
        self._mm = mm = fs.map_segment(path, self._base + capacity)
        SEGMENT_HEADER.pack_into(mm, 0, SEGMENT_MAGIC, FORMAT_VERSION, 0, capacity,
                                 nslots, 0, 0, number)
        self._mv = memoryview(mm)
        self._slots = self._mv[SEGMENT_HEADER_SIZE:self._base].cast("Q")
        self._hdr = self._mv[:SEGMENT_HEADER_SIZE].cast("Q")    # header fields as u64 slots
        self._index: dict[bytes, int] = {}                   # key -> slot number
        self._added: list[bytes] = []                       # keys in the order they were first added
        self._added_slots = array("q")                      # ... and their slot numbers (flush: no dict lookups)
        self._sorted: KeyRuns | None = None                 # sorted keys, built on demand (keyruns.py)
        self._used = 0
        self._count = 0
        self._first_seq = 0
        self._last_seq = 0
        self._frozen = False

    # --- sizing ---------------------------------------------------------------
    @staticmethod
    def record_size(klen: int, vlen: int) -> int:
        """Arena bytes taken by one record: 24-byte header + key + value,
        rounded up to a multiple of 8."""
        return (_REC_SIZE + klen + vlen + 7) & ~7

    @staticmethod
    def capacity_for_keys(keys: int) -> int:
        """The smallest arena capacity whose index takes *keys* new keys
        (at most 0.75 load; the index has one slot per 64 arena bytes)."""
        slots = -(-keys * _MAX_LOAD_DEN // _MAX_LOAD_NUM)
        return 64 * slots

    def fits(self, nbytes: int, nrecords: int = 1) -> bool:
        """True if *nbytes* more arena bytes fit and the index stays at or
        below 0.75 load even if all *nrecords* records bring new keys."""
        return (self._used + nbytes <= self.capacity
                and len(self._index) + nrecords <= self._max_keys)

    # --- writer (shard process, writer thread under the write lock) -------------
    def add(self, seq: int, kind: int, key: bytes, value: bytes) -> None:
        """Append one version of *key*. The caller has checked ``fits``."""
        self.add_batch(seq, [(kind, key, value)])

    def add_batch(self, first_seq: int, ops: list[tuple[int, bytes, bytes]]) -> None:
        """Append (kind, key, value) records with seqs first_seq, first_seq+1, ...
        The caller has checked ``fits``; if it did not and a record does not
        fit, the records before it stay published and AssertionError is raised."""
        if self._frozen:
            raise AssertionError(f"memtable {self.number} is frozen")
        if len(ops) >= BULK_MIN and add_bulk(self, first_seq, ops):
            return
        mm = self._mm
        mv = self._mv
        slots = self._slots
        index = self._index
        index_get = index.get
        added = self._added.append
        added_slot = self._added_slots.append
        pack = SEGMENT_RECORD.pack_into
        khash = _key_hash
        mask = self._mask
        base = self._base
        cap = self.capacity
        free_keys = self._max_keys - len(index)
        used = self._used
        seq = first_seq
        new_keys = 0
        try:
            for kind, key, value in ops:
                klen = len(key)
                vlen = len(value)
                size = (31 + klen + vlen) & -8
                if used + size > cap:
                    raise AssertionError(
                        f"memtable {self.number}: record of {size} bytes does not fit "
                        f"({used}/{cap} used); caller must check fits()")
                si = index_get(key)
                if si is None:
                    if new_keys >= free_keys:
                        raise AssertionError(
                            f"memtable {self.number}: index full ({self._max_keys} keys); "
                            "caller must check fits()")
                    si = khash(key) & mask
                    while slots[si]:
                        si = (si + 1) & mask
                    prev = 0
                else:
                    prev = slots[si]
                p = base + used
                pack(mm, p, klen, vlen, (seq << 8) | kind, prev)
                p += 24
                mv[p:p + klen] = key
                p += klen
                mv[p:p + vlen] = value
                slots[si] = used + 1                 # publish: record first, then slot
                used += size
                if not prev:                          # new key: Python index last
                    index[key] = si
                    added_slot(si)                # before the key: a reader of both never finds it short
                    added(key)
                    new_keys += 1
                seq += 1
        finally:
            if seq > first_seq:
                self._publish(first_seq, seq - first_seq, used)

    def _publish(self, first_seq: int, n: int, used: int) -> None:
        """Make *n* records appended from *first_seq* on count: the header's
        arena_used and count (after their bytes and slots), then the seqs."""
        self._count += n
        self._used = used
        # Single aligned 8-byte stores: struct.pack_into would zero
        # the field before writing it, and a reader in another
        # process could see that zero.
        hdr = self._hdr
        hdr[_Q_USED] = used
        hdr[_Q_COUNT] = self._count
        if not self._first_seq:
            self._first_seq = first_seq
        self._last_seq = first_seq + n - 1

    @property
    def mapping(self) -> mmap.mmap:
        """The segment's writable mapping (placement: huge pages, NUMA)."""
        return self._mm

    def freeze(self) -> None:
        """Mark the segment immutable (header flag); later adds are refused."""
        self._frozen = True
        flags = _U32.unpack_from(self._mm, SEGMENT_OFF_FLAGS)[0]
        self._mv[SEGMENT_OFF_FLAGS:SEGMENT_OFF_FLAGS + 4].cast("I")[0] = flags | SEGMENT_FLAG_IMMUTABLE   # one 4-byte store

    # --- readers (any thread of the shard process) --------------------------------
    def get(self, key: bytes, snapshot_seq: int, copy: bool = True, h: int | None = None) -> tuple[int, Any] | None:
        """(kind, value) of the newest version of *key* with seq <= snapshot_seq,
        or None. A tombstone comes back as (Kind.DELETE, b""). ``copy=False``:
        the value is a memoryview into the segment (records never change).
        *h* (the key's ``key_hash``, where the caller has it) is not needed
        here: the writer's index is a dict."""
        si = self._index.get(key)
        if si is None:
            return None
        ref = self._slots[si]
        mm = self._mm
        base = self._base - 1
        unpack = SEGMENT_RECORD.unpack_from
        while ref:
            off = base + ref
            klen, vlen, seqkind, prev = unpack(mm, off)
            if seqkind >> 8 <= snapshot_seq:
                p = off + 24 + klen
                return seqkind & 0xFF, mm[p:p + vlen] if copy else self._mv[p:p + vlen]
            ref = prev
        return None

    def _key_runs(self) -> KeyRuns:
        # Keys are only ever added, in the order of ``_added``: the sorted
        # runs of its first n keys are brought up to date with the rest.
        added = self._added
        n = len(added)                                # a writer may be appending meanwhile
        runs = self._sorted
        if runs is None:
            runs = KeyRuns(sort_keys(added[:n]))
        elif runs.count != n:
            runs = runs.add(sort_keys(added[runs.count:n]))
        else:
            return runs
        self._sorted = runs
        return runs

    def _sorted_keys(self) -> list[bytes]:
        """Every key in one sorted list (flush): the runs folded into one,
        which later scans then use too."""
        runs = self._key_runs()
        if runs.small:
            runs = self._sorted = KeyRuns(runs.full())    # the same keys: a newer state is caught up later
        return runs.big

    def iter_visible(self, start: bytes | None, end: bytes | None, reverse: bool,
                     snapshot_seq: int) -> Iterator[tuple[bytes, int, bytes]]:
        """(key, kind, value) for each key in [start, end) (None = unbounded):
        the newest version with seq <= snapshot_seq, tombstones included, in
        ascending (or, with *reverse*, descending) key order. Safe while the
        writer keeps adding: keys added later are skipped, newer versions are
        filtered out by *snapshot_seq*."""
        return self._iter_keys(self._key_runs().range(start, end, reverse), snapshot_seq)

    def _iter_keys(self, keys: Iterator[bytes], snapshot_seq: int) -> Iterator[tuple[bytes, int, bytes]]:
        index = self._index
        slots = self._slots
        mm = self._mm
        base = self._base - 1
        unpack = SEGMENT_RECORD.unpack_from
        for key in keys:
            ref = slots[index[key]]
            while ref:
                off = base + ref
                klen, vlen, seqkind, prev = unpack(mm, off)
                if seqkind >> 8 <= snapshot_seq:
                    p = off + 24 + klen
                    yield key, seqkind & 0xFF, mm[p:p + vlen]
                    break
                ref = prev

    def iter_internal(self) -> Iterator[tuple[bytes, int, bytes]]:
        """Every record as (key, seqkind, value), key ascending, seq descending
        (all versions). Used by flush, normally after ``freeze``."""
        keys = self._sorted_keys()
        index = self._index
        slots = self._slots
        mm = self._mm
        base = self._base - 1
        unpack = SEGMENT_RECORD.unpack_from
        for key in keys:
            ref = slots[index[key]]
            while ref:
                off = base + ref
                klen, vlen, seqkind, prev = unpack(mm, off)
                p = off + 24 + klen
                yield key, seqkind, mm[p:p + vlen]
                ref = prev

    def newest_lists(self, newest_only: bool = False) -> tuple[list[bytes], list[int], list[bytes],
                                                               np.ndarray, np.ndarray] | None:
        """(keys, seqkinds, values, key lengths, value lengths) of every
        record, key ascending, when each key has one version only (else
        None: ``iter_internal``); with *newest_only*, of each key's newest
        version whatever the others (for a flush that no snapshot needs the
        older versions of). Headers are gathered in numpy, values sliced in
        C: flush's bulk path."""
        if self._count != len(self._index) and not newest_only:
            return None
        added = self._added
        n = len(added)                                # the writer may be appending meanwhile
        if n != len(self._index):
            return None
        # Sorted from the keys in the order they came, with their slot
        # numbers beside them (a dict lookup per key costs more than the
        # sort), and where they are short enough, their first bytes read
        # from the arena in numpy. Per-key work in C goes a chunk of keys at
        # a time: this runs on the flush thread, beside the shard's message
        # loop (gil.py).
        added = added[:n]
        slots = np.frombuffer(self._added_slots[:n], dtype=np.int64) + SEGMENT_HEADER_SIZE // 8
        mv = self._mv
        words32 = np.frombuffer(mv, dtype=np.uint32, count=len(mv) // 4)
        words64 = np.frombuffer(mv, dtype=np.uint64, count=len(mv) // 8)
        off = words64[slots].astype(np.int64)
        off += self._base - 1                     # records start 8-aligned (sizes are rounded up)
        klen = words32[off >> 2].astype(np.int64)
        if n > keyruns.SORT_IN_NUMPY and int(klen.max()) <= keyruns.LEX_WIDTH:
            order = order_rows(_key_rows(np.frombuffer(mv, dtype=np.uint8), off, klen), added)
        else:
            order = sort_order(added)
        keys = gil.take(added, order)
        off = off[order]
        klen = klen[order]
        vlen = words32[(off >> 2) + 1].astype(np.int64)
        seqkinds = words64[(off >> 3) + 1]
        del words32, words64                      # no export of the mapping outlives the call
        vstart = off + 24 + klen
        vend = vstart + vlen
        mm = self._mm
        sks: list[int] = []
        vals: list[bytes] = []
        chunk = gil.CHUNK
        for i in range(0, n, chunk):
            sks += seqkinds[i:i + chunk].tolist()
            vals += map(mm.__getitem__, map(slice, vstart[i:i + chunk].tolist(), vend[i:i + chunk].tolist()))
            gil.pause()
        return keys, sks, vals, klen, vlen

    # --- accounting ---------------------------------------------------------------
    @property
    def entries(self) -> int:
        return self._count

    @property
    def distinct_keys(self) -> int:
        return len(self._index)

    @property
    def arena_used(self) -> int:
        return self._used

    @property
    def approximate_memory(self) -> int:
        return self._used

    @property
    def first_seq(self) -> int:
        return self._first_seq

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def is_immutable(self) -> bool:
        return self._frozen

    def stats(self) -> dict:
        return {
            "number": self.number,
            "path": self.path,
            "capacity": self.capacity,
            "arena_used": self._used,
            "entries": self._count,
            "distinct_keys": len(self._index),
            "slots": self._nslots,
            "load_factor": len(self._index) / self._nslots,
            "first_seq": self._first_seq,
            "last_seq": self._last_seq,
            "immutable": self._frozen,
        }

    def close(self) -> None:
        """Release the views and the mapping (the engine removes the file).
        Call only once no iterator over this memtable is in use."""
        if self._mm is None:
            return
        self._slots.release()
        self._hdr.release()
        self._mv.release()
        self._sorted = None
        try:
            self._mm.close()
        except BufferError:
            pass                       # a straggling view keeps the mapping alive
        self._mm = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Memtable(number={self.number}, entries={self._count}, "
                f"used={self._used}/{self.capacity}, frozen={self._frozen})")


def _key_rows(arena: np.ndarray, off: np.ndarray, klen: np.ndarray) -> np.ndarray:
    """The keys of the records at *off* (offsets into the segment's bytes
    *arena*, keys *klen* long, at most LEX_WIDTH) as rows of bytes padded
    with NULs to a multiple of 8 (``keyruns.order_rows``), gathered a chunk
    of records at a time (the bytes past a short key, which may lie past
    the arena's end, are read clipped and then cleared)."""
    n = len(off)
    width = -(-int(klen.max()) // 8) * 8
    cols = np.arange(width)
    last = len(arena) - 1
    rows = np.empty((n, width), dtype=np.uint8)
    for i in range(0, n, gil.CHUNK):
        part = rows[i:i + gil.CHUNK]
        part[...] = arena[np.minimum((off[i:i + gil.CHUNK] + 24)[:, None] + cols, last)]
        part[cols >= klen[i:i + gil.CHUNK, None]] = 0
        gil.pause()
    return rows
