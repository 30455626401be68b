"""Issue 3: kill -9 a random shard worker during writes, many times.

The node restarts each killed worker at the same address; the router
retries what the kill lost (``PeerLost`` from the mailbox, at once instead
of at the 30 s ask timeout), so callers see at most a retried transient
error and no acknowledged write is lost.

``LDB_WORKER_KILLS`` sets the number of kills (default 30) for a longer form.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import psutil

import lightning_db as ldb
from lightning_db.errors import TransientError
from tests.waiting import answers, node_workers, wait_until

KILLS = int(os.environ.get("LDB_WORKER_KILLS", "30"))
KEYS = 2000             # the writer overwrites keys: the last acked value must win


class Writer(threading.Thread):
    """Acknowledged puts, one at a time; a TransientError that escapes the
    router is counted and the same put is made again; anything else stops it."""

    def __init__(self, db) -> None:
        super().__init__(name="writer", daemon=True)
        self.db = db
        self.acked: dict[bytes, bytes] = {}
        self.count = 0
        self.transient = 0
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        n = 0
        try:
            while not self.stop.is_set():
                key = b"k%05d" % rng.randrange(KEYS)
                value = b"v%d" % n
                n += 1
                while True:
                    try:
                        if n % 10 == 0:
                            self.db.put_many({key: value})       # a single-shard batch
                        else:
                            self.db.put(key, value)
                        break
                    except TransientError:
                        self.transient += 1
                self.acked[key] = value
                self.count += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc



def test_kill_9_random_workers_during_writes(tmp_path):
    path = str(tmp_path / "db")
    db = ldb.open(path, shards=2, restart_intensity=1000, restart_period=60.0)
    node_pid = db._session.node_pid
    writer = Writer(db)
    started = time.monotonic()
    try:
        rng = random.Random(3)
        writer.start()
        wait_until(lambda: writer.count >= 50 or writer.failure is not None, what="the first writes")
        for _ in range(KILLS):
            assert writer.failure is None, repr(writer.failure)
            shard = rng.randrange(2)
            before = node_workers(db)[shard]
            os.kill(before["pid"], signal.SIGKILL)
            done = writer.count

            def replaced(shard=shard, before=before) -> bool:
                now = node_workers(db)[shard]
                return (now["pid"] not in (None, before["pid"]) and now["restarts"] > before["restarts"]
                        and answers(db.refs[shard]))

            wait_until(replaced, timeout=60, what=f"shard {shard} to be restarted and answer")
            # the next kill lands among writes again
            wait_until(lambda done=done: writer.count >= done + 20 or writer.failure is not None,
                       timeout=60, what="writes to go on after the restart")
        writer.stop.set()
        writer.join(60)
        assert not writer.is_alive()
        assert writer.failure is None, repr(writer.failure)
        restarts = sum(s["restarts"] for s in node_workers(db))
        assert restarts >= KILLS
        missing = {k: v for k, v in writer.acked.items() if db.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {list(missing.items())[:3]}"
        assert dict(db.scan()) == writer.acked
        print(f"\n{KILLS} kills, {writer.count} acked writes, {len(writer.acked)} keys, "
              f"{db.retries} router retries, {writer.transient} transient errors seen by the writer, "
              f"{time.monotonic() - started:.1f}s")
    finally:
        writer.stop.set()
        writer.join(60)
        db.close()
        try:
            psutil.Process(node_pid).wait(60)
        except psutil.NoSuchProcess:
            pass


def test_a_retried_write_is_applied_once_across_a_worker_restart(tmp_path):
    """The race the stress harness found, made deterministic: a write the
    worker applied but whose answer was lost (the worker killed right after)
    is sent again after another caller's newer write of the same key was
    acknowledged. Its token makes the restarted worker answer without
    applying it a second time."""
    path = str(tmp_path / "db")
    db = ldb.open(path, shards=2, restart_intensity=100, restart_period=60.0)
    node_pid = db._session.node_pid
    try:
        key = b"contended"
        shard = db.ring.shard_of(key)
        ref = db.refs[shard]
        token = db.tokens.take(shard)
        ref.ask("write", [[(1, key, b"first attempt")], False, token], 30).result()
        db.put(key, b"newer, acknowledged", sync=True)
        before = node_workers(db)[shard]
        os.kill(before["pid"], signal.SIGKILL)
        wait_until(lambda: node_workers(db)[shard]["pid"] not in (None, before["pid"]) and answers(ref),
                   timeout=60, what=f"shard {shard} to be restarted and answer")
        # The retry, at the restarted worker (its tokens come from the WAL).
        ref.ask("write", [[(1, key, b"first attempt")], False, token], 30).result()
        assert db.get(key) == b"newer, acknowledged"
        assert ref.ask("stats", None, 30).result()["duplicate_writes"] == 1
        db.tokens.done(shard, token)
    finally:
        db.close()
        try:
            psutil.Process(node_pid).wait(60)
        except psutil.NoSuchProcess:
            pass
