"""Optimistic transactions: ``with db.transaction() as tx:`` (the caller's side).

Runs in the caller's thread; the database handle (in-process ``Database``
or the sharded ``ShardRouter``) is the backend. A transaction reads from one
snapshot taken at its first read (a consistent cut across shards) with its
own writes laid over it, buffers its writes, and commits them atomically on
a clean exit of the ``with`` block (rolls back on an exception). The commit
checks, on each shard, under the same lock as the write (storage/txn.py):

- ``isolation="snapshot"`` (default): no key it writes was written by
  anyone after its snapshot (first committer wins): no lost updates;
- ``isolation="serializable"``: also no key it read and no key in a range
  it scanned was written after its snapshot (phantoms included), so write
  skew is impossible.

A failed check raises ``TransactionConflict`` (transient) and writes nothing;
``run_transaction`` runs a function again with backoff until it commits.
Read-only transactions commit without checks (their snapshot is a cut no
commit straddles). A transaction open longer than ``transaction_max_age``
raises ``TransactionExpired`` (a TransactionConflict) on its next call.

Backend interface: ``_tx_view()`` -> a view with ``get(key)``,
``get_many(keys)``, ``get_entry(key)``, ``scan(lo, hi, reverse)`` and ``release(wait=True) ->
bool`` (False: the shards had dropped it; ``wait=False``: need not wait); ``_tx_commit(view | None, ops, reads,
ranges, serializable, sync)``; ``_limits``; ``config``.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .errors import InvalidArgument, TransactionConflict, TransactionExpired
from .storage.format import Kind
from .storage.ttl import entry, visible

__all__ = ["ISOLATION_LEVELS", "Transaction", "Transactional", "KeyAccess", "KeyWrites", "check_isolation", "check_run", "check_sync",
           "run_transaction"]

ISOLATION_LEVELS = ("snapshot", "serializable")
_VALUE = int(Kind.VALUE)
_DELETE = int(Kind.DELETE)
T = TypeVar("T")


def _first(t: tuple[bytes, int, bytes]) -> bytes:
    return t[0]


def check_sync(sync: Any) -> bool | None:
    """*sync* as given (None: the database's policy); InvalidArgument
    for anything but None or a bool."""
    if sync is not None and not isinstance(sync, bool):
        raise InvalidArgument(f"sync must be None or a bool (the policy 'always' is an open() option), "
                              f"got {type(sync).__name__}")
    return sync


def check_run(fn: Any, retries: Any, isolation: Any, sync: Any) -> None:
    """The arguments of ``run_transaction`` (every flavour), checked
    before anything runs."""
    if not callable(fn):
        raise InvalidArgument(f"run_transaction takes a callable fn(tx), got {type(fn).__name__}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidArgument(f"retries must be an integer >= 0, got {retries!r:.40}")
    check_isolation(isolation)
    check_sync(sync)


def check_isolation(isolation: Any) -> bool:
    """True for serializable; InvalidArgument for an unknown level."""
    if isolation not in ISOLATION_LEVELS:
        raise InvalidArgument(f"isolation must be one of {ISOLATION_LEVELS}, got {isolation!r:.40}")
    return isolation == "serializable"


class _Scanned:
    """What one scan of a transaction has read: [lo, hi) once exhausted,
    else up to the last key it returned."""

    __slots__ = ("lo", "hi", "reverse", "last", "done")

    def __init__(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> None:
        self.lo, self.hi, self.reverse = lo, hi, reverse
        self.last: bytes | None = None
        self.done = False

    def range(self) -> tuple[bytes | None, bytes | None] | None:
        if self.done:
            return self.lo, self.hi
        if self.last is None:
            return None                  # nothing returned, nothing observed
        if self.reverse:
            return self.last, self.hi
        return self.lo, self.last + b"\x00"


class KeyAccess:
    """``x[k]`` (KeyError if absent) and ``k in x``, in terms of ``get``:
    shared by database handles, snapshots and transactions (db.ReadSugar)."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> bytes:
        v = self.get(key)  # type: ignore[attr-defined]
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None  # type: ignore[attr-defined]


class KeyWrites(KeyAccess):
    """``x[k] = v`` and ``del x[k]`` (KeyError if absent, as a dict's), in
    terms of ``get``, ``put`` and ``delete``: shared by database handles
    (db.MappingSugar) and transactions, local and remote. In a
    transaction the ``del`` reads the key (a serializable one validates
    that read at commit)."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)  # type: ignore[attr-defined]

    def __delitem__(self, key: Any) -> None:
        if self.get(key) is None:  # type: ignore[attr-defined]
            raise KeyError(key)
        self.delete(key)  # type: ignore[attr-defined]


class Transaction(KeyWrites):
    """One optimistic transaction; see the module docstring."""

    def __init__(self, db: Any, isolation: str = "snapshot", sync: bool | None = None) -> None:
        self._serializable = check_isolation(isolation)
        check_sync(sync)
        self.isolation = isolation
        self._db = db
        self._limits = db._limits
        self._sync = sync
        self._view: Any = None
        self._writes: dict[bytes, tuple[int, bytes]] = {}
        self._reads: set[bytes] = set()
        self._scans: list[_Scanned] = []
        self._state = "open"
        self._deadline = time.monotonic() + db.config.transaction_max_age

    # --- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """"open", "committed" or "rolled back"."""
        return self._state

    def _check(self) -> None:
        if self._db._closed:                    # the database went: so did the snapshot
            self._state, self._view = "rolled back", None
            self._writes.clear()
            self._db._check_open()              # DatabaseClosed
        if self._state != "open":
            raise InvalidArgument(f"this transaction is already {self._state}")
        if time.monotonic() > self._deadline:
            self.rollback()
            raise TransactionExpired(f"the transaction was open longer than transaction_max_age "
                                     f"({self._db.config.transaction_max_age:g} s); nothing was written")

    def _snap(self) -> Any:
        if self._view is None:
            self._view = self._db._tx_view()
        return self._view

    # --- reads ----------------------------------------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        key = self._limits.key(key)
        mine = self._writes.get(key)
        if mine is not None:
            v = visible(*mine)
            return default if v is None else v
        if self._serializable:
            self._reads.add(key)
        v = self._snap().get(key)
        return default if v is None else v

    def get_with_expiry(self, key: Any) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None) of *key*, or None."""
        self._check()
        key = self._limits.key(key)
        mine = self._writes.get(key)
        if mine is not None:
            return entry(mine)
        if self._serializable:
            self._reads.add(key)
        return self._snap().get_entry(key)

    def get_many(self, keys: Iterable[Any]) -> list[bytes | None]:
        self._check()
        keys = self._limits.keys(keys)
        todo = [k for k in keys if k not in self._writes]
        got = dict(zip(todo, self._snap().get_many(todo))) if todo else {}
        if self._serializable:
            self._reads.update(todo)
        out: list[bytes | None] = []
        for k in keys:
            mine = self._writes.get(k)
            out.append(got.get(k) if mine is None else visible(*mine))
        return out

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs of the snapshot with this transaction's writes laid over
        (as they were when the scan started), in key order."""
        from .db import _scan_range
        self._check()
        lo, hi, n = _scan_range(self._limits, start, end, prefix, reverse, limit)
        if (lo is not None and hi is not None and lo >= hi) or n == 0:
            return iter(())
        rec = _Scanned(lo, hi, reverse)
        if self._serializable:
            self._scans.append(rec)
        # Taken now, not at the first step: writes made after this call are not in it.
        mine = sorted(((k, kind, v) for k, (kind, v) in self._writes.items()
                       if (lo is None or k >= lo) and (hi is None or k < hi)), reverse=reverse)
        return self._scan(rec, mine, self._snap().scan(lo, hi, reverse), reverse, n)

    @staticmethod
    def _scan(rec: "_Scanned", mine: list[tuple[bytes, int, bytes]], snap: Iterator[tuple[bytes, bytes]],
              reverse: bool, n: int | None) -> Iterator[tuple[bytes, bytes]]:
        base = ((k, _VALUE, v) for k, v in snap)
        # heapq.merge yields equal keys in the order of its inputs: own writes first.
        ranked = heapq.merge(mine, base, key=_first, reverse=reverse)
        count, prev = 0, None
        for k, kind, v in ranked:
            if k == prev:
                continue
            prev = k
            rec.last = k
            if kind != _VALUE and (v := visible(kind, v)) is None:
                continue
            yield k, v
            count += 1
            if n is not None and count >= n:
                return
        rec.done = True

    # --- writes ---------------------------------------------------------------------------------
    def put(self, key: Any, value: Any, *, ttl: float | None = None, expire_at: float | None = None) -> None:
        """Write *value* (expiring after *ttl* seconds or at *expire_at*, Unix seconds, if given)."""
        self._check()
        kind, key, stored = self._limits.op(key, value, ttl, expire_at)
        self._writes[key] = (kind, stored)

    def delete(self, key: Any) -> None:
        self._check()
        self._writes[self._limits.key(key)] = (_DELETE, b"")

    # --- the end --------------------------------------------------------------------------------
    def commit(self) -> None:
        """Apply every write atomically, or raise TransactionConflict and
        write nothing."""
        self._check()
        self._state = "committed"
        view, self._view = self._view, None
        try:
            if not self._writes:
                if view is not None and not view.release():
                    raise TransactionExpired("the transaction's snapshot expired on a shard before it "
                                             f"committed (open past transaction_max_age "
                                             f"{self._db.config.transaction_max_age:g} s, or the shard restarted)")
                return
            ops = [(kind, k, v) for k, (kind, v) in self._writes.items()]
            ranges = [r for s in self._scans if (r := s.range()) is not None]
            try:
                self._db._tx_commit(view, ops, sorted(self._reads), ranges, self._serializable, self._sync)
            finally:
                if view is not None:
                    view.release(wait=False)      # the commit's checks are done: nothing to learn
        except BaseException:
            self._state = "rolled back"
            raise

    def rollback(self) -> None:
        """Discard every write (a no-op once committed or rolled back)."""
        if self._state != "open":
            return
        self._state = "rolled back"
        view, self._view = self._view, None
        self._writes.clear()
        if view is not None and not self._db._closed:     # closed (or forked): nothing to release
            view.release(wait=False)

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._state == "open":
            self.commit()
        else:
            self.rollback()

    def __del__(self) -> None:
        try:
            self.rollback()
        except Exception:
            pass


def run_transaction(db: Any, fn: Callable[[Transaction], T], retries: int = 10, isolation: str = "snapshot",
                    sync: bool | None = None, base: float = 0.002, cap: float = 0.25) -> T:
    """``fn(tx)`` in a transaction, committed; run again (after a full-jitter
    backoff) when it raises TransactionConflict, at most *retries* more
    times; the last conflict is raised. Any other error is raised at once
    (a commit whose outcome is unknown is never run twice)."""
    check_run(fn, retries, isolation, sync)
    attempt = 0
    while True:
        try:
            with db.transaction(isolation=isolation, sync=sync) as tx:
                result = fn(tx)
            return result
        except TransactionConflict:
            if attempt >= retries:
                raise
            time.sleep(random.uniform(0.0, min(cap, base * 2.0 ** attempt)))
            attempt += 1


class Transactional:
    """``transaction()`` and ``run_transaction()`` for a database handle
    that implements the backend interface."""

    __slots__ = ()

    def transaction(self, isolation: str = "snapshot", sync: bool | None = None) -> Transaction:
        """A new optimistic transaction (``with db.transaction() as tx:``);
        *isolation* "snapshot" or "serializable"."""
        self._check_open()  # type: ignore[attr-defined]
        return Transaction(self, isolation, sync)

    def run_transaction(self, fn: Callable[[Transaction], T], retries: int = 10, isolation: str = "snapshot",
                        sync: bool | None = None) -> T:
        """``fn(tx)`` committed, run again on TransactionConflict (see the
        module function ``run_transaction``); returns what *fn* returned."""
        return run_transaction(self, fn, retries, isolation, sync)
