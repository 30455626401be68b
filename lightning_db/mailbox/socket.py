"""The DEALER of the mailbox (the mailbox is the only package of Lightning
DB that imports zmq). Every zmq error is wrapped into the taxonomy before
it leaves this module. The ROUTER a worker binds is ``MailboxServer``
(server.py).

``MailboxClient`` is the DEALER callers
connect (any thread of the process that opened it): its socket is owned by
one background I/O thread; callers hand encoded frames over through a queue
and a wake-up pipe, and the I/O thread sends them, matches answers to
futures by envelope id, and fails futures whose deadline passed. Frames
queued together leave in one multipart send (batching); any number of
requests may be in flight (pipelining). A socket monitor on the DEALER
tells the I/O thread when the connection drops (the peer died or closed):
every request still waiting then fails at once with ``PeerLost`` instead of
waiting for its deadline.

It uses the per-process context of ``context.py``, and is not usable in a
process forked from the one that created it (it says so and touches nothing).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import heapq
import itertools
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Self

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..errors import InvalidArgument, LightningError
from .context import (
    check_address,
    destroy_context,
    make_socket,
    wrap_zmq_error,
)
from .direct import MAX_DIRECT, DirectClient, DirectFuture, read_answer
from .lane import LaneClient, lane_path
from .server import MAX_DRAIN
from .envelope import Envelope
from .errors import MailboxClosed, PeerLost, Timeout
from .wire import CONTROL_PING, MsgKind

__all__ = ["MailboxClient", "shutdown"]

MAX_PARTS = 1024            # envelopes per multipart send
LANE_RETRY = 0.5            # seconds before a lane that could not be reached is tried again

# --- client ----------------------------------------------------------------------------------

_live_clients: weakref.WeakSet[MailboxClient] = weakref.WeakSet()


def _resolve(fut: Future, value: Any) -> None:
    try:
        fut.set_result(value)
    except InvalidStateError:   # the caller cancelled it
        pass


def _fail(fut: Future, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except InvalidStateError:
        pass


class MailboxClient:
    """A DEALER connected to *address*; thread-safe. Requests return
    ``concurrent.futures.Future`` objects resolved by the I/O thread: with
    the reply's payload, with the rebuilt remote exception for an ERROR, with
    ``Timeout`` when the deadline passes first (a later reply is dropped), with
    ``PeerLost`` when the connection to the peer drops while it waits (a
    later reply, e.g. from a request zmq still delivers after reconnecting,
    is dropped too), or with the close reason when the client is closed.
    Requests sent while the peer is away are queued by zmq until it is back.

    Done-callbacks run on the I/O thread: keep them short and never wait on
    this client from one.
    """

    def __init__(self, address: str, *, name: str = "", fail_fast: bool = False) -> None:
        check_address(address)
        self.address = address
        self._pid = os.getpid()
        self._sock = make_socket(zmq.DEALER, f"DEALER for {address}")
        try:
            # The monitor first: a connection that drops at once must not go unseen.
            self._monitor = self._sock.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self._sock.connect(address)
        except zmq.ZMQError as exc:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(0)
            raise wrap_zmq_error(exc, f"cannot connect to {address}") from None
        self._ids = itertools.count(1)
        self._out: deque[tuple[list[tuple[int, Future | None, float]], list[bytes]]] = deque()
        self._lock = threading.Lock()         # guards _closed, the wake-up pipe and the hand-off
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        self._closed = False
        self._close_exc: LightningError = MailboxClosed(f"client of {address} closed")
        self._pending: dict[int, tuple[Future, float]] = {}
        self._local = threading.local()       # each thread's DirectClient (ask_here)
        self._directs: list[DirectClient | LaneClient] = []
        self._no_direct = False               # a direct socket could not be made: no more tries
        self._lane = lane_path(address)       # the worker's lane (lane.py), where it has one
        self._lane_retry = 0.0                # no lane until then (the last connect failed)
        # fail_fast: while the peer is gone (from a disconnect to the next
        # connection), requests fail at once with PeerLost instead of waiting
        # in zmq's queue for a peer that may never come back; for callers
        # that retry with backoff and check why the peer went.
        self._fail_fast = fail_fast
        self._down = False                    # I/O thread only
        self.sent = self.replies = self.errors = self.timeouts = self.late = self.malformed = 0
        self.disconnects = self.lost = 0
        self._thread = threading.Thread(target=self._run, name=f"ldb-mailbox {name or address}", daemon=True)
        self._thread.start()
        _live_clients.add(self)

    # --- caller side (any thread) ------------------------------------------------------------

    def request(self, op: str, payload: Any = None, timeout: float | None = None) -> Future:
        """Send one REQUEST; the future resolves with the reply payload.
        *timeout* in seconds (None: no deadline). Raises MalformedFrame at once
        for a payload that cannot be encoded, MailboxClosed after close."""
        return self._submit(MsgKind.REQUEST, ((op, payload),), timeout)[0]

    def request_many(self, ops: Iterable[tuple[str, Any]], timeout: float | None = None) -> list[Future]:
        """Send several REQUESTs in one multipart message, all or none (an
        unencodable payload raises before anything is sent). One future each,
        in order."""
        return self._submit(MsgKind.REQUEST, ops, timeout)

    def control(self, op: str, payload: Any = None, timeout: float | None = None) -> Future:
        """Send one CONTROL message (a runtime op such as ``_ping``)."""
        return self._submit(MsgKind.CONTROL, ((op, payload),), timeout)[0]

    def tell(self, op: str, payload: Any = None) -> None:
        """Send one TELL: nothing comes back, not even an error."""
        self._submit(MsgKind.TELL, ((op, payload),), None)

    def tell_here(self, op: str, payload: Any = None) -> bool:
        """``tell`` on this thread's own socket (direct.py): in order with
        the asks this thread sends there (``ask_here``). False: sent on the
        shared socket instead (no direct socket to spare)."""
        direct = self.direct()
        if direct is None:
            self.tell(op, payload)
            return False
        if type(op) is not str:
            raise InvalidArgument(f"op must be a str, not {type(op).__name__}")
        direct.tell(op, payload)
        return True

    def barrier_here(self, timeout: float | None = None) -> DirectFuture | None:
        """Where this thread's own socket carried a tell that no later
        answer confirmed: a ping there, answered once the peer has every
        message sent before it (None: nothing to wait for). A thread waits
        for it before a message on the shared socket that must come after
        its tells."""
        direct = getattr(self._local, "direct", None)
        if direct is None or direct.closed or not direct.tells_unconfirmed or os.getpid() != self._pid:
            return None
        deadline, mono = _deadlines(timeout)
        return direct.ask(MsgKind.CONTROL, CONTROL_PING, None, deadline, mono)

    def ask_here(self, op: str, payload: Any = None, timeout: float | None = None) -> DirectFuture | Future:
        """A REQUEST whose answer the calling thread itself waits for: sent
        on this thread's own socket (direct.py), with no hop through the I/O
        thread either way. Only this thread may wait on what it returns
        (an ordinary future where this client has no direct socket to
        spare). Raises like ``request``."""
        direct = self.direct()
        if direct is None:
            return self.request(op, payload, timeout)
        if type(op) is not str:
            raise InvalidArgument(f"op must be a str, not {type(op).__name__}")
        deadline, mono = _deadlines(timeout)
        return direct.ask(MsgKind.REQUEST, op, payload, deadline, mono)

    def direct(self) -> DirectClient | LaneClient | None:
        """This thread's direct client; made on first use (None: MAX_DIRECT
        threads have one already, or a socket could not be made). On the
        worker's lane where the address has one (lane.py); while the lane
        cannot be reached (a worker being restarted) None, and the lane is
        tried again LANE_RETRY seconds later. Raises MailboxClosed when
        closed or in a forked copy."""
        if os.getpid() != self._pid:         # a forked copy: refused, the parent's socket untouched
            self._check_open()
        direct = getattr(self._local, "direct", None)
        if direct is not None and not direct.closed:
            return direct
        with self._lock:
            self._check_open()
            live = self._directs
            for old in [d for d in live if not d.thread.is_alive()]:
                old.close()                  # its thread ended: nobody else uses it
            live[:] = [d for d in live if not d.closed]
            if len(live) >= MAX_DIRECT or self._no_direct:
                return None
            if self._lane is not None:
                now = time.monotonic()
                if now < self._lane_retry:
                    return None
                try:
                    direct = LaneClient(self, self._lane)
                except OSError:
                    self._lane_retry = now + LANE_RETRY
                    return None
            else:
                try:
                    direct = DirectClient(self)
                except LightningError:           # e.g. the context's socket limit: futures serve as before
                    self._no_direct = True
                    return None
            live.append(direct)
        self._local.direct = direct
        return direct

    def _submit(self, kind: MsgKind, ops: Iterable[tuple[str, Any]], timeout: float | None) -> list[Future]:
        if os.getpid() != self._pid:        # before the lock: a fork may have copied it held
            self._check_open()
        deadline, mono = _deadlines(timeout)
        entries: list[tuple[int, Future | None, float]] = []
        frames: list[bytes] = []
        futures: list[Future] = []
        ids = self._ids
        for op, payload in ops:
            if type(op) is not str:
                raise InvalidArgument(f"op must be a str, not {type(op).__name__}")
            id_ = next(ids)
            frames.append(Envelope(id_, kind, op, deadline, None, payload).encode())
            if kind is MsgKind.TELL:
                entries.append((id_, None, mono))
            else:
                fut: Future = Future()
                futures.append(fut)
                entries.append((id_, fut, mono))
        with self._lock:
            self._check_open()
            self._out.append((entries, frames))
            if not self._wake_pending:
                self._wake_pending = True
                os.write(self._wake_w, b"\0")
        return futures

    def _check_open(self) -> None:
        if os.getpid() != self._pid:
            raise MailboxClosed(f"this client of {self.address} belongs to process {self._pid}, "
                                f"not to {os.getpid()} forked from it: open a new one")
        if self._closed:
            raise copy.copy(self._close_exc)

    def close(self, exc: LightningError | None = None, timeout: float = 10.0) -> None:
        """Stop the I/O thread and close the socket (linger 0). Requests in
        flight fail with *exc* (default MailboxClosed). Idempotent; in a
        process forked from the owner it only marks this copy closed."""
        if os.getpid() != self._pid:
            self._closed = True
            return
        with self._lock:
            directs, self._directs = self._directs, []
            if not self._closed:
                self._closed = True
                if exc is not None:
                    self._close_exc = exc
                if self._wake_w >= 0:
                    try:
                        os.write(self._wake_w, b"\0")
                    except BlockingIOError:     # full pipe: the thread is awake anyway
                        pass
        for direct in directs:
            direct.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters: frames sent, replies, errors, timeouts, late answers
        dropped, malformed answers, connection drops seen, requests failed
        with PeerLost, requests pending."""
        return {"sent": self.sent, "replies": self.replies, "errors": self.errors,
                "timeouts": self.timeouts, "late": self.late, "malformed": self.malformed,
                "disconnects": self.disconnects, "lost": self.lost, "pending": len(self._pending)}

    # --- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        sock, pending, monitor = self._sock, self._pending, self._monitor
        heap: list[tuple[float, int]] = []
        backlog: list[bytes] = []
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                wait = None
                if heap:
                    wait = max(0, math.ceil((heap[0][0] - time.monotonic()) * 1000))
                events = dict(poller.poll(wait))
                if self._wake_r in events:
                    # Under the lock: a submitter that saw _wake_pending set
                    # must find its hand-off drained by the _take below, and
                    # one that comes later must see it clear and write again.
                    with self._lock:
                        self._wake_pending = False
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                if self._closed:
                    break
                self._take(pending, heap, backlog)
                if self._down and self._fail_fast and (pending or backlog):
                    backlog.clear()
                    self._lose(pending)
                if backlog:
                    self._flush(backlog)
                    poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if backlog else 0))
                if events.get(sock, 0) & zmq.POLLIN:
                    self._drain(pending)
                if events.get(monitor, 0) & zmq.POLLIN and self._disconnected(monitor):
                    self._drain(pending)        # answers that arrived before the drop still count
                    self._lose(pending)
                if heap:
                    self._expire(pending, heap)
        except zmq.ZMQError as exc:
            self._close_exc = wrap_zmq_error(exc, f"mailbox client of {self.address}")
        finally:
            with self._lock:
                self._closed = True
                os.close(self._wake_w)
                self._wake_w = -1
                self._take(pending, [], [])
            os.close(self._wake_r)
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            for fut, _ in pending.values():
                _fail(fut, copy.copy(self._close_exc))
            pending.clear()
            _live_clients.discard(self)

    def _take(self, pending: dict[int, tuple[Future, float]], heap: list[tuple[float, int]],
              backlog: list[bytes]) -> None:
        out = self._out
        while out:
            entries, frames = out.popleft()
            for id_, fut, mono in entries:
                if fut is not None:
                    pending[id_] = (fut, mono)
                    if mono != math.inf:
                        heapq.heappush(heap, (mono, id_))
            backlog.extend(frames)

    def _flush(self, backlog: list[bytes]) -> None:
        sock = self._sock
        while backlog:
            chunk = backlog[:MAX_PARTS]
            try:
                sock.send_multipart(chunk, zmq.NOBLOCK, copy=False)
            except zmq.Again:       # at the high-water mark: wait for POLLOUT
                return
            self.sent += len(chunk)
            del backlog[:len(chunk)]

    def _drain(self, pending: dict[int, tuple[Future, float]]) -> None:
        sock = self._sock

        def take(id_: int) -> Future | None:
            entry = pending.pop(id_, None)
            return None if entry is None else entry[0]
        for _ in range(MAX_DRAIN):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for frame in parts:
                told = read_answer(frame, self, take)
                if told is None:
                    continue
                fut, value, exc = told
                if exc is None:
                    _resolve(fut, value)
                else:
                    _fail(fut, exc)

    def _disconnected(self, monitor: zmq.Socket) -> bool:
        """Read the monitor's queued events; whether one was a disconnect."""
        lost = False
        for _ in range(MAX_DRAIN):
            try:
                msg = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                event = parse_monitor_message(msg)["event"]
            except Exception:  # noqa: BLE001, S112 - an unreadable event is ignored
                continue
            if event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                self._down = True
                lost = True
            elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._down = False
        return lost

    def _lose(self, pending: dict[int, tuple[Future, float]]) -> None:
        """The connection dropped: fail every request waiting for an answer
        (their stale heap entries are skipped by _expire)."""
        if not pending:
            return
        entries = list(pending.values())
        pending.clear()
        self.lost += len(entries)
        for fut, _ in entries:
            _fail(fut, PeerLost(f"the connection to {self.address} dropped before the answer came"))

    def _expire(self, pending: dict[int, tuple[Future, float]], heap: list[tuple[float, int]]) -> None:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, id_ = heapq.heappop(heap)
            entry = pending.pop(id_, None)
            if entry is not None:
                self.timeouts += 1
                _fail(entry[0], Timeout(f"no answer from {self.address} within the request's deadline"))
        if len(heap) > 2 * len(pending) + 1024:     # answered requests leave stale entries behind
            heap[:] = [(mono, id_) for id_, (_, mono) in pending.items() if mono != math.inf]
            heapq.heapify(heap)


def _deadlines(timeout: float | None) -> tuple[float, float]:
    """(wall-clock deadline for the envelope, monotonic deadline) of *timeout*."""
    if timeout is None:
        return 0.0, math.inf
    if type(timeout) in (int, float) and 0 < timeout < math.inf:
        return time.time() + timeout, time.monotonic() + timeout
    raise InvalidArgument(f"timeout must be a positive number of seconds or None, not {timeout!r}")


@atexit.register
def _close_live_clients() -> None:
    for client in list(_live_clients):
        client.close(timeout=1.0)


def shutdown(linger: float = 0.0) -> None:
    """Close every client of this process, then the context, waiting up to
    *linger* seconds for answers still queued on closed sockets to leave
    (a worker calls this last, before it exits). A later call to
    ``context()`` makes a new context."""
    _close_live_clients()
    destroy_context(linger)
