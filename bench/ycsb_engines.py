"""The engines of the YCSB run (bench/ycsb.py): the bench/peers.py adapters with a range scan,
client handles per thread, and the Redis-protocol server driven with redis-py."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from itertools import islice
from typing import Any

from .txn_engines import nodes_started, stop_tree
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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

        stop_tree(nodes_started(self._before), self.name, grace)

    def close(self) -> None:

        started = nodes_started(self._before)
        try:
            super().close()              # the node exits once its last caller detached
        finally:
            stop_tree(started, self.name)


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
                    log(f"  [{self.name}] the server did not stop within 90 s; killing it")
                    proc.kill()
                    proc.wait(30)
        finally:
            stop_tree(list(self.tree.values()), self.name, 30.0)


ENGINES: dict[str, type[Any]] = {e.name: e for e in (YLightning, YLightningShards, LightningServer, YRocksdict,
                                                      YLmdb, YPlyvel, YSqlite3, DiskCache)}
LIGHTNING = ("lightning", "lightning-2", "lightning-server")
