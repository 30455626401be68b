"""The consistent-hash ring that maps a key to its shard.

Any process computes the same answer with no coordination: points are
xxh3_64 hashes of ``b"shard-<i>-vnode-<j>"``, keys hash with xxh3_64 too,
and a key belongs to the shard of the first point at or after its hash
(wrapping). The ring depends only on (shards, vnodes), both recorded in the
data directory, so it is stable across processes and restarts.

Virtual nodes spread each shard over many arcs, so shards get near-equal
shares and growing the ring moves only about 1/(n+1) of the keys.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

import numpy as np
import xxhash

from ..errors import InvalidArgument

DEFAULT_VNODES = 256
_MAX_SHARDS = 4096

_hash = xxhash.xxh3_64_intdigest
_BUCKET_BITS = 16
SLICE_SHIFT = 64 - _BUCKET_BITS
_FEW_KEYS = 32          # split: up to this many keys in plain Python (numpy's per-call costs outweigh it)
_NP_SHIFT = np.uint64(SLICE_SHIFT)


class HashRing:
    __slots__ = ("shards", "vnodes", "_points", "_owners", "_np_points", "_np_owners", "_direct", "_np_direct")

    def __init__(self, shards: int, vnodes: int = DEFAULT_VNODES) -> None:
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= _MAX_SHARDS:
            raise InvalidArgument(f"shards must be an integer 1..{_MAX_SHARDS}, got {shards!r}")
        if not isinstance(vnodes, int) or isinstance(vnodes, bool) or not 1 <= vnodes <= 65536:
            raise InvalidArgument(f"vnodes must be an integer 1..65536, got {vnodes!r}")
        self.shards = shards
        self.vnodes = vnodes
        pts = sorted((_hash(b"shard-%d-vnode-%d" % (s, v)), s) for s in range(shards) for v in range(vnodes))
        self._points = [p for p, _ in pts]
        self._owners = [s for _, s in pts]
        self._np_points = np.array(self._points, dtype=np.uint64)
        self._np_owners = np.array(self._owners, dtype=np.int32)
        self._direct = self._bucket_owners()
        self._np_direct = np.array(self._direct, dtype=np.int32)

    def _bucket_owners(self) -> list[int]:
        """The owner of every hash in each of the ``1 << _BUCKET_BITS`` equal
        slices of the hash space, or -1 where a slice holds points of
        several shards (``owner`` then searches the points). A point read
        is one list index instead of a binary search over Python ints."""
        wrapped = np.append(self._np_owners, self._np_owners[0])    # past the last point: the first
        changes = np.concatenate(([0], np.cumsum(wrapped[1:] != wrapped[:-1])))
        starts = np.arange(1 << _BUCKET_BITS, dtype=np.uint64) << np.uint64(SLICE_SHIFT)
        lo = np.searchsorted(self._np_points, starts, side="left")
        hi = np.searchsorted(self._np_points, starts | np.uint64((1 << SLICE_SHIFT) - 1), side="left")
        return np.where(changes[hi] == changes[lo], wrapped[lo], -1).tolist()

    @property
    def direct(self) -> list[int]:
        """Shard per slice of the hash space: index ``h >> SLICE_SHIFT``
        (-1: ``owner``); for callers that inline the common case."""
        return self._direct

    def owner(self, h: int) -> int:
        """The shard of a key whose ``xxh3_64`` hash is *h*."""
        s = self._direct[h >> SLICE_SHIFT]
        if s >= 0:
            return s
        i = bisect_left(self._points, h)
        return self._owners[i if i < len(self._owners) else 0]

    def shard_of(self, key: bytes) -> int:
        h = _hash(key)
        s = self._direct[h >> SLICE_SHIFT]
        return s if s >= 0 else self.owner(h)

    def shards_list(self, keys: list[bytes]) -> list[int]:
        """``shard_of`` of each key as a list: for short batches, where
        numpy's per-call costs outweigh ``shards_of``."""
        direct, owner = self._direct, self.owner
        out = []
        for k in keys:
            h = _hash(k)
            s = direct[h >> SLICE_SHIFT]
            out.append(s if s >= 0 else owner(h))
        return out

    def shards_of(self, keys: Iterable[bytes]) -> np.ndarray:
        """Vectorised ``shard_of`` for a batch of keys."""
        keys = keys if isinstance(keys, list) else list(keys)
        return self._owners_of(np.fromiter(map(_hash, keys), dtype=np.uint64, count=len(keys)))

    def _owners_of(self, hashes: np.ndarray) -> np.ndarray:
        if self.shards == 1:
            return np.zeros(len(hashes), dtype=np.int32)
        owners = self._np_direct[(hashes >> _NP_SHIFT).astype(np.intp)]
        far = owners < 0
        if far.any():
            idx = np.searchsorted(self._np_points, hashes[far], side="left")
            idx[idx == len(self._np_points)] = 0
            owners[far] = self._np_owners[idx]
        return owners

    def split(self, keys: Iterable[bytes]) -> dict[int, list[int]]:
        """Positions of *keys* grouped by shard, each group in input order."""
        keys = list(keys)
        if len(keys) > _FEW_KEYS:
            return {s: pos.tolist() for s, pos in self.split_hashed(keys)[1].items()}
        out: dict[int, list[int]] = {}
        for i, s in enumerate(self.shards_list(keys)):
            out.setdefault(s, []).append(i)
        return out

    def split_hashed(self, keys: list[bytes]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(the keys' hashes, positions grouped by shard in input order): the
        hashes are the storage's ``key_hash`` too, so a batch read passes
        them on instead of hashing again."""
        hashes = np.fromiter(map(_hash, keys), dtype=np.uint64, count=len(keys))
        owners = self._owners_of(hashes)
        if not owners.size:
            return hashes, {}
        first = int(owners[0])
        if (owners == first).all():
            return hashes, {first: np.arange(owners.size)}
        order = np.argsort(owners, kind="stable")
        ranked = owners[order]
        cuts = (np.flatnonzero(ranked[1:] != ranked[:-1]) + 1).tolist()
        return hashes, {int(ranked[lo]): order[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, order.size])}

    def describe(self) -> dict[str, int]:
        return {"shards": self.shards, "vnodes": self.vnodes}
