"""Ordered reads across sources: the k-way merge behind ``scan``.

Runs in whichever thread iterates (any process, later, on the shared read
path). Each source yields (key, kind, value) with at most one entry per key:
the newest version visible at the scan's sequence number. Sources are given
newest first, so when several hold the same key the lowest index wins.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from itertools import chain, islice
from operator import itemgetter
from typing import Any, Iterator

from .ttl import VALUE_TTL, visible

Source = Iterator[tuple[bytes, int, bytes]]
Pair = tuple[bytes, bytes]
Chunks = Iterator[list[Pair]]
_VALUE = 1
# Scans hand pairs on in lists ("chunks") that grow from CHUNK_MIN to
# CHUNK_MAX pairs: a short scan (a limit, a page) reads little ahead, a long
# one runs in C between chunks.
CHUNK_MIN, CHUNK_MAX = 32, 1024
_key = itemgetter(0)


def first_chunk(limit: int | None, ways: int = 1) -> int:
    """The first chunk's size for a scan of at most *limit* pairs merged
    from *ways* disjoint runs (shards): a short scan reads about what it
    returns (each run holds ~limit / ways of it, with a margin; a run that
    falls short is read on in doubling chunks)."""
    if limit is None:
        return CHUNK_MIN
    if ways > 1:
        limit = min(limit, -(-3 * limit // (2 * ways)) + 2)
    return max(1, min(limit, CHUNK_MAX))


def _tag(src: Source, i: int) -> Iterator[tuple[bytes, int, int, bytes]]:
    for k, kind, v in src:
        yield k, i, kind, v


def merge_visible(sources: list[Source], reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    """Live (key, value) pairs in key order (descending with *reverse*)."""
    if not sources:
        return iter(())
    if len(sources) == 1:
        return _live(sources[0])
    # Tuples compare in C: key first, then the source rank. Reverse merges
    # take the largest tuple first, so ranks are negated to keep the newest
    # source first among equal keys.
    tagged = [_tag(s, -i if reverse else i) for i, s in enumerate(sources)]
    return _dedup(heapq.merge(*tagged, reverse=reverse))


def _live(src: Source) -> Iterator[tuple[bytes, bytes]]:
    for k, kind, v in src:
        if kind == _VALUE:
            yield k, v
        elif kind == VALUE_TTL and (v := visible(kind, v)) is not None:
            yield k, v


def _dedup(merged: Iterator[tuple[bytes, int, int, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    prev = None
    for k, _, kind, v in merged:
        if k == prev:
            continue
        prev = k
        if kind == _VALUE:
            yield k, v
        elif kind == VALUE_TTL and (v := visible(kind, v)) is not None:
            yield k, v


def level_iter(files: list[Any], start: bytes | None, end: bytes | None, reverse: bool,
               seq: int) -> Iterator[tuple[bytes, int, bytes]]:
    """One source from the disjoint, sorted files of a level >= 1."""
    for f in (reversed(files) if reverse else files):
        yield from f.reader.iter_visible(start, end, reverse, seq)


def chunked(pairs: Iterator[Pair], first: int = CHUNK_MIN) -> Chunks:
    """*pairs* in non-empty lists of growing size, the first of *first*."""
    size = first
    while part := list(islice(pairs, size)):
        yield part
        size = min(size * 2, CHUNK_MAX)


def level_chunks(files: list[Any], start: bytes | None, end: bytes | None, reverse: bool,
                 seq: int, first: int = CHUNK_MIN) -> Chunks:
    """Live pairs of one level that serves a scan alone (no merge needed),
    a table block or more per chunk (the first once it holds *first*)."""
    want, out = first, []
    for f in (reversed(files) if reverse else files):
        for part in f.reader.live_chunks(start, end, reverse, seq):
            out += part
            if len(out) >= want:
                yield out
                want, out = min(want * 2, CHUNK_MAX), []
    if out:
        yield out


def version_chunks(mems: list[Any], version: Any, start: bytes | None, end: bytes | None, reverse: bool,
                   seq: int, first: int = CHUNK_MIN) -> Chunks:
    """Live (key, value) pairs of memtables *mems* (newest first, each with
    ``entries`` and ``iter_visible``) over the tables of *version*, as of
    *seq*, in chunks (the first of about *first* pairs, see
    ``first_chunk``): the engine's scan and a published-version reader's
    alike."""
    mems = [m for m in mems if m.entries]
    if not mems and not version.levels[0]:
        deep = [files for lvl in range(1, len(version.levels))
                if (files := version.overlapping(lvl, start, end))]
        if len(deep) == 1:           # one sorted run serves the scan alone (e.g. after compaction)
            return level_chunks(deep[0], start, end, reverse, seq, first)
    return chunked(merge_visible(_sources(mems, version, start, end, reverse, seq), reverse), first)


def version_scan(mems: list[Any], version: Any, start: bytes | None, end: bytes | None, reverse: bool,
                 seq: int, first: int = CHUNK_MIN) -> Iterator[Pair]:
    """``version_chunks`` pair by pair."""
    return chain.from_iterable(version_chunks(mems, version, start, end, reverse, seq, first))


def merge_chunks(sources: list[Chunks], reverse: bool) -> Chunks:
    """Merge chunked sources whose keys are disjoint (shards) into one
    chunked run in key order (descending with *reverse*). Each round takes,
    from every source, what lies up to the nearest last key of the sources'
    current chunks (nothing later can come before it) and sorts that in C:
    the runs are merged by the sort, values are never compared."""
    heads = [[c, 0, it] for it in sources if (c := _next_chunk(it))]
    while len(heads) > 1:
        lasts = [c[-1][0] for c, _, _ in heads]
        bound = max(lasts) if reverse else min(lasts)
        out: list[Pair] = []
        drained = []
        for h in heads:
            c, pos, it = h
            cut = _cut_desc(c, pos, bound) if reverse else bisect_right(c, bound, pos, key=_key)
            out += c[pos:cut] if pos or cut < len(c) else c
            if cut == len(c):
                drained.append(h)
            else:
                h[1] = cut
        out.sort(reverse=reverse)
        yield out
        # A drained source reads on only once the consumer wants more (a
        # scan with a limit often stops inside this round).
        for h in drained:
            h[0], h[1] = _next_chunk(h[2]), 0
        heads = [h for h in heads if h[0]]
    if heads:
        c, pos, it = heads[0]
        yield c[pos:] if pos else c
        yield from it


def _next_chunk(it: Chunks) -> list[Pair] | None:
    for c in it:
        if c:
            return c
    return None


def _cut_desc(c: list[Pair], lo: int, bound: bytes) -> int:
    """The first index >= lo of descending *c* whose key is below *bound*."""
    hi = len(c)
    while lo < hi:
        mid = (lo + hi) // 2
        if c[mid][0] < bound:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _sources(mems: list[Any], version: Any, start: bytes | None, end: bytes | None, reverse: bool,
             seq: int) -> list[Source]:
    sources = [m.iter_visible(start, end, reverse, seq) for m in mems]
    for f in version.levels[0]:
        if (end is None or f.smallest < end) and (start is None or f.largest >= start):
            sources.append(f.reader.iter_visible(start, end, reverse, seq))
    for lvl in range(1, len(version.levels)):
        files = version.overlapping(lvl, start, end)
        if files:
            sources.append(level_iter(files, start, end, reverse, seq))
    return sources


def newest_entries(mems: list[Any], version: Any, seq: int) -> Iterator[tuple[bytes, int, Any]]:
    """(key, kind, stored value) of the newest version of every key as of
    *seq*, tombstones included, in key order (the expiry sweep)."""
    tagged = [_tag(src, i) for i, src in enumerate(_sources(mems, version, None, None, False, seq))]
    prev = None
    for k, _, kind, v in heapq.merge(*tagged):
        if k != prev:
            prev = k
            yield k, kind, v
