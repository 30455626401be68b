"""The SetWriter (server/setwriter.py): plain SETs of many connections share
messages, one message in flight per shard, transient failures retried with
the same write token, other failures are every SET's error."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from lightning_db.config import Config
from lightning_db.errors import IOFault, PeerLost
from lightning_db.mailbox import MailboxClient, MailboxServer
from lightning_db.server import setwriter
from lightning_db.server.setwriter import SetWriter
from lightning_db.shards.pipeline import TokenSource


class FixedCores:
    """A CoreGauge that says what it is told."""

    def __init__(self, short: bool = True) -> None:
        self.short = short

    def busy(self, now: float) -> bool:
        return self.short


@pytest.fixture(autouse=True)
def cores_short(monkeypatch):
    """Every writer here sees its cores short (so it holds as its
    rules say) unless a test says otherwise: the real gauge would follow the
    machine running the tests."""
    monkeypatch.setattr(setwriter, "CoreGauge", FixedCores)


class FakeRef:
    def __init__(self) -> None:
        self.asks: list[tuple[list, Future]] = []

    def ask(self, op: str, payload: list, timeout: float) -> Future:
        assert op == "write"
        f: Future = Future()
        self.asks.append((payload, f))
        return f

    ask_here = ask      # an ordinary future: the answer comes through call_soon_threadsafe


class FakePipe:
    live = 0


class FakeRing:
    def shard_of(self, key: bytes) -> int:
        return 0 if key.startswith(b"a") else 1

    def shards_list(self, keys: list[bytes]) -> list[int]:
        return [self.shard_of(k) for k in keys]


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


def cols(*pairs: tuple[bytes, bytes]) -> list:
    """The ops of a message as the SetWriter sends them: columns [kinds, keys, values]."""
    return [b"\x01" * len(pairs), [k for k, _ in pairs], [v for _, v in pairs]]


async def many(w: SetWriter, keys: list[bytes], vals: list[bytes]) -> list | None:
    """set_many's outcome, awaited (a connection is told by a callback)."""
    told: asyncio.Future = asyncio.get_running_loop().create_future()
    w.set_many(keys, vals, told.set_result)
    return await told


async def one(w: SetWriter, key: bytes, value: bytes) -> None:
    """A lone SET through the writer; raises its error."""
    errors = await many(w, [key], [value])
    if errors is not None:
        raise errors[0]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_sets_share_messages_one_in_flight_per_shard():
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            first = [asyncio.ensure_future(one(w, b"a%d" % i, b"v")) for i in range(3)]
            other = asyncio.ensure_future(one(w, b"b0", b"v"))
            await _settle()
            a, b = router.refs
            assert len(a.asks) == 1 and len(a.asks[0][0][0][1]) == 3    # three SETs, one message
            assert len(b.asks) == 1
            more = [asyncio.ensure_future(one(w, b"a%d" % i, b"w")) for i in range(3, 8)]
            await _settle()
            assert len(a.asks) == 1                                      # one in flight: the rest wait
            a.asks[0][1].set_result(10)
            await _settle()
            assert all(f.done() and f.result() is None for f in first)
            assert len(a.asks) == 2 and len(a.asks[1][0][0][1]) == 5     # what waited, together
            a.asks[1][1].set_result(15)
            b.asks[0][1].set_result(1)
            await asyncio.gather(*more, other)
            tokens = [p[2] for p, _ in a.asks]
            assert tokens[0][1] != tokens[1][1]                          # a token per message
            assert {k: w.stats()[k] for k in ("messages", "sets", "holds")} == {"messages": 3, "sets": 9, "holds": 0}
    asyncio.run(main())


def run2(w: SetWriter, name: bytes) -> asyncio.Future:
    """A pipelined run of two SETs on shard 0 (keys *name*-1, *name*-2)."""
    return asyncio.ensure_future(many(w, [name + b"-1", name + b"-2"], [b"v", b"v"]))


