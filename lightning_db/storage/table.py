"""SSTables: immutable sorted files of internal records (the reader).

``TableReader`` runs in the shard process (and any reader process that maps
the file); once opened, all of its methods are safe from any thread. The
writer, ``TableWriter``, is in ``table_builder.py``. The layout is the one documented in ``format.py``::

    table := data_block* filter_block props_block index_block footer
    block := payload compression:u8 masked_crc32c(payload + compression):u32

Data block payload (after decompression): msgpack ``[kvs, seqkinds]`` with
``kvs = [key0, value0, key1, value1, ...]`` sorted by (key asc, seq desc);
all versions of one user key share a block. A point index (format.py) maps
key hashes to record offsets for reads straight from the mapped file.
Index payload: msgpack ``[last_keys, offsets, sizes]`` (size includes the
trailer). Filter payload: ``bloom.build_filter`` over ``key_hash`` of each
distinct user key. Props payload: msgpack dict (``PROPS_FIELDS``, plus
"expiring", the count of expiring values, absent in tables of older builds).
All I/O goes through the ``fs`` seam.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import repeat
from operator import and_
from typing import TYPE_CHECKING, Any, Iterator

import msgpack
import numpy as np
import zstandard
from crc32c import crc32c

from ..errors import CorruptionError
from .bloom import BloomFilter, key_hash
from .cache import CachePolicy
from .format import (BLOCK_TRAILER, FORMAT_VERSION, TABLE_FOOTER, TABLE_MAGIC, Compression,
                     Kind, mask_crc)
from .ttl import visible

__all__ = ["TableWriter", "TableReader", "TableMeta", "PROPS_FIELDS"]

if TYPE_CHECKING:
    from .batch import KeyBatch

# The writer lives in table_builder.py; its names are re-exported here.
from .table_builder import FOOTER_CRC_SPAN, PROPS_FIELDS, TableMeta, TableWriter  # noqa: E402

_TRAILER = BLOCK_TRAILER.size
_FOOTER = TABLE_FOOTER.size
_MAX_BLOCK = 1 << 31                 # sanity bound on a decompressed block
SCAN_FILL_BLOCKS = 16                # blocks a scan puts into the block cache (per table)
_NONE, _ZSTD = int(Compression.NONE), int(Compression.ZSTD)
_BYTES, _INT = {bytes}, {int}
_DELETE_KIND, _VALUE_KIND, _TTL_KIND = int(Kind.DELETE), int(Kind.VALUE), int(Kind.VALUE_TTL)
_JUST_VALUES = {_VALUE_KIND}
_M40 = (1 << 40) - 1
_NP_M40, _NP_M32 = np.uint64(_M40), np.uint64(0xFFFFFFFF)
_NP_41 = np.uint64(41)
_WINDOW = np.arange(4)               # get_many: slots probed per key in one gather
_FEW_KEYS = 16                       # get_many: up to this many keys probe in plain Python
_INT_PROPS = ("entries", "tombstones", "min_seq", "max_seq", "block_count", "pindex_size")


# --- reading -------------------------------------------------------------------


def _check_block(view: memoryview, off: int, size: int, path: str, what: str) -> int:
    """Verify the checksum of the block at [off, off+size); its compression byte."""
    if size < _TRAILER or off < 0 or off + size > len(view):
        raise CorruptionError(f"{what} block at offset {off} size {size} is out of bounds", path)
    end = off + size
    comp, stored = BLOCK_TRAILER.unpack_from(view, end - _TRAILER)
    if mask_crc(crc32c(view[off:end - 4])) != stored:
        raise CorruptionError(f"{what} block at offset {off}: checksum mismatch", path)
    return comp


def _read_block(view: memoryview, off: int, size: int, path: str, what: str) -> Any:
    """Verify and decompress the block at [off, off+size): its payload."""
    comp = _check_block(view, off, size, path, what)
    end = off + size
    payload = view[off:end - _TRAILER]
    if comp == _NONE:
        return payload
    if comp != _ZSTD:
        raise CorruptionError(f"{what} block at offset {off}: unknown compression {comp}", path)
    try:
        n = zstandard.frame_content_size(payload)
        if not 0 <= n <= _MAX_BLOCK:
            raise zstandard.ZstdError(f"implausible content size {n}")
        return zstandard.ZstdDecompressor().decompress(payload)
    except Exception as exc:          # ZstdError, or anything a damaged frame provokes
        raise CorruptionError(f"{what} block at offset {off}: bad zstd data ({exc})",
                              path) from None


def _unpack(view: memoryview, off: int, size: int, path: str, what: str, use_list: bool = True) -> Any:
    """The verified block at *off*, msgpack-decoded."""
    raw = _read_block(view, off, size, path, what)
    try:
        return msgpack.unpackb(raw, use_list=use_list), len(raw)
    except Exception as exc:
        raise CorruptionError(f"{what} block at offset {off}: undecodable ({exc!r})",
                              path) from None


def _decode_data(view: memoryview, off: int, size: int, path: str,
                 top: int | None = None) -> tuple[tuple, int]:
    """(keys, seqkinds, values, plain, top) of the data block at *off*, and
    its decoded size. Tuples, not lists: a tuple of bytes and ints leaves the
    cyclic garbage collector's lists after its first pass, so the blocks held
    by the cache cost no collection time (lists of them made a cold scan 1.5x
    slower). *top*: the table is plain (its props say so) and this is its
    largest seqkind, so the block need not be checked for it."""
    obj, n = _unpack(view, off, size, path, "data", use_list=False)
    if (type(obj) is not tuple or len(obj) != 2 or not all(type(x) is tuple for x in obj)
            or len(obj[0]) != 2 * len(obj[1]) or not obj[1] or not set(map(type, obj[1])) == _INT):
        raise CorruptionError(f"data block at offset {off}: malformed", path)
    kvs, sks = obj
    try:
        b"".join(kvs)          # every key and value is bytes (C speed; str, ints, ext types raise)
    except TypeError:
        raise CorruptionError(f"data block at offset {off}: malformed", path) from None
    keys = kvs[0::2]
    if top is not None:
        return (keys, sks, kvs[1::2], True, top), n
    # plain: one version per key and only plain values (no tombstone, no
    # expiring value), so a scan whose snapshot covers max(sks) can zip keys
    # and values at C speed (checked in C here).
    plain = len(set(keys)) == len(keys) and set(map(and_, sks, repeat(0xFF))) == _JUST_VALUES
    return (keys, sks, kvs[1::2], plain, max(sks)), n


class TableReader:
    """A mapped, verified table. ``open`` checks footer, index, filter and
    props; data blocks are verified when first read. Never returns data from
    a damaged block: ``CorruptionError`` instead."""

    def __init__(self) -> None:  # use TableReader.open
        self._rf: Any = None

    @classmethod
    def open(cls, fs: Any, path: str, number: int, cache: CachePolicy | None) -> "TableReader":
        rf = fs.open_readable(path)
        self = cls()
        self._rf = rf
        try:
            self._load(rf.view, rf.size, path, number, cache)
        except BaseException:
            rf.close()
            raise
        return self

    def _load(self, view: memoryview, size: int, path: str, number: int,
              cache: CachePolicy | None) -> None:
        self.number, self.path, self.file_size = number, path, size
        self._view, self._cache = view, cache
        self._cache_get = cache.get if cache is not None else None
        if size < _FOOTER:
            raise CorruptionError(f"table file too short ({size} bytes) for a footer", path)
        (index_off, index_size, filter_off, filter_size, props_off, props_size, version,
         footer_crc, magic) = TABLE_FOOTER.unpack_from(view, size - _FOOTER)
        if magic != TABLE_MAGIC:
            raise CorruptionError(f"bad table magic {magic!r}", path)
        if version != FORMAT_VERSION:
            raise CorruptionError(f"unknown table format version {version} "
                                  f"(this build reads {FORMAT_VERSION})", path)
        if mask_crc(crc32c(view[size - _FOOTER:size - _FOOTER + FOOTER_CRC_SPAN])) != footer_crc:
            raise CorruptionError("table footer checksum mismatch", path)
        if not (props_off + props_size == index_off and index_off + index_size == size - _FOOTER
                and 0 <= filter_off <= filter_off + filter_size <= props_off):
            raise CorruptionError("table footer block layout is inconsistent", path)
        props = _unpack(view, props_off, props_size, path, "props")[0]
        if (type(props) is not dict or any(f not in props for f in PROPS_FIELDS)
                or not all(type(props[f]) is bytes for f in ("smallest", "largest"))
                or not all(type(props[f]) is int for f in _INT_PROPS)):
            raise CorruptionError("props block is malformed", path)
        pindex_off, pindex_size = filter_off + filter_size, props["pindex_size"]
        if pindex_off + pindex_size != props_off:
            raise CorruptionError("table footer block layout is inconsistent", path)
        index = _unpack(view, index_off, index_size, path, "index")[0]
        try:
            self.filter = BloomFilter(_read_block(view, filter_off, filter_size, path, "filter"))
        except ValueError as exc:
            raise CorruptionError(f"filter block: {exc}", path) from None
        self._pslots: memoryview | None = None
        self._pmask = 0
        self._pa = self._pb = None
        # The file's bytes as a numpy array (batch reads parse record headers
        # with it); over a slice of the view, so the view itself can be released.
        self._u8: np.ndarray | None = np.frombuffer(view[:], dtype=np.uint8)
        if pindex_size:
            # Read from the mapping, shared by every process: its checksum
            # holds now, but a table damaged in place later shows the damage
            # to every mapping. A slot found is checked by its record's crc;
            # an absence it reports is confirmed by the bloom filter (a
            # private copy, BloomFilter) and, where the filter says maybe,
            # by the data blocks (get, get_many): a damaged slot never turns
            # a present key into an absent one.
            raw = _read_block(view, pindex_off, pindex_size, path, "point index")
            nslots = len(raw) // 16
            if len(raw) % 16 or nslots < 8 or nslots & (nslots - 1):
                raise CorruptionError("point index block is malformed", path)
            self._pslots = raw.cast("Q")
            self._pmask = nslots - 1
            # The same slots for batch probes (get_many): A words, B words.
            words = np.frombuffer(raw, dtype=np.uint64)
            self._pa, self._pb = words[0::2], words[1::2]
        self._mm = self._rf._mm if self._rf is not None else None
        if (type(index) is not list or len(index) != 3 or not all(type(x) is list for x in index)
                or not len(index[0]) == len(index[1]) == len(index[2]) == props["block_count"]
                or not set(map(type, index[0])) <= _BYTES):
            raise CorruptionError("index block is malformed", path)
        last_keys, offsets, sizes = index
        pos = 0
        for o, s in zip(offsets, sizes):
            if type(o) is not int or o != pos or type(s) is not int or s < _TRAILER:
                raise CorruptionError("index block offsets are inconsistent", path)
            pos += s
        if pos != filter_off or any(a >= b for a, b in zip(last_keys, last_keys[1:])):
            raise CorruptionError("index block does not match the data blocks", path)
        self._last_keys, self._offsets, self._sizes = last_keys, offsets, sizes
        self._nblocks = len(offsets)
        self._ckeys = [(number, o) for o in offsets]     # block cache keys, no per-get tuple
        self._may_contain = self.filter.may_contain
        self.props: dict[str, Any] = props
        self.smallest: bytes = props["smallest"]
        self.largest: bytes = props["largest"]
        self.min_seq: int = props["min_seq"]
        self.max_seq: int = props["max_seq"]
        self.entries: int = props["entries"]
        self.tombstones: int = props["tombstones"]
        expiring = props.get("expiring")       # absent in tables of older builds
        if expiring is not None and type(expiring) is not int:
            raise CorruptionError("props block is malformed", path)
        # Plain table: each key once, no tombstone, no expiring value; its
        # blocks are plain without being checked one by one.
        plain = expiring == 0 and self.tombstones == 0 and props["distinct_keys"] == self.entries
        self._plain_top: int | None = (self.max_seq << 8) | 0xFF if plain else None

    # --- blocks ---
    def _block(self, i: int, fill: bool = True) -> tuple:
        """Decoded block *i* from the cache, else read and verified (and
        cached when *fill*; whole-table scans pass False)."""
        cache_get = self._cache_get
        block = cache_get(self._ckeys[i]) if cache_get is not None else None
        return block if block is not None else self._fill(i, fill)

    def _fill(self, i: int, put: bool = True) -> tuple:
        if self._rf is None:
            raise ValueError(f"table reader for {self.path} is closed")
        block, charge = _decode_data(self._view, self._offsets[i], self._sizes[i], self.path, self._plain_top)
        if put and self._cache is not None:
            self._cache.put(self._ckeys[i], block, charge)
        return block

    # --- point reads ---
    def may_contain(self, key: bytes, h: int | None = None) -> bool:
        return self._may_contain(key_hash(key) if h is None else h)

    def get(self, key: bytes, snapshot_seq: int, h: int | None = None,
            check_filter: bool = True, copy: bool = True) -> tuple[int, Any] | None:
        """(kind, value) of the newest version of *key* with seq <= snapshot_seq,
        or None. A tombstone is (Kind.DELETE, b"").

        ``check_filter=False`` skips the bloom filter: the engine does so in
        the last level, where most lookups of present keys end and the
        filter would only confirm what the block search finds anyway.
        ``copy=False``: the value is a memoryview (into the mapped file when
        the point index found it; it keeps the mapping alive while held)."""
        slots = self._pslots
        if slots is not None and snapshot_seq >= self.max_seq:
            # The point index: a hash probe, then the record read straight
            # from the mapped file and checked against its own crc. No block
            # is decoded, and a bloom probe only where the index finds
            # nothing (the index is read from the shared mapping).
            if h is None:
                h = key_hash(key)
            mask = self._pmask
            fp = h >> 41
            i = h & mask
            while True:
                a = slots[2 * i]
                if not a:
                    if not self._may_contain(h):
                        return None
                    check_filter = False        # a false positive, or a damaged slot: the blocks decide
                    break
                if a >> 41 == fp:
                    off = a & _M40
                    b = slots[2 * i + 1]
                    end = off + (b & 0xFFFFFFFF)
                    mm = self._mm                   # bytes straight from the mapping: cheaper to parse
                    rec = mm[off:end] if mm is not None else self._view[off:end].tobytes()
                    if crc32c(rec) != b >> 32:
                        raise CorruptionError(f"record at offset {off}: checksum mismatch", self.path)
                    t = rec[0]
                    if t == 0xC4:
                        kl, p = rec[1], 2
                    elif t == 0xC5:
                        kl, p = rec[1] << 8 | rec[2], 3
                    else:
                        kl, p = int.from_bytes(rec[1:5], "big"), 5
                    if kl == len(key) and rec.startswith(key, p):
                        p += kl
                        t = rec[p]
                        p += 2 if t == 0xC4 else 3 if t == 0xC5 else 5
                        return (a >> 40) & 1, rec[p:] if copy else self._view[off + p:end]
                i = (i + 1) & mask
        if check_filter and not self._may_contain(key_hash(key) if h is None else h):
            return None
        i = bisect_left(self._last_keys, key)
        if i == self._nblocks:
            return None
        cache_get = self._cache_get
        block = cache_get(self._ckeys[i]) if cache_get is not None else None
        if block is None:
            block = self._fill(i)
        keys = block[0]
        j = bisect_left(keys, key)
        limit = (snapshot_seq << 8) | 0xFF
        seqkinds = block[1]
        n = len(keys)
        while j < n and keys[j] == key:
            sk = seqkinds[j]
            if sk <= limit:
                return sk & 0xFF, block[2][j] if copy else memoryview(block[2][j])
            j += 1
        return None

    def get_many(self, kb: KeyBatch, idx: np.ndarray, snapshot_seq: int, check_filter: bool = True) -> None:
        """``get`` for the keys ``kb.keys[i]``, i in *idx*, at once.

        With *check_filter* the bloom filter screens the keys first (one
        numpy pass). Without a usable point index (none, or a snapshot
        older than the table) each key that passes is looked up alone and
        its answer goes to ``kb.add``. Otherwise the point index is probed
        for all of them on fingerprints in numpy, and the records the
        probes end on are copied out of the mapping and handed to
        ``kb.defer``: ``batch.check_points`` verifies them (crc, key) for
        the whole batch at the end."""
        hashes = kb.hashes
        if check_filter and idx.size:
            idx = idx[self.filter.may_contain_many(hashes[idx])]
        if not idx.size:
            return
        pa = self._pa
        if pa is None or snapshot_seq < self.max_seq or self._rf is None:
            self._get_each(kb, idx, snapshot_seq)
            return
        if idx.size <= _FEW_KEYS:
            self._probe_few(kb, idx, snapshot_seq, check_filter)
            return
        mask = self._pmask
        h = hashes[idx]
        fp = h >> _NP_41
        home = (h & np.uint64(mask)).view(np.int64)
        # A window of slots per key in one gather: the first slot that is
        # empty or holds the key's fingerprint ends its probe sequence; a
        # key whose window is all taken by others probes on alone.
        win = pa[(home[:, None] + _WINDOW) & mask]
        stop = np.minimum((win >> _NP_41) ^ fp[:, None], win) == 0
        j = stop.argmax(axis=1)
        rows = np.arange(idx.size)
        a = win[rows, j]
        slot = (home + j) & mask
        more = ~stop.any(axis=1)
        if more.any():
            a[more], slot[more] = self._probe_each(fp[more], (home[more] + (_WINDOW.size - 1)) & mask)
        found = a != 0
        if not found.all():
            self._confirm_absent(kb, idx[~found], snapshot_seq, check_filter)
            if not found.any():
                return
            idx, a, slot = idx[found], a[found], slot[found]
        b = self._pb[slot]
        off = (a & _NP_M40).view(np.int64)
        end = off + (b & _NP_M32).view(np.int64)
        # One numpy gather touches the records' cache lines first (those
        # loads overlap; the copies below would wait for each miss in turn).
        np.take(self._u8, np.concatenate((off, off + 64, end - 1)), mode="clip")
        mm = self._mm
        get = mm.__getitem__ if mm is not None else (lambda s: self._view[s].tobytes())
        kb.defer(self, idx, a, b, list(map(get, map(slice, off.tolist(), end.tolist()))))

    def _probe_few(self, kb: KeyBatch, idx: np.ndarray, snapshot_seq: int, filtered: bool) -> None:
        """``get_many``'s point-index probe for a few keys, one at a time in
        Python (cheaper than numpy's per-call cost there)."""
        slots, mask, mm = self._pslots, self._pmask, self._mm
        get = mm.__getitem__ if mm is not None else (lambda s: self._view[s].tobytes())
        at, aa, bb, recs, missed = [], [], [], [], []
        for i, h in zip(idx.tolist(), kb.hashes[idx].tolist()):
            f, s = h >> 41, h & mask
            while True:
                a = slots[2 * s]
                if not a:
                    missed.append(i)
                    break
                if a >> 41 == f:
                    b = slots[2 * s + 1]
                    o = a & _M40
                    at.append(i)
                    aa.append(a)
                    bb.append(b)
                    recs.append(get(slice(o, o + (b & 0xFFFFFFFF))))
                    break
                s = (s + 1) & mask
        if at:
            kb.defer(self, at, aa, bb, recs)
        if missed:
            self._confirm_absent(kb, np.array(missed, dtype=np.intp), snapshot_seq, filtered)

    def _confirm_absent(self, kb: KeyBatch, idx: np.ndarray, snapshot_seq: int, filtered: bool) -> None:
        """Keys ``kb.keys[i]``, i in *idx*, that the point index found no
        record for: absent where the bloom filter agrees (already asked when
        *filtered*); the rest (false positives, or a slot damaged in place
        since the table was opened) are looked up one by one, the blocks
        deciding (``get``)."""
        if not filtered:
            idx = idx[self.filter.may_contain_many(kb.hashes[idx])]
        if idx.size:
            self._get_each(kb, idx, snapshot_seq)

    def _probe_each(self, fp: np.ndarray, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Go on probing past the window, one key at a time (from the last
        slot of its window, *slot*): (A word, slot) where each probe ended."""
        slots, mask = self._pslots, self._pmask
        out_a, out_s = [], []
        for f, s in zip(fp.tolist(), slot.tolist()):
            while True:
                s = (s + 1) & mask
                a = slots[2 * s]
                if not a or a >> 41 == f:
                    break
            out_a.append(a)
            out_s.append(s)
        return np.array(out_a, dtype=np.uint64), np.array(out_s, dtype=np.intp)

    def _get_each(self, kb: KeyBatch, idx: np.ndarray, snapshot_seq: int) -> None:
        """``get_many`` one key at a time (no point index, an older snapshot)."""
        keys, get = kb.keys, self.get
        for i, h in zip(idx.tolist(), kb.hashes[idx].tolist()):
            r = get(keys[i], snapshot_seq, h, False)
            if r is not None:
                kb.add([i], [r[0]], [r[1]])

    # --- scans ---
    def _walk(self, start: bytes | None, end: bytes | None,
              reverse: bool) -> Iterator[tuple[tuple, int, int]]:
        """(block, lo, hi) for every block meeting [start, end), in order.
        Only the first SCAN_FILL_BLOCKS blocks read go into the block cache:
        a long scan does not push out what point reads and short scans use
        (and reuses its memory instead of growing the heap)."""
        if start is not None and end is not None and start >= end:
            return
        last_keys, nblocks = self._last_keys, self._nblocks
        if not reverse:
            i = bisect_left(last_keys, start) if start is not None else 0
            n = 0
            while i < nblocks:
                block = self._block(i, n < SCAN_FILL_BLOCKS)
                n += 1
                keys = block[0]
                lo = bisect_left(keys, start) if start is not None else 0
                last = end is not None and end <= last_keys[i]
                hi = bisect_left(keys, end) if last else len(keys)
                yield block, lo, hi
                if last:
                    return
                i += 1
        else:
            i = nblocks - 1 if end is None else min(bisect_left(last_keys, end), nblocks - 1)
            n = 0
            while i >= 0:
                if start is not None and last_keys[i] < start:
                    return
                block = self._block(i, n < SCAN_FILL_BLOCKS)
                n += 1
                keys = block[0]
                lo = bisect_left(keys, start) if start is not None else 0
                hi = bisect_left(keys, end) if end is not None else len(keys)
                yield block, lo, hi
                i -= 1

    def iter_visible(self, start: bytes | None, end: bytes | None, reverse: bool,
                     snapshot_seq: int) -> Iterator[tuple[bytes, int, bytes]]:
        """(key, kind, value) of the newest version with seq <= snapshot_seq of
        each key in [start, end), tombstones included; blocks read lazily."""
        limit = (snapshot_seq << 8) | 0xFF
        for (keys, sks, vals, _, _), lo, hi in self._walk(start, end, reverse):
            yield from _visible(keys, sks, vals, lo, hi, limit, reverse)

    def live_chunks(self, start: bytes | None, end: bytes | None, reverse: bool,
                    snapshot_seq: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """(key, value) of live keys only, one non-empty list per block:
        ``iter_visible`` without the tombstones, for a scan this table
        serves alone. Plain blocks are zipped at C speed."""
        limit = (snapshot_seq << 8) | 0xFF
        for (keys, sks, vals, plain, top), lo, hi in self._walk(start, end, reverse):
            if plain and top <= limit:
                if lo or hi != len(keys):
                    keys, vals = keys[lo:hi], vals[lo:hi]
                part = list(zip(reversed(keys), reversed(vals))) if reverse else list(zip(keys, vals))
            else:
                part = []
                for k, kind, v in _visible(keys, sks, vals, lo, hi, limit, reverse):
                    if kind == _VALUE_KIND:
                        part.append((k, v))
                    elif kind == _TTL_KIND and (v := visible(kind, v)) is not None:
                        part.append((k, v))
            if part:
                yield part

    def iter_internal(self) -> Iterator[tuple[bytes, int, bytes]]:
        """Every record (key, seqkind, value) in internal order (compaction).
        Does not fill the block cache."""
        for keys, sks, vals in self.iter_blocks():
            yield from zip(keys, sks, vals)

    def iter_blocks(self) -> Iterator[tuple[Any, Any, Any]]:
        """Every block's (keys, seqkinds, values), in order (the bulk merge
        of compactions). Does not fill the block cache."""
        for i in range(self._nblocks):
            block = self._block(i, False)
            yield block[0], block[1], block[2]

    def check_sums(self) -> int:
        """The checksum of every block (what opening did not check already:
        the data blocks and the point index), nothing decoded; the number
        of blocks. Cheap next to ``verify``: for copies of whole files."""
        if self._rf is None:
            raise ValueError(f"table reader for {self.path} is closed")
        view, path = self._view, self.path
        for off, size in zip(self._offsets, self._sizes):
            _check_block(view, off, size, path, "data")
        f = TABLE_FOOTER.unpack_from(view, self.file_size - _FOOTER)
        if self.props["pindex_size"]:
            _check_block(view, f[2] + f[3], self.props["pindex_size"], path, "point index")
        return self._nblocks + 1

    def verify(self) -> int:
        """Re-read and check every block (data, filter, props, index) without
        the cache, plus ordering and counts; the number of blocks checked."""
        if self._rf is None:
            raise ValueError(f"table reader for {self.path} is closed")
        view, path, prev, entries, first = self._view, self.path, None, 0, None
        f = TABLE_FOOTER.unpack_from(view, self.file_size - _FOOTER)
        for off, sz, what in ((f[0], f[1], "index"), (f[2], f[3], "filter"), (f[4], f[5], "props"),
                              (f[2] + f[3], self.props["pindex_size"], "point index")):
            if sz:
                _read_block(view, off, sz, path, what)
        if self._pslots is not None:
            self._verify_point_index()
        for i in range(self._nblocks):
            off = self._offsets[i]
            (keys, sks, _, _, _), _ = _decode_data(view, off, self._sizes[i], path)
            for k, sk in zip(keys, sks):
                if prev is not None and (k < prev[0] or (k == prev[0] and sk >> 8 >= prev[1] >> 8)):
                    raise CorruptionError(f"data block at offset {off}: records out of order", path)
                prev = (k, sk)
            if keys[-1] != self._last_keys[i] or (i and keys[0] == self._last_keys[i - 1]):
                raise CorruptionError(f"data block at offset {off} does not match the index", path)
            entries += len(keys)
            first = keys[0] if first is None else first
        if entries != self.entries:
            raise CorruptionError(f"table holds {entries} records, props say {self.entries}", path)
        if self._nblocks and (first != self.smallest or self._last_keys[-1] != self.largest):
            raise CorruptionError("table smallest/largest keys do not match props", path)
        return self._nblocks + 3

    def _verify_point_index(self) -> None:
        """Every slot names a record whose crc holds and whose key hashes to
        the slot's fingerprint; one slot per distinct key."""
        slots, mm, n = self._pslots, self._mm, 0
        for i in range(self._pmask + 1):
            a = slots[2 * i]
            if not a:
                continue
            off, b = a & _M40, slots[2 * i + 1]
            rec = mm[off:off + (b & 0xFFFFFFFF)]
            if crc32c(rec) != b >> 32:
                raise CorruptionError(f"point index slot {i}: record checksum mismatch", self.path)
            n += 1
        if n != self.props["distinct_keys"]:
            raise CorruptionError(f"point index holds {n} keys, props say {self.props['distinct_keys']}",
                                  self.path)

    def close(self) -> None:
        if self._rf is not None:
            self._cache_get = None    # later reads go to _fill, which refuses
            self._u8 = self._pa = self._pb = None      # their exports would pin the mapping
            if self._pslots is not None:
                self._pslots.release()
                self._pslots = None
            rf, self._rf = self._rf, None
            rf.close()

    def __repr__(self) -> str:
        return f"TableReader({self.path!r}, number={self.number}, entries={self.entries})"


def _visible(keys: tuple, sks: tuple, vals: tuple, lo: int, hi: int, limit: int,
             reverse: bool) -> Iterator[tuple[bytes, int, bytes]]:
    """Newest version with seqkind <= limit of each key in keys[lo:hi]; lo and
    hi sit on version-group boundaries (bisect_left results)."""
    if lo >= hi:
        return
    ks, ss, vs = keys[lo:hi], sks[lo:hi], vals[lo:hi]
    n = len(ks)
    if max(ss) <= limit and len(set(ks)) == n:       # common case: C-speed zip
        if reverse:
            ks, ss, vs = ks[::-1], ss[::-1], vs[::-1]
        yield from zip(ks, map(and_, ss, repeat(0xFF)), vs)
        return
    if not reverse:
        done = None
        for j in range(n):
            k = ks[j]
            if k != done:
                sk = ss[j]
                if sk <= limit:
                    done = k
                    yield k, sk & 0xFF, vs[j]
        return
    j = n - 1
    while j >= 0:                 # group by group from the back; newest first within one
        k = ks[j]
        g = bisect_left(ks, k, 0, j)
        for t in range(g, j + 1):
            sk = ss[t]
            if sk <= limit:
                yield k, sk & 0xFF, vs[t]
                break
        j = g - 1
