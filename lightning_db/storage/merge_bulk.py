"""A compaction's bulk merge: whole blocks merged with C-level sorts and maps.

``compaction.write_tables`` merges its inputs record by record (a heap of
generators, a Python loop deciding each record's fate, ``TableWriter.add``):
~1.9 µs a record read, against ~1.5 µs here. When no snapshot can see any version but the newest of a
key, which is the common case, a compaction only has to keep each key's
newest record (dropping a tombstone where no deeper level holds the key),
and that is done here a chunk at a time:

- each input table is read a few blocks at a time as (keys, seqkinds,
  values) lists, straight from its decoded blocks;
- a chunk takes, from every input, the records up to the smallest of the
  inputs' last buffered keys (no input can hold a smaller key later);
- the chunk is ordered by key with one stable sort of indices; where a key
  appears in several inputs, the record with the highest sequence number
  is kept (found by a Python loop over those keys only);
- the survivors go to ``TableWriter.add_many``, output files cut at
  ``target_file_size`` between keys, as the record path does.

It applies when every input table has one version per key and no expiring
value (their props say so), and every input's newest record is at or below
the oldest snapshot. Otherwise ``plain_inputs`` answers None and the record
path runs. The output holds the same records as the record path's would.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import compress, islice, repeat
from operator import and_, ne, not_

import numpy as np

from . import gil
from .format import Kind
from .outputs import TableOutputs
from .table import TableReader
from .version import FileMeta

__all__ = ["CHUNK_BLOCKS", "bulk_merge", "plain_inputs"]

CHUNK_BLOCKS = 32                      # blocks an input reads at a time (~500 KiB)
_ENTRY_OVERHEAD = 12                   # as TableWriter's size estimate
_DELETE = int(Kind.DELETE)


def plain_inputs(readers: list[TableReader | None], smallest_snapshot: int) -> list[TableReader] | None:
    """*readers* when the bulk merge applies to them (see the module
    docstring), else None."""
    out = []
    for r in readers:
        if r is None or r.props.get("expiring") != 0 or r.props["distinct_keys"] != r.entries:
            return None
        if r.max_seq > smallest_snapshot:
            return None
        out.append(r)
    return out


class _Source:
    """One input table, read CHUNK_BLOCKS blocks at a time."""

    __slots__ = ("blocks", "keys", "sks", "vals", "pos")

    def __init__(self, reader: TableReader) -> None:
        self.blocks = reader.iter_blocks()
        self.keys: list[bytes] = []
        self.sks: list[int] = []
        self.vals: list[bytes] = []
        self.pos = 0
        self.refill()

    def refill(self) -> None:
        keys: list[bytes] = []
        sks: list[int] = []
        vals: list[bytes] = []
        for k, s, v in islice(self.blocks, CHUNK_BLOCKS):
            keys += k
            sks += s
            vals += v
        self.keys, self.sks, self.vals, self.pos = keys, sks, vals, 0


def bulk_merge(readers: list[TableReader], is_base: Callable[[bytes], bool],
               out: TableOutputs) -> tuple[list[FileMeta], dict[str, int]]:
    """Merge *readers* (``plain_inputs``) into the tables of *out*; returns
    their FileMetas and the counters of ``write_tables``."""
    target = out.config.target_file_size
    with out:                                       # a failure: no table stays
        counts = out.counts
        for keys, sks, vals in _chunks([_Source(r) for r in readers], counts):
            gil.pause()                             # the compaction thread steps aside (gil.py)
            kinds = bytes(map(and_, sks, repeat(0xFF, len(sks))))
            if kinds.count(_DELETE):                # a tombstone no deeper level needs goes
                keep = [k != _DELETE or not is_base(key) for k, key in zip(kinds, keys)]
                keys, sks, vals = list(compress(keys, keep)), list(compress(sks, keep)), list(compress(vals, keep))
                counts["dropped"] += len(keep) - len(keys)
            if not keys:
                continue
            counts["written"] += len(keys)
            klen = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
            vlen = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
            size = np.cumsum(klen + vlen + _ENTRY_OVERHEAD)
            i = 0
            while i < len(keys):
                writer = out.writer()
                # Records up to the one that reaches the target go in; the
                # file is cut after it (the record path: before the next key).
                room = target - writer.estimated_size + (int(size[i - 1]) if i else 0)
                j = min(len(keys), int(np.searchsorted(size, room, "left")) + 1)
                writer.add_many(keys[i:j], sks[i:j], vals[i:j], klen[i:j], vlen[i:j])
                i = j
                if writer.estimated_size >= target:
                    out.cut()
        return out.close()


def _chunks(sources: list[_Source], counts: dict[str, int]) -> Iterator[tuple[list[bytes], list[int], list[bytes]]]:
    """Each key's newest record, key ascending, a chunk at a time."""
    live = [s for s in sources if s.keys]
    while live:
        bound = min(s.keys[-1] for s in live)
        keys: list[bytes] = []
        sks: list[int] = []
        vals: list[bytes] = []
        parts = 0
        for s in live:
            j = bisect_right(s.keys, bound, s.pos)
            if j > s.pos:
                parts += 1
                keys += s.keys[s.pos:j]
                sks += s.sks[s.pos:j]
                vals += s.vals[s.pos:j]
                s.pos = j
            if j == len(s.keys):
                s.refill()
        live = [s for s in live if s.keys]
        n = len(keys)
        counts["read"] += n
        if parts > 1:                       # one input's records are in order already
            order = sorted(range(n), key=keys.__getitem__)
            keys = list(map(keys.__getitem__, order))
            sks = list(map(sks.__getitem__, order))
            vals = list(map(vals.__getitem__, order))
            new = [True, *map(ne, islice(keys, 1, None), keys)]     # the first of each key
            if not all(new):
                keep = _newest(sks, new)
                counts["dropped"] += n - sum(keep)
                keys, sks, vals = list(compress(keys, keep)), list(compress(sks, keep)), list(compress(vals, keep))
        yield keys, sks, vals


def _newest(sks: list[int], new: list[bool]) -> list[bool]:
    """Of each run of equal keys (*new*: False where a key repeats the one
    before it), keep the record with the highest seq."""
    keep = new[:]
    best = prev = -2
    for d in compress(range(len(new)), map(not_, new)):
        if d != prev + 1:                   # a run starting at d - 1, kept so far
            best = d - 1
        if sks[d] > sks[best]:
            keep[best], keep[d], best = False, True, d
        prev = d
    return keep
