"""Ordered reads across sources: the k-way merge behind ``scan``.

Runs in whichever thread iterates (any process, later, on the shared read
path). Each source yields (key, kind, value) with at most one entry per key:
the newest version visible at the scan's sequence number. Sources are given
newest first, so when several hold the same key the lowest index wins.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterator

from .ttl import VALUE_TTL, visible

Source = Iterator[tuple[bytes, int, bytes]]
_VALUE = 1


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


def level_live(files: list[Any], start: bytes | None, end: bytes | None, reverse: bool,
               seq: int) -> Iterator[tuple[bytes, bytes]]:
    """Live pairs of one level that serves a scan alone (no merge needed)."""
    for f in (reversed(files) if reverse else files):
        yield from f.reader.iter_live(start, end, reverse, seq)


def version_scan(mems: list[Any], version: Any, start: bytes | None, end: bytes | None, reverse: bool,
                 seq: int) -> Iterator[tuple[bytes, bytes]]:
    """Live (key, value) pairs of memtables *mems* (newest first, each with
    ``entries`` and ``iter_visible``) over the tables of *version*, as of
    *seq*: the engine's scan and a published-version reader's alike."""
    mems = [m for m in mems if m.entries]
    if not mems and not version.levels[0]:
        deep = [files for lvl in range(1, len(version.levels))
                if (files := version.overlapping(lvl, start, end))]
        if len(deep) == 1:           # one sorted run serves the scan alone (e.g. after compaction)
            return level_live(deep[0], start, end, reverse, seq)
    return merge_visible(_sources(mems, version, start, end, reverse, seq), reverse)


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
