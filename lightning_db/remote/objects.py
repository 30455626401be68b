"""Server-side objects of the native protocol (server process, any thread).

Snapshots, transactions and scan cursors live on the server between the
requests that use them, keyed by a random 62-bit id and owned by a client
session (the token a connection sends with every request that creates or
keeps one). They are released when the client says ``bye`` (its connection
closes), when it releases them one by one, or when the session has been
silent for ``idle_timeout`` seconds (the client process died, or its
network went away): the pool's health checks ping every connection, so a
live client's sessions stay heard. Ids are random rather than counted so
that one client cannot guess another's objects.

Every object has a lock: requests on one object run one at a time (a
client never overlaps them, this is defence against one that does).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidArgument, LightningError, TransactionExpired

__all__ = ["Cursor", "Entry", "Registry", "release"]


class Cursor:
    """An unfinished scan: the iterator the database returned, read a page
    at a time, with one row of lookahead so that the page that empties it
    says so (no extra round trip for an empty last page)."""

    __slots__ = ("_it", "_next")
    _END: Any = object()

    def __init__(self, it: Iterator[tuple[bytes, bytes]]) -> None:
        self._it = it
        self._next: Any = None

    def page(self, rows: int, max_bytes: int) -> tuple[list[list[bytes]], bool]:
        """Up to *rows* rows (fewer once *max_bytes* is reached, at least
        one), and whether the iterator is exhausted."""
        out: list[list[bytes]] = []
        size = 0
        it = self._it
        nxt = self._next
        self._next = None
        while len(out) < rows and size < max_bytes:
            if nxt is None:
                nxt = next(it, self._END)
            if nxt is self._END:
                return out, True
            k, v = nxt
            nxt = None
            out.append([bytes(k), bytes(v)])
            size += len(k) + len(v)
        self._next = next(it, self._END)
        if self._next is self._END:
            return out, True
        return out, False

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class Entry:
    __slots__ = ("id", "session", "kind", "obj", "lock")

    def __init__(self, oid: int, session: bytes, kind: str, obj: Any, lock: threading.Lock | None = None) -> None:
        self.id, self.session, self.kind, self.obj = oid, session, kind, obj
        self.lock = lock or threading.Lock()


def release(entry: Entry) -> None:
    """Release what *entry* holds (snapshot closed, transaction rolled back,
    cursor closed); errors are swallowed: the object is gone either way."""
    obj = entry.obj
    try:
        with entry.lock:
            if entry.kind == "snapshot":
                obj.close()
            elif entry.kind == "tx":
                obj.rollback()
            else:
                obj.close()
    except (LightningError, OSError, ValueError, RuntimeError):
        pass


class _Session:
    __slots__ = ("last_seen", "objects")

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.objects: set[int] = set()


class Registry:
    """Objects by id and sessions by token, under one lock."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}
        self._objects: dict[int, Entry] = {}
        self.created = self.released = self.expired = 0

    def touch(self, session: Any) -> None:
        if type(session) is not bytes:
            return
        with self._lock:
            s = self._sessions.get(session)
            if s is not None:
                s.last_seen = time.monotonic()

    def sessions(self) -> set[bytes]:
        """The sessions that hold objects now."""
        with self._lock:
            return set(self._sessions)

    def add(self, session: Any, kind: str, obj: Any, lock: threading.Lock | None = None) -> int:
        """Register *obj* for *session* (*lock*: shared with another object); its new id."""
        if type(session) is not bytes or not 0 < len(session) <= 64:
            raise InvalidArgument("a session token is 1 to 64 bytes")
        now = time.monotonic()
        with self._lock:
            oid = secrets.randbits(62) or 1
            while oid in self._objects:
                oid = secrets.randbits(62) or 1
            self._objects[oid] = Entry(oid, session, kind, obj, lock)
            s = self._sessions.get(session)
            if s is None:
                s = self._sessions[session] = _Session(now)
            s.last_seen = now
            s.objects.add(oid)
            self.created += 1
        return oid

    def get(self, oid: Any, kind: str) -> Entry:
        """The live object *oid* of *kind*, its session touched."""
        with self._lock:
            e = self._objects.get(oid) if type(oid) is int else None
            if e is not None and e.kind == kind:
                s = self._sessions.get(e.session)
                if s is not None:
                    s.last_seen = time.monotonic()
                return e
        if kind == "tx":
            raise TransactionExpired("the transaction is no longer open on the server (it expired, was "
                                     "released, or the server restarted); nothing was written")
        if kind == "snapshot":
            raise InvalidArgument("snapshot was released (or expired on the server)")
        raise InvalidArgument("the scan was closed on the server (released or expired)")

    def pop(self, oid: Any) -> Entry | None:
        with self._lock:
            e = self._objects.pop(oid, None) if type(oid) is int else None
            if e is not None:
                s = self._sessions.get(e.session)
                if s is not None:
                    s.objects.discard(oid)
                self.released += 1
            return e

    def end_session(self, session: Any) -> list[Entry]:
        """Forget *session*; its objects, for the caller to release."""
        if type(session) is not bytes:
            return []
        with self._lock:
            s = self._sessions.pop(session, None)
            return self._take(s.objects if s is not None else ())

    def expire(self) -> list[Entry]:
        """Sessions silent for longer than idle_timeout: forgotten; their objects returned."""
        limit = time.monotonic() - self.idle_timeout
        with self._lock:
            gone = [t for t, s in self._sessions.items() if s.last_seen < limit]
            out: list[Entry] = []
            for t in gone:
                out.extend(self._take(self._sessions.pop(t).objects))
            self.expired += len(out)
            return out

    def drain(self) -> list[Entry]:
        """Every object (the server stops)."""
        with self._lock:
            self._sessions.clear()
            return self._take(list(self._objects))

    def _take(self, oids: Any) -> list[Entry]:
        out = []
        for oid in list(oids):
            e = self._objects.pop(oid, None)
            if e is not None:
                out.append(e)
                self.released += 1
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            kinds: dict[str, int] = {"snapshot": 0, "tx": 0, "cursor": 0}
            for e in self._objects.values():
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
            return {"sessions": len(self._sessions), "objects": kinds, "created": self.created,
                    "released": self.released, "expired": self.expired}
