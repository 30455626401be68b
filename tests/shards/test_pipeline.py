"""Issue 4: pipelined writes (shards/pipeline.py).

put/delete return before the shard answers; the writing process reads its
own writes at once; barriers (flush, batches, scans, snapshots, close) wait
for every answer and raise the first error; a shard applies one process's
writes in the order they were made; a writer faster than a shard is held back.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from concurrent.futures import Future

import pytest

import lightning_db as ldb
from lightning_db.config import Config
from lightning_db.errors import DatabaseShutdown, DiskFull
from lightning_db.shards import pipeline
from lightning_db.shards.ring import HashRing
from lightning_db.shards.router import ShardRouter


class _SlowRef:
    """A shard that handles asks one at a time in arrival order (as an actor
    does), each after *delay* seconds, answering with *error* if given;
    records the ops of every write in the order it applied them."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error = delay, error
        self.writes: list[list] = []
        self.lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def ask(self, op, payload=None, timeout=None):
        f: Future = Future()
        self._queue.put((op, payload, f))
        return f

    ask_here = ask

    def barrier_here(self, timeout=None):
        return None                 # one queue: every ask in the order sent

    def _serve(self) -> None:
        while True:
            op, payload, f = self._queue.get()
            time.sleep(self.delay)
            with self.lock:
                if op == "write":
                    ops = payload[0]
                    if len(ops) == 3 and type(ops[0]) is bytes:      # as columns: kinds, keys, values
                        ops = list(zip(*ops))
                    self.writes.append(list(ops))
            if self.error is not None:
                f.set_exception(self.error)
            else:
                f.set_result([None] * len(payload[0]) if op == "get_many" else 1)


def _router(ref) -> ShardRouter:
    return ShardRouter([ref], HashRing(1), Config(), timeout=30)


def test_put_returns_before_the_answer_and_reads_its_own_write():
    ref = _SlowRef(delay=0.3)
    db = _router(ref)
    started = time.monotonic()
    db.put(b"k", b"v1")
    db.delete(b"gone")
    assert time.monotonic() - started < 0.2           # did not wait for the 0.3 s answer
    assert db.get(b"k") == b"v1" and b"k" in db       # from the overlay: the shard has not answered
    assert db.get_many([b"k", b"gone"]) == [b"v1", None]
    db._pipe.barrier()
    assert db._pipe.live == 0 and db._pipe.mine(b"k") is None
    assert [tuple(op) for w in ref.writes for op in w] == [(1, b"k", b"v1"), (0, b"gone", b"")]
    db._pipe.close()


def test_one_shard_applies_one_process_writes_in_order_and_batches_them():
    ref = _SlowRef(delay=0.01)
    db = _router(ref)
    for i in range(2000):
        db.put(b"k%d" % (i % 7), b"%d" % i)
    db._pipe.barrier()
    ops = [tuple(op) for w in ref.writes for op in w]
    assert [int(v) for _, _, v in ops] == list(range(2000))      # the order they were made
    assert len(ref.writes) < 200                                 # many per write while one is on the wire
    db._pipe.close()


def test_errors_come_at_the_next_barrier_once():
    ref = _SlowRef(error=DiskFull("no space"))
    db = _router(ref)
    db.put(b"k", b"v")                         # returns: the error is not known yet
    with pytest.raises(DiskFull):
        db._pipe.barrier()
    db._pipe.barrier()                         # raised once
    assert db.get_many([]) == []
    db._pipe.close()


def test_a_fatal_error_makes_every_later_put_raise():
    ref = _SlowRef(error=DatabaseShutdown("gone"))
    db = _router(ref)
    db.put(b"k", b"v")
    with pytest.raises(DatabaseShutdown):
        db._pipe.barrier()
    with pytest.raises(DatabaseShutdown):
        db.put(b"k", b"v")
    with pytest.raises(DatabaseShutdown):
        db._pipe.barrier()


