"""The ``Database`` facade: validation, mapping sugar, batches, snapshots.

With ``shards=0`` everything runs in the calling process: the facade owns one
storage ``Engine`` and calls it directly. Methods are safe to call from
several threads.

Validation happens here, before anything reaches the engine, so a bad
argument raises ``InvalidArgument`` and nothing is written.
"""

from __future__ import annotations

import os
import time
import weakref
from itertools import islice, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from .config import Config
from .errors import DatabaseClosed, InvalidArgument
from .interrupts import held_interrupts
from .storage.engine import Engine
from .storage.format import CURRENT, Kind
from .storage.ttl import encode as ttl_encode
from .storage.txn import TxCheck
from .transaction import KeyAccess, KeyWrites, Transactional, check_sync

if TYPE_CHECKING:
    from .shards.client import ShardedDatabase

_VALUE = int(Kind.VALUE)
_DELETE = int(Kind.DELETE)
_VALUE_TTL = int(Kind.VALUE_TTL)
_MAX_TTL_S = 1e11                 # seconds: beyond year 5000, also as an absolute time
_BYTESLIKE = (bytes, bytearray, memoryview)
_JUST_BYTES = {bytes}
_JUST_TUPLE, _JUST_TWO = {tuple}, {2}
_first, _second = itemgetter(0), itemgetter(1)


def _listed(items: Any, takes: str) -> list[Any]:
    """*items* as a list; InvalidArgument saying what the call *takes*
    where it is one bytes-like object or a str, or not iterable."""
    if isinstance(items, (bytes, bytearray, memoryview, str)):
        raise InvalidArgument(f"{takes}, got one {type(items).__name__} (put a single key in a list)")
    try:
        return list(items)
    except TypeError:
        raise InvalidArgument(f"{takes}, got {type(items).__name__}") from None


def key_list(keys: Any) -> list[Any]:
    """The keys of a ``get_many`` as a list (not yet checked one by one)."""
    return _listed(keys, "get_many takes an iterable of keys")


def _type_error(what: str, obj: object) -> InvalidArgument:
    return InvalidArgument(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                           f"got {type(obj).__name__}")


