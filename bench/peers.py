"""One adapter per engine, all with the same methods, so that a workload
runs unchanged against Lightning DB and its peers.

Every adapter opens a fresh database in the directory it is given and is used
by one thread. Each operation is one method call on the adapter (one Python
frame) plus the engine's own call, so the per-operation overhead the adapter
adds is the same for every engine.

Settings are chosen to be comparable and are stated by each adapter in
``settings`` and ``durability`` (printed with every result):

- durability: every engine writes each acknowledged write to the OS (so it
  survives a kill of the process) and none fsyncs per write (so the last
  writes may be lost on power loss). That is Lightning's ``sync='never'``,
  RocksDB's and LevelDB's default (WAL on, ``sync=false``), LMDB with
  ``sync=False`` and SQLite's WAL mode with ``synchronous=NORMAL``.
- the LSM peers get Lightning's default memtable size, block cache size and
  bloom filter bits (read from ``lightning_db.config.Config``; 32 MiB,
  256 MiB, 10 bits/key when this was written) and no block compression;
  RocksDB (rocksdict) and LevelDB (plyvel) would otherwise use Snappy and no
  bloom filter. SQLite gets a page cache of the block cache's size; LMDB
  reads through its memory map and needs no cache.
"""

from __future__ import annotations

import abc

import os
import sqlite3
from collections.abc import Sequence

MiB = 1024 * 1024


def _lightning_defaults() -> tuple[int, int, int]:
    # The peers get Lightning's own defaults, so that the settings stay
    # comparable when those defaults change.
    try:
        from lightning_db.config import Config
    except ImportError:
        return 32 * MiB, 256 * MiB, 10
    c = Config()
    return c.memtable_size, c.block_cache_size, c.bloom_bits_per_key


MEMTABLE, CACHE, BLOOM_BITS = _lightning_defaults()

Pair = tuple[bytes, bytes]


class Engine(abc.ABC):
    """The adapter interface. ``compact`` returns False where the engine has
    no compaction (nothing was done)."""

    name = "?"
    durability = "?"
    settings = "?"

    @classmethod
    def describe(cls) -> str:
        """The settings in force, in words."""
        return cls.settings

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the engine can run here, else why not."""
        return None

    @classmethod
    def version(cls) -> str:
        return "?"

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes) -> None:
        """Store one pair."""

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value, or None."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values in order (None for absent keys): the engine's multi-get
        where it has one, else one get per key."""
        get = self.get
        return [get(k) for k in keys]

    @abc.abstractmethod
    def delete(self, key: bytes) -> None:
        """Remove one key."""

    @abc.abstractmethod
    def write_batch(self, pairs: Sequence[Pair]) -> None:
        """Write all pairs atomically, in one engine batch / transaction."""

    @abc.abstractmethod
    def scan_all(self) -> int:
        """Iterate every (key, value) in key order; return how many."""

    def compact(self) -> bool:
        return False

    def settle(self) -> None:
        """Wait until every write made so far is applied by the engine (inside
        the timed region of each benchmark): a no-op for engines whose calls
        return once applied."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the engine."""


class Lightning(Engine):
    name = "lightning"
    durability = "sync=never: WAL written to the OS on every write, no fsync (survives a process kill, not power loss)"
    settings = "shards=0 (in process), Config defaults"

    @classmethod
    def describe(cls) -> str:
        try:
            from lightning_db.config import Config
        except ImportError:
            return cls.settings
        c = Config()
        return (f"shards=0 (in process), Config defaults: memtable {c.memtable_size // MiB} MiB, "
                f"block cache {c.block_cache_size // MiB} MiB ({c.block_cache_policy}), "
                f"bloom {c.bloom_bits_per_key} bits/key, {c.block_size // 1024} KiB blocks, "
                f"compression {c.compression}")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import lightning_db

        self.db = lightning_db.open(path, shards=0, sync="never")

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import lightning_db
        except ImportError as e:
            return f"cannot import lightning_db: {e}"
        if not callable(getattr(lightning_db, "open", None)):
            return "lightning_db.open does not exist yet"
        return None

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lightning-db")
        except PackageNotFoundError:
            return "source tree"

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.db.get_many(keys)

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def write_batch(self, pairs: Sequence[Pair]) -> None:
        self.db.put_many(pairs)

    def scan_all(self) -> int:
        n = 0
        for _ in self.db.scan():
            n += 1
        return n

    def compact(self) -> bool:
        self.db.compact()
        return True

    def close(self) -> None:
        self.db.close()