def test_a_writer_faster_than_the_shard_is_held_back(monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_BUFFERED_BYTES", 4096)
    monkeypatch.setattr(pipeline, "BATCH_OPS", 16)
    ref = _SlowRef(delay=0.005)
    db = _router(ref)
    peak = 0
    for i in range(400):
        db.put(b"key-%04d" % i, b"x" * 100)
        peak = max(peak, db._pipe._bytes[0])
    assert peak <= 4096 + 200                 # one op past the limit at most
    db._pipe.close()
    assert sum(len(w) for w in ref.writes) == 400


def test_other_processes_see_a_write_once_answered(tmp_path):
    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as a, ldb.open(path) as b:
        for i in range(300):
            a.put(b"p%03d" % i, b"%d" % i)
        assert a.get(b"p299") == b"299"               # its own writes at once
        a.flush()                                     # the barrier: every write answered
        assert b.get_many([b"p%03d" % i for i in range(300)]) == [b"%d" % i for i in range(300)]
        a.delete(b"p000")
        with a.batch() as batch:                      # a batch is a barrier too
            batch.put(b"q", b"1")
        assert b.get(b"p000") is None and b.get(b"q") == b"1"
        assert a.stats()["pipeline"]["ops_sent"] >= 301


def test_pipelined_writes_survive_a_worker_killed_among_them(tmp_path):
    """kill -9 of a shard worker while runs are buffered and on the wire:
    the supervisor restarts it, the lost runs are sent again (in order,
    never applied twice), and after the barrier every write is there,
    deletes included."""
    path = str(tmp_path / "db")
    n = 40_000
    with ldb.open(path, shards=2) as db:
        node = db.stats()["node"]
        victim = node["shards"][0]["pid"]
        for i in range(n):
            db.put(b"k%06d" % i, b"v%d" % i)
            if i % 1000 == 999:
                db.delete(b"k%06d" % (i - 1))
            if i == n // 2:
                assert db._pipe.pending() > 0          # writes in flight when the worker dies
                os.kill(victim, signal.SIGKILL)
        db.flush()
        want = [None if i % 1000 == 998 else b"v%d" % i for i in range(n)]
        assert db.get_many([b"k%06d" % i for i in range(n)]) == want
        shard = db.stats()["node"]["shards"][0]
        assert shard["restarts"] >= 1 and shard["pid"] != victim


def test_a_forked_child_writes_through_its_own_pipeline(tmp_path):
    """The sender threads do not survive fork: a child that uses the
    parent's handle starts its own, and the parent's queue stays the
    parent's."""
    import os

    with ldb.open(tmp_path / "db", shards=2) as db:
        db.put(b"parent", b"1")
        pid = os.fork()
        if pid == 0:                                   # the child: write, barrier, leave at once
            code = 1
            try:
                db.put(b"child", b"2")
                db._pipe.barrier()
                code = 0 if db.get(b"child") == b"2" else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        db.flush()
        assert db.get(b"parent") == b"1" and db.get(b"child") == b"2"


class _OrderedShard:
    """A shard with the order check of tokened writes (storage/dedupe.py,
    engine ``after``): the first attempt of each write number in *lose*
    vanishes on the way (a worker restart), unapplied."""

    def __init__(self, lose: set[int]) -> None:
        self.lose = set(lose)
        self.applied: list[int] = []
        self.values: dict[bytes, bytes] = {}
        self.refused = 0

    def ask(self, op, payload=None, timeout=None):
        from lightning_db.errors import OutOfOrder, PeerLost

        assert op == "write"
        f: Future = Future()
        ops, _sync, token, *after = payload
        n = token[1]
        if n in self.lose:
            self.lose.discard(n)
            f.set_exception(PeerLost("lost on the way"))
        elif after and after[0] not in self.applied and after[0] >= token[2]:
            self.refused += 1
            f.set_exception(OutOfOrder(f"{n} before {after[0]}"))
        else:
            if n not in self.applied:
                self.applied.append(n)
                kinds, keys, vals = ops                      # pipelined runs go as columns
                self.values.update(zip(keys, vals))
            f.set_result(1)
        return f

    ask_here = ask


def test_a_run_sent_behind_a_lost_one_is_applied_after_it(monkeypatch):
    """Two runs on the wire; the first is lost: the shard refuses the second
    (it names the first as 'after'), the sender sends the first again, then
    the second: the newer value wins, as the writes were made."""
    monkeypatch.setattr(pipeline, "BATCH_OPS", 2)
    shard = _OrderedShard(lose={1})
    db = _router(shard)
    pipe = db._pipe
    pipe._threads[0] = threading.current_thread()        # hold the sender back: both runs queue first
    for v in (b"1", b"2", b"3", b"4"):
        db.put(b"k", v)
    assert len(pipe._runs[0]) == 2
    sender = threading.Thread(target=pipe._send_loop, args=(0,), daemon=True)
    pipe._threads[0] = sender
    sender.start()
    pipe.barrier()
    assert shard.refused == 1 and shard.applied == [1, 2]
    assert shard.values[b"k"] == b"4"
    pipe.close()
