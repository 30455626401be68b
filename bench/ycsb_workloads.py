"""YCSB's key choosers and core workloads A-F, ported (see bench/ycsb.py for
what each workload does and how the run uses them): the generators, the
workload table, and the operation sequence drawn before the clock starts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

VALUE_POOL = 1024        # distinct values, reused in a cycle (no engine compresses)
MAX_SCAN = 100           # workload E: maxscanlength

# --- YCSB's generators ----------------------------------------------------------------------------

ZIPFIAN_CONSTANT = 0.99
SCRAMBLED_ITEM_COUNT = 10_000_000_000      # ScrambledZipfianGenerator.ITEM_COUNT
SCRAMBLED_ZETAN = 26.46902820178302       # its zeta(ITEM_COUNT, 0.99), precomputed by YCSB
FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211
_M64 = (1 << 64) - 1


def fnvhash64(val: int) -> int:
    """YCSB's Utils.fnvhash64: FNV-1a over the 8 low bytes of *val*, as a
    signed 64-bit value made non-negative with Java's Math.abs (which
    leaves Long.MIN_VALUE negative)."""
    h = FNV_OFFSET_BASIS_64
    for _ in range(8):
        h ^= val & 0xFF
        val >>= 8
        h = (h * FNV_PRIME_64) & _M64
    if h >= 1 << 63:                          # negative as a Java long
        h = -(h - (1 << 64))
        if h == 1 << 63:
            return -h                         # Math.abs(Long.MIN_VALUE)
    return h


def _java_rem(a: int, b: int) -> int:
    """Java's ``a % b`` (the sign of the dividend)."""
    r = abs(a) % b
    return -r if a < 0 else r


def key_name(keynum: int) -> bytes:
    """CoreWorkload.buildKeyName with insertorder=hashed, zeropadding=1."""
    return b"user%d" % fnvhash64(keynum)


def _zeta(start: int, n: int, theta: float, initial: float) -> float:
    """sum(1 / (i + 1) ** theta for i in range(start, n)) + initial."""
    if n - start > 10_000:
        import numpy as np

        i = np.arange(start + 1, n + 1, dtype=np.float64)
        return initial + float(np.sum(i ** -theta))
    return initial + sum(1.0 / (i + 1) ** theta for i in range(start, n))


class Zipfian:
    """YCSB's ZipfianGenerator over [lo, hi]: item lo is the most popular."""

    def __init__(self, lo: int, hi: int, rand: Any, theta: float = ZIPFIAN_CONSTANT,
                 zetan: float | None = None) -> None:
        self.items = hi - lo + 1
        self.base = lo
        self.theta = theta
        self.rand = rand
        self.zeta2theta = _zeta(0, 2, theta, 0.0)
        self.alpha = 1.0 / (1.0 - theta)
        self.zetan = _zeta(0, self.items, theta, 0.0) if zetan is None else zetan
        self.countforzeta = self.items
        self.eta = self._eta()
        self.second = 1.0 + 0.5 ** theta

    def _eta(self) -> float:
        # YCSB keeps the original item count here when the count grows.
        return (1 - (2.0 / self.items) ** (1 - self.theta)) / (1 - self.zeta2theta / self.zetan)

    def next_long(self, itemcount: int) -> int:
        if itemcount > self.countforzeta:          # the zeta grows incrementally, as in YCSB
            self.zetan = _zeta(self.countforzeta, itemcount, self.theta, self.zetan)
            self.countforzeta = itemcount
            self.eta = self._eta()
        u = self.rand()
        uz = u * self.zetan
        if uz < 1.0:
            return self.base
        if uz < self.second:
            return self.base + 1
        return self.base + int(itemcount * (self.eta * u - self.eta + 1) ** self.alpha)

    def next(self) -> int:
        return self.next_long(self.items)


class ScrambledZipfian:
    """YCSB's ScrambledZipfianGenerator over [lo, hi]."""

    def __init__(self, lo: int, hi: int, rand: Any) -> None:
        self.base = lo
        self.itemcount = hi - lo + 1
        self.gen = Zipfian(0, SCRAMBLED_ITEM_COUNT, rand, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN)

    def next(self) -> int:
        return self.base + _java_rem(fnvhash64(self.gen.next()), self.itemcount)


