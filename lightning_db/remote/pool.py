"""The connection pool of the native client (the caller's process, any thread).

A ``Connection`` (``connection.py``) is one mailbox client to one
``NativeServer`` plus a session token. Plain calls borrow one for a round
trip (``acquire``/``release``, or ``with pool.connection()``): lent to one
caller at a time. A snapshot, a transaction or an unfinished scan lives on
the server, so it *pins* the connection it was made on and keeps using it
(the mailbox client is thread-safe) without holding it lent: a caller with
a snapshot open can still make plain calls with ``max_size=1``, and
forgotten iterators cannot drain the pool. A pinned connection is never
closed under its objects; one that should go (broken, too old, idle) is
*retired*: no longer lent, closed when its last object is released.

Which server an acquire uses is the *strategy*'s choice among the healthy
servers (all of them when none is healthy, so a server that came back is
found again):

- ``round_robin``: each server in turn;
- ``least_recently_used``: the server lent least recently (and, on it, the
  idle connection used least recently);
- ``random``: a uniformly random server;
- ``weighted``: smooth weighted round robin (nginx's): with weights 3 and 1,
  the order is A A B A, A A B A, ... (exact proportions, no clumping).

An idle connection to the chosen server is reused (the most recently used
one, so surplus connections age out), else a new one is made while the pool
is under ``max_size``, else an idle connection to another server is taken,
else the acquire waits up to ``acquire_timeout`` and raises ``Timeout``
(transient: retrying once connections are released helps).

A maintenance thread keeps the pool in shape: it closes (or retires)
connections idle past ``idle_timeout`` and connections past
``max_lifetime`` (a lent one when it is released), refills to
``min_size``, and every ``health_check_interval`` pings every connection
(which also keeps their sessions alive on the servers; a ping is not a
use) and probes servers that have none. A failed ping, a failed connect or
a dropped connection marks a server unhealthy; a successful one marks it
healthy again. A connection whose call failed at the link (``PeerLost``, a
client-side ``Timeout``) or that ever lost its TCP connection is never lent
again and is replaced, since its server-side session may be gone.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..errors import (
    InvalidArgument,
    LightningError,
    MailboxClosed,
    Timeout,
)
from ..mailbox import check_address
from .connection import Connection, ServerState, is_link_error

__all__ = ["STRATEGIES", "Connection", "Pool", "is_link_error"]

STRATEGIES = ("round_robin", "least_recently_used", "random", "weighted")


def _seconds(value: Any, what: str, allow_none: bool = False) -> float:
    if value is None and allow_none:
        return math.inf
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise InvalidArgument(f"{what} must be a finite number of seconds > 0"
                              f"{' or None (no limit)' if allow_none else ''}, got {value!r:.40}")
    return float(value)


# Every pool not closed yet: closed at interpreter exit, so that the
# servers release their snapshots, transactions and scans at once (a
# process killed with -9 leaves them to the server's idle timeout).
_OPEN: "weakref.WeakSet[Pool]" = weakref.WeakSet()


def _close_open_pools() -> None:
    for pool in list(_OPEN):
        with contextlib.suppress(Exception):
            pool.close()


atexit.register(_close_open_pools)
# A forked child's copies are its parent's sessions: never closed from the child.
os.register_at_fork(after_in_child=_OPEN.clear)


class Pool:
    """Connections to one or more native servers; see the module docstring.

    ``timeout`` bounds each request (seconds), ``connect_timeout`` the
    handshake of a new connection and each health-check ping. ``start=False``
    leaves the warm-up to an explicit ``start()``.
    """

    def __init__(self, urls: str | Sequence[str], min_size: int = 1, max_size: int = 8,
                 strategy: str = "round_robin", weights: Sequence[float] | None = None,
                 idle_timeout: float | None = 60.0, max_lifetime: float | None = 3600.0,
                 health_check_interval: float | None = 10.0, acquire_timeout: float = 5.0, *,
                 connect_timeout: float = 2.0, timeout: float = 30.0, start: bool = True) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, Sequence) or isinstance(urls, (bytes, bytearray)) or not urls:
            raise InvalidArgument(f"give a server url (tcp://HOST:PORT, a str) or a non-empty list of them, "
                                  f"got {urls!r:.60}")
        urls = [check_address(u) for u in urls]
        for name, v in (("min_size", min_size), ("max_size", max_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidArgument(f"{name} must be an integer >= 0, got {v!r:.40}")
        if max_size < 1 or min_size > max_size:
            raise InvalidArgument(f"need 0 <= min_size <= max_size and max_size >= 1, "
                                  f"got min_size={min_size}, max_size={max_size}")
        if strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {STRATEGIES}, got {strategy!r:.40}")
        if weights is None:
            weights = [1.0] * len(urls)
        elif strategy != "weighted":
            raise InvalidArgument("weights are for strategy='weighted'")
        if not isinstance(weights, Sequence) or isinstance(weights, (str, bytes, bytearray)) or \
                len(weights) != len(urls) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf for w in weights):
            raise InvalidArgument(f"weights must be {len(urls)} positive numbers (one per url), got {weights!r:.80}")
        self.min_size, self.max_size, self.strategy = min_size, max_size, strategy
        self.idle_timeout = _seconds(idle_timeout, "idle_timeout", True)
        self.max_lifetime = _seconds(max_lifetime, "max_lifetime", True)
        self.health_check_interval = _seconds(health_check_interval, "health_check_interval", True)
        self.acquire_timeout = _seconds(acquire_timeout, "acquire_timeout")
        self.connect_timeout = _seconds(connect_timeout, "connect_timeout")
        self.timeout = _seconds(timeout, "timeout")
        self._servers = [ServerState(i, u, float(w)) for i, (u, w) in enumerate(zip(urls, weights, strict=True))]
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[Connection] = []
        self._in_use: set[Connection] = set()
        self._retired: set[Connection] = set()
        self._creating = 0
        self._rr = 0
        self._rng = random.Random()
        self._closed = False
        self._started = False
        _OPEN.add(self)
        self._kick = threading.Event()
        # Releases from finalisers (__del__ may run inside any code of this
        # thread, even with the pool's or a client's lock held): queued here
        # without a lock and carried out by the next acquire or the
        # maintenance thread.
        self._deferred: collections.deque[tuple[Connection, int]] = collections.deque()
        self._thread: threading.Thread | None = None
        self.created = self.closed = self.closed_idle = self.closed_lifetime = self.closed_broken = 0
        self.acquires = self.acquire_waits = self.acquire_timeouts = self.connect_failures = 0
        self.health_checks = 0
        if start:
            self.start()

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Warm up: open ``min_size`` connections (spread by the strategy),
        then start the maintenance thread. Raises the last connect error
        when not one connection could be made (and min_size > 0)."""
        with self._lock:
            self._check_open()
            if self._started:
                return
            self._started = True
        made, error = 0, None
        for _ in range(self.min_size):
            try:
                conn = self._connect_any(time.monotonic() + self.connect_timeout * len(self._servers))
            except LightningError as exc:
                error = exc
                break
            made += 1
            with self._cond:
                self._idle.append(conn)
        if self.min_size and not made and error is not None:
            self.close()
            raise error
        self._thread = threading.Thread(target=self._maintain, name="ldb-native-pool", daemon=True)
        self._thread.start()

    @property
    def is_closed(self) -> bool:
        """Whether ``close`` was called (``closed`` counts closed connections)."""
        return self._closed

    def close(self) -> None:
        """Stop the maintenance thread and close every connection (calls on
        lent ones fail with MailboxClosed). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            _OPEN.discard(self)
            conns = self._idle + list(self._in_use) + list(self._retired)
            self._idle, self._in_use, self._retired = [], set(), set()
            self._cond.notify_all()
        self._kick.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._deferred.clear()          # their connections are closed below
        for c in conns:
            self._close(c, None)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxClosed("the connection pool is closed")

    # --- lending --------------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> Connection:
        """A connection lent to the caller until ``release``. Waits up to
        *timeout* (default ``acquire_timeout``) seconds for one; raises
        ``Timeout`` then, or the connect error when no server could be reached."""
        wait = self.acquire_timeout if timeout is None else _seconds(timeout, "timeout")
        deadline = time.monotonic() + wait
        if self._deferred:
            self._run_deferred()
        tried: set[int] = set()
        waited = False
        while True:
            stale: list[tuple[Connection, str]] = []
            with self._cond:
                self._check_open()
                conn, target = self._take(tried, stale)
                if conn is None and target is None and not stale:
                    remaining = deadline - time.monotonic()
                    if not waited:
                        waited = True
                        self.acquire_waits += 1
                    if remaining <= 0:
                        self.acquire_timeouts += 1
                        raise Timeout(f"no connection free within {wait:g} s (max_size={self.max_size}, "
                                      f"{len(self._in_use)} in use)")
                    self._cond.wait(remaining)
                    continue
                if conn is not None:
                    self._lend(conn)
                elif target is not None:
                    self._creating += 1
            for c, why in stale:
                self._close(c, why)
            if conn is not None:
                return conn
            if target is None:
                continue
            try:
                conn = self._connect(target, min(self.connect_timeout, max(0.001, deadline - time.monotonic())))
            except LightningError:
                with self._cond:
                    self._creating -= 1
                    self._cond.notify()
                tried.add(target.index)
                if len(tried) >= len(self._servers) or time.monotonic() >= deadline:
                    raise
                continue
            with self._cond:
                self._creating -= 1
                closed = self._closed
                if not closed:
                    self._lend(conn)
            if closed:
                self._close(conn, None)
                self._check_open()
            return conn

    def release(self, conn: Connection) -> None:
        """Give *conn* back; a broken, dropped or too old one is closed (or
        retired while objects pin it)."""
        now = time.monotonic()
        why = None
        with self._cond:
            if conn not in self._in_use:
                return
            self._in_use.discard(conn)
            conn.last_used = now
            if conn.broken or conn.dropped:
                why = "broken"
            elif now - conn.created > self.max_lifetime:
                why = "lifetime"
            if why is None:
                self._idle.append(conn)
            elif conn.pins:
                self._retire(conn, why)
                why = None
            self._cond.notify()
        if why is not None:
            self._close(conn, why)
            self._kick.set()            # the maintenance thread refills to min_size

    def pin(self, conn: Connection) -> None:
        """A server-side object was made on *conn*: keep it open until ``unpin``."""
        with self._lock:
            conn.pins += 1

    def unpin(self, conn: Connection) -> None:
        """A server-side object of *conn* was released; a retired connection
        without objects left is closed."""
        with self._cond:
            conn.pins -= 1
            close = conn.pins <= 0 and conn in self._retired
            if close:
                self._retired.discard(conn)
                self._cond.notify()
        if close:
            self._close(conn, conn.retired)
            self._kick.set()

    def _retire(self, conn: Connection, why: str) -> None:
        """(Under the lock.) Lent no more; closed once unpinned."""
        conn.retired = why
        self._retired.add(conn)

    def defer(self, conn: Connection, oid: int) -> None:
        """From a finaliser: release the server-side object *oid* of *conn*
        and unpin *conn*, soon and from a safe place. Takes no lock."""
        self._deferred.append((conn, oid))
        self._kick.set()

    def _run_deferred(self) -> None:
        while True:
            try:
                conn, oid = self._deferred.popleft()
            except IndexError:
                return
            conn.tell("release", [oid])
            self.unpin(conn)

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """``with pool.connection() as conn:`` acquire and release."""
        conn = self.acquire(timeout)
        try:
            yield conn
        finally:
            self.release(conn)

    # --- selection (under the lock) --------------------------------------------------------------
    def _order(self, exclude: set[int]) -> list[ServerState]:
        """Servers in the strategy's order of preference, healthy ones first."""
        servers = [s for s in self._servers if s.index not in exclude]
        if not servers:
            return []
        healthy = [s for s in servers if s.healthy] or servers
        rest = [s for s in servers if s not in healthy]
        n = len(self._servers)
        if self.strategy == "round_robin":
            healthy.sort(key=lambda s: (s.index - self._rr) % n)
        elif self.strategy == "least_recently_used":
            healthy.sort(key=lambda s: (s.last_acquired, s.index))
        elif self.strategy == "random":
            self._rng.shuffle(healthy)
        else:
            total = sum(s.weight for s in healthy)
            for s in healthy:
                s.current += s.weight
            best = max(healthy, key=lambda s: s.current)     # the first of equals
            best.current -= total
            healthy.sort(key=lambda s: (s is not best, -s.current, s.index))
        return healthy + rest

    def _chose(self, server: ServerState, lend: bool = True) -> None:
        if lend:
            server.acquires += 1
        server.last_acquired = time.monotonic()
        self._rr = (server.index + 1) % len(self._servers)

    def _expired(self, conn: Connection, now: float) -> str | None:
        if conn.broken or conn.dropped:
            return "broken"
        if now - conn.created > self.max_lifetime:
            return "lifetime"
        if now - conn.last_used > self.idle_timeout:
            return "idle"
        return None

    def _sweep(self, stale: list[tuple[Connection, str]]) -> None:
        now = time.monotonic()
        keep = []
        for c in self._idle:
            why = self._expired(c, now)
            if why is None:
                keep.append(c)
            elif c.pins:
                self._retire(c, why)
            else:
                stale.append((c, why))
        self._idle = keep

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use) + len(self._retired) + self._creating

    def _pop_idle(self, server: ServerState) -> Connection | None:
        mine = [i for i, c in enumerate(self._idle) if c.server is server]
        if not mine:
            return None
        if self.strategy == "least_recently_used":
            i = min(mine, key=lambda i: self._idle[i].last_used)
        else:
            i = mine[-1]            # the most recently released
        return self._idle.pop(i)

    def _take(self, tried: set[int],
              stale: list[tuple[Connection, str]]) -> tuple[Connection | None, ServerState | None]:
        """An idle connection to lend, or a server to connect to, or neither (wait)."""
        self._sweep(stale)
        if stale:
            self._cond.notify_all()     # room made: other waiters may connect too
        order = self._order(tried)
        if not order:
            return None, None
        first = order[0]
        conn = self._pop_idle(first)
        if conn is not None:
            self._chose(first)
            return conn, None
        if self._size() < self.max_size:
            self._chose(first)
            return None, first
        for s in order[1:] + [s for s in self._servers if s.index in tried]:
            conn = self._pop_idle(s)
            if conn is not None:
                self._chose(s)
                return conn, None
        return None, None

    def _lend(self, conn: Connection) -> None:
        self._in_use.add(conn)
        self.acquires += 1
        conn.last_used = time.monotonic()

    # --- connections ----------------------------------------------------------------------------
    def _connect(self, server: ServerState, timeout: float) -> Connection:
        """A new connection that passed its handshake (caller not holding the lock)."""
        conn = None
        try:
            conn = Connection(self, server)
            info = conn.hello(timeout)
        except LightningError as exc:
            if conn is not None:
                conn.client.close()
            with self._lock:
                self.connect_failures += 1
            self._on_failure(server, exc)
            raise
        with self._lock:
            self.created += 1
            server.healthy = True
            server.info = info
        return conn

    def _connect_any(self, deadline: float) -> Connection:
        """A new connection to the first server (in the strategy's order) that answers."""
        tried: set[int] = set()
        while True:
            with self._lock:
                order = self._order(tried)
                if order:
                    self._chose(order[0], lend=False)
            if not order:
                raise Timeout("no server answered")
            try:
                return self._connect(order[0], min(self.connect_timeout, max(0.001, deadline - time.monotonic())))
            except LightningError:
                tried.add(order[0].index)
                if len(tried) >= len(self._servers) or time.monotonic() >= deadline:
                    raise

    def _close(self, conn: Connection, why: str | None) -> None:
        with self._lock:
            self.closed += 1
            if why == "idle":
                self.closed_idle += 1
            elif why == "lifetime":
                self.closed_lifetime += 1
            elif why == "broken":
                self.closed_broken += 1
        conn.close()

    def _on_failure(self, server: ServerState, exc: BaseException) -> None:
        with self._lock:
            server.failures += 1
            server.last_error = f"{type(exc).__name__}: {exc}"
            # A dropped link, a failed connect or ping, or a call the server
            # did not answer in time: what a health check would also see.
            # The next successful connect or health check clears it.
            server.healthy = False

    def server_info(self) -> dict[str, Any]:
        """What the first server that answered a handshake said of itself
        (limits, version); makes a connection when none was made yet."""
        for s in self._servers:
            if s.info:
                return s.info
        with self.connection():
            pass
        return next(s.info for s in self._servers if s.info)

    # --- maintenance thread ----------------------------------------------------------------------
    def _tick(self) -> float:
        shortest = min(self.idle_timeout, self.max_lifetime, self.health_check_interval)
        return min(1.0, max(0.02, shortest / 4)) if shortest < math.inf else 1.0

    def _maintain(self) -> None:
        tick = self._tick()
        next_check = time.monotonic() + self.health_check_interval
        while not self._closed:
            self._kick.wait(tick)
            self._kick.clear()
            if self._closed:
                return
            try:
                self._run_deferred()
                if time.monotonic() >= next_check:
                    self.health_check()
                    next_check = time.monotonic() + self.health_check_interval
                self._reap()
                self._refill()
            except LightningError:          # closed meanwhile, or a server went away: next tick
                pass

    def _reap(self) -> None:
        stale: list[tuple[Connection, str]] = []
        with self._cond:
            self._sweep(stale)
            if stale:
                self._cond.notify_all()
        for c, why in stale:
            self._close(c, why)

    def _refill(self) -> None:
        while True:
            with self._cond:
                if self._closed or self._size() >= self.min_size:
                    return
                if not any(s.healthy for s in self._servers):
                    return                  # the health checks find them again
                self._creating += 1
            try:
                conn = self._connect_any(time.monotonic() + self.connect_timeout)
            except LightningError:
                with self._cond:
                    self._creating -= 1
                return
            with self._cond:
                self._creating -= 1
                if not self._closed:
                    self._idle.append(conn)
                    self._cond.notify()
                    continue
            self._close(conn, None)
            return

    def health_check(self) -> dict[str, bool]:
        """Ping every connection (idle and lent: the ping keeps its session
        alive on the server) and probe servers without one; mark each server
        healthy or not. Returns {url: healthy}. Also run by the maintenance
        thread every ``health_check_interval``."""
        with self._lock:
            self._check_open()
            conns = self._idle + list(self._in_use) + list(self._retired)
            self.health_checks += 1
        pings: list[tuple[Connection, Future | LightningError]] = []
        for c in conns:
            if c.broken:
                continue
            try:
                # Not c.request: a ping is not a use (idle_timeout counts from the last use).
                pings.append((c, c.client.request("ping", [c.session], self.connect_timeout)))
            except LightningError as exc:
                pings.append((c, exc))
        ok: dict[int, bool] = {}
        for c, f in pings:
            try:
                if isinstance(f, LightningError):
                    raise f
                f.result()
                ok[c.server.index] = True
            except LightningError as exc:
                c.broken = True
                self._on_failure(c.server, exc)
                ok.setdefault(c.server.index, False)
        for s in self._servers:
            if s.index not in ok:
                try:
                    conn = self._connect(s, self.connect_timeout)
                except LightningError:
                    ok[s.index] = False
                    continue
                ok[s.index] = True
                with self._cond:
                    keep = not self._closed and self._size() < self.max_size
                    if keep:
                        self._idle.append(conn)
                        self._cond.notify()
                if not keep:
                    self._close(conn, None)
        now = time.monotonic()
        with self._lock:
            for s in self._servers:
                s.last_check = now
                if ok.get(s.index):
                    s.healthy = True
        self._reap()
        return {s.url: s.healthy for s in self._servers}

    # --- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Plain data, no I/O: sizes, counters, and each server's health."""
        now = time.monotonic()
        with self._lock:
            servers = []
            conns = self._idle + list(self._in_use) + list(self._retired)
            for s in self._servers:
                idle = sum(1 for c in self._idle if c.server is s)
                in_use = sum(1 for c in self._in_use if c.server is s)
                total = sum(1 for c in conns if c.server is s)
                servers.append({"url": s.url, "weight": s.weight, "healthy": s.healthy,
                                "connections": total, "idle": idle, "in_use": in_use,
                                "acquires": s.acquires, "failures": s.failures, "last_error": s.last_error,
                                "last_check_s": None if s.last_check is None else round(now - s.last_check, 3)})
            return {"size": len(conns), "in_use": len(self._in_use), "idle": len(self._idle),
                    "retired": len(self._retired), "pinned": sum(1 for c in conns if c.pins > 0),
                    "creating": self._creating, "min_size": self.min_size,
                    "max_size": self.max_size, "strategy": self.strategy, "created": self.created,
                    "closed": self.closed, "closed_idle": self.closed_idle,
                    "closed_lifetime": self.closed_lifetime, "closed_broken": self.closed_broken,
                    "acquires": self.acquires, "acquire_waits": self.acquire_waits,
                    "acquire_timeouts": self.acquire_timeouts, "connect_failures": self.connect_failures,
                    "health_checks": self.health_checks, "healthy": any(s.healthy for s in self._servers),
                    "servers": servers}

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    def __repr__(self) -> str:
        return f"<lightning_db.remote.Pool {self.urls} {self.strategy}{' closed' if self._closed else ''}>"
