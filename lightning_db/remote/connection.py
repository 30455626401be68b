"""One connection of the native client (the caller's process, any thread).

A ``Connection`` is one mailbox client (a DEALER, its own I/O thread) to
one server plus a session token: the server-side objects it creates
(snapshots, transactions, scan cursors) belong to that session and are
dropped by ``bye`` when it closes. ``ServerState`` is what the pool knows of
a server. Both are the pool's (``pool.py``); they live here to keep each
file to one job.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import (
    InvalidArgument,
    LightningError,
    MailboxClosed,
    MailboxError,
    PeerLost,
    Timeout,
)
from ..mailbox import MailboxClient
from .protocol import NATIVE_VERSION

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ["BYE_TIMEOUT", "Connection", "ServerState", "is_link_error"]

BYE_TIMEOUT = 0.5           # seconds close() waits for a server to drop a session's objects
_DEFAULT: Any = object()


def is_link_error(exc: BaseException) -> bool:
    """Whether *exc* says the connection itself failed (raised by this
    process's mailbox client), as opposed to an error the server answered
    with (rebuilt errors carry ``remote_name``)."""
    return isinstance(exc, (PeerLost, Timeout, MailboxClosed, MailboxError)) and not hasattr(exc, "remote_name")


class ServerState:
    """What the pool knows of one server (guarded by the pool's lock)."""

    __slots__ = ("index", "url", "weight", "healthy", "failures", "last_error", "acquires", "last_acquired",
                 "current", "info", "last_check")

    def __init__(self, index: int, url: str, weight: float) -> None:
        self.index, self.url, self.weight = index, url, weight
        self.healthy = True
        self.failures = 0
        self.last_error: str | None = None
        self.acquires = 0
        self.last_acquired = 0.0
        self.current = 0.0          # smooth weighted round robin
        self.info: dict[str, Any] = {}
        self.last_check: float | None = None


class Connection:
    """One mailbox client to one server, with its session token. Lent to one
    user at a time by the pool for plain calls (``call`` is the round
    trip); *pinned* by every live server-side object it created, which
    keeps using it (the client is thread-safe) and keeps it open."""

    _ids = itertools.count(1)

    def __init__(self, pool: Pool, server: ServerState) -> None:
        self.id = next(self._ids)
        self.pool = pool
        self.server = server
        self.url = server.url
        self.session = secrets.token_bytes(16)
        self.client = MailboxClient(server.url, name=f"native-{self.id}", fail_fast=True)
        self.created = self.last_used = time.monotonic()
        self.broken = False
        self.pins = 0               # live server-side objects made on it (the pool's lock)
        self.retired: str | None = None   # why it is no longer lent (closed once unpinned)
        self.info: dict[str, Any] = {}

    @property
    def dropped(self) -> bool:
        """The TCP connection dropped at least once (the server may have
        restarted and forgotten this session)."""
        return self.client.disconnects > 0

    def hello(self, timeout: float) -> dict[str, Any]:
        info = self.client.request("hello", [self.session], timeout).result()
        if not isinstance(info, dict) or info.get("version") != NATIVE_VERSION:
            version = info.get("version") if isinstance(info, dict) else None
            raise InvalidArgument(f"{self.url} speaks native protocol version {version!r}, "
                                  f"this client speaks {NATIVE_VERSION}")
        self.info = info
        return info

    def request(self, op: str, payload: Any = None, timeout: Any = _DEFAULT) -> Future:
        """Send one request; the future resolves with the answer."""
        self.last_used = time.monotonic()
        return self.client.request(op, payload, self.pool.timeout if timeout is _DEFAULT else timeout)

    def call(self, op: str, payload: Any = None, timeout: Any = _DEFAULT) -> Any:
        """One round trip: the answer, or the error (a link error also
        marks this connection broken and is counted against its server)."""
        try:
            return self.request(op, payload, timeout).result()
        except LightningError as exc:
            self.check_error(exc)
            raise

    def result(self, fut: Future) -> Any:
        """The answer of a request sent with ``request`` (errors as ``call``)."""
        try:
            return fut.result()
        except LightningError as exc:
            self.check_error(exc)
            raise

    def check_error(self, exc: BaseException) -> None:
        if is_link_error(exc) and not self.broken:
            self.broken = True
            self.pool._on_failure(self.server, exc)

    def tell(self, op: str, payload: Any = None) -> None:
        """Fire and forget (a release from a finaliser); never raises."""
        with contextlib.suppress(LightningError):
            self.client.tell(op, payload)

    def close(self) -> None:
        """Ask the server to drop the session's objects (when some are still
        live and the link is up), then close the client."""
        if self.pins > 0 and not self.broken and not self.dropped:
            with contextlib.suppress(LightningError):
                self.client.request("bye", [self.session], BYE_TIMEOUT).result()
        self.client.close()

    def __repr__(self) -> str:
        return f"<Connection {self.id} to {self.url}{' broken' if self.broken else ''}>"