class Rocksdict(Engine):
    name = "rocksdict"
    durability = "RocksDB default WriteOptions: WAL on, sync=false (survives a process kill, not power loss)"
    settings = (f"raw_mode, write buffer {MEMTABLE // MiB} MiB, LRU block cache {CACHE // MiB} MiB, "
                f"bloom {BLOOM_BITS} bits/key, no compression, otherwise RocksDB defaults "
                "(4 KiB blocks, leveled compaction)")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBatch

        # raw_mode: without it rocksdict pickles keys and values (and its
        # WriteBatch must be created with the same raw_mode, or write() fails).
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(MEMTABLE)
        opts.set_compression_type(DBCompressionType.none())
        table = BlockBasedOptions()
        table.set_bloom_filter(BLOOM_BITS, False)
        table.set_block_cache(Cache(CACHE))
        opts.set_block_based_table_factory(table)
        self.db = Rdict(path, opts)
        self._batch = WriteBatch

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("rocksdict")

    @classmethod
    def version(cls) -> str:
        return _dist_version("rocksdict")

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.db.get(list(keys))          # RocksDB MultiGet

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def write_batch(self, pairs: Sequence[Pair]) -> None:
        wb = self._batch(raw_mode=True)
        for k, v in pairs:
            wb.put(k, v)
        self.db.write(wb)

    def scan_all(self) -> int:
        n = 0
        for _ in self.db.items():
            n += 1
        return n

    def compact(self) -> bool:
        self.db.compact_range(None, None)  # flushes the memtable, then compacts everything; waits
        return True

    def close(self) -> None:
        self.db.close()


class Plyvel(Engine):
    name = "plyvel"
    durability = "LevelDB default: log written on every write, sync=False (survives a process kill, not power loss)"
    settings = (f"write buffer {MEMTABLE // MiB} MiB, LRU cache {CACHE // MiB} MiB, bloom {BLOOM_BITS} "
                "bits/key, no compression, otherwise LevelDB defaults (4 KiB blocks)")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import plyvel

        self.db = plyvel.DB(path, create_if_missing=True, write_buffer_size=MEMTABLE, lru_cache_size=CACHE,
                            bloom_filter_bits=BLOOM_BITS, compression=None)

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("plyvel")

    @classmethod
    def version(cls) -> str:
        import plyvel

        return f"{plyvel.__version__} (LevelDB {plyvel.__leveldb_version__})"

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def write_batch(self, pairs: Sequence[Pair]) -> None:
        # The batch is written when the with-block exits (nothing if it raises).
        with self.db.write_batch() as wb:
            for k, v in pairs:
                wb.put(k, v)

    def scan_all(self) -> int:
        n = 0
        for _ in self.db.iterator():
            n += 1
        return n

    def compact(self) -> bool:
        self.db.compact_range()  # whole key range, memtable included; waits
        return True

    def close(self) -> None:
        self.db.close()


