"""The engines of the transaction benchmark (bench/txn.py): Lightning DB (process pool and in
process), SQLite and LMDB, each running the same transfer transaction, and the key and value helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
import os
import sqlite3
import sys
from collections.abc import Iterator
from typing import Any

PAD = b"." * 80
LOAD_BATCH = 1000
MiB = 1024 * 1024


def key_of(i: int) -> bytes:
    return b"%016d" % i


def _value(counter: int) -> bytes:
    return b"%+020d" % counter + PAD                 # 100 bytes


def _counter(value: bytes | None) -> int:
    if value is None:
        raise RuntimeError("a loaded key was not found")
    return int(value[:20])


def _load_pairs(keys: int) -> Iterator[list[tuple[bytes, bytes]]]:
    zero = _value(0)
    for s in range(0, keys, LOAD_BATCH):
        yield [(key_of(i), zero) for i in range(s, min(keys, s + LOAD_BATCH))]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- engines ------------------------------------------------------------------------------------
#
# An engine class is used on both sides. In the benchmark's process,
# ``host(path, keys, shards)`` loads the keys and returns a ``Host`` that
# lives until every client count has run (``total()`` reads every counter
# back, ``close()`` stops what it started). In each client process,
# ``cls(path)`` opens the database, ``txn(ka, kb)`` runs one transaction
# (``attempts`` counts every try, ``GIVE_UP`` is what a transaction that
# never committed raises), ``close()`` closes it.

class Host:
    def __init__(self, total: Any, close: Any = None) -> None:
        self.total = total                # () -> (keys, sum of counters)
        self._close = close

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()


class TxEngine(ABC):
    name = "?"
    durability = "?"
    settings = "?"
    max_clients: int | None = None        # None: any number of client processes
    GIVE_UP: tuple[type[BaseException], ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path
        self.attempts = 0

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    @classmethod
    def version(cls) -> str:
        return "?"

    @classmethod
    @abstractmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        ...

    @abstractmethod
    def txn(self, ka: bytes, kb: bytes) -> None:
        ...

    def close(self) -> None:
        pass


def _lightning_total(db: Any) -> tuple[int, int]:
    n = total = 0
    for _, v in db.scan():
        n += 1
        total += _counter(v)
    return n, total


def nodes_started(before: set[int]) -> list[Any]:
    """The Lightning nodes this process started since *before* (its child
    pids then), each with its workers: what ``open(path, shards=N)`` starts."""
    import psutil

    out: list[Any] = []
    for p in psutil.Process().children():
        try:
            if p.pid not in before and "lightning_db.shards.node" in " ".join(p.cmdline()):
                out += [p] + p.children(recursive=True)
        except psutil.Error:
            pass
    return out


def stop_tree(procs: list[Any], what: str, grace: float = 30.0) -> None:
    """Wait up to *grace* seconds for *procs* (psutil processes this run
    started) to exit; terminate, then kill, the ones still there."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        if grace:
            log(f"  {what}: {len(alive)} process(es) still running {grace:g} s after close; stopping them")
        for p in alive:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)


class Lightning(TxEngine):
    name = "lightning"
    durability = ("sync='interval' (Config default, 100 ms): a commit on one shard is written to the "
                  "OS and fsynced by the shard's syncer within 100 ms; a transaction that writes on two "
                  "shards commits by two-phase commit, whose decision (the commit at the lowest shard) "
                  "and other participants' prepare records are always fsynced")
    settings = "shards={shards} (worker processes under one node; every client attaches to it), Config defaults"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import lightning_db

        self.GIVE_UP = (lightning_db.TransactionConflict,)
        self.db = self._open(path)

    def _open(self, path: str) -> Any:
        import lightning_db

        return lightning_db.open(path)          # the shard count recorded in the directory

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import lightning_db  # noqa: F401
        except ImportError as e:
            return f"lightning_db cannot be imported: {e}"
        return None

    @classmethod
    def version(cls) -> str:
        import lightning_db

        return lightning_db.__version__

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        import psutil

        import lightning_db

        before = {p.pid for p in psutil.Process().children()}
        db = None
        try:
            db = lightning_db.open(path, shards=shards)
            for batch in _load_pairs(keys):
                db.put_many(batch)
            db.flush()
        except BaseException:
            # A failed or interrupted open or load: whatever node it started goes now.
            try:
                if db is not None:
                    db.close()
            finally:
                stop_tree(nodes_started(before), cls.name, 30.0 if db is not None else 0.0)
            raise

        def close() -> None:
            started = nodes_started(before)
            try:
                db.close()                        # the node exits once the last caller detached
            finally:
                stop_tree(started, cls.name)

        return Host(lambda: _lightning_total(db), close)

    def txn(self, ka: bytes, kb: bytes) -> None:
        def fn(tx: Any) -> None:
            self.attempts += 1
            a = tx.get(ka)
            b = tx.get(kb)
            tx.put(ka, _value(_counter(a) + 1))
            tx.put(kb, _value(_counter(b) - 1))

        self.db.run_transaction(fn, retries=50, isolation="snapshot")

    def close(self) -> None:
        self.db.close()


