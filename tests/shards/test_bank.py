"""Bank invariant: N accounts spread over both shards, four caller processes
making random transfers in transactions while shard workers and callers are
killed with -9 at random; the total never changes in any snapshot, before
or after restarts.

- 16 accounts of 100 each, written by one ``put_many`` (atomic across shards).
- 4 callers (``tests/shards/bank_child.py``, separate processes on the same
  path) each move 1..10 from one account to another in ``run_transaction``
  (reading both, writing both, never below zero), going on after transient
  and recoverable errors.
- This process takes snapshots again and again and sums every balance read
  with ``get_many`` and with ``scan(prefix=b"acct:")`` at the same cut: both
  must give exactly the 16 accounts, none negative, summing to 1600. (Plain
  ``db.get_many`` outside a snapshot is no cut while transfers run and is
  checked only once they stopped.)
- Faults, one every 0.3-1.5 s, both kinds in every pair of faults: SIGKILL a
  random shard worker (pid from ``db.stats()``; the test then waits until the
  node restarted it) or SIGKILL a caller (a new caller takes its place). Before
  each fault, transfers must have gone on since the previous one.
- At the end: the callers stop (stop file), the total is checked again; the
  node settles on its own what killed callers left prepared (no prepared
  transaction left on any shard), plain reads agree, a second handle reads
  the same, and so does a new node after closing and reopening. Callers log
  a line per committed transfer: some must have committed.

Short form (CI): about 22 s of load and at least 8 faults. ``LDB_BANK_SECONDS``
sets the load duration for a long form; ``LDB_BANK_SEED`` replays a seed (the
caller processes still interleave as the scheduler decides).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import lightning_db as ldb
from lightning_db.errors import LightningError, RecoverableError, TransientError
from tests.waiting import answers, wait_until

ACCOUNTS = [b"acct:%02d" % i for i in range(16)]
START = 100
TOTAL = START * len(ACCOUNTS)
CALLERS = 4
SECONDS = float(os.environ.get("LDB_BANK_SECONDS") or 22.0)
MIN_FAULTS = 8
WAIT_S = 120.0                   # generous: a loaded 2-core machine
ROOT = str(Path(__file__).resolve().parents[2])


def _seed() -> int:
    env = os.environ.get("LDB_BANK_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


class Callers:
    """The caller processes this test started: start, kill -9, stop, reap."""

    def __init__(self, path: str, tmp: Path, seed: int) -> None:
        self.path, self.tmp = path, tmp
        self.stop_file = tmp / "stop"
        self.rng = random.Random(seed)
        self.procs: list[tuple[subprocess.Popen, Path, Path]] = []    # (process, log, stderr)
        self.killed: set[int] = set()

    def start(self) -> int:
        n = len(self.procs)
        log, err = self.tmp / f"caller-{n}.log", self.tmp / f"caller-{n}.err"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.shards.bank_child", self.path, str(self.stop_file), str(log),
                 str(self.rng.getrandbits(32)), str(SECONDS + 600)],   # the deadline only if we vanish
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        self.procs.append((proc, log, err))
        return proc.pid

    def live(self) -> list[subprocess.Popen]:
        return [p for p, _, _ in self.procs if p.poll() is None]

    def kill_one(self, rng: random.Random) -> int:
        proc = rng.choice(self.live())
        os.kill(proc.pid, signal.SIGKILL)
        self.killed.add(proc.pid)
        proc.wait(WAIT_S)
        return proc.pid

    def check_alive(self) -> None:
        """No caller ended by itself while the transfers should go on."""
        for proc, _, err in self.procs:
            if proc.pid not in self.killed and proc.poll() is not None:
                raise AssertionError(f"caller {proc.pid} exited with {proc.returncode}:\n{_tail(err)}")

    def progress(self) -> int:
        return sum(log.stat().st_size for _, log, _ in self.procs if log.exists())

    def transfers(self) -> tuple[int, list[str]]:
        """Committed transfers logged by every caller, and the summary lines
        of those that stopped cleanly."""
        count, done = 0, []
        for _, log, _ in self.procs:
            if log.exists():
                for line in log.read_text().splitlines():
                    if line.startswith("# done"):
                        done.append(line[len("# done "):])
                    elif line.strip():
                        count += 1
        return count, done

    def stop(self) -> None:
        """Stop file, then every caller must exit cleanly within WAIT_S."""
        self.stop_file.touch()
        deadline = time.monotonic() + WAIT_S
        for proc, _, err in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"caller {proc.pid} did not stop within {WAIT_S}s of the stop file") from None
            if proc.pid not in self.killed:
                assert proc.returncode == 0, f"caller {proc.pid} exited with {proc.returncode}:\n{_tail(err)}"

    def reap(self) -> None:
        """Kill what is still running of what this test started (by pid)."""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no stderr)"


def _retrying(fn, what: str):
    """fn() again while it meets a transient or recoverable error (a worker
    being restarted), up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return fn()
        except (TransientError, RecoverableError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {WAIT_S}s: {exc!r}") from exc
            time.sleep(0.05)


class Checker:
    """Sums the balances in snapshots; any other total is the bug this test hunts."""

    def __init__(self, seed: int, faults: list[str]) -> None:
        self.seed, self.faults = seed, faults
        self.checks = 0
        self.retried = 0

    def _read(self, db) -> tuple[list[bytes | None], dict[bytes, bytes]]:
        try:
            with db.snapshot() as s:
                return s.get_many(ACCOUNTS), dict(s.scan(prefix=b"acct:"))
        except (TransientError, RecoverableError):
            self.retried += 1
            raise

    def check(self, db, when: str) -> None:
        listed, scanned = _retrying(lambda: self._read(db), f"{when}: a snapshot")
        self.checks += 1
        problems = []
        if any(v is None for v in listed):
            problems.append(f"get_many: missing accounts {[k for k, v in zip(ACCOUNTS, listed) if v is None]}")
        else:
            balances = [int(v) for v in listed]
            if sum(balances) != TOTAL:
                problems.append(f"get_many: total {sum(balances)} != {TOTAL}")
            if min(balances) < 0:
                problems.append(f"get_many: a negative balance {min(balances)}")
        if sorted(scanned) != ACCOUNTS:
            problems.append(f"scan: keys {sorted(scanned)}")
        else:
            total = sum(int(v) for v in scanned.values())
            if total != TOTAL:
                problems.append(f"scan: total {total} != {TOTAL}")
        if dict(zip(ACCOUNTS, listed)) != scanned:
            problems.append("get_many and scan of the same snapshot differ")
        if problems:
            raise AssertionError(
                f"BANK INVARIANT BROKEN {when} (snapshot check #{self.checks}, seed {self.seed}): {problems}\n"
                f"get_many: {listed}\nscan: {scanned}\nthe last faults: {self.faults[-6:]}\n"
                f"replay: LDB_BANK_SEED={self.seed} .venv/bin/pytest tests/shards/test_bank.py -q -x -s")


def _workers(db) -> list[dict]:
    return [s["worker"] for s in _retrying(db.stats, "stats")["shards"]]


def _kill_worker(db, shard: int) -> str:
    wait_until(lambda: _workers(db)[shard]["pid"] is not None, WAIT_S, f"shard {shard} to have a worker")
    before = _workers(db)[shard]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> bool:
        try:
            now = _workers(db)[shard]
        except (LightningError, AssertionError):
            return False
        return (now["pid"] not in (None, before["pid"]) and now["restarts"] > before["restarts"]
                and answers(db.refs[shard]))

    wait_until(restarted, WAIT_S, f"shard {shard}'s worker (pid {before['pid']}) to be restarted")
    return f"worker of shard {shard} (pid {before['pid']})"


def _prepared(db) -> list[int]:
    return [s["prepared_transactions"] for s in _retrying(db.stats, "stats")["shards"]]


def _settled(db, when: str) -> None:
    """The node settles on its own thread what killed callers left prepared."""
    wait_until(lambda: _prepared(db) == [0, 0], WAIT_S, f"{when}: no prepared transaction on any shard")


def _close_and_wait(db) -> None:
    if db is None:
        return
    node_pid = db._session.node_pid
    db.close()
    try:
        psutil.Process(node_pid).wait(WAIT_S)     # the node exits after its last caller
    except psutil.NoSuchProcess:
        pass


@pytest.mark.crash
def test_bank_total_never_changes_while_workers_and_callers_are_killed(tmp_path):
    seed = _seed()
    rng = random.Random(seed)
    path = str(tmp_path / "db")
    faults: list[str] = []
    checker = Checker(seed, faults)
    callers = Callers(path, tmp_path, seed)
    db = again = None
    started = time.monotonic()
    try:
        db = ldb.open(path, shards=2, restart_intensity=1000, restart_period=60.0)
        assert {db.ring.shard_of(k) for k in ACCOUNTS} == {0, 1}
        db.put_many({k: b"%d" % START for k in ACCOUNTS})
        checker.check(db, "after the setup")
        for _ in range(CALLERS):
            callers.start()
        wait_until(lambda: callers.check_alive() or callers.progress() > 0, WAIT_S, "the first transfers")

        load = time.monotonic()
        plan: list[str] = []
        mark = 0
        next_fault = load + rng.uniform(0.3, 1.5)
        while True:
            checker.check(db, f"during the load, after {len(faults)} faults")
            callers.check_alive()
            now = time.monotonic()
            kinds = {f.split(":")[0] for f in faults}
            if now - load >= SECONDS and len(faults) >= MIN_FAULTS and kinds == {"worker", "caller"}:
                break
            if now < next_fault:
                continue
            # the fault lands among transfers: some committed since the last one
            wait_until(lambda: callers.check_alive() or callers.progress() > mark, WAIT_S,
                       f"transfers to go on after {faults[-1:] or 'the start'}")
            if not plan:
                plan = rng.sample(["worker", "caller"], 2)     # both kinds in every pair
            kind = plan.pop()
            at = f"{time.monotonic() - load:.1f}s"
            if kind == "worker":
                faults.append(f"worker: {_kill_worker(db, rng.randrange(2))} at {at}")
            else:
                pid = callers.kill_one(rng)
                faults.append(f"caller: pid {pid} at {at}, replaced by pid {callers.start()}")
            mark = callers.progress()
            next_fault = time.monotonic() + rng.uniform(0.3, 1.5)
        load_s = time.monotonic() - load

        callers.stop()
        checker.check(db, "after the callers stopped")
        _settled(db, "after the callers stopped")
        plain = [int(v) for v in _retrying(lambda: db.get_many(ACCOUNTS), "get_many")]
        assert sum(plain) == TOTAL, f"plain get_many after the load settled: {plain} (seed {seed})"
        committed, summaries = callers.transfers()
        assert committed > 0, f"no transfer committed (seed {seed}); callers said: {summaries}"
        stats = _retrying(db.stats, "stats")
        pinned = [s["snapshots"] for s in stats["shards"]]

        again = ldb.open(path)                     # a second handle on the same node
        checker.check(again, "through a second handle")
        again.close()
        again = None
        closing, db = db, None
        _close_and_wait(closing)

        db = ldb.open(path)                        # a new node: the workers recover from disk
        checker.check(db, "after closing and reopening")
        _settled(db, "after reopening")
        print(f"\nbank: seed {seed}, {load_s:.1f}s of load, {len(faults)} faults "
              f"({sum(f.startswith('worker') for f in faults)} workers, "
              f"{sum(f.startswith('caller') for f in faults)} callers), {committed} transfers logged, "
              f"{checker.checks} snapshot checks ({checker.retried} retried), snapshots still pinned "
              f"per shard after the load: {pinned}, callers: {summaries}, "
              f"{time.monotonic() - started:.1f}s in all")
        for f in faults:
            print("  ", f)
    finally:
        callers.reap()
        if again is not None:
            again.close()
        _close_and_wait(db)
