"""Plain SETs without a thread: one message per shard per event-loop turn.

Runs in a front-end process, on its event loop. A plain SET (``SET key
value``, no options, not inside MULTI, not part of a pipelined run of SETs)
from any connection is queued for its key's shard; once per loop turn
every queue goes out as one "write" (one WAL record on the shard, with a
write token) straight through the shard's mailbox, and each connection
gets ``+OK`` when the shard acknowledged. Concurrent clients' SETs thus
share messages, and none of them costs a hop to a worker thread and back.

A write that meets a transient error (a worker being restarted, a
deadline) is handed to a worker thread, which retries it with the same
token as the router retries its writes (so it is applied once); any other
error is each SET's error reply. A front end whose database is not sharded
has no SetWriter: its SETs take the ordinary path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from ..errors import LightningError, TransientError

__all__ = ["SetWriter"]

_VALUE = 1
MAX_SETS = 4096               # SETs in one message
Op = tuple[int, bytes, bytes]


class SetWriter:
    def __init__(self, router: Any, loop: asyncio.AbstractEventLoop, pool: Executor) -> None:
        self._router = router
        self._loop = loop
        self._pool = pool
        self._pending: dict[int, list[tuple[Op, asyncio.Future[None]]]] = {}
        self._in_flight: set[int] = set()      # shards with a message out
        self._scheduled = False
        config = router.config
        self._max_key, self._max_value = config.max_key_size, config.max_value_size
        self.messages = 0
        self.sets = 0

    def plain(self, argv: list[bytes]) -> bool:
        """Whether *argv* is a SET this writer takes (valid key and value sizes)."""
        return (len(argv) == 3 and (argv[0] == b"SET" or argv[0] == b"set" or argv[0].lower() == b"set")
                and 0 < len(argv[1]) <= self._max_key and len(argv[2]) <= self._max_value
                and not self._router._pipe.live)         # no pipelined write of this process in flight

    async def set(self, key: bytes, value: bytes) -> None:
        """Write *key*; returns once the shard acknowledged (raises its error)."""
        shard = self._router.ring.shard_of(key)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending.setdefault(shard, []).append(((_VALUE, key, value), fut))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        self._scheduled = False
        ready = [s for s in self._pending if s not in self._in_flight]
        for shard in ready:
            self._send(shard, self._take(shard))

    def _take(self, shard: int) -> list[tuple[Op, asyncio.Future[None]]]:
        """The SETs queued for *shard* that fit one message (the rest wait)."""
        items = self._pending.pop(shard, [])
        if len(items) > MAX_SETS:
            self._pending[shard] = items[MAX_SETS:]
            items = items[:MAX_SETS]
        return items

    def _send(self, shard: int, items: list[tuple[Op, asyncio.Future[None]]]) -> None:
        router = self._router
        self._in_flight.add(shard)
        ops = [op for op, _ in items]
        futs = [f for _, f in items]
        token = router.tokens.take(shard)
        self.messages += 1
        self.sets += len(ops)
        try:
            cf = router.refs[shard].ask("write", [ops, False, token], router.attempt_timeout)
        except LightningError as exc:
            self._finish(shard, ops, token, futs, exc)
            return
        cf.add_done_callback(self._on_answer(shard, ops, token, futs))

    def _on_answer(self, shard: int, ops: list[Op], token: list[Any],
                   futs: list[asyncio.Future[None]]) -> Callable[[Future[Any]], None]:
        def done(cf: Future[Any]) -> None:          # the mailbox's I/O thread
            exc = cf.exception()
            self._loop.call_soon_threadsafe(self._finish, shard, ops, token, futs, exc)
        return done

    def _finish(self, shard: int, ops: list[Op], token: list[Any], futs: list[asyncio.Future[None]],
                exc: BaseException | None) -> None:
        if isinstance(exc, TransientError):
            # Retried in a worker thread with the same token, as any write of the router.
            retry = self._loop.run_in_executor(self._pool, self._router._send_write, shard, ops, False, token)
            retry.add_done_callback(lambda f: self._answered(shard, futs, f.exception()))
            return
        self._router.tokens.done(shard, token)
        self._answered(shard, futs, exc)

    def _answered(self, shard: int, futs: list[asyncio.Future[None]], exc: BaseException | None) -> None:
        self._settle(futs, exc)
        self._in_flight.discard(shard)
        items = self._take(shard)
        if items:
            self._send(shard, items)        # what queued up meanwhile, as one message

    @staticmethod
    def _settle(futs: list[asyncio.Future[None]], exc: BaseException | None) -> None:
        for f in futs:
            if f.done():
                continue
            if exc is None:
                f.set_result(None)
            else:
                f.set_exception(exc)

    def stats(self) -> dict[str, int]:
        return {"messages": self.messages, "sets": self.sets}