def test_after_a_message_of_runs_the_next_waits_for_more_sets_or_its_round_trip(monkeypatch):
    """An answered message of LINGER_FROM SETs or more in pipelined runs
    (two or more a call): what queued meanwhile waits until twice as many
    SETs are queued (then goes at once), or at most the last round trip
    (LINGER_MAX); smaller messages never make SETs wait."""
    monkeypatch.setattr(setwriter, "LINGER_MAX", 60.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, loop, pool)
            a = router.refs[0]
            busy = setwriter.LINGER_FROM
            first = [run2(w, b"a%d" % i) for i in range(busy // 2)]
            await _settle()
            assert len(a.asks) == 1 and len(a.asks[0][0][0][1]) == busy
            early = run2(w, b"a-early")
            await _settle()
            # The first message's round trip counts as a minute, so its hold
            # cannot run out while the steps below run on a loaded machine;
            # the second's is the real (short) one, whose hold runs out.
            w._sent_at[0] = loop.time() - 60.0
            a.asks[0][1].set_result(1)
            await asyncio.gather(*first)
            await _settle()
            assert len(a.asks) == 1 and not early.done()             # held: 2 SETs of 2 * busy
            more = [run2(w, b"a-more%d" % i) for i in range(busy - 1)]
            await _settle()
            assert len(a.asks) == 2 and len(a.asks[1][0][0][1]) == 2 * busy     # all at once, not held on
            late = run2(w, b"a-late")
            a.asks[1][1].set_result(2)
            await asyncio.gather(early, *more)
            await _until(lambda: len(a.asks) == 3)         # the held run goes when its wait ran out
            assert a.asks[2][0][0] == cols((b"a-late-1", b"v"), (b"a-late-2", b"v"))
            a.asks[2][1].set_result(3)
            assert await late is None
            # A one-SET message: the next goes at the end of the loop turn, unheld.
            lone = asyncio.ensure_future(one(w, b"a-lone", b"v"))
            await _settle()
            assert len(a.asks) == 4 and not w._held
            a.asks[3][1].set_result(4)
            await lone
    asyncio.run(main())


def test_a_transient_failure_is_retried_with_the_same_token_and_others_fail_every_set():
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            sets = [asyncio.ensure_future(one(w, b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            payload, fut = router.refs[0].asks[0]
            fut.set_exception(PeerLost("the worker went away"))
            await asyncio.gather(*sets)
            assert router.retried == [(0, payload[0], payload[2])]      # same ops, same token

            router.retry_error = IOFault("the disk said no")
            sets = [asyncio.ensure_future(one(w, b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            router.refs[0].asks[1][1].set_exception(PeerLost("again"))
            results = await asyncio.gather(*sets, return_exceptions=True)
            assert all(isinstance(r, IOFault) for r in results)

            sets = [asyncio.ensure_future(one(w, b"a%d" % i, b"v")) for i in range(2)]
            await _settle()
            router.refs[0].asks[2][1].set_exception(IOFault("not transient"))
            results = await asyncio.gather(*sets, return_exceptions=True)
            assert all(isinstance(r, IOFault) for r in results)
            assert len(router.retried) == 2                              # not retried
    asyncio.run(main())


def test_a_pipelined_run_goes_as_one_group_per_shard(monkeypatch):
    """set_many: the run's SETs of each shard travel together (in order,
    never split between messages, even past MAX_SETS); each SET gets its
    shard's outcome."""
    monkeypatch.setattr(setwriter, "MAX_SETS", 2)

    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            first = asyncio.ensure_future(one(w, b"a0", b"v"))
            await _settle()
            single = asyncio.ensure_future(one(w, b"a9", b"s"))
            run = [(b"a1", b"1"), (b"b1", b"x"), (b"a2", b"2"), (b"a1", b"3"), (b"b2", b"y")]
            run_ = asyncio.ensure_future(many(w, [k for k, _ in run], [v for _, v in run]))
            await _settle()
            a, b = router.refs
            assert [p[0] for p, _ in a.asks] == [cols((b"a0", b"v"))]           # the rest waits behind it
            assert [p[0] for p, _ in b.asks] == [cols((b"b1", b"x"), (b"b2", b"y"))]
            a.asks[0][1].set_result(1)
            await _settle()
            assert a.asks[1][0][0] == cols((b"a9", b"s"))      # the run's group would pass MAX_SETS with it
            a.asks[1][1].set_result(2)
            await _settle()
            assert a.asks[2][0][0] == cols((b"a1", b"3"), (b"a2", b"2"))    # whole; a1's last SET wins
            a.asks[2][1].set_exception(IOFault("shard a said no"))
            b.asks[0][1].set_result(1)
            got = await run_
            assert [type(e).__name__ if e else None for e in got] == ["IOFault", None, "IOFault", "IOFault", None]
            assert await first is None and await single is None
    asyncio.run(main())


def test_a_message_carries_each_key_once_with_its_last_value():
    """SETs of one key from several connections (and within a run) that go
    in one message: the message writes the key once, with the value of its
    last SET (the batch is applied whole, so no reader could see the
    others), and every SET is answered."""
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            a = router.refs[0]
            first = asyncio.ensure_future(one(w, b"a-first", b"v"))
            await _settle()
            calls = [asyncio.ensure_future(one(w, b"a-k", b"1")),
                     asyncio.ensure_future(many(w, [b"a-j", b"a-k", b"a-j"], [b"2", b"3", b"4"])),
                     asyncio.ensure_future(one(w, b"a-k", b"5"))]
            await _settle()
            a.asks[0][1].set_result(1)
            await first
            await _settle()
            assert len(a.asks) == 2 and a.asks[1][0][0] == cols((b"a-k", b"5"), (b"a-j", b"4"))
            a.asks[1][1].set_result(2)
            assert [await c for c in calls] == [None, None, None]
            assert w.stats()["sets"] == 6 and w.stats()["messages"] == 2
    asyncio.run(main())


def test_single_sets_from_many_connections_never_wait(monkeypatch):
    """A message of LINGER_FROM SETs or more from as many connections (one
    SET a call): the next message goes at the end of the loop turn that
    finds its shard free, held by nothing and paused by nothing."""
    slept: list[float] = []
    monkeypatch.setattr(setwriter.time, "sleep", slept.append)

    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            a = router.refs[0]
            busy = 2 * setwriter.LINGER_FROM
            first = [asyncio.ensure_future(one(w, b"a%d" % i, b"v")) for i in range(busy)]
            await _settle()
            assert len(a.asks) == 1 and len(a.asks[0][0][0][1]) == busy
            later = asyncio.ensure_future(one(w, b"a-later", b"v"))
            await _settle()
            a.asks[0][1].set_result(1)
            await asyncio.gather(*first)
            await _settle()
            assert len(a.asks) == 2 and a.asks[1][0][0] == cols((b"a-later", b"v")) and not w._held
            a.asks[1][1].set_result(2)
            await later
            w.close()
            assert slept == [] and w.stats()["holds"] == 0 and w.stats()["short"] == w.stats()["flushes"]
    asyncio.run(main())


def test_with_cores_to_spare_nothing_waits():
    """While the loop thread does not wait for a CPU, what would hold a
    message (a message of pipelined runs of LINGER_FROM SETs or more
    before) does not: every SET goes at the end of the loop turn that read
    it, as soon as its shard has none in flight."""
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            w.cores = FixedCores(short=False)
            a = router.refs[0]
            busy = setwriter.LINGER_FROM
            first = [run2(w, b"a%d" % i) for i in range(busy // 2)]
            await _settle()
            assert len(a.asks) == 1 and len(a.asks[0][0][0][1]) == busy     # runs of two, LINGER_FROM SETs
            later = run2(w, b"a-later")
            await _settle()
            a.asks[0][1].set_result(1)
            await asyncio.gather(*first)
            await _settle()
            assert len(a.asks) == 2 and a.asks[1][0][0] == cols((b"a-later-1", b"v"), (b"a-later-2", b"v"))
            assert not w._held
            a.asks[1][1].set_result(2)
            await later
            w.close()
            assert w.stats()["holds"] == 0
            assert w.stats()["messages"] == 2 and w.stats()["sets"] == busy + 2
            assert w.stats()["flushes"] >= 2 and w.stats()["short"] == 0
    asyncio.run(main())


def test_the_core_gauge_compares_run_queue_wait_with_run_time(tmp_path, monkeypatch):
    """Short of cores once the thread waited runnable CONTENDED_AT of the
    time it ran, over at least GAUGE_S; no counters: always short."""
    from lightning_db.server.setwriter import CONTENDED_AT, GAUGE_S
    monkeypatch.undo()                                  # the real gauge
    gauge_cls = setwriter.CoreGauge
    stat = tmp_path / "schedstat"
    stat.write_text("1000000 0 10\n")
    g = gauge_cls(str(stat))
    # times from the gauge's own start, never on a GAUGE_S boundary,
    # where the float sum of a large monotonic clock may round either way
    t = g._at
    assert g.busy(t) is True                            # nothing compared yet: as before
    stat.write_text("2000000 %d 20\n" % int(CONTENDED_AT * 1_000_000 / 2))
    assert g.busy(t + GAUGE_S / 2) is True              # too soon to compare
    assert g.busy(t + 1.5 * GAUGE_S) is False           # waited half the threshold
    stat.write_text("3000000 %d 30\n" % int(CONTENDED_AT * 1_000_000 / 2 + CONTENDED_AT * 1_000_000))
    assert g.busy(t + 2 * GAUGE_S) is False             # too soon after the last comparison
    assert g.busy(t + 3 * GAUGE_S) is True              # waited the threshold
    stat.write_text("3000000 %d 30\n" % int(CONTENDED_AT * 1_000_000 * 9))
    assert g.busy(t + 4.5 * GAUGE_S) is True            # did not run: the last answer stands
    missing = gauge_cls(str(tmp_path / "nothing-here"))
    assert missing.busy(t + 10) is True and missing.busy(t + 20) is True
    garbled = tmp_path / "garbled"
    garbled.write_text("not numbers\n")
    assert gauge_cls(str(garbled)).busy(t + 10) is True
    real = gauge_cls()                                  # this thread's own counters, where the kernel has them
    assert real.busy(time.monotonic() + GAUGE_S) in (True, False)


def test_a_run_is_told_once_after_every_group_answered():
    """A run over two shards is told its outcome once, after its last
    group's answer, each SET with its shard's; a connection whose callback
    raises does not keep the others in the message from being told."""
    async def main() -> None:
        router = FakeRouter()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, asyncio.get_running_loop(), pool)
            told: list = []
            lone: list = []

            def broken(errors: list | None) -> None:
                raise RuntimeError("a connection's defect")
            w.set_many([b"a1", b"b1"], [b"1", b"2"], told.append)
            w.set_many([b"a2"], [b"3"], broken)
            w.set_many([b"a3"], [b"4"], lone.append)
            await _settle()
            a, b = router.refs
            assert len(a.asks) == len(b.asks) == 1           # one message per shard
            assert a.asks[0][0][0] == cols((b"a1", b"1"), (b"a2", b"3"), (b"a3", b"4"))
            b.asks[0][1].set_exception(IOFault("shard b said no"))
            await _settle()
            assert told == [] and lone == []                 # shard a has not answered
            a.asks[0][1].set_result(1)
            await _settle()
            assert len(told) == 1 and told[0][0] is None and isinstance(told[0][1], IOFault)
            assert lone == [None]
            assert not w._in_flight
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


# --- the direct path: real sockets, the loop reads the answers ---------------------------------

class ServedShard:
    """A MailboxServer answering "write" asks from one thread: each write's
    ops are recorded, and answered at once unless *hold* is set (then
    never); ``close`` makes it vanish like a killed worker."""

    def __init__(self, address: str) -> None:
        self.server = MailboxServer(address)
        self.address = self.server.address
        self.hold = False
        self.writes: list[list] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        server = self.server
        while not self.stopping.is_set():
            for identity, env in server.recv(0.05):
                self.writes.append(env.payload[0])
                if not self.hold:
                    server.reply(identity, env.reply(len(self.writes)))
        server.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(30)


class SocketRef:
    """What the SetWriter uses of an ActorRef, over a real MailboxClient."""

    def __init__(self, address: str) -> None:
        self.client = MailboxClient(address)

    def ask(self, op: str, payload: list, timeout: float) -> Future:
        return self.client.request(op, payload, timeout)

    def ask_here(self, op: str, payload: list, timeout: float):
        return self.client.ask_here(op, payload, timeout)


@pytest.mark.parametrize("suffix", [".sock", ".zmq"])     # the shard's lane, or a DEALER of the loop's own
def test_the_loop_reads_direct_answers_and_ends_lost_and_late_ones(runtime_dir, suffix):
    shard = ServedShard(f"ipc://{runtime_dir}/sw{suffix}")
    router = FakeRouter()
    ref = SocketRef(shard.address)
    router.refs = [ref, ref]
    router.attempt_timeout = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as pool:
            w = SetWriter(router, loop, pool)
            try:
                await asyncio.wait_for(asyncio.gather(*(one(w, b"a%d" % i, b"v") for i in range(5))), 30)
                assert len(w._watched) == 1 and not w._direct       # the loop's own socket, read by the loop
                assert [len(ops[1]) for ops in shard.writes] in ([5], [1, 4])
                assert router.retried == []
                # No answer: the deadline ends the wait (the timer), and the
                # write is retried with its token in a worker thread.
                shard.hold = True
                started = time.monotonic()
                await asyncio.wait_for(one(w, b"a9", b"late"), 30)
                assert 0.2 < time.monotonic() - started < 20
                assert len(router.retried) == 1 and router.retried[0][1] == cols((b"a9", b"late"))
                # The shard vanishes with a write in flight: PeerLost (long
                # before this deadline), retried too.
                router.attempt_timeout = 120.0
                seen = ref.client.stats()["lost"]
                lost = asyncio.ensure_future(one(w, b"a10", b"gone"))
                await _until(lambda: len(shard.writes) == 3)
                shard.close()
                await asyncio.wait_for(lost, 30)
                assert ref.client.stats()["lost"] > seen      # failed by the drop, not the deadline
                if suffix == ".sock":
                    assert not w._watched                     # the lane given up is no longer read
                assert [r[1] for r in router.retried][1:] == [cols((b"a10", b"gone"))]
            finally:
                w.close()
            assert not w._watched

    try:
        asyncio.run(main())
    finally:
        ref.client.close()
        shard.close()


async def _until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_set_replies_account_every_set_and_name_each_error():
    """The front end's replies to a SetWriter run: +OK each when all were
    written, else each SET's own outcome; counted per SET."""
    from collections import Counter
    from types import SimpleNamespace

    from lightning_db.server.dispatch import Dispatcher
    from lightning_db.server.state import ClientState

    server = SimpleNamespace(stats=Counter(), fatal=None)
    dispatcher, client = Dispatcher(server), ClientState(id=1)
    assert dispatcher.set_replies(client, 3, None, 0.001) == b"+OK\r\n" * 3
    got = dispatcher.set_replies(client, 3, [None, IOFault("the disk said no"), None], 0.001)
    lines = got.split(b"\r\n")[:-1]
    assert lines[0] == lines[2] == b"+OK" and lines[1].startswith(b"-") and b"the disk said no" in lines[1]
    assert server.stats["total_commands_processed"] == 6 and server.stats["total_error_replies"] == 1
    assert client.commands == 6 and client.last_cmd == "set"
