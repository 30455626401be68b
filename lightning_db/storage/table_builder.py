"""Building SSTables: ``TableWriter`` and the point index.

Runs in the shard process (flush and compaction, one thread per writer).
The layout is the one documented in ``format.py``; ``table.py`` reads it.
All I/O goes through the ``fs`` seam.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import repeat
from operator import and_
from typing import Any

import msgpack
import zstandard
from crc32c import crc32c

from .bloom import build_filter, key_hash
from .format import BLOCK_TRAILER, FORMAT_VERSION, TABLE_FOOTER, TABLE_MAGIC, Compression, Kind, mask_crc

__all__ = ["TableWriter", "TableMeta", "build_point_index", "PROPS_FIELDS", "FOOTER_CRC_SPAN"]

PROPS_FIELDS = ("entries", "distinct_keys", "tombstones", "smallest", "largest", "min_seq",
                "max_seq", "data_size", "index_size", "filter_size", "compression",
                "format_version", "block_count", "pindex_size")
FOOTER_CRC_SPAN = 6 * 8 + 4          # footer bytes covered by footer_crc
_TRAILER = BLOCK_TRAILER.size
_ENTRY_OVERHEAD = 12                 # rough msgpack bytes per entry beyond key+value
_NONE, _ZSTD = int(Compression.NONE), int(Compression.ZSTD)


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
        # Point-index entries (hash, file offset, span, kind, crc) of the newest
        # version of each key; only for uncompressed tables (offsets must
        # address the file's bytes directly).
        self._point: list[tuple[int, int, int, int, int]] | None = (
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

    def _index_points(self, payload: bytes, block_off: int, keys: list[bytes], sks: list[int],
                      vals: list[bytes]) -> None:
        """Record where the newest version of each key of this block sits in
        the file, for the point index (see format.py). The block's distinct
        keys are the last entries of ``_hashes``, in order."""
        n2 = 2 * len(keys)
        rel = 1 + (1 if n2 < 16 else 3 if n2 < 65536 else 5)     # [ kvs-array-header ...
        view = memoryview(payload)
        append = self._point.append
        hashes = iter(self._hashes[len(self._hashes) - self._block_distinct:])
        prev = None
        for k, sk, v in zip(keys, sks, vals):
            kl, vl = len(k), len(v)
            span = ((2 if kl < 256 else 3 if kl < 65536 else 5) + kl
                    + (2 if vl < 256 else 3 if vl < 65536 else 5) + vl)
            if k != prev:                                        # the newest version of k
                append((next(hashes), block_off + rel, span, sk & 0xFF, crc32c(view[rel:rel + span])))
                prev = k
            rel += span

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
        keys, sks, vals = self._keys, self._sks, self._vals
        n = len(keys)
        kvs: list[bytes] = [b""] * (2 * n)
        kvs[0::2] = keys
        kvs[1::2] = vals
        payload = msgpack.packb([kvs, sks])
        block = self._encode(payload, True)
        kinds = bytes(map(and_, sks, repeat(0xFF)))
        if self._point is not None and kinds.count(Kind.VALUE_TTL):
            # The point index keeps one kind bit (value or tombstone): a
            # table holding expiring values has none, its reads search blocks.
            self._point = None
        if self._point is not None:
            if block[-_TRAILER] != _NONE:
                raise AssertionError("point index needs uncompressed blocks")
            self._index_points(payload, self._offset, keys, sks, vals)
        self._ix[0].append(keys[-1])
        self._ix[1].append(self._write(block))
        self._ix[2].append(len(block))
        if self._smallest is None:
            self._smallest = keys[0]
        self._flushed += len(keys)
        self._tombstones += kinds.count(Kind.DELETE)
        self._expiring += kinds.count(Kind.VALUE_TTL)
        lo, hi = min(sks) >> 8, max(sks) >> 8
        self._min_seq = lo if self._min_seq is None else min(lo, self._min_seq)
        self._max_seq = max(hi, self._max_seq)
        self._keys, self._sks, self._vals = [], [], []
        self._pending = 0
        self._block_distinct = 0

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
        pindex = self._encode(build_point_index(self._point), False) if self._point else b""
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


def build_point_index(points: list[tuple[int, int, int, int, int]]) -> bytes:
    """Open-addressing table (linear probing, load <= 0.75) of 16-byte slots:
    A = offset | kind << 40 | (hash >> 41) << 41, B = span | crc << 32."""
    nslots = 8
    while nslots * 3 < len(points) * 4:
        nslots *= 2
    mask = nslots - 1
    slots = [0] * (2 * nslots)
    for h, off, span, kind, crc in points:
        i = (h & mask) << 1
        while slots[i]:
            i = (i + 2) & (2 * mask + 1)
        slots[i] = off | (kind << 40) | ((h >> 41) << 41)
        slots[i + 1] = span | (crc << 32)
    return array("Q", slots).tobytes()
