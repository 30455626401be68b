"""Lanes: the mailbox's envelopes over a Unix stream socket, beside zmq.

A zmq message between two local processes wakes four threads (each side's
caller and its zmq I/O thread; bench/RESULTS.md, seventeenth session: a
ping-pong of one small message costs 34-40 µs of the client's CPU and
52-55 of the server's over ``ipc://``, against 14 and 14-16 over a Unix
socket pair). A worker whose ROUTER is bound to ``ipc://DIR/NAME.sock``
therefore also listens on ``DIR/NAME.lane`` (``lane_path``), and a thread's
direct client (direct.py) connects there when it can: the same frames
(version byte + msgpack envelope, wire.py), each after its length (4 bytes,
big-endian), on a connection that thread alone uses. Everything else (the
shared DEALER and its I/O thread, control, remote clients over tcp) stays
on zmq, and zmq stays the only transport between hosts.

``LaneServer`` (worker process, the actor loop's thread) waits in one epoll
for zmq's descriptor, the listening socket and the connections; frames read
from a connection come back with that connection's identity (NUL, ``lane:``
and a number: never a zmq identity), and answers to it go back on it. A
connection that sends a length past ``MAX_FRAME_SIZE`` is closed (its
stream cannot be resynchronised); a malformed envelope is answered with an
ERROR, as on zmq. Answers the socket does not take at once wait for it
(EPOLLOUT); a peer that lets MAX_QUEUED of them pile up has stopped
reading, and its lane is closed (zmq drops past its high-water mark).

``LaneClient`` is a direct client on a lane (direct.py has the semantics):
a lane that closes fails its waiting asks with PeerLost, and a send that
finds no room for SEND_STALL seconds (or past the ask's deadline) gives the
lane up with Timeout; both are transient, and whoever retries (the router,
the server's SET writer) does so with the same write token, so a write
is applied once. The thread's next ask opens a new lane, or, while none can
be reached (a worker being restarted), goes on the shared DEALER.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import socket
import struct
import time
from typing import TYPE_CHECKING, NoReturn

from ..errors import LightningError
from .direct import OwnConnection
from .envelope import Envelope, decode
from .errors import MailboxClosed, MalformedFrame, PeerLost, Timeout
from .wire import MAX_FRAME_SIZE

if TYPE_CHECKING:
    from .socket import MailboxClient

__all__ = ["LaneClient", "LaneServer", "lane_path"]

_LEN = struct.Struct(">I")
_READ = 1 << 16             # bytes read per receive: 128 KiB or more can be an mmap a call (a 1.5 KB
                            # ping-pong 3 vs 16-18 µs; SET -P 1 over RESP: front ends 19.2 vs 20.4 µs a SET)
_READS = 16                 # receives per lane per wake-up of a worker at most
MAX_QUEUED = 1000           # answers a worker keeps for a lane that does not read (zmq's SNDHWM)
SEND_STALL = 5.0            # seconds a client's send waits for the worker to take any byte
_MAX_EVENTS = 64


def lane_path(address: str) -> str | None:
    """The lane beside a worker's ``ipc://DIR/NAME.sock`` (same length, so
    it fits wherever the address did); None for any other address."""
    if address.startswith("ipc://") and address.endswith(".sock"):
        return address[6:-5] + ".lane"
    return None


def _frames(buf: bytearray, out: list[bytes]) -> bool:
    """Move the whole frames at the start of *buf* to *out*; False when a
    length is past MAX_FRAME_SIZE (the stream is broken)."""
    at, end = 0, len(buf)
    while end - at >= 4:
        n = _LEN.unpack_from(buf, at)[0]
        if n > MAX_FRAME_SIZE:
            return False
        if end - at - 4 < n:
            break
        out.append(bytes(buf[at + 4:at + 4 + n]))
        at += 4 + n
    if at:
        del buf[:at]
    return True


def _receive(sock: socket.socket, buf: bytearray, reads: int | None) -> tuple[list[bytes], bool]:
    """Read what *sock* holds (at most *reads* receives; None: all of it)
    onto *buf*; (the whole frames now at its start, whether the stream
    ended: the peer closed it, or sent a length past the limit). Frames
    read before an end are returned too."""
    ended = False
    n = 0
    while reads is None or n < reads:
        n += 1
        try:
            data = sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            data = b""
        if not data:
            ended = True
            break
        buf += data
        if len(data) < _READ:
            break
    frames: list[bytes] = []
    return frames, not _frames(buf, frames) or ended


def _pack(frames: list[bytes]) -> bytes:
    return b"".join(x for f in frames for x in (_LEN.pack(len(f)), f))


# --- worker side -------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("sock", "identity", "buf", "out", "queued")

    def __init__(self, sock: socket.socket, identity: bytes) -> None:
        self.sock, self.identity, self.buf = sock, identity, bytearray()
        self.out = bytearray()          # answers the socket did not take yet
        self.queued = 0                 # answers in out


class LaneServer:
    """The listening socket at *path* and its connections, polled together
    with zmq's descriptor *zmq_fd* (one thread)."""

    def __init__(self, path: str, zmq_fd: int) -> None:
        try:
            os.unlink(path)             # a dead worker's (the ROUTER's address is ours now)
        except FileNotFoundError:
            pass
        self.path = path
        self._listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listen.bind(path)
            self._listen.listen(socket.SOMAXCONN)
            self._listen.setblocking(False)
            self._ep = select.epoll()
        except OSError:
            self._listen.close()
            raise
        self._zfd = zmq_fd
        self._lfd = self._listen.fileno()
        self._ep.register(zmq_fd, select.EPOLLIN)
        self._ep.register(self._lfd, select.EPOLLIN)
        self._conns: dict[int, _Conn] = {}          # fd -> connection
        self._by_id: dict[bytes, _Conn] = {}
        self._ids = itertools.count(1)
        self.accepted = self.dropped = self.frames = 0

    def wait(self, timeout: float | None, out: list[tuple[bytes, Envelope]],
             bad: list[tuple[bytes, MalformedFrame]]) -> bool:
        """Wait up to *timeout* seconds (None: forever) for zmq or a lane;
        envelopes read from lanes go to *out* (with the lane's identity),
        malformed ones to *bad*. True when zmq's descriptor fired (its
        ``EVENTS`` then says what came)."""
        t = -1 if timeout is None else max(0.0, timeout)
        try:
            events = self._ep.poll(t, _MAX_EVENTS)
        except InterruptedError:
            return True
        zmq_ready = False
        for fd, ev in events:
            if fd == self._zfd:
                zmq_ready = True
            elif fd == self._lfd:
                self._accept()
            else:
                conn = self._conns.get(fd)
                if conn is not None and ev & select.EPOLLOUT:
                    self._flush(conn)
                if conn is not None and ev & ~select.EPOLLOUT:
                    self._read(conn, out, bad)
        return zmq_ready

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:             # e.g. out of descriptors: the peer falls back to zmq
                return
            sock.setblocking(False)
            conn = _Conn(sock, b"\x00lane:%d" % next(self._ids))
            self._conns[sock.fileno()] = conn
            self._by_id[conn.identity] = conn
            self._ep.register(sock.fileno(), select.EPOLLIN)
            self.accepted += 1

    def _read(self, conn: _Conn, out: list[tuple[bytes, Envelope]], bad: list[tuple[bytes, MalformedFrame]]) -> None:
        frames, ended = _receive(conn.sock, conn.buf, _READS)
        if ended:
            self._drop(conn)
        identity = conn.identity
        for frame in frames:
            self.frames += 1
            try:
                out.append((identity, decode(frame)))
            except MalformedFrame as exc:
                bad.append((identity, exc))

    @staticmethod
    def owns(identity: bytes) -> bool:
        """Whether *identity* names a lane (zmq's own identities are 5 bytes
        from a NUL, and a peer cannot choose one that starts with NUL)."""
        return identity[:6] == b"\x00lane:"

    def send(self, identity: bytes, frames: list[bytes]) -> None:
        """Answer on the lane *identity* (gone: dropped, as zmq drops an
        answer to a peer that left). What the socket does not take at once
        waits for it (the loop's epoll says when); past MAX_QUEUED answers
        waiting, the peer counts as stopped and its lane is closed."""
        conn = self._by_id.get(identity)
        if conn is None:
            return
        data = _pack(frames)
        if conn.out:
            conn.queued += len(frames)
            if conn.queued > MAX_QUEUED:
                self._drop(conn)        # the peer stopped reading: it retries on zmq
                return
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        if sent != len(data):
            conn.out += memoryview(data)[sent:]
            conn.queued = len(frames)
            self._ep.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, conn: _Conn) -> None:
        """Send what waits for *conn*'s socket to take it."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            conn.queued = 0
            self._ep.modify(conn.sock.fileno(), select.EPOLLIN)

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        self._by_id.pop(conn.identity, None)
        self.dropped += 1
        try:
            self._ep.unregister(fd)
        except OSError:
            pass
        conn.sock.close()

    def stats(self) -> dict[str, int]:
        return {"lanes": len(self._conns), "lanes_accepted": self.accepted, "lanes_dropped": self.dropped,
                "lane_frames": self.frames}

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._ep.close()
        self._listen.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


# --- caller side -------------------------------------------------------------------------------


class LaneClient(OwnConnection):
    """A direct client (one thread's own connection) on the lane at *path*
    of *owner*'s address. Raises OSError when it cannot connect."""

    def __init__(self, owner: MailboxClient, path: str) -> None:
        super().__init__(owner)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Non-blocking first: a worker whose backlog is full (stopped,
            # say) refuses at once (EAGAIN) instead of holding the thread.
            sock.setblocking(False)
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buf = bytearray()

    def _may_send(self) -> None:
        if self.closed and not self._closing:
            raise PeerLost(f"the lane to {self._owner.address} dropped")

    def _transmit(self, frame: bytes, mono: float) -> None:
        """Send one whole frame after its length. Where the worker's socket
        is full, wait for room while it takes some within SEND_STALL
        seconds and the ask's deadline (*mono*) has not passed; else give
        the lane up (a frame cut short breaks the stream), as when a
        KeyboardInterrupt stops the send."""
        try:
            self._send_frame(frame, mono)
        except BaseException as exc:
            if not isinstance(exc, LightningError):     # maybe cut short: the stream is unusable
                with contextlib.suppress(LightningError):
                    self._broken(f"a send to {self._owner.address} was interrupted ({type(exc).__name__})")
            raise

    def _send_frame(self, frame: bytes, mono: float) -> None:
        data = _LEN.pack(len(frame)) + frame
        sock = self._sock
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._broken(f"the lane to {self._owner.address} failed: {exc}")
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLOUT)
        while view:
            now = time.monotonic()
            left = min(SEND_STALL, mono - now)
            if left <= 0 or not poll.poll(math.ceil(left * 1000)):
                where = self._owner.address
                self._broken(f"the worker at {where} took no data for {SEND_STALL:g} s" if left == SEND_STALL
                             else f"the request's deadline passed while it was sent to {where}", Timeout)
            try:
                view = view[sock.send(view):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._broken(f"the lane to {self._owner.address} failed: {exc}")

    def _broken(self, why: str, cls: type[LightningError] = PeerLost) -> NoReturn:
        """Give the lane up (its stream is unusable) and raise *cls*: the
        asks still waiting fail with it, and the thread's next direct client
        is made afresh. Closed meanwhile by its owner: MailboxClosed."""
        self.closed = True
        exc = (MailboxClosed(f"client of {self._owner.address} closed") if self._closing
               else cls(why))
        self._fail_all(exc)
        # The worker drops its end now; the descriptor itself stays open
        # until close(), for an event loop that watches it (it reads the
        # end, stops watching, then closes).
        self._wake()
        raise exc

    def _read(self, seconds: float) -> None:
        if self._poll.poll(min(math.ceil(seconds * 1000), 1 << 30)):
            self._drain()

    def fileno(self) -> int:
        """The socket's descriptor (level-triggered: readable while answers wait)."""
        return self._sock.fileno()

    def readable(self) -> bool:
        """False: the descriptor is level-triggered, an event loop that
        watches it sees answers already in."""
        return False

    def _drain(self) -> None:
        """Read what the socket holds; answer the asks it completes. The
        peer gone: every ask still waiting fails with PeerLost."""
        frames, ended = _receive(self._sock, self._buf, None)
        for frame in frames:            # answers that came before the end still count
            self._take(frame)
        if ended:
            self._lose()

    def _lose(self) -> None:
        """The peer closed the lane (or broke its framing): every ask still
        waiting fails with PeerLost."""
        self.closed = True
        owner = self._owner
        if self._closing:
            self._fail_all(MailboxClosed(f"client of {owner.address} closed"))
            return
        for fut in list(self._pending.values()):
            owner.lost += 1
            fut._set(None, PeerLost(f"the lane to {owner.address} closed before the answer came"))
        self._pending.clear()

    def _wake(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)      # the wait reads the end, then closes
        except OSError:
            pass

    def _close_socket(self) -> None:
        if self._sock.fileno() >= 0:
            self._sock.close()