class _Limits:
    __slots__ = ("max_key", "max_value")

    def __init__(self, config: Config) -> None:
        self.max_key = config.max_key_size
        self.max_value = config.max_value_size

    def key(self, key: Any, what: str = "key") -> bytes:
        if type(key) is not bytes:
            if not isinstance(key, _BYTESLIKE):
                raise _type_error(what, key)
            key = bytes(key)
        n = len(key)
        if n == 0 or n > self.max_key:
            raise InvalidArgument(f"{what} must be 1 to {self.max_key} bytes (max_key_size), got {n} bytes")
        return key

    def keys(self, keys: Iterable[Any]) -> list[bytes]:
        """The keys of a ``get_many``, each checked."""
        key = self.key
        return [key(k) for k in key_list(keys)]

    def keys_and_lengths(self, keys: Iterable[Any]) -> tuple[list[bytes], np.ndarray]:
        """``keys`` and the keys' lengths (int64 array); a batch of plain
        ``bytes`` keys is checked on the lengths in numpy."""
        keys = key_list(keys)
        if keys and set(map(type, keys)) == _JUST_BYTES:
            lens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
            if lens.min() > 0 and lens.max() <= self.max_key:
                return keys, lens
        keys = [self.key(k) for k in keys]
        return keys, np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))

    def value_ops(self, pairs: Iterable[Any]) -> list[tuple[int, bytes, bytes]]:
        """(VALUE, key, value) of each (key, value) pair, checked; a batch of
        plain ``bytes`` pairs is checked in C."""
        pairs = list(pairs)
        if pairs and set(map(type, pairs)) == _JUST_TUPLE and set(map(len, pairs)) == _JUST_TWO:
            keys, vals = list(map(_first, pairs)), list(map(_second, pairs))
            if (set(map(type, keys)) == _JUST_BYTES and set(map(type, vals)) == _JUST_BYTES
                    and min(map(len, keys)) > 0 and max(map(len, keys)) <= self.max_key
                    and max(map(len, vals)) <= self.max_value):
                return list(zip(repeat(_VALUE), keys, vals))
        pair = self.pair
        return [pair(k, v) for k, v in pairs]

    def pair(self, k: Any, v: Any) -> tuple[int, bytes, bytes]:
        """(VALUE, key, value) of one item of a ``put_many``, unpacked."""
        if type(k) is int and type(v) is int:
            raise InvalidArgument("put_many takes (key, value) pairs; an item unpacked into two integers "
                                  "(a bytes object of two bytes is not a pair)")
        return _VALUE, self.key(k), self.value(v)

    def value(self, value: Any) -> bytes:
        if type(value) is not bytes:
            if not isinstance(value, _BYTESLIKE):
                raise _type_error("value", value)
            value = bytes(value)
        if len(value) > self.max_value:
            raise InvalidArgument(f"value must be at most {self.max_value} bytes (max_value_size), "
                                  f"got {len(value)} bytes")
        return value

    def op(self, key: Any, value: Any, ttl: Any, expire_at: Any) -> tuple[int, bytes, bytes]:
        """The (kind, key, stored value) of a put, with an expiry when
        *ttl* (seconds from now) or *expire_at* (Unix seconds) is given."""
        key, value = self.key(key), self.value(value)
        if ttl is None and expire_at is None:
            return _VALUE, key, value
        if ttl is not None and expire_at is not None:
            raise InvalidArgument("give ttl or expire_at, not both")
        t = ttl if ttl is not None else expire_at
        what = "ttl" if ttl is not None else "expire_at"
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < _MAX_TTL_S:
            raise InvalidArgument(f"{what} must be a number of seconds > 0 and < {_MAX_TTL_S:.0e}, got {t!r:.40}")
        at = time.time() + t if ttl is not None else t
        if not at < _MAX_TTL_S:
            raise InvalidArgument(f"ttl must put the expiry before Unix time {_MAX_TTL_S:.0e} (the year 5138), "
                                  f"got {t!r:.40} seconds from now")
        return _VALUE_TTL, key, ttl_encode(value, at)

    def bound(self, b: Any, what: str) -> bytes | None:
        if b is None:
            return None
        if not isinstance(b, _BYTESLIKE):
            raise _type_error(what, b)
        return bytes(b)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with *prefix*."""
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1]) if p else None


_MAX_LIMIT = 2**63 - 1      # a scan's limit: what a signed 64-bit count holds (None: no limit)


def _scan_range(limits: _Limits, start: Any, end: Any, prefix: Any, reverse: Any,
                limit: Any) -> tuple[bytes | None, bytes | None, int | None]:
    start = limits.bound(start, "start")
    end = limits.bound(end, "end")
    prefix = limits.bound(prefix, "prefix")
    if not isinstance(reverse, bool):
        raise InvalidArgument(f"reverse must be a bool, got {type(reverse).__name__}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= _MAX_LIMIT):
        raise InvalidArgument(f"limit must be None or an integer from 0 to 2**63-1, got {limit!r}")
    if prefix:
        if start is None or start < prefix:
            start = prefix
        pend = _prefix_end(prefix)
        if pend is not None and (end is None or end > pend):
            end = pend
    return start, end, limit


def _limited(it: Iterator[tuple[bytes, bytes]], limit: int | None) -> Iterator[tuple[bytes, bytes]]:
    return it if limit is None else islice(it, max(limit, 0))


class ReadSugar(KeyAccess):
    """Read-side sugar shared by database handles and snapshots, in terms of
    get and close: ``x[k]`` (KeyError if absent), ``k in x``, and ``with``."""

    __slots__ = ()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # type: ignore[attr-defined]


class MappingSugar(ReadSugar, KeyWrites):
    """The rest of the mapping protocol of a database handle, in terms of
    put, delete and scan: ``db[k] = v``, ``del db[k]`` (KeyError if absent),
    iteration over keys in order."""

    __slots__ = ()

    def __enter__(self) -> Any:
        self._check_open()  # type: ignore[attr-defined]   # a closed handle says so at the block's start
        return self

    def __iter__(self) -> Iterator[bytes]:
        for k, _ in self.scan():  # type: ignore[attr-defined]
            yield k


class Batch:
    """Writes collected in order and applied atomically on commit: all of
    them or none. Used as ``with db.batch() as b:``; an exception inside the
    block discards the batch."""

    __slots__ = ("_db", "_ops", "_sync", "_done")

    def __init__(self, db: "Database", sync: bool | None) -> None:
        self._db = db
        self._ops: list[tuple[int, bytes, bytes]] = []
        self._sync = check_sync(sync)
        self._done = False

    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        self._check()
        self._ops.append(self._db._limits.op(key, value, ttl, expire_at))

    def delete(self, key: Any) -> None:
        self._check()
        self._ops.append((_DELETE, self._db._limits.key(key), b""))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def __len__(self) -> int:
        return len(self._ops)

    def _check(self) -> None:
        if self._done:
            raise InvalidArgument("this batch was already committed or discarded")

    def commit(self) -> None:
        self._check()
        self._done = True
        if self._ops:
            self._db._write(self._ops, self._sync)

    def discard(self) -> None:
        self._done = True
        self._ops = []

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._done:              # committed or discarded inside the block
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class Snapshot(ReadSugar):
    """A consistent, read-only view as of the moment it was taken. Release
    it (``with`` or ``close()``): a live snapshot keeps old versions from
    being compacted away."""

    __slots__ = ("_db", "_seq", "_closed")

    def __init__(self, db: "Database") -> None:
        self._db = db
        self._seq = db._engine.acquire_snapshot()
        self._closed = False

    @property
    def sequence(self) -> int:
        return self._seq

    def _check(self) -> None:
        self._db._check_open()             # a closed handle first: its snapshots went with it
        if self._closed:
            raise InvalidArgument("snapshot was released")

    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        v = self._db._engine.get(self._db._limits.key(key), self._seq)
        return default if v is None else v

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        self._check()
        return self._db._engine.get_many(self._db._limits.keys(keys), self._seq)

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check()
        return self._db._scan(start, end, prefix, reverse, limit, self._seq)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._db._forked:        # a forked child's engine is its parent's
                self._db._engine.release_snapshot(self._seq)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _EngineTxView:
    """A transaction's snapshot on the in-process engine (tracked for its commit's checks)."""

    __slots__ = ("_engine", "seq", "_live")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.seq = engine.begin_tx()
        self._live = True

    def get(self, key: bytes) -> bytes | None:
        return self._engine.get(key, self.seq)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self._engine.get_many(keys, self.seq)

    def get_entry(self, key: bytes) -> tuple[bytes, float | None] | None:
        return self._engine.get_entry(key, self.seq)

    def scan(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        return self._engine.scan(lo, hi, reverse, self.seq)

    def release(self, wait: bool = True) -> bool:
        if not self._live:
            return True
        self._live = False
        return self._engine.end_tx(self.seq)


_HOLD_OPS = 64              # a write of this many ops or more holds Ctrl-C back until it is applied

# Every open in-process database, for the fork handler below.
_IN_PROCESS: "weakref.WeakSet[Database]" = weakref.WeakSet()


def _forked() -> None:
    """In a process forked from one holding in-process databases: every
    handle it inherited is closed here without touching anything (the WAL's
    file offset, the shared memtable segment and the directory's lock are
    shared with the parent, and the engine's threads did not come along):
    its calls raise DatabaseClosed naming the parent, and its close() is a
    no-op, so the parent keeps its lock and its data."""
    for db in list(_IN_PROCESS):
        db._forked = True
        db._closed = True
    _IN_PROCESS.clear()


os.register_at_fork(after_in_child=_forked)


class Database(Transactional, MappingSugar):
    """An open Lightning DB. See README for the full contract. Keys are 1 B to
    ``max_key_size`` (64 KiB), values up to ``max_value_size`` (64 MiB)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._limits = _Limits(engine.config)
        self._sync_default = engine.config.sync == "always"
        self._closed = False
        self._pid = os.getpid()
        self._forked = False
        _IN_PROCESS.add(self)

    @property
    def path(self) -> str:
        return self._engine.path

    @property
    def config(self) -> Config:
        return self._engine.config

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise DatabaseClosed(
                    f"database {self._engine.path} was opened in process {self._pid}, which this process "
                    "forked from: an in-process database (shards=0) belongs to the process that opened it; "
                    "open the path here once that process closed it, or use worker processes (shards >= 1)")
            raise DatabaseClosed(f"database {self._engine.path} is closed")

    def _write(self, ops: list[tuple[int, bytes, bytes]], sync: bool | None) -> None:
        self._check_open()
        check_sync(sync)
        sync = self._sync_default if sync is None else sync
        if len(ops) < _HOLD_OPS:
            self._engine.write(ops, sync)
            return
        with held_interrupts():     # a Ctrl-C inside would stop writes until a reopen (engine.py)
            self._engine.write(ops, sync)

    # --- single keys ----------------------------------------------------------------
    def put(self, key: Any, value: Any, sync: bool | None = None, *, ttl: float | None = None,
            expire_at: float | None = None) -> None:
        """Store *value* under *key*. With ``sync=True`` (or the ``always``
        policy) the call returns only after the WAL is fsynced. *ttl*
        (seconds from now) or *expire_at* (Unix seconds): the value expires
        then and every read treats the key as absent from that moment."""
        lim = self._limits
        if ttl is not None or expire_at is not None:
            self._write([lim.op(key, value, ttl, expire_at)], sync)
            return
        if not (type(key) is bytes and 0 < len(key) <= lim.max_key
                and type(value) is bytes and len(value) <= lim.max_value):
            key, value = lim.key(key), lim.value(value)
        if self._closed or sync is not None:
            self._write([(_VALUE, key, value)], sync)
        else:
            self._engine.write([(_VALUE, key, value)], self._sync_default)

    def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None for a value that does not
        expire) of *key*, or None when it is absent or expired."""
        self._check_open()
        return self._engine.get_entry(self._limits.key(key))

    def get(self, key: Any, default: Any = None, *, copy: bool = True) -> Any:
        """The value of *key*, or *default* (None) when it is absent.
        ``copy=False`` returns a memoryview into the mapped data instead of
        bytes (no copy; valid for as long as it is held)."""
        if self._closed:
            self._check_open()
        if type(key) is not bytes or not 0 < len(key) <= self._limits.max_key:
            key = self._limits.key(key)
        v = self._engine.get(key, None, copy)
        return default if v is None else v

    def delete(self, key: Any, sync: bool | None = None) -> None:
        """Remove *key*; removing an absent key is not an error."""
        self._write([(_DELETE, self._limits.key(key), b"")], sync)

    def put_many(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], sync: bool | None = None) -> None:
        """Store every pair atomically (one batch)."""
        lim = self._limits
        maxk, maxv = lim.max_key, lim.max_value
        pairs = items.items() if isinstance(items, Mapping) else items
        ops: list[tuple[int, bytes, bytes]] = []
        append = ops.append
        try:
            for k, v in pairs:
                if type(k) is bytes and 0 < len(k) <= maxk and type(v) is bytes and len(v) <= maxv:
                    append((_VALUE, k, v))
                else:
                    append(lim.pair(k, v))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument(f"put_many takes a mapping or an iterable of (key, value) pairs: {exc}") from None
        if ops:
            self._write(ops, sync)

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        """Values in the order of *keys*, None for absent ones, all read at
        one sequence number."""
        self._check_open()
        return self._engine.get_many(self._limits.keys(keys))

    def batch(self, sync: bool | None = None) -> Batch:
        self._check_open()
        return Batch(self, sync)

    # --- ordered reads ----------------------------------------------------------------------
    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with start <= key < end (and starting with
        *prefix*), ascending or descending, at most *limit* of them. The
        iterator reads a consistent view taken when scan() was called."""
        self._check_open()
        return self._scan(start, end, prefix, reverse, limit, None)

    def _scan(self, start: Any, end: Any, prefix: Any, reverse: Any, limit: Any,
              seq: int | None) -> Iterator[tuple[bytes, bytes]]:
        start, end, limit = _scan_range(self._limits, start, end, prefix, reverse, limit)
        if start is not None and end is not None and start >= end:
            return iter(())
        return _limited(self._engine.scan(start, end, reverse, seq, limit), limit)

    def snapshot(self) -> Snapshot:
        self._check_open()
        return Snapshot(self)

    # --- transactions (transaction.py) ---------------------------------------------------------
    def _tx_view(self) -> _EngineTxView:
        self._check_open()
        return _EngineTxView(self._engine)

    def _tx_commit(self, view: _EngineTxView | None, ops: list[tuple[int, bytes, bytes]], reads: list[bytes],
                   ranges: list[tuple[bytes | None, bytes | None]], serializable: bool, sync: bool | None) -> None:
        self._check_open()
        check = TxCheck(None if view is None else view.seq, reads, ranges, serializable)
        self._engine.write(ops, self._sync_default if sync is None else sync, check)

    # --- maintenance ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the memtable to a table and wait (the WAL already made the
        data durable per the sync policy; this moves it out of memory)."""
        self._check_open()
        self._engine.flush()

    def compact(self) -> None:
        """Full compaction: one version per key, tombstones gone; waits."""
        self._check_open()
        self._engine.compact()

    def checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """A consistent copy of the database at *path* (must not exist or be
        empty) that ``open`` accepts. Tables are hard-linked."""
        self._check_open()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"checkpoint path must be a str or path, got {type(path).__name__}")
        target = os.path.abspath(os.fspath(path))
        if target == self._engine.path:
            raise InvalidArgument("checkpoint path must differ from the database path")
        return self._engine.checkpoint(target)

    def stats(self) -> dict[str, Any]:
        self._check_open()
        s = self._engine.stats()
        s["shards"] = 0
        return s

    def verify(self) -> dict[str, int]:
        """Read every block of every table and check its checksum."""
        self._check_open()
        return self._engine.verify()

    def close(self) -> None:
        """Close the database (idempotent). In a process forked from the one
        that opened it, nothing is done: the files, the lock and the engine
        are that process's."""
        if not self._closed:
            self._closed = True
            _IN_PROCESS.discard(self)
            self._engine.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<lightning_db.Database {self._engine.path!r}{' closed' if self._closed else ''}>"


