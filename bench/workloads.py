"""The db_bench workloads (LevelDB's names and key/value shapes).

Keys are 16 bytes, the zero-padded decimal of the index (``%016d``), as in
db_bench. Values come from a pool of 1024 distinct values that compress to
about half their size (db_bench's ``compression_ratio=0.5``); operation i
writes value ``i % 1024``. All key orders are built before the clock starts,
so that a timed loop does nothing but call the engine.

Each benchmark function takes the engine adapter and the workload, runs the
timed loop, and returns an error string when the engine's answers were wrong
(a read that missed, a scan that came up short) or None.

Differences from db_bench, on purpose:
- fillrandom and the other random orders are permutations of the N keys (each
  key once) instead of N draws with replacement, so the state that fillrandom
  leaves holds exactly N keys and every readrandom lookup must hit.
- readmissing looks up ``%016d.`` (17 bytes), which sorts between existing
  keys, as db_bench does: no range check can rule it out, only a bloom
  filter or a real lookup.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cached_property

from .peers import Engine

BATCH = 1000  # fillbatch: pairs per write batch
POOL = 1024   # distinct values; a power of two so that i & (POOL - 1) picks one

# Execution order; fills that leave no reusable state go first, then
# fillrandom, whose state overwrite and the reads reuse, and deleterandom last
# because it empties the database.
BENCHMARKS = ("fillseq", "fillbatch", "fillrandom", "overwrite", "readrandom", "readbatch", "readmissing",
              "readseq", "deleterandom")

# What each benchmark needs before its clock starts:
#   "fresh"     a new, empty database
#   "filled"    the state fillrandom leaves (compacted or not)
#   "compacted" the state fillrandom leaves, after a full compaction
NEEDS = {
    "fillseq": "fresh", "fillbatch": "fresh", "fillrandom": "fresh", "overwrite": "filled",
    "readrandom": "compacted", "readbatch": "compacted", "readmissing": "compacted", "readseq": "compacted", "deleterandom": "filled",
}


class Workload:
    """Keys, values and orders for one run; the same for every engine."""

    def __init__(self, num: int, value_size: int, seed: int = 301) -> None:
        self.num = num
        self.value_size = value_size
        self.seed = seed
        rng = random.Random(seed)
        self.values = [_compressible(rng, value_size) for _ in range(POOL)]
        self.seq_keys = [b"%016d" % i for i in range(num)]

    def prepare(self, benchmarks: Sequence[str]) -> None:
        """Build every key order the benchmarks will use, before any clock starts."""
        needed = {"fill_keys"}
        for bench in benchmarks:
            needed |= _USES.get(bench, set())
        for name in sorted(needed):
            getattr(self, name)

    def _perm(self, salt: int) -> list[bytes]:
        keys = list(self.seq_keys)
        random.Random(self.seed * 1000 + salt).shuffle(keys)
        return keys

    @cached_property
    def fill_keys(self) -> list[bytes]:
        return self._perm(1)

    @cached_property
    def overwrite_keys(self) -> list[bytes]:
        return self._perm(2)

    @cached_property
    def read_keys(self) -> list[bytes]:
        return self._perm(3)

    @cached_property
    def delete_keys(self) -> list[bytes]:
        return self._perm(4)

    @cached_property
    def missing_keys(self) -> list[bytes]:
        return [k + b"." for k in self._perm(5)]

    @cached_property
    def batches(self) -> list[list[tuple[bytes, bytes]]]:
        v, m = self.values, POOL - 1
        keys = self.seq_keys
        return [[(keys[i], v[i & m]) for i in range(s, min(s + BATCH, self.num))]
                for s in range(0, self.num, BATCH)]


_USES = {"overwrite": {"overwrite_keys"}, "readrandom": {"read_keys"}, "readbatch": {"read_keys"},
         "readmissing": {"missing_keys"},
         "deleterandom": {"delete_keys"}, "fillbatch": {"batches"}}


def _compressible(rng: random.Random, size: int) -> bytes:
    """Like db_bench's CompressibleString at ratio 0.5: a random printable
    half, repeated to the full length."""
    raw = bytes(rng.randrange(32, 127) for _ in range(max(1, size // 2)))
    return (raw * (size // len(raw) + 1))[:size]


def fill(engine: Engine, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
    put, m = engine.put, len(values) - 1
    for i, k in enumerate(keys):
        put(k, values[i & m])


def _fillseq(e: Engine, w: Workload) -> str | None:
    fill(e, w.seq_keys, w.values)
    return None


def _fillrandom(e: Engine, w: Workload) -> str | None:
    fill(e, w.fill_keys, w.values)
    return None


def _overwrite(e: Engine, w: Workload) -> str | None:
    fill(e, w.overwrite_keys, w.values)
    return None


def _fillbatch(e: Engine, w: Workload) -> str | None:
    write_batch = e.write_batch
    for batch in w.batches:
        write_batch(batch)
    return None


def _readrandom(e: Engine, w: Workload) -> str | None:
    get, missed = e.get, 0
    for k in w.read_keys:
        if get(k) is None:
            missed += 1
    return f"{missed:,} of {w.num:,} existing keys not found" if missed else None


def _readbatch(e: Engine, w: Workload) -> str | None:
    """readrandom's keys, BATCH per multi-get call (ops = keys)."""
    get_many, keys, missed = e.get_many, w.read_keys, 0
    for s in range(0, len(keys), BATCH):
        missed += get_many(keys[s:s + BATCH]).count(None)
    return f"{missed:,} of {w.num:,} existing keys not found" if missed else None


def _readmissing(e: Engine, w: Workload) -> str | None:
    get, found = e.get, 0
    for k in w.missing_keys:
        if get(k) is not None:
            found += 1
    return f"{found:,} of {w.num:,} absent keys returned a value" if found else None


def _readseq(e: Engine, w: Workload) -> str | None:
    n = e.scan_all()
    return f"scan returned {n:,} pairs, expected {w.num:,}" if n != w.num else None


def _deleterandom(e: Engine, w: Workload) -> str | None:
    delete = e.delete
    for k in w.delete_keys:
        delete(k)
    return None


def check_deleted(e: Engine, w: Workload, sample: int = 1000) -> str | None:
    """After deleterandom (untimed): deleted keys must be gone."""
    left = sum(e.get(k) is not None for k in w.delete_keys[:sample])
    return f"{left} of {min(sample, w.num)} deleted keys still readable" if left else None


RUN: dict[str, Callable[[Engine, Workload], str | None]] = {
    "fillseq": _fillseq, "fillbatch": _fillbatch, "fillrandom": _fillrandom, "overwrite": _overwrite,
    "readrandom": _readrandom, "readbatch": _readbatch, "readmissing": _readmissing, "readseq": _readseq,
    "deleterandom": _deleterandom,
}
