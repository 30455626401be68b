"""The asyncio variant: ``connect_async`` and ``AsyncPool`` (each test runs
its own event loop with ``asyncio.run``)."""

from __future__ import annotations

import asyncio

import pytest

from lightning_db import (
    DatabaseClosed,
    InvalidArgument,
    TransactionConflict,
    TransientError,
)
from lightning_db.errors import Timeout
from lightning_db.remote import AsyncPool, AsyncRemoteDatabase, connect_async
from lightning_db.remote.protocol import PAGE_ROWS

from .conftest import FAST


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_async_database_methods(server, local):
    async def main():
        db = await connect_async(server.address, **FAST)
        assert isinstance(db, AsyncRemoteDatabase)
        async with db:
            await db.put(b"a", b"1")
            await db.put(b"t", b"v", ttl=60)
            assert await db.get(b"a") == b"1" and await db.get(b"x", b"d") == b"d"
            assert await db.contains(b"a") and not await db.contains(b"x")
            assert (await db.get_with_expiry(b"t"))[1] is not None
            await db.put_many({b"k%05d" % i: b"v" for i in range(PAGE_ROWS * 2 + 3)})
            assert await db.get_many([b"a", b"x"]) == [b"1", None]
            await db.delete(b"a")
            async with db.batch() as b:
                b.put(b"b1", b"1")
                b.delete(b"t")
                assert len(b) == 2
            assert await db.get_many([b"b1", b"t"]) == [b"1", None]
            rows = [kv async for kv in db.scan(prefix=b"k")]
            assert rows == list(local.scan(prefix=b"k"))
            assert [kv async for kv in db.scan(prefix=b"k", reverse=True, limit=3)] == \
                list(local.scan(prefix=b"k", reverse=True, limit=3))
            assert [kv async for kv in db.scan(start=b"z", end=b"a")] == []
            with pytest.raises(InvalidArgument):
                await db.put(b"", b"v")
            with pytest.raises(InvalidArgument):
                [kv async for kv in db.scan(limit=-1)]
            await db.flush()
            await db.compact()
            assert "native_server" in await db.stats()
            assert (await db.health())["status"] == "ok"
            assert isinstance(await db.verify(), dict)
        assert db.closed
        with pytest.raises(DatabaseClosed):
            await db.get(b"a")
        await db.close()                          # idempotent
    run(main())


def test_async_snapshots_and_transactions(server):
    async def main():
        async with await connect_async(server.address, **FAST) as db, \
                await connect_async(server.address, **FAST) as other:
            await db.put(b"s", b"old")
            async with db.snapshot() as snap:
                await db.put(b"s", b"new")
                assert await snap.get(b"s") == b"old" and await snap.get_many([b"s"]) == [b"old"]
                assert [kv async for kv in snap.scan()] == [(b"s", b"old")]
                assert await snap.contains(b"s")
            snap = await db.snapshot()
            await snap.close()

            async with db.transaction() as tx:
                assert await tx.get(b"s") == b"new"
                tx.put(b"t", b"1")
                assert await tx.get_many([b"t"]) == [b"1"]
                assert [kv async for kv in tx.scan()] == [(b"s", b"new"), (b"t", b"1")]
                assert await tx.get_with_expiry(b"t") == (b"1", None)
                tx.delete(b"s")
            assert tx.state == "committed" and await db.get(b"s") is None

            tx = db.transaction()
            await tx.get(b"t")
            await other.put(b"t", b"theirs")
            tx.put(b"t", b"mine")
            with pytest.raises(TransactionConflict):
                await tx.commit()
            assert await db.get(b"t") == b"theirs"

            calls = []

            async def incr(tx):
                n = int(await tx.get(b"n") or b"0")
                calls.append(n)
                if len(calls) == 1:
                    await other.put(b"n", b"5")
                tx.put(b"n", b"%d" % (n + 1))
                return n + 1

            assert await db.run_transaction(incr) == 6 and calls == [0, 5]
            results = await asyncio.gather(*(db.run_transaction(incr, retries=100) for _ in range(5)))
            assert sorted(results) == [7, 8, 9, 10, 11] and await db.get(b"n") == b"11"
            with pytest.raises(InvalidArgument):
                await db.run_transaction(incr, retries=-1)
    run(main())


def test_async_objects_after_close_end_quietly_and_calls_say_closed(server):
    """As with the synchronous client: leaving an ``async with`` of a
    transaction or snapshot after the database was closed raises nothing of
    its own (an exception of the block goes through unchanged), and every
    call after close raises DatabaseClosed."""
    async def main():
        db = await connect_async(server.address, **FAST)
        await db.put(b"ac", b"1")
        with pytest.raises(RuntimeError, match="the block's own"):
            async with db.transaction() as tx:
                await tx.get(b"ac")
                await db.close()
                raise RuntimeError("the block's own")
        db = await connect_async(server.address, **FAST)
        async with db.snapshot() as snap:
            assert await snap.get(b"ac") == b"1"
            scan = snap.scan()
            await db.close()
        with pytest.raises(DatabaseClosed):
            await snap.get(b"ac")
        with pytest.raises(DatabaseClosed):
            [kv async for kv in scan]
        with pytest.raises(DatabaseClosed):
            db.batch()
        db = await connect_async(server.address, **FAST)
        try:
            with pytest.raises(InvalidArgument, match="async function"):
                await db.run_transaction(lambda tx: None)
            assert await db.get(b"ac") == b"1"
        finally:
            await db.close()
    run(main())


def test_async_pool(server):
    async def main():
        async with AsyncPool(server.address, max_size=1, **FAST) as pool:
            async with pool.connection() as conn:
                assert await pool.call(conn, "get", [b"k"]) is None
                assert pool.stats()["in_use"] == 1
                with pytest.raises(Timeout):
                    await pool.acquire(timeout=0.2)
            assert pool.stats()["acquire_timeouts"] == 1
            assert await pool.health_check() == {server.address: True}
        with pytest.raises(InvalidArgument):
            AsyncPool(server.address, bogus=1)
    run(main())


def test_async_connect_to_nothing():
    async def main():
        with pytest.raises(TransientError):
            await connect_async("tcp://127.0.0.1:9", connect_timeout=0.3)
    run(main())


def test_scan_checks_its_arguments_at_the_call_and_takes_its_view_when_awaited(server):
    async def main():
        db = await connect_async(server.address, **FAST)
        async with db:
            with pytest.raises(InvalidArgument, match="limit"):
                db.scan(limit=-1)                       # at the call, before any iteration
            with pytest.raises(InvalidArgument, match="reverse"):
                db.scan(reverse=1)
            await db.put(b"v0", b"early")
            it = await db.scan(prefix=b"v")             # the view is taken here
            await db.put(b"v1", b"late")
            assert [kv async for kv in it] == [(b"v0", b"early")]
            lazy = db.scan(prefix=b"v")                 # not awaited: its first step takes it
            await db.put(b"v2", b"later")
            assert [k async for k, _ in lazy] == [b"v0", b"v1", b"v2"]
            async with db.snapshot() as snap:
                with pytest.raises(InvalidArgument, match="limit"):
                    snap.scan(limit=2**64)
            tx = db.transaction()
            with pytest.raises(InvalidArgument, match="prefix"):
                tx.scan(prefix="v")
            await tx.rollback()
    run(main())
