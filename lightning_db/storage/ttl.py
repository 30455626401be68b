"""Expiring values: the record kind ``Kind.VALUE_TTL``.

Pure functions, any process, any thread. A value written with a time to
live is stored as a ``VALUE_TTL`` record whose value is the expiry time
(milliseconds since the Unix epoch, u64 big-endian) followed by the user's
value. Every read path turns a record into what a reader sees with
``visible``: a tombstone or an expired value is absent, an expiring value
that has not expired is its user value. An expired value hides older
versions of its key exactly like a tombstone, so flushes and compactions
turn it into one (``expired``) and the tombstone rules reclaim it.
Expiry is wall-clock time (``time.time``), as in Redis.
"""

from __future__ import annotations

import time
from typing import Any

from .format import Kind

__all__ = ["EXPIRY_BYTES", "VALUE_TTL", "encode", "expires_at", "expired", "visible", "now_ms"]

VALUE_TTL = int(Kind.VALUE_TTL)
_VALUE = int(Kind.VALUE)
EXPIRY_BYTES = 8
MAX_EXPIRY_MS = (1 << 63) - 1


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(value: bytes, expire_at: float) -> bytes:
    """The stored form of *value* expiring at *expire_at* (Unix seconds)."""
    ms = int(expire_at * 1000)
    return min(max(ms, 0), MAX_EXPIRY_MS).to_bytes(EXPIRY_BYTES, "big") + value


def expires_at(stored: Any) -> float:
    """The expiry (Unix seconds) of a stored VALUE_TTL value."""
    return int.from_bytes(stored[:EXPIRY_BYTES], "big") / 1000.0


def expired(stored: Any, now: int | None = None) -> bool:
    return int.from_bytes(stored[:EXPIRY_BYTES], "big") <= (now_ms() if now is None else now)


def visible(kind: int, stored: Any) -> Any:
    """What a reader sees of a record: its value, or None (tombstone, expired)."""
    if kind == _VALUE:
        return stored
    if kind == VALUE_TTL and int.from_bytes(stored[:EXPIRY_BYTES], "big") > now_ms():
        return stored[EXPIRY_BYTES:]
    return None


def entry(r: tuple[int, Any] | None) -> tuple[Any, float | None] | None:
    """(value, expiry in Unix seconds or None) of a lookup result, or None."""
    if r is None:
        return None
    kind, stored = r
    if kind == _VALUE:
        return stored, None
    if kind == VALUE_TTL and not expired(stored):
        return stored[EXPIRY_BYTES:], expires_at(stored)
    return None
