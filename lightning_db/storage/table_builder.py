"""Building SSTables: ``TableWriter`` and the point index.

Runs in the shard process (flush and compaction, one thread per writer).
The layout is the one documented in ``format.py``; ``table.py`` reads it.
All I/O goes through the ``fs`` seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from operator import and_, lt, ne
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import zstandard
from crc32c import crc32c

from . import gil
from .bloom import build_filter, key_hash
from .format import BLOCK_TRAILER, FORMAT_VERSION, TABLE_FOOTER, TABLE_MAGIC, Compression, Kind, mask_crc

__all__ = ["TableWriter", "TableMeta", "build_point_index", "probe_slots", "PROPS_FIELDS", "FOOTER_CRC_SPAN"]

PROPS_FIELDS = ("entries", "distinct_keys", "tombstones", "smallest", "largest", "min_seq",
                "max_seq", "data_size", "index_size", "filter_size", "compression",
                "format_version", "block_count", "pindex_size")
FOOTER_CRC_SPAN = 6 * 8 + 4          # footer bytes covered by footer_crc
_TRAILER = BLOCK_TRAILER.size
_ENTRY_OVERHEAD = 12                 # rough msgpack bytes per entry beyond key+value
_NONE, _ZSTD = int(Compression.NONE), int(Compression.ZSTD)
_VALUE, _DELETE, _TTL = int(Kind.VALUE), int(Kind.DELETE), int(Kind.VALUE_TTL)


@dataclass(frozen=True)
class TableMeta:
    """What the manifest needs to know about a finished table."""

    path: str
    file_size: int
    entries: int
    tombstones: int
    smallest: bytes
    largest: bytes
    min_seq: int
    max_seq: int


# --- writing -------------------------------------------------------------------


class TableWriter:
    """Builds one table. ``add`` records in internal order, then ``finish``
    (durable: synced and closed) or ``abandon`` (file removed)."""

    def __init__(self, fs: Any, path: str, config: Any) -> None:
        self.path = path
        self._fs = fs
        self._f = fs.create(path)
        self._block_size = config.block_size
        self._bits_per_key = config.bloom_bits_per_key
        self._compression = config.compression
        self._zstd = (zstandard.ZstdCompressor(level=config.zstd_level)
                      if config.compression == "zstd" else None)
        self._keys: list[bytes] = []          # the pending block: three parallel lists
        self._sks: list[int] = []
        self._vals: list[bytes] = []
        self._pending = 0
        self._block_distinct = 0
        self._offset = 0
        self._ix: tuple[list, list, list] = ([], [], [])   # last_keys, offsets, sizes
        self._hashes: list[int] = []
        # Point-index entries of the newest version of each key, a block at
        # a time: (file offsets, spans, kinds, crcs), in the order of
        # ``_hashes``; only for uncompressed tables (offsets must address the
        # file's bytes directly).
        self._point: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = (
            [] if self._zstd is None and config.point_index else None)
        self._flushed = self._tombstones = self._expiring = self._max_seq = 0
        self._min_seq: int | None = None
        self._smallest: bytes | None = None
        self._last_key: bytes | None = None
        self._last_sk = 0
        self._done = False

    @property
    def entries(self) -> int:
        return self._flushed + len(self._keys)

    @property
    def estimated_size(self) -> int:
        """Bytes written so far plus the pending block."""
        return self._offset + self._pending

    def add(self, key: bytes, seqkind: int, value: bytes) -> None:
        """Append one record; records must come in internal order
        (key ascending, then seq descending), else ValueError."""
        if self._done:
            raise ValueError(f"table writer for {self.path} is already finished")
        last = self._last_key
        if last is not None and key <= last:
            if key < last:
                raise ValueError(f"table keys out of order: {key!r} after {last!r}")
            if seqkind >> 8 >= self._last_sk >> 8:
                raise ValueError(f"versions of key {key!r} out of order: seq {seqkind >> 8} "
                                 f"after {self._last_sk >> 8} (must decrease)")
        else:                                 # a new user key: a block may end here
            if self._pending >= self._block_size:
                self._flush()
            self._last_key = key
            self._hashes.append(key_hash(key))
            self._block_distinct += 1
        self._last_sk = seqkind
        self._keys.append(key)
        self._sks.append(seqkind)
        self._vals.append(value)
        self._pending += len(key) + len(value) + _ENTRY_OVERHEAD

    def add_many(self, keys: list[bytes], sks: list[int], vals: list[bytes],
                 klen: np.ndarray | None = None, vlen: np.ndarray | None = None) -> None:
        """``add`` for each record, with one version per key (keys strictly
        ascending, after every key added so far): the same table, with the
        block cuts found in numpy instead of record by record, and each
        whole block of the batch written straight from the lists (its
        records' spans for the point index from one numpy pass over the
        batch). *klen*, *vlen*: the keys' and values' lengths (int64 arrays)
        where the caller has them."""
        n = len(keys)
        if self._done:
            raise ValueError(f"table writer for {self.path} is already finished")
        if not n:
            return
        last = self._last_key
        # Per-key work in C goes a chunk of keys at a time (a flush or
        # compaction thread beside the shard's message loop: gil.py).
        if (last is not None and keys[0] <= last) or not _ascending(keys):
            for k, sk, v in zip(keys, sks, vals):       # add says what is out of order
                self.add(k, sk, v)
            return
        for i in range(0, n, gil.CHUNK):
            self._hashes += map(key_hash, keys[i:i + gil.CHUNK])
            gil.pause()
        kl = gil.per_item(_lengths, keys, np.int64) if klen is None else klen
        vl = gil.per_item(_lengths, vals, np.int64) if vlen is None else vlen
        ends = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kl + vl + _ENTRY_OVERHEAD, out=ends[1:])
        kinds = gil.per_item(_kinds, sks, np.uint8)
        if self._point is not None and (kinds == _TTL).any():
            self._point = None                          # as _flush would at the first such block
        span = _record_spans(kl, vl) if self._point is not None else None
        mixed = bool((kinds != _VALUE).any())
        bs = self._block_size
        i = 0
        while i < n:
            if self._pending >= bs:                     # a new key after a full block: cut
                self._flush()
            j = min(n, int(ends.searchsorted(ends[i] + bs - self._pending, "left")))
            if j < n and not self._keys:                # a whole block of this batch
                bk = kinds[i:j]
                self._emit(keys[i:j], sks[i:j], vals[i:j],
                           int((bk == _DELETE).sum()) if mixed else 0, int((bk == _TTL).sum()) if mixed else 0,
                           None if span is None else (span[i:j], bk.astype(np.uint64)))
            else:
                self._keys += keys[i:j]
                self._sks += sks[i:j]
                self._vals += vals[i:j]
                self._block_distinct += j - i
                self._pending += int(ends[j] - ends[i])
            i = j
            gil.pause()
        self._last_key, self._last_sk = keys[-1], sks[-1]

    def _encode(self, payload: bytes, compress: bool) -> bytes:
        comp = _NONE
        if compress and self._zstd is not None:
            packed = self._zstd.compress(payload)
            if len(packed) < len(payload):
                payload, comp = packed, _ZSTD
        crc = crc32c(bytes((comp,)), crc32c(payload))
        return payload + BLOCK_TRAILER.pack(comp, mask_crc(crc))

    def _write(self, block: bytes) -> int:
        off = self._offset
        self._f.write(block)
        self._offset = off + len(block)
        return off

    def _flush(self) -> None:
        """Write the pending block."""
        keys, sks, vals = self._keys, self._sks, self._vals
        n = len(keys)
        kinds = bytes(map(and_, sks, repeat(0xFF)))
        ttl = kinds.count(_TTL)
        points = None
        if self._point is not None and not ttl:
            # The newest version of each key: its record's span and kind.
            kl = np.fromiter(map(len, keys), dtype=np.int64, count=n)
            vl = np.fromiter(map(len, vals), dtype=np.int64, count=n)
            points = (_record_spans(kl, vl),
                      np.frombuffer(kinds, dtype=np.uint8).astype(np.uint64))
            if self._block_distinct != n:                       # older versions too: the first of each key
                first = np.ones(n, dtype=bool)
                first[1:] = np.fromiter(map(ne, keys[1:], keys), dtype=bool, count=n - 1)
                points = (points[0], points[1], first)
        self._emit(keys, sks, vals, kinds.count(_DELETE), ttl, points)
        self._keys, self._sks, self._vals = [], [], []
        self._pending = 0
        self._block_distinct = 0

    def _emit(self, keys: list[bytes], sks: list[int], vals: list[bytes], tombstones: int, ttl: int,
              points: tuple[np.ndarray, ...] | None) -> None:
        """Write one data block of these records and account for it.
        *points*: (span, kind) of each record's msgpack encoding in the
        payload, and where a key has older versions too, a mask of each
        key's first (newest) record: the point index's entries."""
        n = len(keys)
        kvs: list[bytes] = [b""] * (2 * n)
        kvs[0::2] = keys
        kvs[1::2] = vals
        payload = msgpack.packb([kvs, sks])
        block = self._encode(payload, True)
        if ttl:
            # The point index keeps one kind bit (value or tombstone): a
            # table holding expiring values has none, its reads search blocks.
            self._point = None
        if self._point is not None:
            if block[-_TRAILER] != _NONE or points is None:
                raise AssertionError("point index needs uncompressed blocks and the records' spans")
            # Where each record sits in the payload: after the kvs array
            # header, spans follow from the key and value lengths; crcs in one pass.
            span, kind = points[0], points[1]
            n2 = 2 * n
            end = np.cumsum(span) + (1 + (1 if n2 < 16 else 3 if n2 < 65536 else 5))
            if len(points) == 3:
                first = points[2]
                span, end, kind = span[first], end[first], kind[first]
            start = end - span
            view = memoryview(payload)
            crcs = np.fromiter(map(crc32c, map(view.__getitem__, map(slice, start.tolist(), end.tolist()))),
                               dtype=np.uint64, count=len(start))
            self._point.append((start + self._offset, span, kind, crcs))
        self._ix[0].append(keys[-1])
        self._ix[1].append(self._write(block))
        self._ix[2].append(len(block))
        if self._smallest is None:
            self._smallest = keys[0]
        self._flushed += n
        self._tombstones += tombstones
        self._expiring += ttl
        lo, hi = min(sks) >> 8, max(sks) >> 8
        self._min_seq = lo if self._min_seq is None else min(lo, self._min_seq)
        self._max_seq = max(hi, self._max_seq)

    def _point_index(self) -> bytes:
        """The point index over every block's entries: slot words A = offset
        | kind << 40 | (hash >> 41) << 41, B = span | crc << 32."""
        parts = self._point or []
        hashes = np.array(self._hashes, dtype=np.uint64)
        off = np.concatenate([p[0] for p in parts]).astype(np.uint64)
        span = np.concatenate([p[1] for p in parts]).astype(np.uint64)
        kinds = np.concatenate([p[2] for p in parts])
        crcs = np.concatenate([p[3] for p in parts])
        if not hashes.size == off.size == crcs.size:
            raise AssertionError("point index entries do not match the table's keys")
        a = off | (kinds << np.uint64(40)) | ((hashes >> np.uint64(41)) << np.uint64(41))
        return build_point_index(hashes, a, span | (crcs << np.uint64(32)))

    def finish(self) -> TableMeta:
        """Write filter, props, index and footer; sync and close the file."""
        if self._done:
            raise ValueError(f"table writer for {self.path} is already finished")
        self._done = True
        if self._keys:
            self._flush()
        data_size = self._offset
        index = self._encode(msgpack.packb(list(self._ix)), True)
        filt = self._encode(build_filter(self._hashes, self._bits_per_key), False)
        filter_off = self._write(filt)
        pindex = self._encode(self._point_index(), False) if self._point else b""
        if pindex:
            self._write(pindex)
        smallest, largest = self._smallest or b"", self._last_key or b""
        min_seq = self._min_seq or 0
        props = {
            "entries": self._flushed, "distinct_keys": len(self._hashes),
            "tombstones": self._tombstones, "expiring": self._expiring, "smallest": smallest, "largest": largest,
            "min_seq": min_seq, "max_seq": self._max_seq, "data_size": data_size,
            "index_size": len(index), "filter_size": len(filt),
            "compression": self._compression, "format_version": FORMAT_VERSION,
            "block_count": len(self._ix[1]), "pindex_size": len(pindex),
        }
        props_block = self._encode(msgpack.packb(props), True)
        props_off = self._write(props_block)
        fields = (self._write(index), len(index), filter_off, len(filt), props_off,
                  len(props_block), FORMAT_VERSION)
        crc = mask_crc(crc32c(TABLE_FOOTER.pack(*fields, 0, TABLE_MAGIC)[:FOOTER_CRC_SPAN]))
        self._write(TABLE_FOOTER.pack(*fields, crc, TABLE_MAGIC))
        self._f.sync()
        self._f.close()
        return TableMeta(self.path, self._offset, self._flushed, self._tombstones,
                         smallest, largest, min_seq, self._max_seq)

    def abandon(self) -> None:
        """Close and remove the partial file."""
        self._done = True
        try:
            self._f.close()
        finally:
            try:
                self._fs.remove(self.path)
            except FileNotFoundError:
                pass


def build_point_index(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> bytes:
    """Open-addressing table (linear probing, load <= 0.75) of 16-byte slots
    (A, B words, uint64 each) holding the entries with *hashes*, each in
    the slot ``probe_slots`` gives it."""
    n = hashes.size
    nslots = 8
    while nslots * 3 < n * 4:
        nslots *= 2
    out = np.zeros(2 * nslots, dtype=np.uint64)
    slot = probe_slots(hashes, nslots)
    out[2 * slot] = a
    out[2 * slot + 1] = b
    return out.tobytes()


def probe_slots(hashes: np.ndarray, nslots: int) -> np.ndarray:
    """The slot of each entry in a linear-probing table of *nslots* (a power
    of two, more than the entries): every slot from an entry's home
    (``hash & (nslots - 1)``) to its own is taken, as when they are
    inserted one by one. With the entries sorted by home, entry i takes
    p_i = max(home_i, p_(i-1) + 1): a running maximum of home_i - i, plus i,
    O(n log n) however the homes cluster. A run that would pass the last
    slot is placed again with the slots counted from just after a slot that
    stays empty (the k entries past the end take the first k free slots from
    0 on; the next free one stays empty), so no run wraps."""
    n = hashes.size
    mask = nslots - 1
    home = (hashes & np.uint64(mask)).astype(np.int64)
    step = np.arange(n, dtype=np.int64)
    order = np.argsort(home, kind="stable")
    p = np.maximum.accumulate(home[order] - step) + step if n else step
    if n and p[-1] >= nslots:
        taken = np.zeros(nslots, dtype=bool)
        taken[p[p < nslots]] = True
        empty = int(np.flatnonzero(~taken)[int((p >= nslots).sum())])
        home = (home - (empty + 1)) & mask
        order = np.argsort(home, kind="stable")
        p = ((np.maximum.accumulate(home[order] - step) + step) + (empty + 1)) & mask
    slot = np.empty(n, dtype=np.int64)
    slot[order] = p
    return slot


def _ascending(keys: list[bytes]) -> bool:
    """Whether *keys* are strictly ascending, a chunk at a time (gil.py)."""
    for i in range(0, len(keys), gil.CHUNK):
        if not all(map(lt, keys[i:i + gil.CHUNK], keys[i + 1:i + gil.CHUNK + 1])):
            return False
        gil.pause()
    return True


def _lengths(items: list[bytes]) -> Iterator[int]:
    return map(len, items)


def _kinds(seqkinds: list[int]) -> Iterator[int]:
    return map(and_, seqkinds, repeat(0xFF))


def _record_spans(kl: np.ndarray, vl: np.ndarray) -> np.ndarray:
    """Bytes of each record's msgpack encoding in a block payload (key and
    value as bin objects) for key lengths *kl* and value lengths *vl*."""
    return _bin_header(kl) + kl + _bin_header(vl) + vl


def _bin_header(n: np.ndarray) -> np.ndarray:
    """msgpack bin header sizes for payload lengths *n*."""
    return np.where(n < 256, 2, np.where(n < 65536, 3, 5))
