"""Write combining (shards/combine.py): concurrent writes to one shard
share a message; each writer learns its own write's outcome."""

from __future__ import annotations

import signal
import threading

import lightning_db as ldb
from lightning_db.errors import IOFault
from lightning_db.shards import combine
from lightning_db.shards.combine import WriteCombiner
from tests.waiting import wait_until


class Shard:
    """A fake send: the first message waits for ``release``."""

    def __init__(self, fail_second: bool = False) -> None:
        self.messages: list[tuple[int, list, bool]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail_second = fail_second

    def send(self, shard: int, ops: list, sync: bool) -> None:
        self.messages.append((shard, list(ops), sync))
        if len(self.messages) == 1:
            self.entered.set()
            assert self.release.wait(30)
        elif self.fail_second:
            raise IOFault("the disk said no")


def _writers(comb: WriteCombiner, n: int, shard: int = 0, sync_every: int = 0) -> tuple[list, list]:
    errors: list = [None] * n
    threads = []

    def run(i: int) -> None:
        try:
            comb.write(shard, [(1, b"k%d" % i, b"v%d" % i)], sync_every > 0 and i % sync_every == 0)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            errors[i] = exc
    for i in range(n):
        threads.append(threading.Thread(target=run, args=(i,)))
    return threads, errors


def _queued_behind_one(comb: WriteCombiner, shard: Shard, n: int, sync_every: int = 0) -> list:
    """One write in flight (held by *shard*), n - 1 more queued behind it,
    then released; every writer's error (None: acknowledged)."""
    first, first_errors = _writers(comb, 1)
    first[0].start()
    assert shard.entered.wait(30)
    threads, errors = _writers(comb, n, sync_every=sync_every)
    threads = threads[1:]                       # k0 is the one in flight
    for t in threads:
        t.start()
    wait_until(lambda: len(comb._queues[0]) == n - 1, 30, "the writers to queue up")
    shard.release.set()
    for t in first + threads:
        t.join(30)
    return first_errors + errors[1:]


def test_writes_queued_behind_one_in_flight_go_as_one_message():
    shard = Shard()
    comb = WriteCombiner(2, shard.send)
    assert _queued_behind_one(comb, shard, 8, sync_every=4) == [None] * 8
    assert len(shard.messages) == 2
    keys = sorted(op[1] for op in shard.messages[1][1])
    assert keys == sorted(b"k%d" % i for i in range(1, 8))
    assert shard.messages[1][2] is True          # one of them asked for sync
    assert comb.stats() == {"combined_messages": 2, "combined_writes": 8}


def test_a_failed_message_fails_every_write_in_it():
    shard = Shard(fail_second=True)
    comb = WriteCombiner(1, shard.send)
    errors = _queued_behind_one(comb, shard, 5)
    assert errors[0] is None
    assert all(isinstance(e, IOFault) for e in errors[1:])


def test_a_message_is_bounded(monkeypatch):
    monkeypatch.setattr(combine, "MAX_OPS", 3)
    shard = Shard()
    comb = WriteCombiner(1, shard.send)
    assert _queued_behind_one(comb, shard, 8) == [None] * 8
    assert [len(m[1]) for m in shard.messages] == [1, 3, 3, 1]


def test_concurrent_acknowledged_puts_all_land(tmp_path):
    db = ldb.open(str(tmp_path / "db"), shards=2)
    try:
        def run(t: int) -> None:
            for i in range(200):
                db.put(b"t%d-%d" % (t, i), b"v%d" % i, sync=False)
        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        for t in range(8):
            assert db.get_many([b"t%d-%d" % (t, i) for i in range(200)]) == [b"v%d" % i for i in range(200)]
        assert db.stats()["write_combining"]["combined_writes"] == 1600
    finally:
        db.close()


def test_a_forked_child_writes_although_a_parent_thread_was_sending():
    """The leader threads do not survive fork: a child whose parent had a
    write in flight (busy, the lock maybe held) writes through a fresh
    combiner instead of waiting forever for a leader that is not there."""
    import os

    parent = os.getpid()
    release, sending = threading.Event(), threading.Event()
    sent: list[int] = []

    def send(shard, ops, sync):
        if os.getpid() == parent:
            sending.set()
            release.wait(30)
        sent.append(len(ops))

    c = WriteCombiner(1, send)
    t = threading.Thread(target=c.write, args=(0, [(0, b"p", b"1")], False))
    t.start()
    try:
        assert sending.wait(30)
        pid = os.fork()
        if pid == 0:                                   # the child: one write, then leave at once
            code = 1
            try:
                signal.alarm(20)                       # a hang ends the child, the test sees it
                c.write(0, [(0, b"c", b"2")], False)
                code = 0 if sent == [1] else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        t.join(30)
    assert sent == [1]
