"""A memtable's bulk insert: a batch of writes appended with numpy and C-level maps.

``Memtable.add_batch`` appends record by record in a Python loop (~1.3 µs a
record). For a batch of at least ``BULK_MIN`` records whose keys are
distinct and which fits, ``add_bulk`` does the same work a batch at a time:

- the records' offsets from a cumulative sum of their sizes; the arena
  bytes (a zeroed header, key, value, padding of each record) joined into
  one buffer and copied into the segment in one store, then the headers
  (``klen vlen seqkind prev``, 8-aligned) written as u64 words by numpy;
- index slots for the new keys: each takes its home slot
  (``xxh3_64(key) & mask``) when that slot is empty and no other key of the
  batch with the same home comes before it; the rest probe on one by one,
  past the slots of the segment and those the batch took, exactly as the
  loop would place them (linear probing does not depend on insertion order
  for correctness, only for which free slot a key ends in);
- a key already in the memtable keeps its slot, and its record's ``prev``
  is the slot's current record.

Publication order is the loop's: every record's bytes, then the slots, then
the Python index, then the header counters (``Memtable._publish``), so a
reader in any process that sees a slot sees a complete record.

Anything else (a short batch, a key twice in the batch, a batch that does
not fit) returns False having written nothing, and the caller's loop runs.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from .format import SEGMENT_HEADER_SIZE

if TYPE_CHECKING:
    from .memtable import Memtable

__all__ = ["BULK_MIN", "add_bulk"]

BULK_MIN = 200                  # shorter batches: the loop (numpy's per-call costs win there;
                                # measured in bench/RESULTS.md, tenth session)
_GAP = bytes(24)                # a record header's place (prev 0 stays for a new key)
_PADS = [b"\0" * i for i in range(8)]
_SLOT0 = SEGMENT_HEADER_SIZE // 8          # the first index slot as a u64 word of the segment
_kind, _key, _value = itemgetter(0), itemgetter(1), itemgetter(2)
_key_hash = xxhash.xxh3_64_intdigest


def add_bulk(mt: "Memtable", first_seq: int, ops: list[tuple[int, bytes, bytes]]) -> bool:
    """Append *ops* (seqs first_seq, first_seq + 1, ...) to *mt* as
    ``add_batch`` would; False, with nothing written, where the batch is not
    one this path takes."""
    n = len(ops)
    if n < BULK_MIN:
        return False
    keys = list(map(_key, ops))
    if len(set(keys)) != n:
        return False
    vals = list(map(_value, ops))
    klen = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    vlen = np.fromiter(map(len, vals), dtype=np.int64, count=n)
    size = (klen + vlen + 31) & -8
    ends = np.cumsum(size)
    total = int(ends[-1])
    used = mt._used
    if used + total > mt.capacity:
        return False
    index = mt._index
    found = list(map(index.get, keys)) if index else [None] * n
    if found.count(None) == n:
        old: list[int] = []
        fresh: list[int] | range = range(n)
    else:
        old = [i for i, s in enumerate(found) if s is not None]
        fresh = [i for i, s in enumerate(found) if s is None]
    if len(fresh) > mt._max_keys - len(index):
        return False
    words = np.frombuffer(mt._mv, dtype=np.uint64, count=len(mt._mv) // 8)
    try:
        parts: list[bytes] = [_GAP] * (4 * n)                   # each header's place, filled below
        parts[1::4] = keys
        parts[2::4] = vals
        parts[3::4] = map(_PADS.__getitem__, (size - 24 - klen - vlen).tolist())
        start = mt._base + used
        mt._mv[start:start + total] = b"".join(parts)          # every record's bytes first
        refs = ends - size                                      # arena offsets
        at = (refs + start) >> 3                                # headers as u64 words (8-aligned)
        words[at] = (klen | (vlen << 32)).astype(np.uint64)     # klen:u32 vlen:u32
        words[at + 1] = (np.arange(first_seq << 8, (first_seq + n) << 8, 256, dtype=np.uint64)
                         | np.fromiter(map(_kind, ops), dtype=np.uint64, count=n))
        refs += used + 1                                        # slot values: 1 + arena offset
        refs = refs.astype(np.uint64)
        if old:
            slot = np.array([found[i] for i in old], dtype=np.int64) + _SLOT0
            words[at[old] + 2] = words[slot]                    # prev: the key's newest record so far
            words[slot] = refs[old]
            new_keys = [keys[i] for i in fresh]
            placed = _place(mt, words, new_keys, refs[fresh])
        else:
            new_keys = keys
            placed = _place(mt, words, keys, refs)
    finally:
        del words                   # no export of the mapping outlives the call
    index.update(zip(new_keys, placed))                         # then the Python index
    mt._added_slots.extend(placed)                              # before the keys (Memtable.newest_lists)
    mt._added.extend(new_keys)
    mt._publish(first_seq, n, used + total)
    return True


def _place(mt: "Memtable", words: np.ndarray, keys: list[bytes], refs: np.ndarray) -> list[int]:
    """Give each of *keys* (none in the memtable yet; their records are
    written) an index slot holding its record's *refs*; returns the slot
    numbers. A key whose home slot (``xxh3_64(key) & mask``) is empty takes
    it in one numpy store; where several keys of the batch share a home, one
    of them holds it after the store (read back) and the others, with keys
    whose home was taken before, probe on one by one as the loop does.
    Every slot goes from empty to a complete record's reference."""
    n = len(keys)
    mask = mt._mask
    home = np.fromiter(map(_key_hash, keys), dtype=np.uint64, count=n) & np.uint64(mask)
    at = home.astype(np.int64) + _SLOT0
    free = np.flatnonzero(words[at] == 0)
    words[at[free]] = refs[free]
    won = free[words[at[free]] == refs[free]]
    out = home.tolist()
    if len(won) == n:
        return out
    rest = np.ones(n, dtype=bool)
    rest[won] = False
    slots = mt._slots
    for i, ref in zip(np.flatnonzero(rest).tolist(), refs[rest].tolist()):
        s = out[i]
        while slots[s]:
            s = (s + 1) & mask
        slots[s] = ref
        out[i] = s
    return out
