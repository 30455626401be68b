"""What a command reads and writes: the database itself, or one transaction.

Which process runs what: a front-end process, in whichever thread runs the
command (event loop or a worker thread). Command handlers are written once
against ``Store`` and run either way:

- ``DirectStore`` calls the database; each call stands alone, and
  ``atomic(fn)`` runs *fn* in a transaction of its own (retried on
  conflict), which is how read-modify-write commands (INCR, APPEND, SET NX,
  ...) stay atomic under concurrent clients in any front end.
- ``TxStore`` is one open transaction (EXEC runs every queued command in
  one): every call goes through it and ``atomic(fn)`` just runs *fn*.

Writes are acknowledged by the shard before a reply is sent (``sync=False``,
never the caller-side write pipeline): a client told OK by one front end
must see its write from any other. Durability follows the database's sync
policy either way.

Expiry times are unix milliseconds here, as in Redis; the engine's TTL API
(``put(..., expire_at=)``, ``get_with_expiry``, Unix seconds) stores them.
A database without that API has no expiring keys: commands that would set
an expiry answer an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .resp import ReplyError

__all__ = ["DirectStore", "Store", "TxStore", "has_expiry"]

T = TypeVar("T")
RMW_RETRIES = 50
_NO_EXPIRY = "ERR key expiry is not supported by this database (its engine has no TTL support)"


def has_expiry(db: Any) -> bool:
    """Whether the database supports key expiry (the TTL API)."""
    return callable(getattr(db, "get_with_expiry", None))


class Store(ABC):
    """The operations command handlers use; see the module docstring."""

    expiry: bool = False
    in_transaction: bool = False

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        ...

    @abstractmethod
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        ...

    @abstractmethod
    def get_ex(self, key: bytes) -> tuple[bytes, int | None] | None:
        """(value, expiry in unix milliseconds or None), or None when absent."""
        ...

    @abstractmethod
    def put(self, key: bytes, value: bytes, expire_ms: int | None = None) -> None:
        """Store *value* expiring at *expire_ms* (unix milliseconds; None:
        never, clearing an old expiry); an expiry already past deletes the key."""
        ...

    @abstractmethod
    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> None:
        ...

    @abstractmethod
    def delete(self, key: bytes) -> None:
        ...

    @abstractmethod
    def delete_many(self, keys: list[bytes]) -> None:
        ...

    @abstractmethod
    def scan(self, start: bytes | None = None, prefix: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs from *start* on (inclusive) in key order, or
        backwards from the end with *reverse*."""
        ...

    @abstractmethod
    def atomic(self, fn: Callable[[Store], T]) -> T:
        ...

    def _check_expiry(self, expire_ms: int | None) -> bool:
        """True when the write must be a delete (expiry in the past)."""
        if expire_ms is None:
            return False
        if not self.expiry:
            raise ReplyError(_NO_EXPIRY)
        return expire_ms <= time.time() * 1000


def _seconds(ms: int) -> float:
    """Unix seconds for the engine that read back as exactly *ms*: a
    quarter millisecond above keeps float error from truncating (or
    rounding) it to the millisecond before."""
    return (ms + 0.25) / 1000


def _entry(e: tuple[bytes, float | None] | None) -> tuple[bytes, int | None] | None:
    if e is None:
        return None
    return e[0], None if e[1] is None else round(e[1] * 1000)


class DirectStore(Store):
    def __init__(self, db: Any, expiry: bool | None = None) -> None:
        self.db = db
        self.expiry = has_expiry(db) if expiry is None else expiry

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self.db.get_many(keys)

    def get_ex(self, key: bytes) -> tuple[bytes, int | None] | None:
        if self.expiry:
            return _entry(self.db.get_with_expiry(key))
        v = self.db.get(key)
        return None if v is None else (v, None)

    def put(self, key: bytes, value: bytes, expire_ms: int | None = None) -> None:
        if self._check_expiry(expire_ms):
            self.db.delete(key, sync=False)
        elif expire_ms is None:
            self.db.put(key, value, sync=False)
        else:
            self.db.put(key, value, sync=False, expire_at=_seconds(expire_ms))

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.db.put_many(pairs, sync=False)

    def put_each_shard(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Write *pairs* as one batch per shard (not atomic across shards:
        a pipelined run of SETs, which Redis does not make atomic either,
        needs no two-phase commit)."""
        ring = getattr(self.db, "ring", None)
        if ring is None:
            self.db.put_many(pairs, sync=False)
            return
        for pos in ring.split([k for k, _ in pairs]).values():
            self.db.put_many([pairs[i] for i in pos], sync=False)

    def delete(self, key: bytes) -> None:
        self.db.delete(key, sync=False)

    def delete_many(self, keys: list[bytes]) -> None:
        if len(keys) == 1:
            self.db.delete(keys[0], sync=False)
        elif keys:
            with self.db.batch(sync=False) as b:
                for k in keys:
                    b.delete(k)

    def scan(self, start: bytes | None = None, prefix: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        return self.db.scan(start=start, prefix=prefix or None, limit=limit, reverse=reverse)

    def atomic(self, fn: Callable[[Store], T]) -> T:
        expiry = self.expiry
        return self.db.run_transaction(lambda tx: fn(TxStore(tx, expiry)), retries=RMW_RETRIES)


class TxStore(Store):
    in_transaction = True

    def __init__(self, tx: Any, expiry: bool) -> None:
        self.tx = tx
        self.expiry = expiry

    def get(self, key: bytes) -> bytes | None:
        return self.tx.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self.tx.get_many(keys)

    def get_ex(self, key: bytes) -> tuple[bytes, int | None] | None:
        if self.expiry:
            return _entry(self.tx.get_with_expiry(key))
        v = self.tx.get(key)
        return None if v is None else (v, None)

    def put(self, key: bytes, value: bytes, expire_ms: int | None = None) -> None:
        if self._check_expiry(expire_ms):
            self.tx.delete(key)
        elif expire_ms is None:
            self.tx.put(key, value)
        else:
            self.tx.put(key, value, expire_at=_seconds(expire_ms))

    def put_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for k, v in pairs:
            self.tx.put(k, v)

    def delete(self, key: bytes) -> None:
        self.tx.delete(key)

    def delete_many(self, keys: list[bytes]) -> None:
        for k in keys:
            self.tx.delete(k)

    def scan(self, start: bytes | None = None, prefix: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        return self.tx.scan(start=start, prefix=prefix or None, limit=limit, reverse=reverse)

    def atomic(self, fn: Callable[[Store], T]) -> T:
        return fn(self)
