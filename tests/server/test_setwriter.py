"""The SetWriter (server/setwriter.py): plain SETs of many connections share
messages, one message in flight per shard, transient failures retried with
the same write token, other failures are every SET's error."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

from lightning_db.config import Config
from lightning_db.errors import IOFault, PeerLost
from lightning_db.server.setwriter import SetWriter
from lightning_db.shards.pipeline import TokenSource


class FakeRef:
    def __init__(self) -> None:
        self.asks: list[tuple[list, Future]] = []

    def ask(self, op: str, payload: list, timeout: float) -> Future:
        assert op == "write"
        f: Future = Future()
        self.asks.append((payload, f))
        return f


class FakePipe:
    live = 0


class FakeRing:
    def shard_of(self, key: bytes) -> int:
        return 0 if key.startswith(b"a") else 1


class FakeRouter:
    def __init__(self) -> None:
        self.config = Config()
        self.ring = FakeRing()
        self.refs = [FakeRef(), FakeRef()]
        self.tokens = TokenSource(2)
        self.attempt_timeout = 5.0
        self._pipe = FakePipe()
        self.retried: list[tuple[int, list, list]] = []
        self.retry_error: BaseException | None = None

    def _send_write(self, shard: int, ops: list, sync: bool, token: list | None = None) -> None:
        self.retried.append((shard, ops, token))
        if self.retry_error is not None:
            raise self.retry_error


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_sets_share_messages_one_in_flight_per_shard():
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            first = [asyncio.ensure_future(w.set(b"a%d" % i, b"v")) for i in range(3)]
            other = asyncio.ensure_future(w.set(b"b0", b"v"))
            await _settle()
            a, b = router.refs
            assert len(a.asks) == 1 and len(a.asks[0][0][0]) == 3       # three SETs, one message
            assert len(b.asks) == 1
            more = [asyncio.ensure_future(w.set(b"a%d" % i, b"w")) for i in range(3, 8)]
            await _settle()
            assert len(a.asks) == 1                                      # one in flight: the rest wait
            a.asks[0][1].set_result(10)
            await _settle()
            assert all(f.done() and f.result() is None for f in first)
            assert len(a.asks) == 2 and len(a.asks[1][0][0]) == 5        # what waited, together
            a.asks[1][1].set_result(15)
            b.asks[0][1].set_result(1)
            await asyncio.gather(*more, other)
            tokens = [p[2] for p, _ in a.asks]
            assert tokens[0][1] != tokens[1][1]                          # a token per message
            assert w.stats() == {"messages": 3, "sets": 9}
    asyncio.run(main())


def test_a_transient_failure_is_retried_with_the_same_token_and_others_fail_every_set():
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            sets = [asyncio.ensure_future(w.set(b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            payload, fut = router.refs[0].asks[0]
            fut.set_exception(PeerLost("the worker went away"))
            await asyncio.gather(*sets)
            assert router.retried == [(0, payload[0], payload[2])]      # same ops, same token

            router.retry_error = IOFault("the disk said no")
            sets = [asyncio.ensure_future(w.set(b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            router.refs[0].asks[1][1].set_exception(PeerLost("again"))
            results = await asyncio.gather(*sets, return_exceptions=True)
            assert all(isinstance(r, IOFault) for r in results)

            sets = [asyncio.ensure_future(w.set(b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            router.refs[0].asks[2][1].set_exception(IOFault("not transient"))
            results = await asyncio.gather(*sets, return_exceptions=True)
            assert all(isinstance(r, IOFault) for r in results)
            assert len(router.retried) == 2                              # not retried
    asyncio.run(main())


def test_only_plain_sets_are_taken():
    router = FakeRouter()
    loop = asyncio.new_event_loop()
    try:
        with ThreadPoolExecutor(1) as pool:
            w = SetWriter(router, loop, pool)
            assert w.plain([b"SET", b"k", b"v"]) and w.plain([b"set", b"k", b""]) and w.plain([b"SeT", b"k", b"v"])
            assert not w.plain([b"SET", b"k", b"v", b"NX"])
            assert not w.plain([b"SET", b"", b"v"])
            assert not w.plain([b"SET", b"k" * (router.config.max_key_size + 1), b"v"])
            assert not w.plain([b"GET", b"k", b"v"])
    finally:
        loop.close()