class LightningOneShard(Lightning):
    """The same node and clients with one worker process: every
    transaction commits on one shard, with no two-phase commit and no
    commit gate (what a cross-shard commit costs, side by side)."""

    name = "lightning-1"
    durability = ("sync='interval' (Config default, 100 ms): a commit is written to the OS and fsynced "
                  "by the shard's syncer within 100 ms (one shard: no two-phase commit)")
    settings = "shards=1 (one worker process under one node; every client attaches to it), Config defaults"

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        return super().host(path, keys, 1)


class LightningInProcess(Lightning):
    name = "lightning-0"
    durability = ("sync='interval' (Config default, 100 ms): each commit written to the OS, the WAL "
                  "fsynced by a background thread within 100 ms")
    settings = "shards=0 (in process; the directory belongs to one process), Config defaults"
    max_clients = 1

    def _open(self, path: str) -> Any:
        import lightning_db

        return lightning_db.open(path, shards=0)

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        import lightning_db

        db = lightning_db.open(path, shards=0)
        try:
            for batch in _load_pairs(keys):
                db.put_many(batch)
            db.flush()
        finally:
            db.close()                            # the client process opens it next

        def total() -> tuple[int, int]:
            db = lightning_db.open(path, shards=0)
            try:
                return _lightning_total(db)
            finally:
                db.close()

        return Host(total)


class Sqlite3(TxEngine):
    name = "sqlite3"
    durability = ("journal_mode=WAL, synchronous=NORMAL: each commit written to the WAL, fsync only at "
                  "checkpoints")
    settings = ("table kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID, one connection per client, "
                "BEGIN IMMEDIATE ... COMMIT per transaction, busy timeout 60 s (SQLite's busy handler "
                "sleeps between retries), 256 MiB page cache")
    BUSY_RETRIES = 50

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.conn = self._connect(path)
        self.GIVE_UP = (sqlite3.OperationalError,)

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{256 * MiB // 1024}")
        return conn

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        os.makedirs(path, exist_ok=True)
        conn = cls._connect(path)
        try:
            conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            for batch in _load_pairs(keys):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO kv VALUES (?, ?)", batch)
                conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

        def total() -> tuple[int, int]:
            conn = cls._connect(path)
            try:
                n = t = 0
                for (v,) in conn.execute("SELECT v FROM kv"):
                    n += 1
                    t += _counter(v)
                return n, t
            finally:
                conn.close()

        return Host(total)

    def txn(self, ka: bytes, kb: bytes) -> None:
        c = self.conn
        for i in range(self.BUSY_RETRIES + 1):
            self.attempts += 1
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:      # busy past the timeout: try again
                if i == self.BUSY_RETRIES:
                    raise
                continue
            try:
                a = c.execute("SELECT v FROM kv WHERE k = ?", (ka,)).fetchone()
                b = c.execute("SELECT v FROM kv WHERE k = ?", (kb,)).fetchone()
                c.execute("UPDATE kv SET v = ? WHERE k = ?", (_value(_counter(a and a[0]) + 1), ka))
                c.execute("UPDATE kv SET v = ? WHERE k = ?", (_value(_counter(b and b[0]) - 1), kb))
                c.execute("COMMIT")
                return
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.conn.close()


class Lmdb(TxEngine):
    name = "lmdb"
    SYNC = True
    durability = "sync=True, metasync=True (LMDB's default): every commit fsyncs the data file"
    settings = "one environment per client, env.begin(write=True) per transaction (one writer at a time)"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.env = self._env(path)

    @classmethod
    def _env(cls, path: str) -> Any:
        import lmdb

        # map_size is only address space (the file grows as needed).
        return lmdb.open(path, map_size=1 << 34, sync=cls.SYNC, metasync=cls.SYNC, readahead=False,
                         max_spare_txns=1)

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("lmdb") else "lmdb is not installed (pip install -e '.[bench]')"

    @classmethod
    def version(cls) -> str:
        import lmdb

        return f"{lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        env = cls._env(path)
        try:
            for batch in _load_pairs(keys):
                with env.begin(write=True) as t:
                    t.cursor().putmulti(batch)
            env.sync(True)
        finally:
            env.close()

        def total() -> tuple[int, int]:
            env = cls._env(path)
            try:
                n = t = 0
                with env.begin() as txn:
                    for _, v in txn.cursor():
                        n += 1
                        t += _counter(v)
                return n, t
            finally:
                env.close()

        return Host(total)

    def txn(self, ka: bytes, kb: bytes) -> None:
        self.attempts += 1
        with self.env.begin(write=True) as t:
            a = t.get(ka)
            b = t.get(kb)
            t.put(ka, _value(_counter(a) + 1))
            t.put(kb, _value(_counter(b) - 1))

    def close(self) -> None:
        self.env.close()


class LmdbNoSync(Lmdb):
    name = "lmdb-nosync"
    SYNC = False
    durability = "sync=False, metasync=False: each commit written to the OS, no fsync"


ENGINES: dict[str, type[TxEngine]] = {e.name: e for e in (Lightning, LightningOneShard, LightningInProcess,
                                                          Sqlite3, Lmdb, LmdbNoSync)}