def open(path: str | os.PathLike[str], shards: int | None = None, *, config: Config | None = None,
         **options: Any) -> "Database | ShardedDatabase":
    """Open (creating if needed) the database at *path*.

    ``shards=0`` runs the engine in the calling process; the directory then
    belongs to this process alone. ``shards=N`` (N >= 1) serves the keyspace
    from N worker processes under a node process that any number of callers
    may attach to; the count is recorded in the directory. ``shards=None``
    opens what the directory holds (its recorded shard count, or the
    in-process engine) and creates a new directory with one shard per usable
    CPU (the process's affinity). *options* override fields of ``Config``.
    """
    from .actors.placement import usable_cpus
    from .shards.attach import MAX_SHARDS, SHARDS_FILE
    from .shards.client import ShardedDatabase, check_layout

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if config is not None and not isinstance(config, Config):
        raise InvalidArgument(f"config must be a lightning_db.Config, got {type(config).__name__}")
    cfg = (config or Config()).replace(**options) if options else (config or Config())
    if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool)
                               or not 0 <= shards <= MAX_SHARDS):
        raise InvalidArgument(f"shards must be None, 0 (in process) or 1..{MAX_SHARDS} (worker processes), "
                              f"got {shards!r}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidArgument(f"{path} exists and is not a directory: a database is a directory")
    if shards is None:
        if os.path.exists(os.path.join(path, SHARDS_FILE)):
            return ShardedDatabase(path, None, cfg)
        in_process = os.path.exists(os.path.join(path, CURRENT))
        shards = 0 if in_process else len(usable_cpus())
    check_layout(path, shards)
    if shards:
        return ShardedDatabase(path, shards, cfg)
    return Database(Engine(path, cfg))
