"""YCSB core workloads A-F against Lightning DB (in process, process pool, server) and its peers.

    python -m bench.ycsb [--records 100000] [--operations 100000] [--workloads a,b,c,d,e,f]
                         [--engines lightning,lightning-2,lightning-server,rocksdict,lmdb,plyvel,sqlite3,diskcache]
                         [--threads 1] [--value-size 100] [--out FILE.md] [--seed S]
                         [--tmpdir DIR] [--profile DIR]

The workloads are YCSB's core workloads (workloads/workloada ... workloadf
and CoreWorkload in brianfrankcooper/YCSB), with the same mixes and key
choosers:

- A, update heavy: 50% read, 50% update, zipfian.
- B, read mostly: 95% read, 5% update, zipfian.
- C, read only: 100% read, zipfian.
- D, read latest: 95% read, 5% insert, "latest" (SkewedLatestGenerator: the
  most recently inserted records are the most popular).
- E, short ranges: 95% scan, 5% insert, zipfian start key, scan length
  uniform in 1..100.
- F, read-modify-write: 50% read, 50% read-modify-write (read a record,
  then write it back), zipfian.

The generators are ports of YCSB's: ``ZipfianGenerator`` (theta 0.99, Gray
et al.'s method, with the incremental zeta when the item count grows),
``ScrambledZipfianGenerator`` (a zipfian over 10^10 items with YCSB's
precomputed zeta, hashed with FNV-64 onto the key range, so the popular keys
are spread over the key space), ``SkewedLatestGenerator``,
``UniformLongGenerator`` for scan lengths and ``DiscreteGenerator`` for the
operation mix. Keys are YCSB's hashed insert order: record number i is
``user<fnvhash64(i)>`` (decimal), so the load writes keys in random order.
As in CoreWorkload, the zipfian key chooser covers ``recordcount +
2 * operationcount * insertproportion`` items and draws again when it picks
a record that is not inserted yet; inserts take the next record number.

One simplification: a YCSB record has 10 fields of 100 bytes; here a record
is one value of ``--value-size`` bytes (random printable bytes, as YCSB's
RandomByteIterator), and a read or an update reads or writes that whole value.

Per workload and engine: a fresh database in a temporary directory, the
load phase (``--records`` records in batches of 1000, untimed), then the run
phase (``--operations`` operations, timed). The operation sequence is drawn
before the clock starts (same seed, same sequence for every engine), so the
generators' cost is in no engine's time. Every operation is timed with
``time.perf_counter_ns``; the table gives the run's operations per second
(all operations over the wall time of the run phase), and per operation type
its rate and p50/p95/p99 latency in microseconds. A read-modify-write is
timed as one operation (read + write); its read is not counted again under
"read" (YCSB reports it under both). ``--threads N`` deals the sequence
round-robin to N threads of this process sharing the engine (each thread
gets its own SQLite connection / LMDB read transaction), as YCSB's client
threads share one DB binding; in D and E a read or scan may then reach a
record whose insert went to another thread and has not run yet (YCSB's
acknowledged counter prevents that): the report counts reads that found
nothing.

Engines (see bench/peers.py for the peer settings and why they compare):
``lightning`` is ``open(path, shards=0)``, ``lightning-2`` is ``open(path,
shards=2)`` (two worker processes; ``put`` is pipelined, and the run phase
ends with the pipeline barrier inside the timed window), ``lightning-server``
is ``python -m lightning_db.server.serve --shards 2 --frontends 2`` as a
subprocess, driven with redis-py (hiredis parser): GET, SET, MSET for the
load; the Redis protocol has no range scan, so workload E is n/a for it.
``diskcache`` (a key-value cache on SQLite) keeps no key order and has no
range scan either. ``rocksdict``, ``lmdb``, ``plyvel`` and ``sqlite3`` scan
in key order from the start key.

Every process the run starts (the server, its front ends, the node and its
workers) is stopped before it returns, also on errors, Ctrl-C and SIGTERM,
and the temporary directories are removed. ``--profile DIR`` runs each run
phase under cProfile and writes ``DIR/<engine>-<workload>.pstats``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .peers import (
    CACHE,
    Engine,
    Lightning,
    LightningShards,
    Lmdb,
    Plyvel,
    Rocksdict,
    Sqlite3,
)

LOAD_BATCH = 1000
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


# --- engines --------------------------------------------------------------------------------------
#
# Each engine is a bench/peers.py adapter (get, put, write_batch, close)
# plus ``scan(start, n)``: the first n (key, value) pairs from *start* on in
# key order, as a list. ``SCAN_NA`` says why an engine has no range scan
# (workload E is then skipped for it); ``barrier()`` runs at the end of the
# timed window; ``clients(n)`` gives one handle per client thread.

class _Ycsb:
    SCAN_NA: str | None = None

    def scan(self, start: bytes, n: int) -> list[Any]:
        raise TypeError(f"{type(self).__name__} has no range scan ({self.SCAN_NA}); workload E skips it")

    def barrier(self) -> None:
        """Wait until every write so far is acknowledged by the engine."""

    def clients(self, n: int) -> list[Any]:
        return [self] * n


class YLightning(_Ycsb, Lightning):
    def scan(self, start: bytes, n: int) -> list[Any]:
        return list(self.db.scan(start, limit=n))


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


class YLightningShards(_Ycsb, LightningShards):
    durability = ("sync=never: each write reaches the shard's WAL in the OS, no fsync; put is pipelined "
                  "(returns once queued to its shard), the timed window ends with the pipeline barrier "
                  "(`put_many([])`), so every write of the run was acknowledged by its shard")

    def __init__(self, path: str) -> None:
        self._before = _children()
        try:
            super().__init__(path)
        except BaseException:
            self._stop_node(0.0)
            raise

    def scan(self, start: bytes, n: int) -> list[Any]:
        return list(self.db.scan(start, limit=n))

    def barrier(self) -> None:
        self.db.put_many([])              # waits for this handle's pipelined writes

    def _stop_node(self, grace: float) -> None:
        from .txn import _nodes_started, _stop_tree

        _stop_tree(_nodes_started(self._before), self.name, grace)

    def close(self) -> None:
        from .txn import _nodes_started, _stop_tree

        started = _nodes_started(self._before)
        try:
            super().close()              # the node exits once its last caller detached
        finally:
            _stop_tree(started, self.name)


class YRocksdict(_Ycsb, Rocksdict):
    def scan(self, start: bytes, n: int) -> list[Any]:
        return list(islice(self.db.items(from_key=start), n))


class YPlyvel(_Ycsb, Plyvel):
    def scan(self, start: bytes, n: int) -> list[Any]:
        with self.db.iterator(start=start) as it:
            return list(islice(it, n))


class YLmdb(_Ycsb, Lmdb):
    def scan(self, start: bytes, n: int) -> list[Any]:
        txn = self._rtxn
        if txn is None:
            txn = self._rtxn = self.env.begin()
        cur = txn.cursor()
        if not cur.set_range(start):
            return []
        return list(islice(cur.iternext(), n))

    def clients(self, n: int) -> list[Any]:
        new = []
        for _ in range(n - 1):
            c = object.__new__(_LmdbThread)          # shares the environment, not the transaction
            c.path, c.env, c._rtxn = self.path, self.env, None
            new.append(c)
        self.__dict__.setdefault("_extra", []).extend(new)
        return [self] + new

    def close(self) -> None:
        for c in self.__dict__.pop("_extra", []):
            c._end_reads()
        super().close()


class _LmdbThread(YLmdb):
    """Another thread's handle on the same environment (its own read transaction)."""

    def close(self) -> None:
        self._end_reads()


