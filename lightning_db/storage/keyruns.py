"""The sorted keys of a memtable segment, for scans: two sorted runs.

A segment's keys are only ever added. A scan wants them in order, and an
iterator may still be walking the order an earlier scan took, so the
sorted keys cannot change in place. One sorted list would then be copied
for every new key a scan meets (at 100,000 keys a copy and the release of
the old list cost ~0.7 ms: the p95 of a short scan after an insert).
``KeyRuns`` holds a big sorted run and a small sorted run of the keys added
since the big one was built; new keys go into a copy of the small run,
which is folded into the big one once it grows past ``fold_at`` keys
(sorted in C: the sort finds the two runs and merges them). A ``KeyRuns``
never changes: adding returns a new one, so an iterator keeps a fixed set
of keys.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from math import isqrt

import numpy as np

from . import gil

MIN_FOLD = 1024          # the small run is folded in past max(MIN_FOLD, 4 * sqrt(big run)) keys
SORT_IN_NUMPY = 8192     # more keys than this: ``sort_keys`` sorts them in numpy ...
SORT_PREFIX = 64         # ... on their first this many bytes (then runs of ties exactly)
LEX_WIDTH = 32           # keys up to this wide sort as big-endian u64 words (lexsort)


def sort_keys(keys: list[bytes]) -> list[bytes]:
    """*keys* (distinct) in ascending order, as a new list. ``sorted``
    holds the GIL for the whole sort (75 ms for 250,000 keys: a shard's
    flush thread would stall its message loop that long), so a long list
    is put in order by ``sort_order`` and copied out in steps of
    ``gil.CHUNK`` keys (gil.py)."""
    n = len(keys)
    if n <= SORT_IN_NUMPY:
        return sorted(keys)
    return gil.take(keys, sort_order(keys))


def sort_order(keys: list[bytes]) -> np.ndarray:
    """The permutation (int64) that puts *keys* (distinct) in ascending
    order. A long list is sorted by numpy on the keys' first SORT_PREFIX
    bytes (copied into numpy in steps of ``gil.CHUNK`` keys), which lets
    other threads run meanwhile: keys up to LEX_WIDTH bytes long as rows
    of 64-bit words (``order_rows``), longer ones as bytes strings. Keys
    that tie there (numpy pads with NULs: keys that differ only in
    trailing NULs, or only after the prefix) are then put in order run by
    run."""
    n = len(keys)
    if n <= SORT_IN_NUMPY:
        return np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
    chunk = gil.CHUNK
    width = 1
    for i in range(0, n, chunk):
        width = max(width, max(map(len, keys[i:i + chunk])))
        gil.pause()
    width = min(width, SORT_PREFIX)           # longer keys are cut to their prefix (numpy truncates)
    parts = []
    for i in range(0, n, chunk):
        parts.append(np.array(keys[i:i + chunk], dtype=f"S{width}"))
        gil.pause()
    arr = np.concatenate(parts)
    del parts
    if width <= LEX_WIDTH:
        rows = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
        rows[:, :width] = arr.view(np.uint8).reshape(n, width)
        del arr
        return order_rows(rows, keys)
    order = np.argsort(arr, kind="stable")
    arr = arr[order]
    _order_ties(order, np.flatnonzero(arr[1:] == arr[:-1]).tolist(), keys)
    return order


def order_rows(rows: np.ndarray, keys: list[bytes]) -> np.ndarray:
    """``sort_order`` of *keys* (distinct) given *rows*: each key's first
    bytes, padded with NULs to a multiple of 8 (uint8, one row a key).
    Sorted by ``lexsort`` on the rows read as big-endian 64-bit words (a
    third of the time of numpy's bytes-string sort), then ties in order."""
    words = rows.view(">u8")
    order = np.lexsort(words.T[::-1])
    words = words[order]
    _order_ties(order, np.flatnonzero((words[1:] == words[:-1]).all(axis=1)).tolist(), keys)
    return order


def _order_ties(order: np.ndarray, ties: list[int], keys: list[bytes]) -> None:
    """Put in order, in place, the runs of *order* whose keys tied in numpy
    (``ties``: each i where order[i] and order[i + 1] did)."""
    j = 0
    while j < len(ties):                  # runs of consecutive ties: order[a:b + 2] tie in numpy
        a = b = ties[j]
        while j + 1 < len(ties) and ties[j + 1] == b + 1:
            j += 1
            b += 1
        order[a:b + 2] = sorted(order[a:b + 2].tolist(), key=keys.__getitem__)
        j += 1


def merged(keys: list[bytes], new: list[bytes]) -> list[bytes]:
    """A new sorted list of *keys* and *new* (both sorted, disjoint): a few
    new keys are inserted into a copy, many are merged by a sort that finds
    the two runs (both in C)."""
    if len(new) <= 64:
        out = keys.copy()
        for k in new:
            insort(out, k)
        return out
    return sorted(keys + new)


def fold_at(big: int) -> int:
    """How many keys the small run may hold beside a big run of *big* keys:
    a fold costs O(big), a small run's copy O(small), so about sqrt(big)."""
    return max(MIN_FOLD, 4 * isqrt(big))


class KeyRuns:
    """Sorted, distinct keys as a big run and a small one (disjoint)."""

    __slots__ = ("big", "small", "count")

    def __init__(self, big: list[bytes], small: list[bytes] | None = None) -> None:
        self.big = big
        self.small = small or []
        self.count = len(big) + len(self.small)

    def add(self, new: list[bytes]) -> KeyRuns:
        """These keys and *new* (sorted, none of them here yet)."""
        if not new:
            return self
        small = merged(self.small, new) if self.small else new
        if len(small) > fold_at(len(self.big)):
            return KeyRuns(sorted(self.big + small))
        return KeyRuns(self.big, small)

    def full(self) -> list[bytes]:
        """Every key in one sorted list (do not change it)."""
        return sorted(self.big + self.small) if self.small else self.big

    def range(self, start: bytes | None, end: bytes | None, reverse: bool) -> Iterator[bytes]:
        """The keys k with start <= k < end (None: unbounded), ascending or,
        with *reverse*, descending."""
        big, small = self.big, self.small
        lo = 0 if start is None else bisect_left(big, start)
        hi = len(big) if end is None else bisect_left(big, end)
        positions = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
        if small:
            slo = 0 if start is None else bisect_left(small, start)
            shi = len(small) if end is None else bisect_left(small, end)
            if slo < shi:
                extra = small[slo:shi]
                return _spliced(big, positions, extra[::-1] if reverse else extra, reverse)
        return map(big.__getitem__, positions)


def _spliced(big: list[bytes], positions: range, extra: list[bytes], reverse: bool) -> Iterator[bytes]:
    """big[i] for i in *positions* with the keys of *extra* (in the same
    order, disjoint from big) put in their places."""
    j, n = 0, len(extra)
    nxt = extra[0]
    for i in positions:
        k = big[i]
        while (nxt > k) if reverse else (nxt < k):
            yield nxt
            j += 1
            if j == n:
                yield from map(big.__getitem__, positions[positions.index(i):])
                return
            nxt = extra[j]
        yield k
    yield from extra[j:]
