"""``connect(url)``: the Database API over the native protocol (the caller's process).

``RemoteDatabase`` has the methods and semantics of ``Database`` (``db.py``)
and is safe to use from several threads: each call borrows a connection
from the ``Pool`` for its round trip. Arguments are checked here, with the
local database's own checks and messages (``db._Limits`` with the server's
``max_key_size``/``max_value_size``, ``db._scan_range``), so a bad argument
raises ``InvalidArgument`` before anything is sent and nothing is written.

What differs from a local handle, and why:

- a failure of the link raises a ``TransientError`` (``PeerLost`` when the
  connection dropped, ``Timeout`` when no answer came within ``timeout``);
  the call may or may not have been applied (as with any network database);
  the pool replaces the connection;
- a write is acknowledged once the server's database has it in its WAL
  (never earlier, whatever the server's write pipeline does);
- ``batch()`` buffers here and sends the batch once, at commit;
- ``get(copy=False)`` returns a memoryview of the bytes that came back;
- ``checkpoint`` is not offered: it would write on the server's disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ..config import Config
from ..db import Batch, MappingSugar, _Limits, _scan_range
from ..errors import DatabaseClosed, InvalidArgument
from ..transaction import check_sync, run_transaction
from .pool import Pool
from .protocol import Write
from .views import RemoteScan, RemoteSnapshot, RemoteTransaction, _open_scan, page_size

__all__ = ["RemoteBatch", "RemoteDatabase", "RemoteScan", "RemoteSnapshot", "RemoteTransaction", "connect"]

T = TypeVar("T")
_PUT = int(Write.PUT)
_DELETE = int(Write.DELETE)
_BYTESLIKE = (bytes, bytearray, memoryview)


class RemoteBatch(Batch):
    """Writes collected here in order and sent as one request on commit,
    applied atomically by the server: all of them or none. Used as
    ``with db.batch() as b:``; an exception inside the block discards it.
    Only the ops' wire form and the commit differ from ``Batch``."""

    __slots__ = ()
    _db: RemoteDatabase           # type: ignore[assignment]
    _ops: list[Any]               # type: ignore[assignment]

    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        self._check()
        self._ops.append(self._db._put_op(key, value, ttl, expire_at))

    def delete(self, key: Any) -> None:
        self._check()
        self._ops.append([_DELETE, self._db._limits.key(key)])

    def commit(self) -> None:
        self._check()
        self._done = True
        if self._ops:
            self._db._call("batch", [self._ops, self._sync])