class InsertCounter:
    """CoreWorkload's transactioninsertkeysequence (an acknowledged counter):
    ``last`` is the highest record number known to be inserted."""

    def __init__(self, start: int) -> None:
        self.counter = start
        self.last = start - 1

    def next(self) -> int:
        n = self.counter
        self.counter += 1
        return n

    def acknowledge(self, n: int) -> None:
        self.last = max(self.last, n)


class SkewedLatest:
    """YCSB's SkewedLatestGenerator: the latest inserted record is the most popular."""

    def __init__(self, basis: InsertCounter, rand: Any) -> None:
        self.basis = basis
        self.zipfian = Zipfian(0, basis.last - 1, rand)

    def next(self) -> int:
        top = self.basis.last
        return top - self.zipfian.next_long(top)


# --- the workloads --------------------------------------------------------------------------------

READ, UPDATE, INSERT, SCAN, RMW = range(5)
OP_NAMES = ("read", "update", "insert", "scan", "rmw")


@dataclass(frozen=True)
class Workload:
    letter: str
    title: str
    read: float = 0.0
    update: float = 0.0
    insert: float = 0.0
    scan: float = 0.0
    rmw: float = 0.0
    distribution: str = "zipfian"

    def mix(self) -> list[tuple[int, float]]:
        """(operation, proportion) in the order CoreWorkload adds them to its DiscreteGenerator."""
        return [(op, p) for op, p in ((READ, self.read), (UPDATE, self.update), (INSERT, self.insert),
                                      (SCAN, self.scan), (RMW, self.rmw)) if p > 0]

    def describe(self) -> str:
        parts = [f"{p * 100:g}% {'read-modify-write' if op == RMW else OP_NAMES[op]}" for op, p in self.mix()]
        dist = {"zipfian": "zipfian (scrambled)", "latest": "latest"}[self.distribution]
        extra = f", scan length uniform 1..{MAX_SCAN}" if self.scan else ""
        return f"{', '.join(parts)}; request distribution {dist}{extra}"


WORKLOADS: dict[str, Workload] = {
    "a": Workload("A", "update heavy", read=0.5, update=0.5),
    "b": Workload("B", "read mostly", read=0.95, update=0.05),
    "c": Workload("C", "read only", read=1.0),
    "d": Workload("D", "read latest", read=0.95, insert=0.05, distribution="latest"),
    "e": Workload("E", "short ranges", scan=0.95, insert=0.05),
    "f": Workload("F", "read-modify-write", read=0.5, rmw=0.5),
}

Op = tuple[int, bytes, Any]      # (operation, key, value to write | scan length | None)

_PRINTABLE = bytes(32 + i % 95 for i in range(256))


def value_pool(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size).translate(_PRINTABLE) for _ in range(VALUE_POOL)]


def load_pairs(records: int, values: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The load phase's records, in YCSB's insert order (record 0, 1, ...)."""
    nv = len(values)
    return [(key_name(i), values[i % nv]) for i in range(records)]


def operations(w: Workload, records: int, count: int, values: list[bytes], seed: int) -> list[Op]:
    """The run phase's operations, drawn as CoreWorkload draws them (one
    client thread: each insert is acknowledged before the next operation)."""
    rng = random.Random(seed)
    rand = rng.random
    mix = w.mix()
    total = sum(p for _, p in mix)
    mix = [(op, p / total) for op, p in mix]
    inserts = InsertCounter(records)
    if w.distribution == "latest":
        chooser: Any = SkewedLatest(inserts, rand)
    else:
        expected_new = int(count * w.insert * 2.0)
        chooser = ScrambledZipfian(0, records + expected_new, rand)
    nv = len(values)
    out: list[Op] = []
    for i in range(count):
        u = rand()
        op = mix[-1][0]
        for o, p in mix:
            if u < p:
                op = o
                break
            u -= p
        if op == INSERT:
            n = inserts.next()
            out.append((INSERT, key_name(n), values[i % nv]))
            inserts.acknowledge(n)
            continue
        n = chooser.next()
        while n > inserts.last:                   # not inserted yet: draw again
            n = chooser.next()
        if op == SCAN:
            out.append((SCAN, key_name(n), 1 + int(rand() * MAX_SCAN)))
        elif op == READ:
            out.append((READ, key_name(n), None))
        else:
            out.append((op, key_name(n), values[i % nv]))
    return out
