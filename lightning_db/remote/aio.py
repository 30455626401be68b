"""The asyncio variant: ``await connect_async(url)`` (the caller's process, its event loop).

Kept simple on purpose: every call that may wait (a round trip, an acquire
that waits for a free connection, a connect) runs the blocking client's
method on a thread of the pool's own executor (``max_size + 4`` threads,
shut down by ``close``), so the event loop never blocks and the semantics
are exactly those of ``RemoteDatabase``. Writes buffered by a batch or a
transaction (``put``, ``delete``) do no I/O and stay plain methods; reads,
commits and everything else are coroutines. A scan is an async iterator
that fetches a page per executor call, not a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..db import _scan_range, key_list
from ..errors import DatabaseClosed, InvalidArgument, MailboxClosed, TransactionConflict
from ..transaction import check_run
from .client import RemoteBatch, RemoteDatabase
from .pool import Connection, Pool
from .views import RemoteScan, RemoteSnapshot, RemoteTransaction

__all__ = ["AsyncBatch", "AsyncPool", "AsyncRemoteDatabase", "AsyncScan", "AsyncSnapshot", "AsyncTransaction",
           "connect_async"]

T = TypeVar("T")


class AsyncPool:
    """A ``Pool`` driven from asyncio: ``await pool.start()``, ``async with
    pool.connection() as conn:``, ``await pool.close()``. Options are Pool's."""

    def __init__(self, urls: str | Sequence[str], **options: Any) -> None:
        try:
            self.pool = Pool(urls, start=False, **options)
        except TypeError as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument(f"AsyncPool(): {exc}") from None
        self._executor = ThreadPoolExecutor(self.pool.max_size + 4, thread_name_prefix="ldb-native-aio")
        self._closed = False
        # What a call after close raises (a database over the pool says DatabaseClosed).
        self.closed_error: Callable[[], Exception] = lambda: MailboxClosed("the connection pool is closed")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the executor."""
        if self._closed:
            raise self.closed_error()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def finish(self, fn: Callable[[], None]) -> None:
        """A call that ends an object quietly (a rollback, a release): on
        the executor, or, once the pool is closed, here (its connection is
        gone, so it only marks the object ended), as the synchronous
        client's does, so that leaving an ``async with`` after ``close()``
        raises nothing of its own (nor hides the block's exception)."""
        if self._closed:
            fn()
            return
        await self.run(fn)

    async def start(self) -> AsyncPool:
        await self.run(self.pool.start)
        return self

    async def acquire(self, timeout: float | None = None) -> Connection:
        return await self.run(self.pool.acquire, timeout)

    async def release(self, conn: Connection) -> None:
        await self.run(self.pool.release, conn)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Connection]:
        conn = await self.acquire(timeout)
        try:
            yield conn
        finally:
            await self.release(conn)

    async def call(self, conn: Connection, op: str, payload: Any = None) -> Any:
        """One round trip on *conn* without an executor thread."""
        fut = conn.request(op, payload)
        try:
            return await asyncio.wrap_future(fut)
        except Exception as exc:
            conn.check_error(exc)
            raise

    async def health_check(self) -> dict[str, bool]:
        return await self.run(self.pool.health_check)

    def stats(self) -> dict[str, Any]:
        """Plain data, no I/O (``Pool.stats``)."""
        return self.pool.stats()

    async def close(self) -> None:
        """Close the pool, then the executor. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.pool.close)
        finally:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncPool:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncScan:
    """``async for key, value in db.scan(...)``, or ``it = await
    db.scan(...)`` then ``async for``. The arguments are checked at the
    call (InvalidArgument there); the scan's view is taken when it is
    awaited, or else at its first step (the call itself cannot wait for
    the server)."""

    def __init__(self, apool: AsyncPool, limits: Any, scan: Callable[..., Any], start: Any, end: Any,
                 prefix: Any, reverse: Any, limit: Any) -> None:
        _scan_range(limits, start, end, prefix, reverse, limit)
        self._apool = apool
        self._start: Callable[[], Any] | None = functools.partial(scan, start, end, prefix, reverse, limit)
        self._it: Any = None
        self._rows: list[tuple[bytes, bytes]] = []
        self._i = 0

    def __aiter__(self) -> AsyncScan:
        return self

    def __await__(self) -> Generator[Any, None, AsyncScan]:
        return self._begin().__await__()

    async def _begin(self) -> AsyncScan:
        if self._start is not None:
            start, self._start = self._start, None
            self._it = await self._apool.run(start)
        return self

    async def __anext__(self) -> tuple[bytes, bytes]:
        while self._i >= len(self._rows):
            await self._begin()
            it = self._it
            if it is None:
                raise StopAsyncIteration
            rows = await self._apool.run(it.page) if isinstance(it, RemoteScan) else \
                await self._apool.run(list, it)
            if not rows:
                self._it = None
                raise StopAsyncIteration
            if not isinstance(it, RemoteScan):
                self._it = None         # an empty range's plain iterator: all of it at once
            self._rows, self._i = rows, 0
        r = self._rows[self._i]
        self._i += 1
        return r

    async def aclose(self) -> None:
        it, self._it, self._start = self._it, None, None
        if isinstance(it, RemoteScan):
            await self._apool.finish(it.close)


class _Opening:
    """What ``snapshot()`` returns: ``await`` it, or ``async with`` it."""

    def __init__(self, make: Callable[[], Awaitable[Any]]) -> None:
        self._make = make
        self._obj: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._make().__await__()

    async def __aenter__(self) -> Any:
        self._obj = await self._make()
        return self._obj

    async def __aexit__(self, *exc: Any) -> None:
        await self._obj.close()


class AsyncSnapshot:
    """A server-side snapshot (``RemoteSnapshot``) with async reads."""

    def __init__(self, apool: AsyncPool, snap: RemoteSnapshot) -> None:
        self._apool, self._snap = apool, snap

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._apool.run(self._snap.get, key, default)

    async def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        return await self._apool.run(self._snap.get_many, key_list(keys))

    async def contains(self, key: Any) -> bool:
        return await self.get(key) is not None

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> AsyncScan:
        return AsyncScan(self._apool, self._snap._db._limits, self._snap.scan, start, end, prefix, reverse, limit)

    async def close(self) -> None:
        await self._apool.finish(self._snap.close)

    async def __aenter__(self) -> AsyncSnapshot:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncTransaction:
    """A server-side transaction (``RemoteTransaction``): async reads and
    commit; ``put``/``delete`` only buffer and are plain methods.
    ``async with db.transaction() as tx:`` commits on a clean exit."""

    def __init__(self, apool: AsyncPool, tx: RemoteTransaction) -> None:
        self._apool, self._tx = apool, tx

    @property
    def state(self) -> str:
        return self._tx.state

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._apool.run(self._tx.get, key, default)

    async def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        return await self._apool.run(self._tx.get_with_expiry, key)

    async def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        return await self._apool.run(self._tx.get_many, key_list(keys))

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> AsyncScan:
        return AsyncScan(self._apool, self._tx._limits, self._tx.scan, start, end, prefix, reverse, limit)

    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        self._tx.put(key, value, ttl=ttl, expire_at=expire_at)

    def delete(self, key: Any) -> None:
        self._tx.delete(key)

    async def commit(self) -> None:
        await self._apool.run(self._tx.commit)

    async def rollback(self) -> None:
        await self._apool.finish(self._tx.rollback)

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._tx.state == "open":
            await self.commit()
        else:
            await self.rollback()


class AsyncBatch:
    """``async with db.batch() as b: b.put(k, v)``: sent once, at commit."""

    def __init__(self, apool: AsyncPool, batch: RemoteBatch) -> None:
        self._apool, self._batch = apool, batch

    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        self._batch.put(key, value, ttl=ttl, expire_at=expire_at)

    def delete(self, key: Any) -> None:
        self._batch.delete(key)

    def __len__(self) -> int:
        return len(self._batch)

    async def commit(self) -> None:
        await self._apool.run(self._batch.commit)

    def discard(self) -> None:
        self._batch.discard()

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._batch._done:       # committed or discarded inside the block
            return
        if exc_type is None:
            await self.commit()
        else:
            self.discard()


class AsyncRemoteDatabase:
    """``RemoteDatabase`` with coroutine methods; build it with ``connect_async``."""

    def __init__(self, apool: AsyncPool) -> None:
        self.pool = apool
        self.db = RemoteDatabase(apool.pool)
        apool.closed_error = lambda: DatabaseClosed(f"remote database {', '.join(apool.pool.urls)} is closed")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.db._check_open()
        return await self.pool.run(fn, *args, **kwargs)

    async def put(self, key: Any, value: Any, sync: bool | None = None, *, ttl: float | None = None,
                  expire_at: float | None = None) -> None:
        await self._run(self.db.put, key, value, sync, ttl=ttl, expire_at=expire_at)

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._run(self.db.get, key, default)

    async def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        return await self._run(self.db.get_with_expiry, key)

    async def contains(self, key: Any) -> bool:
        return await self.get(key) is not None

    async def delete(self, key: Any, sync: bool | None = None) -> None:
        await self._run(self.db.delete, key, sync)

    async def put_many(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], sync: bool | None = None) -> None:
        await self._run(self.db.put_many, items, sync)

    async def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        return await self._run(self.db.get_many, key_list(keys))

    def batch(self, sync: bool | None = None) -> AsyncBatch:
        return AsyncBatch(self.pool, self.db.batch(sync))

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> AsyncScan:
        return AsyncScan(self.pool, self.db._limits, self.db.scan, start, end, prefix, reverse, limit)

    def snapshot(self) -> _Opening:
        """``async with db.snapshot() as s:`` or ``s = await db.snapshot()``."""
        async def make() -> AsyncSnapshot:
            return AsyncSnapshot(self.pool, await self._run(self.db.snapshot))
        return _Opening(make)

    def transaction(self, isolation: str = "snapshot", sync: bool | None = None) -> AsyncTransaction:
        return AsyncTransaction(self.pool, self.db.transaction(isolation, sync))

    async def run_transaction(self, fn: Callable[[AsyncTransaction], Awaitable[T]], retries: int = 10,
                              isolation: str = "snapshot", sync: bool | None = None) -> T:
        """``await fn(tx)`` committed, run again after a full-jitter backoff
        on TransactionConflict, at most *retries* more times."""
        check_run(fn, retries, isolation, sync)
        attempt = 0
        while True:
            try:
                async with self.transaction(isolation, sync) as tx:
                    step = fn(tx)
                    if not inspect.isawaitable(step):
                        raise InvalidArgument("run_transaction of the asyncio client takes an async function "
                                              f"fn(tx), whose call is awaited; fn returned {type(step).__name__}")
                    result = await step
                return result
            except TransactionConflict:
                if attempt >= retries:
                    raise
                await asyncio.sleep(random.uniform(0.0, min(0.25, 0.002 * 2.0 ** attempt)))
                attempt += 1

    async def flush(self) -> None:
        await self._run(self.db.flush)

    async def compact(self) -> None:
        await self._run(self.db.compact)

    async def verify(self) -> dict[str, int]:
        return await self._run(self.db.verify)

    async def stats(self) -> dict[str, Any]:
        return await self._run(self.db.stats)

    async def health(self) -> dict[str, Any]:
        return await self._run(self.db.health)

    async def close(self) -> None:
        """Close the pool and the executor. Idempotent."""
        if not self.db.closed:
            self.db._closed = True
            await self.pool.close()

    @property
    def closed(self) -> bool:
        return self.db.closed

    async def __aenter__(self) -> AsyncRemoteDatabase:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def connect_async(url_or_urls: str | Sequence[str], **pool_options: Any) -> AsyncRemoteDatabase:
    """``await connect_async(url)``: an ``AsyncRemoteDatabase``, its pool
    warmed up (options as ``connect``)."""
    apool = AsyncPool(url_or_urls, **pool_options)
    try:
        await apool.start()
        db = AsyncRemoteDatabase(apool)
        await apool.run(lambda: db.db._limits)   # the server's limits, so later checks never wait
    except BaseException:
        await apool.close()
        raise
    return db
