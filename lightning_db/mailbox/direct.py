"""Direct asks: a caller thread's own DEALER, with no I/O thread between.

A ``MailboxClient`` owns its socket from a background I/O thread, so every
ask crosses two threads each way (the caller hands frames over through a
pipe; the I/O thread wakes, sends, receives and resolves the future, which
wakes the caller). A ``DirectClient`` is the same connection for one
caller thread: that thread encodes, sends and then waits on the socket
itself. The answer costs no thread hop, only zmq's own.

A direct ask returns a ``DirectFuture`` that only the thread that made it
may wait on: waiting reads the thread's socket (a blocking receive bounded
by RCVTIMEO, so zmq itself waits for the answer), matching answers to the
futures of that thread by envelope id. The semantics are the client's:
the reply's payload, the rebuilt remote error, ``Timeout`` once the
deadline passes (a later reply is dropped), ``PeerLost`` when the
connection drops while it waits. The connection's state comes from the
owning ``MailboxClient``, whose I/O thread watches the socket monitor:
while the peer is gone, a fail-fast client's direct asks fail at once, and
a drop seen after a request was sent fails it (checked every
``LOST_POLL`` seconds of waiting).

A thread may also tell on its socket (``tell``): in order with its asks
there. ``tells_unconfirmed`` says whether a tell went out after the last
answered ask; ``MailboxClient.barrier_here`` then pings on the socket, so
that what the thread sends after the answer, on any connection, comes
after the tells.

Where the owner's address is a worker's ``ipc://...sock``, the thread's
connection is a lane instead of a DEALER (lane.py: the same envelopes over
a Unix socket, without zmq's thread hand-offs); ``OwnConnection`` holds
what both kinds share, so the semantics above are the same on either.

Direct clients are created per (client, thread) on first use, at most
``MAX_DIRECT`` live ones a client (a thread beyond that gets the client's
ordinary futures); those of threads that ended are closed when the next
one is made, and all of them when the client closes (a thread in the
middle of a wait closes its own once the wait ends).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import zmq

from .context import TimedReceiver, make_socket, wrap_zmq_error
from .envelope import Envelope, decode, error_from_payload
from .errors import MailboxClosed, MalformedFrame, PeerLost, Timeout
from .wire import MsgKind

if TYPE_CHECKING:
    from .socket import MailboxClient

__all__ = ["DirectClient", "DirectFuture", "MAX_DIRECT", "LOST_POLL", "OwnConnection", "read_answer"]

MAX_DIRECT = 16             # live direct clients (threads) per mailbox client
LOST_POLL = 0.02            # seconds between checks of the connection while waiting
_PENDING = object()


def read_answer(frame: bytes, stats: Any, take: Any) -> tuple[Any, Any, BaseException | None] | None:
    """Decode one answer frame and find who waits for it: ``take(id)``
    returns the waiter (or None). Returns (waiter, payload, error) for the
    waiter to be told, None when nobody waits. Counts the frame on *stats*
    (``replies``, ``errors``, ``malformed``, ``late``): both clients read
    their answers with it."""
    try:
        env = decode(frame)
    except MalformedFrame as exc:
        stats.malformed += 1
        waiter = take(exc.envelope_id) if exc.envelope_id else None
        return None if waiter is None else (waiter, None, exc)
    waiter = take(env.id)
    if waiter is None:
        stats.late += 1
        return None
    if env.kind is MsgKind.REPLY:
        stats.replies += 1
        return waiter, env.payload, None
    if env.kind is MsgKind.ERROR:
        stats.errors += 1
        return waiter, None, error_from_payload(env.payload)
    stats.malformed += 1
    return waiter, None, MalformedFrame(f"a {env.kind.name} envelope is not an answer", env.id)


class DirectFuture:
    """The answer to one direct ask; waited on only by the thread that asked."""

    __slots__ = ("_client", "_id", "_mono", "_seen", "_value", "_exc")

    def __init__(self, client: OwnConnection, id_: int, mono: float, seen: int) -> None:
        self._client, self._id, self._mono = client, id_, mono
        self._seen = seen           # the owner's count of connection drops when it was sent
        self._value: Any = _PENDING
        self._exc: BaseException | None = None

    @property
    def client(self) -> OwnConnection:
        """The direct client (the thread's socket) it was sent on."""
        return self._client

    def done(self) -> bool:
        return self._value is not _PENDING or self._exc is not None

    def result(self, timeout: float | None = None) -> Any:
        """The reply's payload; raises the error the ask ended with.
        *timeout* (seconds) bounds this wait only, like a future's."""
        if not self.done():
            self._client._wait(self, timeout)
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._client._wait(self, timeout)
        return self._exc

    def _set(self, value: Any, exc: BaseException | None) -> None:
        if exc is None:
            self._value = value
        else:
            self._exc = exc


class OwnConnection(ABC):
    """What a direct client on any transport shares: the asks of its one
    thread by envelope id, their deadlines, the tells not yet confirmed,
    sending, waiting and pumping, and closing while that thread sends or
    waits. A subclass puts a frame on its socket (``_transmit``), reads
    (``_read``, ``_drain``) and closes it (``_close_socket``)."""

    def __init__(self, owner: MailboxClient) -> None:
        self._owner = owner
        self.thread = threading.current_thread()
        self._ids = itertools.count(1)
        self._pending: dict[int, DirectFuture] = {}
        self._lock = threading.Lock()   # guards busy and closing
        self._busy = False          # a send or wait is in progress (close() leaves the socket to it)
        # closed: no more asks here (closed by close(), or given up: a lane
        # whose peer went); the socket itself closes only through close().
        self.closed = False
        self._closing = False
        self._told = 0              # id of the last tell sent
        self._answered = 0          # highest id of an ask answered: every tell before it arrived

    def ask(self, kind: MsgKind, op: str, payload: Any, deadline: float, mono: float) -> DirectFuture:
        """Send one request now; its answer is read when it is waited on."""
        seen = self._owner.disconnects
        id_ = self._send(kind, op, payload, deadline, mono)
        fut = DirectFuture(self, id_, mono, seen)
        self._pending[id_] = fut
        return fut

    def tell(self, op: str, payload: Any) -> None:
        """Send one TELL now (nothing comes back): after every request this
        thread sent on this socket, before every later one."""
        self._told = self._send(MsgKind.TELL, op, payload, 0.0, math.inf)

    def _send(self, kind: MsgKind, op: str, payload: Any, deadline: float, mono: float) -> int:
        """Encode and send one envelope (*mono*: the ask's monotonic
        deadline); its id."""
        self._may_send()
        id_ = next(self._ids)
        frame = Envelope(id_, kind, op, deadline, None, payload).encode()
        self._enter()
        try:
            self._transmit(frame, mono)
        finally:
            self._leave()
        self._owner.sent += 1
        return id_

    def _may_send(self) -> None:
        """Raise where the connection is known to be down."""

    @abstractmethod
    def _transmit(self, frame: bytes, mono: float) -> None:
        """Put one encoded envelope on the socket."""

    @abstractmethod
    def _drain(self) -> None:
        """Take the answers the socket holds, without waiting."""

    def _after_drain(self) -> None:
        """What ``pump`` looks at after draining (a drop the owner saw)."""

    def pump(self) -> None:
        """Without waiting: take the answers that came, and end the asks
        that a dropped connection or their deadline ended (what ``result``
        does while it waits, for a thread that waits in an event loop
        instead; it then looks at its futures' ``done``)."""
        if not self._begin():
            return
        try:
            self._drain()
            self._after_drain()
            if self._pending:
                self._expire(time.monotonic())
        finally:
            self._leave()

    @abstractmethod
    def _read(self, seconds: float) -> None:
        """Wait up to *seconds* for answers and take those that came."""

    def _dropped(self, fut: DirectFuture) -> bool:
        """Whether a drop of the connection was seen since *fut* was sent
        (its asks then failed)."""
        return False

    def _wait(self, fut: DirectFuture, timeout: float | None) -> None:
        """Read answers until *fut* is done or *timeout* passes (the asking
        thread only)."""
        if self.thread is not threading.current_thread():
            raise RuntimeError("a direct ask is waited on only by the thread that made it")
        limit = math.inf if timeout is None else time.monotonic() + timeout
        if not self._begin():
            return
        try:
            while not fut.done():
                if self.closed:         # closed, or given up (its asks failed then)
                    self._fail_all(MailboxClosed(f"client of {self._owner.address} closed"))
                    return
                if self._dropped(fut):
                    continue
                now = time.monotonic()
                if fut._mono <= now:
                    self._expire(now)
                    continue
                if limit <= now:
                    raise TimeoutError("the wait for a direct answer timed out")
                self._read(min(fut._mono, limit) - now)
        finally:
            self._leave()

    @abstractmethod
    def _close_socket(self) -> None:
        """Close the transport's socket (once nothing uses it)."""

    def _wake(self) -> None:
        """Make the thread's wait in progress look at ``closed`` soon."""

    @property
    def tells_unconfirmed(self) -> bool:
        """A tell went out after the last ask that was answered."""
        return self._told > self._answered

    def _take(self, frame: bytes) -> None:
        """Tell the waiter of the answer in *frame* (if any still waits)."""
        take = self._pending.pop
        told = read_answer(frame, self._owner, lambda id_: take(id_, None))
        if told is not None:
            fut = told[0]
            fut._set(told[1], told[2])
            if fut._id > self._answered:
                self._answered = fut._id

    def _expire(self, now: float) -> None:
        for id_, fut in list(self._pending.items()):
            if fut._mono <= now:
                del self._pending[id_]
                self._owner.timeouts += 1
                fut._set(None, Timeout(f"no answer from {self._owner.address} within the request's deadline"))

    def _fail_all(self, exc: BaseException) -> None:
        futs = list(self._pending.values())
        self._pending.clear()
        for fut in futs:
            fut._set(None, exc)

    def _begin(self) -> bool:
        """``_enter`` for a read: False (every ask failed) once closed."""
        try:
            self._enter()
        except MailboxClosed as exc:
            self._fail_all(exc)
            return False
        return True

    def _enter(self) -> None:
        with self._lock:
            if self._closing:
                raise MailboxClosed(f"client of {self._owner.address} closed")
            self._busy = True

    def _leave(self) -> None:
        with self._lock:
            self._busy = False
            if not self._closing:
                return
        self._shut()

    def close(self) -> None:
        """Close the socket; asks still waited on fail with MailboxClosed.
        While its thread is sending or waiting, only marks it closed (and
        wakes the wait): that thread closes it when it is done."""
        with self._lock:
            self.closed = self._closing = True
            if self._busy:
                self._wake()
                return
        self._shut()

    def _shut(self) -> None:
        self._close_socket()
        if self.thread is threading.current_thread():
            self._fail_all(MailboxClosed(f"client of {self._owner.address} closed"))


class DirectClient(OwnConnection):
    """A DEALER to *owner*'s address, used by one thread only."""

    def __init__(self, owner: MailboxClient) -> None:
        super().__init__(owner)
        self._sock = make_socket(zmq.DEALER, f"DEALER for {owner.address}")
        try:
            self._sock.connect(owner.address)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise wrap_zmq_error(exc, f"cannot connect to {owner.address}") from None
        self._receiver = TimedReceiver(self._sock)     # the waits' blocking reads

    def _may_send(self) -> None:
        owner = self._owner
        if owner._fail_fast and owner._down:
            raise PeerLost(f"the connection to {owner.address} is down")

    def _transmit(self, frame: bytes, mono: float) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            raise wrap_zmq_error(exc, f"direct send to {self._owner.address}") from None

    def _dropped(self, fut: DirectFuture) -> bool:
        drops = self._owner.disconnects
        if drops == fut._seen:
            return False
        self._drain()           # answers that came before the drop still count
        self._lose(drops)
        return True

    def _read(self, seconds: float) -> None:
        try:
            frame = self._receiver.recv(min(seconds, LOST_POLL))   # looks at drops each LOST_POLL
            if frame is not None:
                self._take(frame)
        except zmq.ZMQError as exc:
            self._fail_all(wrap_zmq_error(exc, f"direct receive from {self._owner.address}"))

    def fileno(self) -> int:
        """A file descriptor that becomes readable when the socket may have
        answers (zmq's ``FD``: edge-triggered, so ``pump`` after each wake-up
        and after each ``ask``). For an event loop's ``add_reader``."""
        return self._sock.getsockopt(zmq.FD)

    def readable(self) -> bool:
        """Whether an answer waits on the socket now (zmq's ``EVENTS``; what
        to look at after a send, which may have used up the edge of ``fileno``)."""
        try:
            return bool(self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        except zmq.ZMQError:
            return True         # closed or broken: pump says how

    def _after_drain(self) -> None:
        drops = self._owner.disconnects
        if any(f._seen != drops for f in self._pending.values()):
            self._lose(drops)

    def _drain(self) -> None:
        sock = self._sock
        try:
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self._take(frame)
        except zmq.ZMQError as exc:
            self._fail_all(wrap_zmq_error(exc, f"direct receive from {self._owner.address}"))

    def _lose(self, drops: int) -> None:
        """The connection dropped (the owner counted *drops*): fail every
        ask sent before that was seen."""
        for id_, fut in list(self._pending.items()):
            if fut._seen != drops:
                del self._pending[id_]
                self._owner.lost += 1
                fut._set(None, PeerLost(f"the connection to {self._owner.address} dropped before the answer came"))

    def _close_socket(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)
