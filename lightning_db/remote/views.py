"""Remote scans, snapshots and transactions (the caller's process).

Each of them is a handle on a server-side object (``objects.py`` on the
server) made on one pool connection, which it pins and keeps using: a scan
until its last page (or ``close``), a snapshot until ``close``, a
transaction from its first round trip to its commit or rollback. Pinning
is not lending: other calls go on using that connection too. Dropping one
unfinished releases it as well (its finaliser asks the pool to send the
release and unpin the connection).

Semantics follow the local classes (``db.Snapshot``, ``transaction.Transaction``):
a scan reads a consistent view taken when ``scan()`` is called (its first
page comes back before ``scan()`` returns); a transaction's writes are
buffered here and travel with its next request, so a transaction that only
writes costs one round trip, at commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..db import ReadSugar, _scan_range
from ..errors import DatabaseClosed, InvalidArgument, LightningError, TransactionConflict
from ..transaction import KeyWrites, check_isolation, check_sync
from .pool import Connection, is_link_error
from .protocol import PAGE_ROWS, TxAction, Write

if TYPE_CHECKING:
    from .client import RemoteDatabase

__all__ = ["RemoteScan", "RemoteSnapshot", "RemoteTransaction", "page_size"]

_PUT = int(Write.PUT)
_DELETE = int(Write.DELETE)


def page_size(limit: int | None) -> int:
    return PAGE_ROWS if limit is None else max(1, min(limit, PAGE_ROWS))


class RemoteScan:
    """The iterator of a remote scan: pages of (key, value) pairs, the next
    page asked for while the current one is consumed. While the server
    holds its cursor, the scan pins the connection."""

    def __init__(self, conn: Connection, rows: list[Any], cursor: int, page: int) -> None:
        self._conn: Connection | None = conn if cursor else None
        self._rows = rows
        self._i = 0
        self._cursor = cursor
        self._page = page
        self._next: Future | None = None
        if cursor:
            conn.pool.pin(conn)
            self._prefetch()

    def _prefetch(self) -> None:
        assert self._conn is not None
        try:
            self._next = self._conn.request("scan_next", [self._cursor, self._page])
        except LightningError:
            self._next = None           # raised when the page is needed

    def __iter__(self) -> "RemoteScan":
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        while True:
            rows, i = self._rows, self._i
            if i < len(rows):
                self._i = i + 1
                r = rows[i]
                return r[0], r[1]
            if not self._fetch():
                raise StopIteration

    def page(self) -> list[tuple[bytes, bytes]]:
        """The rest of the current page, fetching the next one when it is
        used up; [] at the end (for callers that take rows a page at a time)."""
        while True:
            rows, i = self._rows, self._i
            if i < len(rows):
                self._rows, self._i = [], 0
                return [(r[0], r[1]) for r in rows[i:]]
            if not self._fetch():
                return []

    def _fetch(self) -> bool:
        """The next page into the buffer; False at the end."""
        conn = self._conn
        if not self._cursor or conn is None:
            return False
        try:
            fut = self._next
            self._next = None
            if fut is None:
                fut = conn.request("scan_next", [self._cursor, self._page])
            rows, cursor = conn.result(fut)
        except BaseException as exc:
            self.close()
            if conn.pool.is_closed and isinstance(exc, LightningError) and not isinstance(exc, DatabaseClosed):
                raise DatabaseClosed("the remote database was closed before its scan ended") from None
            raise
        self._rows, self._i = rows, 0
        if cursor:
            self._prefetch()
        else:
            self._cursor = 0            # the server dropped the cursor with its last page
            self._unpin()
        return True

    def _unpin(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.unpin(conn)

    def close(self) -> None:
        """Stop early: the server drops the cursor."""
        cursor, self._cursor = self._cursor, 0
        self._next = None
        self._rows, self._i = [], 0
        if cursor and self._conn is not None:
            self._conn.tell("release", [cursor])
        self._unpin()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and self._cursor:
            self._conn = None
            conn.pool.defer(conn, self._cursor)


def _open_scan(conn: Connection, answer: Any, page: int) -> RemoteScan:
    rows, cursor = answer
    return RemoteScan(conn, rows, cursor, page)


class RemoteSnapshot(ReadSugar):
    """A consistent, read-only view on the server as of the moment it was
    taken; release it (``with`` or ``close()``)."""

    def __init__(self, db: RemoteDatabase) -> None:
        self._db = db
        self._closed = True
        self._why = "snapshot was released"
        pool = db.pool
        conn = pool.acquire()
        try:
            self._id: int = conn.call("snapshot", [conn.session])
            pool.pin(conn)
        finally:
            pool.release(conn)
        self._conn = conn
        self._closed = False

    def _check(self) -> None:
        self._db._check_open()
        if self._closed:
            raise InvalidArgument(self._why)

    def _call(self, op: str, args: list[Any]) -> Any:
        """One round trip on the snapshot's connection. A link that failed
        took the snapshot with it (the server dropped it, or restarted):
        this call raises the link's error, later ones say it was lost."""
        try:
            return self._conn.call(op, args)
        except LightningError as exc:
            if is_link_error(exc) and not self._closed:
                self._closed = True
                self._why = "snapshot was lost with its connection to the server (take a new one)"
                self._conn.pool.unpin(self._conn)
            raise

    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        v = self._call("snap_get", [self._id, self._db._limits.key(key)])
        return default if v is None else v

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        self._check()
        keys = self._db._limits.keys(keys)
        return self._call("snap_get_many", [self._id, keys]) if keys else []

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check()
        lo, hi, n = _scan_range(self._db._limits, start, end, prefix, reverse, limit)
        if (lo is not None and hi is not None and lo >= hi) or n == 0:
            return iter(())
        page = page_size(n)
        conn = self._conn
        return _open_scan(conn, self._call("scan", [self._id, conn.session, lo, hi, reverse, n, page]), page)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.call("release", [self._id])
        except LightningError:
            pass                    # the server drops it with the session
        finally:
            self._conn.pool.unpin(self._conn)

    def __del__(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.pool.defer(self._conn, self._id)


class RemoteTransaction(KeyWrites):
    """One optimistic transaction run by the server (``transaction.py``
    there); the same methods and semantics as the local one."""

    def __init__(self, db: RemoteDatabase, isolation: str = "snapshot", sync: bool | None = None) -> None:
        check_isolation(isolation)
        check_sync(sync)
        self.isolation = isolation
        self._db = db
        self._limits = db._limits
        self._sync = sync
        self._state = "open"
        self._tid = 0
        self._conn: Connection | None = None
        self._writes: list[list[Any]] = []

    @property
    def state(self) -> str:
        """"open", "committed" or "rolled back"."""
        return self._state

    def _check(self) -> None:
        if self._db.closed:                 # the server dropped it with the session
            if self._state == "open":
                self._end("rolled back")
            self._db._check_open()          # DatabaseClosed
        if self._state != "open":
            raise InvalidArgument(f"this transaction is already {self._state}")

    def _call(self, action: TxAction, args: list[Any]) -> Any:
        """One round trip: the buffered writes, then *action*. The first one
        borrows a connection from the pool; once the server holds the
        transaction, its connection is pinned and used until the end."""
        pool = self._db.pool
        conn = self._conn
        lent = conn is None
        if conn is None:
            conn = pool.acquire()
        try:
            try:
                tid, result = conn.call("tx", [self._tid, conn.session, self.isolation, self._sync,
                                               self._writes, int(action), args])
            except TransactionConflict:
                self._end("rolled back")
                raise
            except LightningError as exc:
                if action is TxAction.COMMIT or is_link_error(exc):
                    self._end("rolled back")
                raise
            if tid and self._conn is None:
                pool.pin(conn)
                self._conn = conn
            self._tid = tid
            self._writes = []
            return result
        finally:
            if lent:
                pool.release(conn)

    def _end(self, state: str) -> None:
        self._state = state
        self._writes = []
        self._tid = 0
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.unpin(conn)

    # --- reads ----------------------------------------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        v = self._call(TxAction.GET, [self._limits.key(key)])
        return default if v is None else v

    def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None) of *key*, or None."""
        self._check()
        r = self._call(TxAction.GET_EX, [self._limits.key(key)])
        return None if r is None else (r[0], r[1])

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        self._check()
        keys = self._limits.keys(keys)
        return self._call(TxAction.GET_MANY, [keys]) if keys else []

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs of the snapshot with this transaction's writes laid over
        (as they were when the scan started), in key order."""
        self._check()
        lo, hi, n = _scan_range(self._limits, start, end, prefix, reverse, limit)
        if (lo is not None and hi is not None and lo >= hi) or n == 0:
            return iter(())
        page = page_size(n)
        answer = self._call(TxAction.SCAN, [lo, hi, reverse, n, page])
        assert self._conn is not None           # the server holds the transaction now
        return _open_scan(self._conn, answer, page)

    # --- writes (buffered) ----------------------------------------------------------------------
    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        """Write *value* (expiring after *ttl* seconds or at *expire_at*, Unix seconds, if given)."""
        self._check()
        lim = self._limits
        key, value = lim.key(key), lim.value(value)
        if ttl is not None or expire_at is not None:
            lim.op(key, b"", ttl, expire_at)          # the expiry's checks, with the local messages
        self._writes.append([_PUT, key, value, ttl, expire_at])

    def delete(self, key: Any) -> None:
        self._check()
        self._writes.append([_DELETE, self._limits.key(key)])

    # --- the end --------------------------------------------------------------------------------
    def commit(self) -> None:
        """Apply every write atomically, or raise TransactionConflict and
        write nothing."""
        self._check()
        if not self._tid and not self._writes:
            self._end("committed")          # nothing read, nothing written
            return
        self._call(TxAction.COMMIT, [])
        self._end("committed")

    def rollback(self) -> None:
        """Discard every write (a no-op once committed or rolled back)."""
        if self._state != "open":
            return
        self._writes = []
        if self._conn is not None:
            try:
                self._call(TxAction.ROLLBACK, [])
            except LightningError:
                pass                        # gone with the session either way
        self._end("rolled back")

    def __enter__(self) -> RemoteTransaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._state == "open":
            self.commit()
        else:
            self.rollback()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and self._state == "open":
            self._state = "rolled back"
            self._conn = None
            conn.pool.defer(conn, self._tid)