class RemoteDatabase(MappingSugar):
    """A database served by one or more ``NativeServer``s, through *pool*.
    ``timeout`` (the pool's) bounds each call but flush, compact and verify,
    which wait as long as the server works (a dropped link still ends them)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._closed = False
        self._lim: _Limits | None = None
        self._config: Config | None = None

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """A Config holding the server's limits (the rest is the defaults)."""
        if self._config is None:
            self._check_open()
            info = self.pool.server_info()
            self._config = Config().replace(max_key_size=info["max_key_size"],
                                            max_value_size=info["max_value_size"],
                                            transaction_max_age=info["transaction_max_age"])
        return self._config

    @property
    def _limits(self) -> _Limits:
        lim = self._lim
        if lim is None:
            lim = self._lim = _Limits(self.config)
        return lim

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"remote database {', '.join(self.pool.urls)} is closed")

    _check_sync = staticmethod(check_sync)

    def _call(self, op: str, payload: Any, timeout: Any = ...) -> Any:
        self._check_open()
        pool = self.pool
        conn = pool.acquire()
        try:
            return conn.call(op, payload) if timeout is ... else conn.call(op, payload, timeout)
        finally:
            pool.release(conn)

    def _put_op(self, key: Any, value: Any, ttl: Any, expire_at: Any) -> list[Any]:
        lim = self._limits
        key, value = lim.key(key), lim.value(value)
        if ttl is not None or expire_at is not None:
            lim.op(key, b"", ttl, expire_at)          # the expiry's checks, with the local messages
        return [_PUT, key, value, ttl, expire_at]

    # --- single keys ----------------------------------------------------------------------------
    def put(self, key: Any, value: Any, sync: bool | None = None, *, ttl: float | None = None,
            expire_at: float | None = None) -> None:
        """Store *value* under *key* (expiring after *ttl* seconds or at
        *expire_at*, Unix seconds, if given); returns once the server's
        database has it in its WAL (fsynced with ``sync=True``)."""
        _, key, value, ttl, expire_at = self._put_op(key, value, ttl, expire_at)
        self._check_open()
        self._check_sync(sync)
        self._call("put", [key, value, sync, ttl, expire_at])

    def get(self, key: Any, default: Any = None, *, copy: bool = True) -> Any:
        """The value of *key*, or *default* (None) when it is absent.
        ``copy=False``: a memoryview of the bytes that came back."""
        self._check_open()
        v = self._call("get", [self._limits.key(key)])
        if v is None:
            return default
        return v if copy else memoryview(v)

    def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None), or None when absent or expired."""
        self._check_open()
        r = self._call("get_ex", [self._limits.key(key)])
        return None if r is None else (r[0], r[1])

    def delete(self, key: Any, sync: bool | None = None) -> None:
        """Remove *key*; removing an absent key is not an error."""
        key = self._limits.key(key)
        self._check_open()
        self._check_sync(sync)
        self._call("delete", [key, sync])

    def put_many(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], sync: bool | None = None) -> None:
        """Store every pair atomically (one request, one batch on the server)."""
        lim = self._limits
        pairs = items.items() if isinstance(items, Mapping) else items
        try:
            ops = [lim.pair(k, v)[1:] for k, v in pairs]
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument(f"put_many takes a mapping or an iterable of (key, value) pairs: {exc}") from None
        if ops:
            self._check_open()
            self._check_sync(sync)
            self._call("put_many", [ops, sync])

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        """Values in the order of *keys*, None for absent ones (each key as
        a ``get`` reads it; a snapshot's ``get_many`` reads them all at one
        point in time)."""
        self._check_open()
        keys = self._limits.keys(keys)
        return self._call("get_many", [keys]) if keys else []

    def batch(self, sync: bool | None = None) -> RemoteBatch:
        self._check_open()
        return RemoteBatch(self, sync)

    # --- ordered reads ----------------------------------------------------------------------------
    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with start <= key < end (and starting with
        *prefix*), ascending or descending, at most *limit* of them, read at
        a consistent view taken when scan() is called (its first page comes
        back before it returns)."""
        self._check_open()
        lo, hi, n = _scan_range(self._limits, start, end, prefix, reverse, limit)
        if (lo is not None and hi is not None and lo >= hi) or n == 0:
            return iter(())
        page = page_size(n)
        pool = self.pool
        conn = pool.acquire()
        try:
            return _open_scan(conn, conn.call("scan", [0, conn.session, lo, hi, reverse, n, page]), page)
        finally:
            pool.release(conn)

    def snapshot(self) -> RemoteSnapshot:
        """A consistent view on the server (``with db.snapshot() as s:``)."""
        self._check_open()
        return RemoteSnapshot(self)

    # --- transactions -----------------------------------------------------------------------------
    def transaction(self, isolation: str = "snapshot", sync: bool | None = None) -> RemoteTransaction:
        """A new optimistic transaction run by the server (``with
        db.transaction() as tx:``); *isolation* "snapshot" or "serializable"."""
        self._check_open()
        return RemoteTransaction(self, isolation, sync)

    def run_transaction(self, fn: Callable[[RemoteTransaction], T], retries: int = 10,
                        isolation: str = "snapshot", sync: bool | None = None) -> T:
        """``fn(tx)`` committed, run again after a backoff on
        TransactionConflict, at most *retries* more times; returns what *fn*
        returned. A link error is raised at once (the commit's outcome is
        unknown, so it is never run twice)."""
        return run_transaction(self, fn, retries, isolation, sync)  # type: ignore[arg-type]

    # --- maintenance ------------------------------------------------------------------------------
    def flush(self) -> None:
        """The server's database writes its memtables to tables; waits."""
        self._call("flush", [], None)

    def compact(self) -> None:
        """Full compaction on the server; waits."""
        self._call("compact", [], None)

    def verify(self) -> dict[str, int]:
        """The server reads every block of every table and checks it."""
        return self._call("verify", [], None)

    def stats(self) -> dict[str, Any]:
        """The server database's stats, with ``native_server`` (its
        sessions, objects and counters) and ``pool`` (this client's pool)."""
        s = self._call("stats", [])
        s["pool"] = self.pool.stats()
        return s

    def health(self) -> dict[str, Any]:
        """One server's own view of itself (status, uptime)."""
        return self._call("health", [])

    def close(self) -> None:
        """Close the pool: the servers release this client's snapshots,
        transactions and scans. Idempotent."""
        if not self._closed:
            self._closed = True
            self.pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<lightning_db.RemoteDatabase {self.pool.urls}{' closed' if self._closed else ''}>"


def connect(url_or_urls: str | Sequence[str], **pool_options: Any) -> RemoteDatabase:
    """A ``RemoteDatabase`` on the native server at *url_or_urls*
    (``tcp://HOST:PORT``, or a list of them for a pool across several
    servers). *pool_options* are ``Pool``'s: min_size, max_size, strategy,
    weights, idle_timeout, max_lifetime, health_check_interval,
    acquire_timeout, connect_timeout, timeout. Warms the pool up first:
    raises a TransientError when no server answers."""
    try:
        pool = Pool(url_or_urls, **pool_options)
    except TypeError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"connect(): {exc}") from None
    return RemoteDatabase(pool)

