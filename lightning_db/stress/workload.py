"""What the stress clients do: operation mixes and key distributions.

Pure functions and small generators, no I/O; each client process builds its
own ``OpSource`` from the run's seed and its index, so a run's choices are
reproducible (the interleaving is the scheduler's).

Mixes. The YCSB core workloads (Cooper et al., "Benchmarking Cloud Serving
Systems with YCSB", SoCC 2010) mapped onto the single-key operations the
linearizability checker understands:

    ycsb-a  read 50, update 50                 (update = write)
    ycsb-b  read 95, update 5
    ycsb-c  read 100
    ycsb-d  read 95, insert 5                  (latest distribution)
    ycsb-e  scan 95, insert 5                  (scan = a read of each key of a short range)
    ycsb-f  read 50, read-modify-write 50      (rmw = a read, then a write of the same key)

An insert writes the key at the client's insert cursor and moves the cursor
on (wrapping at ``keys``): the keyspace is fixed so that every key is read
back at the end. A custom mix names weights, e.g. ``read=50,write=45,delete=5``
(names: read, write or update, insert, delete, scan, rmw). ``txn`` (also
``list-append``) is the transactional workload of
:mod:`lightning_db.check.appendload`.

Distributions: ``uniform``; ``zipfian`` (YCSB's generator after Gray et al.,
"Quickly Generating Billion-Record Synthetic Databases", constant 0.99, key
0 the hottest); ``latest`` (zipfian over the distance back from the client's
insert cursor: recent inserts are hot). Without one, each workload uses its
own (zipfian; latest for ycsb-d).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DISTRIBUTIONS",
    "MIX_OPS",
    "SCAN_MAX",
    "TXN_PREFIX",
    "TXN_WORKLOADS",
    "WORKLOADS",
    "KeyChooser",
    "Mix",
    "OpSource",
    "Zipfian",
    "default_distribution",
    "key_name",
    "parse_mix",
    "versioned_key",
    "workload_mix",
]

ZIPF_CONSTANT = 0.99
SCAN_MAX = 10                      # keys per scan: 1..SCAN_MAX (YCSB's 100 would swamp the history)
DISTRIBUTIONS = ("uniform", "zipfian", "latest")
MIX_OPS = ("read", "write", "insert", "delete", "scan", "rmw")
_ALIASES = {"update": "write", "get": "read", "put": "write", "del": "delete"}
TXN_WORKLOADS = ("txn", "list-append")
TXN_PREFIX = b"la:"                # lists are stored under this prefix (lightning_db.check.appendload's default)

WORKLOADS: dict[str, dict[str, float]] = {
    "ycsb-a": {"read": 50, "write": 50},
    "ycsb-b": {"read": 95, "write": 5},
    "ycsb-c": {"read": 100},
    "ycsb-d": {"read": 95, "insert": 5},
    "ycsb-e": {"scan": 95, "insert": 5},
    "ycsb-f": {"read": 50, "rmw": 50},
}


def key_name(index: int) -> str:
    """The name of key *index*; zero-padded so that key order is index order (scans)."""
    return f"k{index:06d}"


def versioned_key(gen: int, index: int) -> str:
    """Key *index* of generation *gen*: ``g<gen>:k<index, 6 digits>``. Within
    a generation key order is index order (scans stay in one generation)."""
    return f"g{gen}:{key_name(index)}"


@dataclass(frozen=True)
class Mix:
    """Operation weights, normalised to sum to 1, in MIX_OPS order."""

    weights: tuple[tuple[str, float], ...]

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def describe(self) -> str:
        return ",".join(f"{op}={w * 100:g}" for op, w in self.weights)


def parse_mix(text: str) -> Mix:
    """``read=50,write=45,delete=5`` -> Mix. ValueError names the problem."""
    raw: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep or name not in MIX_OPS:
            raise ValueError(f"bad mix entry {part!r}: expected NAME=WEIGHT with NAME one of "
                             f"{', '.join(MIX_OPS)} (or update)")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"bad weight in mix entry {part!r}") from None
        if not w >= 0 or w == float("inf"):
            raise ValueError(f"weights must be finite and >= 0, got {part!r}")
        raw[name] = raw.get(name, 0.0) + w
    return _normalised(raw, text)


def _normalised(raw: Mapping[str, float], text: str) -> Mix:
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"mix {text!r} has no operation with a weight above 0")
    return Mix(tuple((op, raw[op] / total) for op in MIX_OPS if raw.get(op, 0) > 0))


def workload_mix(name: str) -> Mix | None:
    """The mix of a workload name or custom mix; None for the transactional
    workload. ValueError for an unknown name."""
    key = name.strip().lower()
    if key in TXN_WORKLOADS:
        return None
    if key in WORKLOADS:
        return _normalised(WORKLOADS[key], key)
    if "=" in key:
        return parse_mix(key)
    raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}, txn, "
                     "or a mix such as read=50,write=45,delete=5")


def default_distribution(workload: str) -> str:
    return "latest" if workload.strip().lower() == "ycsb-d" else "zipfian"


class Zipfian:
    """Zipfian integers in [0, n): item 0 the most frequent (YCSB's
    ZipfianGenerator, Gray et al.). zeta(n) is summed once, O(n)."""

    def __init__(self, n: int, theta: float = ZIPF_CONSTANT) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.theta = n, theta
        self.zetan = sum(1.0 / (i ** theta) for i in range(1, n + 1))
        zeta2 = 1.0 + 0.5 ** theta
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan) if n > 2 else 0.0
        self._half = 1.0 + 0.5 ** theta

    def next(self, rng: random.Random) -> int:
        u = rng.random()
        uz = u * self.zetan
        if uz < 1.0 or self.n == 1:
            return 0
        if uz < self._half or self.n == 2:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha))


class KeyChooser:
    """Key indexes in [0, keys) by distribution; ``inserted()`` moves the
    insert cursor that ``latest`` is relative to."""

    def __init__(self, keys: int, distribution: str, rng: random.Random, cursor: int = 0) -> None:
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}: expected one of {', '.join(DISTRIBUTIONS)}")
        self.keys, self.distribution, self.rng = keys, distribution, rng
        self.cursor = cursor % keys
        self._zipf = Zipfian(keys) if distribution != "uniform" else None
        pick: dict[str, Callable[[], int]] = {"uniform": self._uniform, "zipfian": self._zipfian,
                                              "latest": self._latest}
        self.next = pick[distribution]

    def _uniform(self) -> int:
        return self.rng.randrange(self.keys)

    def _zipfian(self) -> int:
        assert self._zipf is not None
        return self._zipf.next(self.rng)

    def _latest(self) -> int:
        assert self._zipf is not None
        return (self.cursor - 1 - self._zipf.next(self.rng)) % self.keys

    def insert_key(self) -> int:
        """The key an insert writes; the cursor moves past it."""
        k = self.cursor
        self.cursor = (self.cursor + 1) % self.keys
        return k


class OpSource:
    """The next operation of one client: ``("read", k)``, ``("write", k)``,
    ``("delete", k)``, ``("rmw", k)`` or ``("scan", first, count)``; an
    insert comes out as a write of the insert cursor's key."""

    def __init__(self, mix: Mix, keys: int, distribution: str, rng: random.Random, cursor: int = 0) -> None:
        self.rng = rng
        self.chooser = KeyChooser(keys, distribution, rng, cursor)
        self._ops = [op for op, _ in mix.weights]
        cum, acc = [], 0.0
        for _, w in mix.weights:
            acc += w
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    def _pick(self) -> str:
        u = self.rng.random()
        for op, c in zip(self._ops, self._cum):
            if u < c:
                return op
        return self._ops[-1]

    def next(self) -> tuple:
        op = self._pick()
        ch = self.chooser
        if op == "insert":
            return ("write", ch.insert_key())
        if op == "scan":
            first = ch.next()
            return ("scan", first, min(self.rng.randint(1, SCAN_MAX), ch.keys - first))
        return (op, ch.next())
