"""A list-append workload: several threads run random transactions against a
database and record a history for :func:`lightning_db.check.check`.

The database needs only this API::

    with db.transaction(isolation=...) as tx:
        tx.get(key: bytes) -> bytes | None
        tx.put(key: bytes, value: bytes)

Leaving the ``with`` block normally commits. A commit conflict raises
:class:`~lightning_db.errors.TransactionConflict` (the transaction is recorded
as "fail": nothing was written); any other
:class:`~lightning_db.errors.LightningError` makes the outcome indeterminate
("info"). ``InvalidArgument`` (a caller's mistake) and exceptions that are
not Lightning DB's are raised to the caller.

Each list is stored msgpack-encoded under ``prefix + str(key)``. An append is
a read-modify-write of that value inside the transaction; every appended
value is unique per key across the run (a counter per key), also across
retries, so an aborted attempt's values can be told apart.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import msgpack

from ..errors import InvalidArgument, LightningError, TransactionConflict
from .listappend import CheckResult, check

__all__ = ["run_append_workload", "check_run", "plan_txn"]


def plan_txn(rng: random.Random, keys: int, max_ops: int) -> list[tuple[str, int]]:
    """1..max_ops ops over keys 0..keys-1, half reads ("r") and half appends."""
    return [("r" if rng.random() < 0.5 else "append", rng.randrange(keys))
            for _ in range(rng.randint(1, max_ops))]


def _decode(raw: bytes | None, key: bytes) -> list[int]:
    if raw is None:
        return []
    value = msgpack.unpackb(raw)
    if not isinstance(value, list):
        raise ValueError(f"key {key!r} holds {value!r}, not a list")
    return value


class _Run:
    def __init__(self, db: Any, isolation: str, prefix: bytes, retries: int) -> None:
        self.db = db
        self.isolation = isolation
        self.prefix = prefix
        self.retries = retries
        self.lock = threading.Lock()
        self.counters: dict[int, int] = {}
        self.history: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    def next_value(self, key: int) -> int:
        with self.lock:
            v = self.counters.get(key, 0) + 1
            self.counters[key] = v
            return v

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["index"] = len(self.history)
            self.history.append(entry)

    def attempt(self, plan: list[tuple[str, int]], process: int) -> str:
        ops: list[list[Any]] = []
        outcome = "ok"
        start = time.monotonic()
        try:
            with self.db.transaction(isolation=self.isolation) as tx:
                for f, k in plan:
                    kb = self.prefix + str(k).encode()
                    cur = _decode(tx.get(kb), kb)
                    if f == "r":
                        ops.append(["r", k, cur])
                    else:
                        v = self.next_value(k)
                        ops.append(["append", k, v])
                        tx.put(kb, msgpack.packb(cur + [v]))
        except InvalidArgument:
            raise  # the caller's mistake (a bad isolation name, say), not an outcome
        except TransactionConflict:
            outcome = "fail"
        except LightningError:
            outcome = "info"
        end = time.monotonic()
        if outcome != "ok":
            ops = [op if op[0] == "append" else ["r", op[1], None] for op in ops]
        self.record({"process": process, "type": outcome, "ops": ops,
                     "start": start, "end": end})
        return outcome

    def worker(self, process: int, count: int, seed: int, keys: int, max_ops: int,
               go: threading.Barrier) -> None:
        try:
            rng = random.Random(f"{seed}:{process}")
            go.wait()
            for _ in range(count):
                plan = plan_txn(rng, keys, max_ops)
                for _ in range(self.retries + 1):
                    if self.attempt(plan, process) != "fail":
                        break
        except BaseException as exc:  # raised again in the caller's thread
            with self.lock:
                self.errors.append(exc)
            go.abort()


def run_append_workload(db: Any, *, threads: int = 4, txns: int = 200, keys: int = 8,
                        max_ops: int = 4, isolation: str = "serializable",
                        seed: int = 0, retries: int = 0,
                        prefix: bytes = b"la:") -> list[dict[str, Any]]:
    """Run ``txns`` random list-append transactions from ``threads`` threads
    and return the history (format in :mod:`lightning_db.check.listappend`).

    Thread ``p`` runs about ``txns / threads`` transactions as process ``p``,
    with its own generator seeded from ``seed`` and ``p``. A transaction that
    fails with a conflict is retried up to ``retries`` times, each attempt a
    history entry of its own with fresh values. Use a fresh ``prefix`` per
    run when the database is not empty.
    """
    if threads < 1 or txns < 0 or keys < 1 or max_ops < 1 or retries < 0:
        raise ValueError("threads, keys and max_ops must be >= 1; txns, retries >= 0")
    run = _Run(db, isolation, prefix, retries)
    go = threading.Barrier(threads)
    workers = [threading.Thread(
        target=run.worker, name=f"append-load-{p}",
        args=(p, txns // threads + (p < txns % threads), seed, keys, max_ops, go))
        for p in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    errors = [e for e in run.errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors or run.errors:
        raise (errors or run.errors)[0]
    return run.history


def check_run(db: Any, level: str = "serializable", *, realtime: bool = False,
              **kw: Any) -> CheckResult:
    """Run :func:`run_append_workload` (``kw`` passed through) and check the
    history against ``level``; the history is kept on the result.

    Without an ``isolation`` argument the transactions ask for "snapshot"
    when ``level`` is "snapshot-isolation", else for "serializable".
    """
    kw.setdefault("isolation", "snapshot" if level == "snapshot-isolation" else "serializable")
    history = run_append_workload(db, **kw)
    result = check(history, level, realtime=realtime)
    result.history = history
    return result
