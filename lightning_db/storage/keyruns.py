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

MIN_FOLD = 1024          # the small run is folded in past max(MIN_FOLD, 4 * sqrt(big run)) keys


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