class Lmdb(Engine):
    name = "lmdb"
    durability = ("sync=False, metasync=False: each commit written to the OS, no fsync "
                  "(survives a process kill, not power loss)")
    settings = ("one write transaction per put/delete/batch; reads share one read-only transaction "
                "until the next write (as LMDB's own db_bench does); no compaction (B+ tree)")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import lmdb

        # map_size is only address space (the file grows as needed).
        self.env = lmdb.open(path, map_size=1 << 36, sync=False, metasync=False, readahead=False,
                             max_spare_txns=2)
        self._rtxn = None

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("lmdb")

    @classmethod
    def version(cls) -> str:
        import lmdb

        return f"{lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"

    def _end_reads(self) -> None:
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None

    def put(self, key: bytes, value: bytes) -> None:
        if self._rtxn is not None:
            self._end_reads()
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        txn = self._rtxn
        if txn is None:
            txn = self._rtxn = self.env.begin()
        return txn.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        txn = self._rtxn
        if txn is None:
            txn = self._rtxn = self.env.begin()
        found = dict(txn.cursor().getmulti(keys))   # LMDB's multi-get: the pairs found
        return [found.get(k) for k in keys]

    def delete(self, key: bytes) -> None:
        if self._rtxn is not None:
            self._end_reads()
        with self.env.begin(write=True) as txn:
            txn.delete(key)

    def write_batch(self, pairs: Sequence[Pair]) -> None:
        self._end_reads()
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)

    def scan_all(self) -> int:
        self._end_reads()
        n = 0
        with self.env.begin() as txn:
            for _ in txn.cursor():
                n += 1
        return n

    def close(self) -> None:
        self._end_reads()
        self.env.close()


class Sqlite3(Engine):
    name = "sqlite3"
    durability = ("journal_mode=WAL, synchronous=NORMAL: each commit written to the WAL, fsync only at "
                  "checkpoints (survives a process kill, not power loss)")
    settings = ("table kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID, autocommit per put/delete, "
                f"executemany in one transaction per batch, {CACHE // MiB} MiB page cache; "
                "compact = checkpoint + VACUUM")

    def __init__(self, path: str) -> None:
        super().__init__(path)
        os.makedirs(path, exist_ok=True)
        self.conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None)  # autocommit
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA cache_size=-{CACHE // 1024}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def put(self, key: bytes, value: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def get(self, key: bytes) -> bytes | None:
        row = self.conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def delete(self, key: bytes) -> None:
        self.conn.execute("DELETE FROM kv WHERE k = ?", (key,))

    def write_batch(self, pairs: Sequence[Pair]) -> None:
        self.conn.execute("BEGIN")
        try:
            self.conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", pairs)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def scan_all(self) -> int:
        n = 0
        for _ in self.conn.execute("SELECT k, v FROM kv ORDER BY k"):
            n += 1
        return n

    def compact(self) -> bool:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def close(self) -> None:
        self.conn.close()


def _missing(module: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


class LightningShards(Lightning):
    """The process pool: two shard workers under a node. Writes are messages
    to a worker (a batch spanning both shards commits by two-phase commit);
    point reads come from the shards' published versions in shared memory;
    scans are still paged through the workers."""

    name = "lightning-2"
    settings = "shards=2 (worker processes), Config defaults"
    durability = ("sync=never, put/delete pipelined: a call returns before its shard has the write (a kill "
                  "of the calling process loses what it had in flight); each shard writes its WAL to the OS, "
                  "no fsync; each benchmark's clock stops once every write is acknowledged")

    @classmethod
    def describe(cls) -> str:
        return "shards=2 (two worker processes under a node), " + Lightning.describe().split(", ", 1)[1]

    def __init__(self, path: str) -> None:
        Engine.__init__(self, path)
        import lightning_db

        self.db = lightning_db.open(path, shards=2, sync="never")

    def settle(self) -> None:
        # put and delete are pipelined (they return before the shard has the
        # write): the clock stops once every one of them is acknowledged.
        self.db._pipe.barrier()


ENGINES: dict[str, type[Engine]] = {e.name: e for e in (Lightning, LightningShards, Rocksdict, Lmdb, Plyvel,
                                                          Sqlite3)}
OPT_IN: set[str] = set()       # engines run only when --engines names them
