"""Batch point lookups (``get_many``) over one version, source by source.

``lookup`` (lookup.py) answers one key: it walks the memtables newest first,
then L0 newest first, then the deeper levels, and stops at the first source
that holds a visible version. ``lookup_many`` gives the same answer for each
key of a batch, but turns the loops inside out: each source is asked once,
for every key of the batch still unresolved, and answers with numpy passes
over the batch plus C-level loops (``map``) where Python objects are needed:

* every key is hashed once (xxh3_64); the hash serves the memtable index,
  the bloom filters and the tables' point indexes;
* a memtable segment probes its hash index for the batch
  (``SegmentReader.get_many``);
* an L0 file takes the keys inside its [smallest, largest]; a deeper level
  routes each key to its one candidate file with ``np.searchsorted`` over
  the level's largest keys;
* a table screens its keys with its bloom filter (``may_contain_many``),
  then probes its point index for the survivors on fingerprints
  (``TableReader.get_many``) and copies out the records the probes end on;
* those records are verified once for the whole batch, all tables
  together (``check_points``: crc, key bytes, value slices). A probe
  that ended on another key's record (a fingerprint twin, about one probe
  in 8 million) leaves its key to ``lookup``.

Keys are compared in numpy as fixed-width ``S`` strings, which pad with NUL
bytes: a key and the same key followed by NULs compare equal there. Such a
tie can only add a candidate (the file's own lookup then misses), except
when routing to a level's file, where it is settled with ``bisect``; the
answers are therefore exact for any bytes. Batches of long keys (wider
than ``MAX_WIDTH``) are routed with ``bisect`` instead.

Any thread, no locks (like ``lookup``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import getitem
from typing import Any

import numpy as np
from crc32c import crc32c

from ..errors import CorruptionError
from .bloom import key_hash
from .lookup import lookup
from .ttl import VALUE_TTL, visible
from .version import Version

__all__ = ["MAX_WIDTH", "MIN_BATCH", "KeyBatch", "lookup_many", "values_many"]

MAX_WIDTH = 256        # widest key routed with numpy strings (the array is n x width bytes)
MIN_BATCH = 128        # smaller batches take the per-key path (measured: numpy's per-call
                       # cost outweighs what the batch saves below ~100-130 keys)
_DELETE = 0
_VALUE = 1
_LEVEL_ARRAYS: dict[int, tuple[list[bytes], np.ndarray, np.ndarray]] = {}
_LEVEL_CACHE = 64
_WIDE = np.empty(0, dtype=bytes)     # Batch.arr of a batch too wide for numpy strings
_FEW_RECORDS = 16      # check_points: up to this many records are checked in plain Python
_M40 = (1 << 40) - 1
_M40_NP, _M32_NP = np.uint64(_M40), np.uint64(0xFFFFFFFF)
_32_NP, _40_NP, _1_NP = np.uint64(32), np.uint64(40), np.uint64(1)


class KeyBatch:
    """The keys of one batch, their hashes and lengths (given, or computed
    here), and what has been found so far:
    answers (``pos[j]`` is the position in ``keys`` of the j-th) and the
    point-index records still to verify (``points``, see ``check_points``)."""

    __slots__ = ("_arr", "_lens", "_mat", "_new", "hashes", "keys", "kinds", "pending", "points", "pos",
                 "todo", "vals")

    def __init__(self, keys: Sequence[bytes], hashes: np.ndarray | None = None,
                 lens: np.ndarray | None = None) -> None:
        n = len(keys)
        self.keys = keys
        self.hashes = np.fromiter(map(key_hash, keys), dtype=np.uint64, count=n) if hashes is None else hashes
        self.pending = np.ones(n, dtype=bool)
        self.todo = np.arange(n)
        self._arr: np.ndarray | None = None
        self._lens: np.ndarray | None = lens
        self._mat: np.ndarray | None = None
        self._new: list[Any] = []                # positions found since the last settle
        self.pos: list[int] = []
        self.kinds: list[int] = []
        self.vals: list[Any] = []
        self.points: list[tuple[Any, Any, Any, Any, list[bytes]]] = []

    def add(self, pos: list[int], kinds: list[int], vals: Iterable[Any]) -> None:
        """Answers found: positions, kinds, values (bytes)."""
        self.pos += pos
        self.kinds += kinds
        self.vals += vals
        self._new.append(pos)

    def defer(self, reader: Any, pos: Any, a: Any, b: Any, recs: list[bytes]) -> None:
        """Keys whose probe ended on a record of *reader*'s point index
        (slot words *a*, *b*, the record's bytes; arrays or lists): found,
        to be verified."""
        self.points.append((reader, pos, a, b, recs))
        self._new.append(pos)

    def lens(self) -> np.ndarray:
        """Key lengths (int64)."""
        if self._lens is None:
            self._lens = np.fromiter(map(len, self.keys), dtype=np.int64, count=len(self.keys))
        return self._lens

    def strings(self) -> np.ndarray | None:
        """The keys as a numpy ``S`` array (None: too wide, use bisect)."""
        arr = self._arr
        if arr is None:
            lens = self.lens()
            width = int(lens.max())
            if width > MAX_WIDTH:
                arr = _WIDE
            elif int(lens.min()) == width:      # keys of one length: their bytes side by side are the array
                arr = np.frombuffer(b"".join(self.keys), dtype=f"S{width}")
            else:
                arr = np.array(self.keys, dtype=bytes)
            self._arr = arr
        return None if arr is _WIDE else arr

    def matrix(self) -> np.ndarray | None:
        """The keys as rows of bytes, zero-padded (n x width uint8), or None
        when too wide."""
        if self._mat is None:
            arr = self.strings()
            if arr is None:
                return None
            self._mat = arr.view(np.uint8).reshape(len(arr), arr.dtype.itemsize)
        return self._mat

    def settle(self) -> bool:
        """The keys found since the last call leave the pending set; False
        when no key is left."""
        new = [p for p in self._new if len(p)]
        self._new = []
        if new:
            self.pending[np.concatenate(new) if len(new) > 1 else new[0]] = False
            self.todo = np.flatnonzero(self.pending)
        return bool(self.todo.size)


# --- point-index records (their layout: format.py, table.py) -----------------------


def check_points(kb: KeyBatch, points: list[tuple[Any, Any, Any, Any, list[bytes]]]) -> list[int]:
    """Verify the point-index records that ``Any.get_many`` copied
    for a batch, all tables at once: (reader, positions, A words, B words,
    records), arrays or lists. A record whose crc does not hold raises
    ``CorruptionError``; each record that holds its key goes to ``kb.add``
    (its kind, its value as bytes). The positions whose record held another key (a fingerprint
    twin, about one probe in 8 million) are returned: their lookups are
    not finished."""
    if len(points) == 1:
        _, at, a, b, recs = points[0]
        if len(recs) <= _FEW_RECORDS:
            return _check_few(kb, points)
        at, a, b = np.asarray(at, dtype=np.intp), np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    elif sum(len(p[4]) for p in points) <= _FEW_RECORDS:
        return _check_few(kb, points)
    else:
        at, a, b = (np.concatenate([np.asarray(p[n], dtype=t) for p in points])
                    for n, t in ((1, np.intp), (2, np.uint64), (3, np.uint64)))
        recs = [r for p in points for r in p[4]]
    if list(map(crc32c, recs)) != (b >> _32_NP).tolist():
        for reader, _, pa, pb, prec in points:
            for x, r, y in zip(pa, prec, pb):
                if crc32c(r) != int(y) >> 32:
                    raise CorruptionError(f"record at offset {int(x) & _M40}: checksum mismatch", reader.path)
    span = (b & _M32_NP).astype(np.int64)
    if (span < 2).any():
        bad = next(p for p in points if any(int(y) & 0xFFFFFFFF < 2 for y in p[3]))
        raise CorruptionError("point index names an empty record", bad[0].path)
    # The records side by side in one buffer: headers and keys are read in numpy.
    starts = np.zeros(at.size, dtype=np.int64)
    np.cumsum(span[:-1], out=starts[1:])
    buf = np.frombuffer(b"".join(recs), dtype=np.uint8)
    ks, kl = _bin_spans(buf, starts)
    ok = kl == kb.lens()[at]
    kmat = kb.matrix()
    if kmat is not None:
        cols = np.arange(kmat.shape[1])
        got = buf.take(ks[:, None] + cols, mode="clip")
        if not (kl >= cols.size).all():
            got[cols >= kl[:, None]] = 0
        ok &= (got == kmat[at]).all(axis=1)
    else:
        ok &= np.fromiter(map(bytes.startswith, recs, map(kb.keys.__getitem__, at.tolist()), (ks - starts).tolist()),
                          dtype=bool, count=at.size)
    twins: list[int] = []
    if not ok.all():
        twins = at[~ok].tolist()
        at, a, ks, kl, starts = at[ok], a[ok], ks[ok], kl[ok], starts[ok]
        recs = list(compress(recs, ok.tolist()))
    vs, _ = _bin_spans(buf, ks + kl)
    rel = vs - starts                               # where each value starts in its record
    r0 = int(rel[0]) if rel.size else 0
    cuts = repeat(slice(r0, None)) if (rel == r0).all() else map(slice, rel.tolist(), repeat(None))
    kb.add(at.tolist(), ((a >> _40_NP) & _1_NP).tolist(), map(getitem, recs, cuts))
    return twins


def _check_few(kb: KeyBatch, points: list[tuple[Any, Any, Any, Any, list[bytes]]]) -> list[int]:
    """``check_points`` for a few records, one at a time in Python (the
    same steps as ``Any.get``)."""
    keys, twins = kb.keys, []
    for reader, at, a, b, recs in points:
        at, a, b = (x.tolist() if isinstance(x, np.ndarray) else x for x in (at, a, b))
        for i, x, y, rec in zip(at, a, b, recs):
            if crc32c(rec) != y >> 32:
                raise CorruptionError(f"record at offset {x & _M40}: checksum mismatch", reader.path)
            if len(rec) < 2:
                raise CorruptionError("point index names an empty record", reader.path)
            key, t = keys[i], rec[0]
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
                kb.add([i], [(x >> 40) & 1], [rec[p:]])
            else:
                twins.append(i)
    return twins


def _bin_spans(u8: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(payload start, payload length) of the msgpack bin objects at *off*."""
    t = u8.take(off, mode="clip")
    n1 = u8.take(off + 1, mode="clip").astype(np.int64)
    if (t == 0xC4).all():
        return off + 2, n1
    n2, n3, n4 = (u8.take(off + d, mode="clip").astype(np.int64) for d in (2, 3, 4))
    c4, c5 = t == 0xC4, t == 0xC5
    n = np.where(c4, n1, np.where(c5, n1 << 8 | n2, n1 << 24 | n2 << 16 | n3 << 8 | n4))
    return off + np.where(c4, 2, np.where(c5, 3, 5)), n


def _level_arrays(files: Sequence[Any], largest: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest keys of a deeper level as ``S`` arrays,
    cached by the identity of its (immutable) list of largest keys; the
    cache holds that list, so the identity is not reused meanwhile."""
    hit = _LEVEL_ARRAYS.get(id(largest))
    if hit is not None and hit[0] is largest:
        return hit[1], hit[2]
    small = np.array([f.smallest for f in files], dtype=bytes)
    large = np.array(largest, dtype=bytes)
    if len(_LEVEL_ARRAYS) >= _LEVEL_CACHE:
        _LEVEL_ARRAYS.clear()                   # one call, safe while other threads read it
    _LEVEL_ARRAYS[id(largest)] = (largest, small, large)
    return small, large


def _in_range(b: KeyBatch, smallest: bytes, largest: bytes) -> np.ndarray:
    """The pending keys with smallest <= key <= largest (perhaps a few more)."""
    todo = b.todo
    arr = b.strings()
    if arr is None:
        keys = b.keys
        return todo[np.fromiter((smallest <= keys[i] <= largest for i in todo.tolist()),
                                dtype=bool, count=todo.size)]
    a = arr[todo]
    return todo[(a >= np.bytes_(smallest)) & (a <= np.bytes_(largest))]


def _route(b: KeyBatch, files: Sequence[Any], largest: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(file number in the level, key position) for each pending key that
    falls in a file of this deeper level (perhaps a few more)."""
    todo = b.todo
    arr = b.strings()
    if arr is None:
        keys = b.keys
        fi = np.fromiter((bisect_left(largest, keys[i]) for i in todo.tolist()), dtype=np.intp,
                         count=todo.size)
        ok = fi < len(files)
        todo, fi = todo[ok], fi[ok]
        ok = np.fromiter((files[f].smallest <= keys[i] for f, i in zip(fi.tolist(), todo.tolist())),
                         dtype=bool, count=todo.size)
        return fi[ok], todo[ok]
    small, large = _level_arrays(files, largest)
    a = arr[todo]
    fi = large.searchsorted(a, "left")
    tie = fi != large.searchsorted(a, "right")
    if tie.any():               # equal up to trailing NULs: settle with bytes order
        keys = b.keys
        for j in np.flatnonzero(tie).tolist():
            fi[j] = bisect_left(largest, keys[todo[j]])
    ok = fi < len(files)
    if not ok.all():
        todo, fi, a = todo[ok], fi[ok], a[ok]
    ok = small[fi] <= a
    return fi[ok], todo[ok]


def _collect(mems: Sequence[Any], version: Version, keys: Sequence[bytes], seq: int,
             hashes: np.ndarray | None = None, lens: np.ndarray | None = None) -> KeyBatch:
    """Every source in lookup order, each for the keys still unresolved;
    then the point-index records found are verified for the whole batch,
    and a key whose record turns out to hold another key is looked up
    alone."""
    b = KeyBatch(keys, hashes, lens)
    _ask(b, mems, version, keys, seq)
    if b.points:
        twins = check_points(b, b.points)
        for i in twins:
            r = lookup(mems, version, keys[i], seq)
            if r is not None:
                b.add([i], [r[0]], [r[1]])
    return b


def _ask(b: KeyBatch, mems: Sequence[Any], version: Version, keys: Sequence[bytes], seq: int) -> None:
    for m in mems:
        if hasattr(m, "get_many"):
            m.get_many(b, b.todo, seq)
        else:                                   # the engine's own memtables: a dict each
            get = m.get
            for i in b.todo.tolist():
                r = get(keys[i], seq)
                if r is not None:
                    b.add([i], [r[0]], [bytes(r[1])])
        if not b.settle():
            return
    for f in version.levels[0]:
        idx = _in_range(b, f.smallest, f.largest)
        if idx.size:
            f.reader.get_many(b, idx, seq, True)
            if not b.settle():
                return
    deep = version.deep
    last = len(deep) - 1
    for n, (files, largest) in enumerate(deep):
        fi, idx = _route(b, files, largest)
        if not idx.size:
            continue
        # The last level: most lookups of present keys end here, and the
        # point index answers a miss as fast as the filter would.
        check = n != last
        if len(files) == 1 or (fi[0] == fi).all():
            files[int(fi[0])].reader.get_many(b, idx, seq, check)
        else:
            order = np.argsort(fi, kind="stable")
            fi, idx = fi[order], idx[order]
            cuts = (np.flatnonzero(fi[1:] != fi[:-1]) + 1).tolist()
            for lo, hi in zip([0, *cuts], [*cuts, fi.size]):
                files[int(fi[lo])].reader.get_many(b, idx[lo:hi], seq, check)
        if n == last or not b.settle():
            return


def lookup_many(mems: Sequence[Any], version: Version, keys: Sequence[bytes],
                seq: int) -> list[tuple[int, Any] | None]:
    """``[lookup(mems, version, k, seq) for k in keys]`` (values as bytes),
    each source asked once for the whole batch. *keys* are ``bytes``."""
    if len(keys) < max(MIN_BATCH, 1):
        return [lookup(mems, version, k, seq) for k in keys]
    b = _collect(mems, version, keys, seq)
    out: list[tuple[int, Any] | None] = [None] * len(keys)
    for i, kind, v in zip(b.pos, b.kinds, b.vals):
        out[i] = (kind, v)
    return out


def values_many(mems: Sequence[Any], version: Version, keys: Sequence[bytes], seq: int,
                hashes: np.ndarray | None = None, lens: np.ndarray | None = None) -> list[Any]:
    """The value of each key as ``lookup_many`` finds it, None for a key
    that is missing or deleted (``get_many``). *hashes* and *lens*:
    ``key_hash`` and the length of each key, where the caller has them
    already (uint64 and int64 arrays)."""
    if len(keys) < max(MIN_BATCH, 1):
        out = []
        for k in keys:
            r = lookup(mems, version, k, seq)
            out.append(None if r is None else r[1] if r[0] == _VALUE else visible(*r))
        return out
    b = _collect(mems, version, keys, seq, hashes, lens)
    out = [None] * len(keys)
    if b.pos:
        if _DELETE in b.kinds or VALUE_TTL in b.kinds:
            seen = [visible(kind, v) for kind, v in zip(b.kinds, b.vals)]
            live = [j for j, v in enumerate(seen) if v is not None]
            pos, vals = [b.pos[j] for j in live], [seen[j] for j in live]
        else:
            pos, vals = b.pos, b.vals
        list(map(out.__setitem__, pos, vals))
    return out
