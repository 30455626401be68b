"""Bloom filters for tables (and the one key hash the engine uses).

Runs in the shard process (writers build filters during flush/compaction) and
in any reader process; every function here is pure and safe from any thread.

Serialized filter (the payload of a table's filter block)::

    header := nbits:u64 k:u8       (FILTER_HEADER, 9 bytes)
    bits   := nbits/8 bytes        bit p is (bits[p >> 3] >> (p & 7)) & 1

``nbits == 0`` (with ``k == 0``) is the "no filter" form built for
``bits_per_key == 0``: it answers True for every hash.

Probes use double hashing on the 64-bit key hash ``h``::

    h1 = h & 0xFFFFFFFF;  h2 = h >> 32
    probe i (0 <= i < k) tests bit (h1 + i * h2) % nbits

The same arithmetic is done exactly in Python ints and in numpy uint64
(no overflow: h1 + 29 * h2 < 2**37), so ``may_contain`` and
``may_contain_many`` always agree.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any, Callable, Sequence

import numpy as np
import xxhash

__all__ = ["key_hash", "build_filter", "BloomFilter", "FILTER_HEADER", "MAX_PROBES"]

FILTER_HEADER = struct.Struct("<QB")
MAX_PROBES = 30
_MIN_BITS = 64
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SEVEN = np.uint64(7)
_THREE = np.uint64(3)
_CHUNK = 1 << 14                  # may_contain_many: hashes per (n, k) probe array

#: The one hash used for bloom filters and memtable slots: xxh3_64 of the key.
key_hash: Callable[[bytes], int] = xxhash.xxh3_64_intdigest


def _probes(bits_per_key: int) -> int:
    return max(1, min(MAX_PROBES, int(round(bits_per_key * math.log(2)))))


def build_filter(hashes: Sequence[int] | np.ndarray, bits_per_key: int) -> bytes:
    """Serialize a filter over *hashes* (``key_hash`` of each distinct key)
    with about *bits_per_key* bits per key (10 -> ~1% false positives).
    ``bits_per_key == 0`` gives a filter that always answers True."""
    if bits_per_key < 0:
        raise ValueError(f"bits_per_key must be >= 0, got {bits_per_key}")
    if bits_per_key == 0:
        return FILTER_HEADER.pack(0, 0)
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    k = _probes(bits_per_key)
    nbits = max(_MIN_BITS, len(h) * bits_per_key)
    nbits = (nbits + 7) & ~7
    bitset = np.zeros(nbits, dtype=bool)
    if len(h):
        h1 = h & _LOW32
        h2 = h >> _SHIFT32
        m = np.uint64(nbits)
        for i in range(k):
            bitset[(h1 + np.uint64(i) * h2) % m] = True
    return FILTER_HEADER.pack(nbits, k) + np.packbits(bitset, bitorder="little").tobytes()


@functools.lru_cache(maxsize=None)
def _probe_factory(k: int) -> Callable[[bytes, int], Callable[[int], bool]]:
    """Source for k unrolled probes (only the line count depends on k, which
    is validated to 1..MAX_PROBES); p_i = (h1 + i*h2) % nbits is walked
    incrementally on small ints. ~25% faster than a loop."""
    test = "        if not (bits[p >> 3] >> (p & 7)) & 1:\n            return False\n"
    src = ("def make(bits, nbits):\n    def may_contain(h):\n"
           "        p = (h & 0xFFFFFFFF) % nbits\n" + test
           + ("        d = (h >> 32) % nbits\n" if k > 1 else "")
           + ("        p += d\n        if p >= nbits:\n            p -= nbits\n" + test) * (k - 1)
           + "        return True\n    return may_contain\n")
    ns: dict[str, Any] = {}
    exec(compile(src, f"<bloom probe k={k}>", "exec"), ns)
    return ns["make"]  # type: ignore[no-any-return]


def _always(h: int) -> bool:
    return True


def _make_probe(bits: bytes, nbits: int, k: int) -> Callable[[int], bool]:
    """The hot-path closure testing the k probes of one filter."""
    return _always if nbits == 0 else _probe_factory(k)(bits, nbits)


class BloomFilter:
    """A read-only view of a serialized filter. ``ValueError`` when *buf* is
    not a well-formed filter (callers turn it into ``CorruptionError``).

    ``may_contain`` is a closure installed per instance (no attribute lookups
    on the hot path); it shadows the documented method below.
    """

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        buf = bytes(buf)
        if len(buf) < FILTER_HEADER.size:
            raise ValueError(f"bloom filter too short ({len(buf)} bytes)")
        nbits, k = FILTER_HEADER.unpack_from(buf, 0)
        if nbits == 0:
            if k != 0 or len(buf) != FILTER_HEADER.size:
                raise ValueError("malformed always-true bloom filter")
        else:
            if nbits % 8 or not 1 <= k <= MAX_PROBES:
                raise ValueError(f"bad bloom filter header (nbits={nbits}, k={k})")
            if len(buf) != FILTER_HEADER.size + nbits // 8:
                raise ValueError(f"bloom filter size {len(buf)} does not match nbits={nbits}")
        self.nbits: int = nbits
        self.k: int = k
        self._bits = buf[FILTER_HEADER.size:]
        self.may_contain = _make_probe(self._bits, nbits, k)  # type: ignore[method-assign]

    def may_contain(self, h: int) -> bool:  # replaced per instance in __init__
        """False only when the key with hash *h* is certainly absent."""
        return _make_probe(self._bits, self.nbits, self.k)(h)

    def may_contain_many(self, hashes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorized ``may_contain``: a bool array, one answer per hash.
        All k probes of a chunk of hashes are computed and tested as one
        (n, k) array: a handful of numpy calls per batch, not per probe."""
        h = np.asarray(hashes, dtype=np.uint64).ravel()
        if self.nbits == 0:
            return np.ones(len(h), dtype=bool)
        arr = np.frombuffer(self._bits, dtype=np.uint8)
        m = np.uint64(self.nbits)
        steps = np.arange(self.k, dtype=np.uint64)
        out = np.empty(len(h), dtype=bool)
        for lo in range(0, len(h), _CHUNK):
            c = h[lo:lo + _CHUNK]
            p = (c & _LOW32)[:, None] + steps * (c >> _SHIFT32)[:, None]
            p %= m
            bits = arr[p >> _THREE] >> (p & _SEVEN).astype(np.uint8)
            np.bitwise_and(bits, 1, out=bits)
            bits.all(axis=1, out=out[lo:lo + _CHUNK])
        return out

    @property
    def size(self) -> int:
        """Serialized size in bytes."""
        return FILTER_HEADER.size + len(self._bits)