class YSqlite3(_Ycsb, Sqlite3):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        # The same connection settings, usable from the client thread that runs
        # the workload (each thread still gets its own connection).
        self.conn.close()
        self.conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA cache_size=-{CACHE // 1024}")

    def scan(self, start: bytes, n: int) -> list[Any]:
        return self.conn.execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?", (start, n)).fetchall()

    def clients(self, n: int) -> list[Any]:
        extra = self.__dict__.setdefault("_extra", [])
        new = [YSqlite3(self.path) for _ in range(n - 1)]     # one connection per thread
        extra += new
        return [self] + new

    def close(self) -> None:
        for c in self.__dict__.pop("_extra", []):
            c.close()
        super().close()


class DiskCache(_Ycsb, Engine):
    name = "diskcache"
    SCAN_NA = "n/a (no range scan: diskcache keeps no key order)"
    durability = ("diskcache defaults: SQLite WAL, synchronous=NORMAL: each set committed to the WAL, fsync "
                  "only at checkpoints (survives a process kill, not power loss)")
    settings = ("diskcache.Cache defaults (values under 32 KiB stored in SQLite, 32 MiB page cache, 64 MiB "
                "mmap, eviction least-recently-stored with a 1 GiB size limit, not reached here); "
                "load: one transact() per batch")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import diskcache

        self.cache = diskcache.Cache(path)

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("diskcache") else "diskcache is not installed (pip install -e '.[bench]')"

    @classmethod
    def version(cls) -> str:
        import diskcache

        return diskcache.__version__

    def put(self, key: bytes, value: bytes) -> None:
        self.cache.set(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.cache.get(key)

    def delete(self, key: bytes) -> None:
        self.cache.delete(key)

    def write_batch(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        with self.cache.transact():
            for k, v in pairs:
                self.cache.set(k, v)

    def scan_all(self) -> int:
        return sum(1 for _ in self.cache.iterkeys())

    def close(self) -> None:
        self.cache.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LightningServer(_Ycsb, Engine):
    """``lightning-db serve`` in a subprocess, over the Redis protocol."""

    name = "lightning-server"
    SHARDS = FRONTENDS = 2
    READY_TIMEOUT = 180.0
    SCAN_NA = "n/a (Redis protocol has no range scan)"
    durability = ("sync=never (a TOML file given with --config): a write is acknowledged by its shard (in the "
                  "shard's WAL in the OS, no fsync) before the server replies (survives a process kill, not "
                  "power loss)")
    settings = (f"`python -m lightning_db.server.serve --shards {SHARDS} --frontends {FRONTENDS} --http-port 0`, "
                "otherwise Config defaults; redis-py with the hiredis parser over TCP on 127.0.0.1, one "
                "connection per client thread; GET / SET, MSET of 1000 pairs per load batch, "
                "read-modify-write = GET then SET")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import redis

        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: dict[int, Any] = {}
        self.log = os.path.join(path, "serve.log")
        data, conf = os.path.join(path, "data"), os.path.join(path, "server.toml")
        os.makedirs(data)
        with open(conf, "w") as f:
            f.write('sync = "never"\n')
        self.port = _free_port()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            with open(self.log, "wb") as log:
                # A session of its own: the server stops in order on our SIGTERM, not on the terminal's Ctrl-C.
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "lightning_db.server.serve", "--data", data, "--port", str(self.port),
                     "--shards", str(self.SHARDS), "--frontends", str(self.FRONTENDS), "--http-port", "0",
                     "--config", conf],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            deadline = time.monotonic() + self.READY_TIMEOUT
            while True:
                self._note_tree()
                with open(self.log, "rb") as f:
                    if b"serving " in f.read():
                        break
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with status {self.proc.returncode}: {self._log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready within {self.READY_TIMEOUT:g} s: {self._log_tail()}")
                time.sleep(0.1)
            self._note_tree()
            self.r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=120)
            if not self.r.ping():
                raise RuntimeError("the server did not answer PING")
        except BaseException:
            self.close()
            raise

    def _note_tree(self) -> None:
        """Remember every process under the server (front ends, node, shard workers)."""
        import psutil

        if self.proc is None:
            return
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.tree.setdefault(p.pid, p)
        except psutil.Error:
            pass

    def _log_tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return " ".join(f.read()[-1500:].decode(errors="replace").split())
        except OSError:
            return "(no log)"

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        if importlib.util.find_spec("redis") is None:
            return "redis (redis-py) is not installed (pip install -e '.[bench]')"
        from redis.utils import HIREDIS_AVAILABLE

        if not HIREDIS_AVAILABLE:
            return "hiredis is not installed (pip install hiredis)"
        return Lightning.unavailable()

    @classmethod
    def version(cls) -> str:
        import redis

        from .peers import _dist_version

        return f"{Lightning.version()} (redis-py {redis.__version__}, hiredis {_dist_version('hiredis')})"

    def put(self, key: bytes, value: bytes) -> None:
        self.r.set(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.r.get(key)

    def delete(self, key: bytes) -> None:
        self.r.delete(key)

    def write_batch(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self.r.mset(dict(pairs))

    def scan_all(self) -> int:
        return sum(1 for _ in self.r.scan_iter(count=1000))

    def close(self) -> None:
        """SIGTERM to the server (it stops its front ends, flushes, closes the
        database and waits for the node); whatever is left after that is
        terminated, then killed."""
        from .txn import _stop_tree

        r = getattr(self, "r", None)
        if r is not None:
            try:
                r.close()
            except Exception:  # noqa: BLE001, S110 - the connection goes with the server
                pass
        if self.proc is None:
            return
        self._note_tree()
        proc, self.proc = self.proc, None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    _log(f"  [{self.name}] the server did not stop within 90 s; killing it")
                    proc.kill()
                    proc.wait(30)
        finally:
            _stop_tree(list(self.tree.values()), self.name, 30.0)


ENGINES: dict[str, type[Any]] = {e.name: e for e in (YLightning, YLightningShards, LightningServer, YRocksdict,
                                                      YLmdb, YPlyvel, YSqlite3, DiskCache)}
LIGHTNING = ("lightning", "lightning-2", "lightning-server")


# --- running --------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _work(db: Any, ops: Sequence[Op], lat: list[array], stat: list[int]) -> None:
    """Run *ops* on *db*, one latency sample (ns) per operation into *lat*."""
    get, put = db.get, db.put
    scan = db.scan
    clock = time.perf_counter_ns
    l_read, l_update, l_insert, l_scan, l_rmw = (a.append for a in lat)
    misses = scanned = 0
    for op, key, arg in ops:
        if op == READ:
            t = clock()
            v = get(key)
            l_read(clock() - t)
            if v is None:
                misses += 1
        elif op == UPDATE:
            t = clock()
            put(key, arg)
            l_update(clock() - t)
        elif op == SCAN:
            t = clock()
            rows = scan(key, arg)
            l_scan(clock() - t)
            scanned += len(rows)
        elif op == RMW:
            t = clock()
            v = get(key)
            put(key, arg)
            l_rmw(clock() - t)
            if v is None:
                misses += 1
        else:
            t = clock()
            put(key, arg)
            l_insert(clock() - t)
    stat[0] += misses
    stat[1] += scanned


def _pct(s: Sequence[int], q: float) -> float:
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0       # µs


def run_phase(db: Any, ops: list[Op], threads: int, profile: str | None) -> dict[str, Any]:
    clients = db.clients(threads)
    lats = [[array("q") for _ in OP_NAMES] for _ in range(threads)]
    stats = [[0, 0] for _ in range(threads)]
    gc.collect()
    clock = time.perf_counter_ns
    if threads == 1:
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = clock()
        _work(clients[0], ops, lats[0], stats[0])
        db.barrier()
        t1 = clock()
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
    else:
        start = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def target(i: int) -> None:
            try:
                start.wait()
                _work(clients[i], ops[i::threads], lats[i], stats[i])
            except BaseException as e:  # noqa: BLE001 - raised again in the main thread
                errors.append(e)

        ts = [threading.Thread(target=target, args=(i,), name=f"ycsb-{i}", daemon=True) for i in range(threads)]
        for t in ts:
            t.start()
        start.wait()
        t0 = clock()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        db.barrier()
        t1 = clock()
    secs = (t1 - t0) / 1e9
    per_op: dict[str, dict[str, float]] = {}
    for i, name in enumerate(OP_NAMES):
        samples = sorted(x for lat in lats for x in lat[i])
        if samples:
            per_op[name] = {"count": len(samples), "rate": len(samples) / secs, "p50": _pct(samples, 0.50),
                            "p95": _pct(samples, 0.95), "p99": _pct(samples, 0.99)}
    return {"secs": secs, "ops": len(ops) / secs, "per_op": per_op, "misses": sum(s[0] for s in stats),
            "scanned": sum(s[1] for s in stats)}


def run_one(cls: type[Any], w: Workload, pairs: list[tuple[bytes, bytes]], ops: list[Op], threads: int,
            tmp: str, profile: str | None) -> dict[str, Any]:
    """Load a fresh database, run the workload, close and remove it."""
    if w.scan and cls.SCAN_NA:
        return {"note": cls.SCAN_NA}
    root = tempfile.mkdtemp(prefix=f"ldb-ycsb-{cls.name}-{w.letter.lower()}-", dir=tmp)
    db = None
    try:
        db = cls(root)
        t0 = time.perf_counter()
        for i in range(0, len(pairs), LOAD_BATCH):
            db.write_batch(pairs[i:i + LOAD_BATCH])
        db.barrier()
        load_s = time.perf_counter() - t0
        r = run_phase(db, ops, threads, profile)
        r["load_s"] = load_s
        return r
    finally:
        try:
            if db is not None:
                db.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --- the report -----------------------------------------------------------------------------------

def _us(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    x = a / b
    return f"{x:.2f}x" if x >= 0.095 else f"{x:.3f}x"


def report(results: dict[str, dict[str, dict[str, Any]]], workloads: Sequence[str], engines: Sequence[str],
           args: Any, skipped: dict[str, str]) -> str:
    from .run import _machine

    today = datetime.date.today().isoformat()
    out = [(f"### YCSB workloads {', '.join(WORKLOADS[w].letter for w in workloads)}: {args.records:,} records, "
            f"{args.operations:,} operations, {args.value_size}-byte values, {args.threads} client "
            f"thread{'s' if args.threads != 1 else ''} ({today})"), "", f"Machine: {_machine(args.tmpdir)}.", ""]
    for wl in workloads:
        w = WORKLOADS[wl]
        rows = results.get(wl, {})
        ops_names = [OP_NAMES[op] for op, _ in w.mix()]
        peers = {e: r["ops"] for e, r in rows.items() if e not in LIGHTNING and "ops" in r}
        best = max(peers, key=peers.get) if peers else None
        rocks = peers.get("rocksdict")
        out += [f"#### Workload {w.letter}, {w.title}: {w.describe()}", ""]
        header = ["engine", "ops/s", f"vs {best} (best peer)" if best else "vs best peer", "vs rocksdict"]
        for name in ops_names:
            header += [f"{name} ops/s", f"{name} µs p50 / p95 / p99"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|---|" + "---:|" * (len(header) - 1))
        for e in engines:
            if e in skipped or e not in rows:
                continue
            r = rows[e]
            if "ops" not in r:
                out.append(f"| {e} | {r.get('note') or 'failed'} |" + " - |" * (len(header) - 2))
                continue
            row = [e, f"{r['ops']:,.0f}", _ratio(r["ops"], peers[best]) if best else "-",
                   _ratio(r["ops"], rocks) if rocks else "-"]
            for name in ops_names:
                p = r["per_op"].get(name)
                row += ["-", "-"] if p is None else [f"{p['rate']:,.0f}",
                                                     f"{_us(p['p50'])} / {_us(p['p95'])} / {_us(p['p99'])}"]
            out.append("| " + " | ".join(row) + " |")
        loads = [f"{e} {r['load_s']:.1f} s" for e, r in rows.items() if "load_s" in r]
        notes = [f"Load ({args.records:,} records in batches of {LOAD_BATCH}, untimed): {', '.join(loads)}."]
        scans = {e: r["scanned"] / r["per_op"]["scan"]["count"] for e, r in rows.items()
                 if "per_op" in r and "scan" in r["per_op"]}
        if scans:
            notes.append("Records per scan (mean): " + ", ".join(f"{e} {v:.1f}" for e, v in scans.items()) + ".")
        missed = [f"{e} {r['misses']:,}" for e, r in rows.items() if r.get("misses")]
        if missed:
            notes.append("Reads that found nothing: " + ", ".join(missed) + ".")
        for e, r in rows.items():
            if r.get("error"):
                notes.append(f"{e} FAILED: {r['error']}")
        out += ["", " ".join(notes), ""]
    out += [("Operations per second over the run phase's wall time (all operation types), higher is better; "
             "per type: its operations over the same time, and latency percentiles of single operations in "
             "microseconds (a read-modify-write is one read + one write, timed together). Ratios above 1: "
             "faster than the best peer of that workload (the fastest engine that is not Lightning) / than "
             "rocksdict."),
            "", "Engines:"]
    for e in engines:
        cls = ENGINES[e]
        if e in skipped:
            out.append(f"- **{e}**: skipped: {skipped[e]}.")
            continue
        out.append(f"- **{e}** {cls.version()}: durability: {cls.durability}; settings: {cls.describe()}.")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ycsb", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="recordcount (default 100,000)")
    ap.add_argument("--operations", type=int, default=100_000, help="operationcount (default 100,000)")
    ap.add_argument("--workloads", default="a,b,c,d,e,f", help="comma list of a..f (default: all)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)} (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="client threads (default 1)")
    ap.add_argument("--value-size", type=int, default=100, help="bytes per record (default 100)")
    ap.add_argument("--out", help="also write the markdown to this file")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tmpdir", default=tempfile.gettempdir(), help="where the databases go (default: system temp)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile each run phase into DIR/<engine>-<workload>.pstats")
    args = ap.parse_args(argv)

    workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS] + [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"unknown workload or engine: {', '.join(unknown)}")
    if args.records < 2 or args.operations < 1 or args.threads < 1 or args.value_size < 1:
        ap.error("--records must be >= 2, --operations, --threads and --value-size >= 1")
    if args.profile:
        if args.threads != 1:
            ap.error("--profile needs --threads 1")
        os.makedirs(args.profile, exist_ok=True)

    # SIGTERM unwinds like Ctrl-C, so that every finally block stops what it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    skipped = {e: why for e in engines if (why := ENGINES[e].unavailable())}
    for e, why in skipped.items():
        _log(f"skipping {e}: {why}")
    values = value_pool(args.value_size, args.seed)
    pairs = load_pairs(args.records, values)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failed = False
    for wl in workloads:
        w = WORKLOADS[wl]
        t0 = time.perf_counter()
        ops = operations(w, args.records, args.operations, values, args.seed + ord(wl))
        _log(f"workload {w.letter} ({w.describe()}): {len(ops):,} operations drawn in "
             f"{time.perf_counter() - t0:.1f} s")
        results[wl] = {}
        for e in engines:
            if e in skipped:
                continue
            prof = os.path.join(args.profile, f"{e}-{wl}.pstats") if args.profile else None
            try:
                r = run_one(ENGINES[e], w, pairs, ops, args.threads, args.tmpdir, prof)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next engine
                failed = True
                r = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]}
                _log(f"  [{e}] {w.letter} FAILED: {r['error']}")
                traceback.print_exc(limit=5, file=sys.stderr)
            results[wl][e] = r
            if "ops" in r:
                per = "  ".join(f"{n} {p['p50']:.1f}/{p['p95']:.1f}/{p['p99']:.1f} µs"
                                for n, p in r["per_op"].items())
                _log(f"  [{e}] {w.letter}: {r['ops']:>10,.0f} ops/s  {r['secs']:6.2f} s  (load "
                     f"{r['load_s']:.1f} s)  {per}" + (f"  misses {r['misses']:,}" if r["misses"] else ""))
            elif "note" in r:
                _log(f"  [{e}] {w.letter}: {r['note']}")
            gc.collect()

    text = report(results, workloads, engines, args, skipped)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
