"""The ROUTER of the mailbox: what a worker binds (worker process, the actor
loop's thread only: it is not thread-safe). Every zmq error is wrapped into
the taxonomy before it leaves this module. A worker bound to an
``ipc://...sock`` address serves its lanes here too (lane.py): one wait
covers zmq and the lanes, and answers go back the way their request came.

Uses the per-process context of ``context.py``; a copy in a process forked
from the one that bound it touches nothing.
"""

from __future__ import annotations

import errno
import itertools
import os

import zmq

from .context import TimedReceiver, check_address, ipc_in_use, make_socket, wrap_zmq_error
from .envelope import Envelope, decode, error_payload
from .errors import MailboxError, MalformedFrame
from .lane import LaneServer, lane_path
from .wire import MsgKind

__all__ = ["MailboxServer", "MAX_DRAIN"]

MAX_DRAIN = 1024            # messages read per wake-up before other work gets a turn
# zmq's constants are enum members: as plain ints, the check of EVENTS
# that runs at every wake-up of the loop skips enum's operators.
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class MailboxServer:
    """A ROUTER bound to *address* (``tcp://127.0.0.1:*`` picks a free port;
    ``address`` then holds the one bound). Worker process, one thread only.
    An address in use, including an ipc socket file a live process listens
    on, is a MailboxError.

    Malformed frames never reach the caller of ``recv``: each is answered with
    an ERROR envelope (its id when it could be read, else 0) and counted.
    """

    def __init__(self, address: str) -> None:
        check_address(address)
        if address.startswith("ipc://") and ipc_in_use(address):
            raise MailboxError(f"cannot bind {address}: a live process listens there", errno.EADDRINUSE)
        self._pid = os.getpid()
        self._sock = make_socket(zmq.ROUTER, f"ROUTER for {address}")
        try:
            self._sock.bind(address)
            self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise wrap_zmq_error(exc, f"cannot bind {address}") from None
        self._receiver = TimedReceiver(self._sock)
        self._closed = False
        self.messages = self.received = self.malformed = self.replies = self.errors = 0
        self._lane: LaneServer | None = None
        path = lane_path(self.address)
        if path is not None:
            try:
                self._lane = LaneServer(path, self._sock.getsockopt(zmq.FD))
            except OSError:             # callers then use zmq alone
                self._lane = None

    def recv(self, timeout: float | None) -> list[tuple[bytes, Envelope]]:
        """Wait up to *timeout* seconds (None: forever) for a message, then
        take every message already queued without blocking (up to MAX_DRAIN).
        Returns (sender identity, envelope) pairs in arrival order; [] when
        nothing came. Malformed frames are answered here, never raised."""
        if self._lane is not None:
            return self._recv_lanes(timeout)
        try:
            # One blocking receive, then what else is queued, as zmq's EVENTS
            # tells (cheaper than the exception of an empty read).
            parts = self._receiver.recv(timeout, multipart=True)
            if parts is None:
                return []
            out: list[tuple[bytes, Envelope]] = []
            self._drain(parts, out)
            self.received += len(out)
            return out
        except zmq.ZMQError as exc:
            raise wrap_zmq_error(exc, "mailbox receive") from None

    def _recv_lanes(self, timeout: float | None) -> list[tuple[bytes, Envelope]]:
        """``recv`` with lanes: zmq's queue first; then one epoll wait for
        zmq's descriptor and the lanes (no wait when zmq had messages)."""
        lane = self._lane
        assert lane is not None
        out: list[tuple[bytes, Envelope]] = []
        bad: list[tuple[bytes, MalformedFrame]] = []
        try:
            self._drain(None, out)
            if lane.wait(0.0 if out else timeout, out, bad):
                self._drain(None, out)
        except zmq.ZMQError as exc:
            raise wrap_zmq_error(exc, "mailbox receive") from None
        for identity, exc in bad:
            self.malformed += 1
            lane.send(identity, [Envelope(exc.envelope_id, MsgKind.ERROR, "", 0.0, None, error_payload(exc)).encode()])
        self.received += len(out)
        return out

    def _drain(self, parts: list[bytes] | None, out: list[tuple[bytes, Envelope]]) -> None:
        """Decode *parts* (a message already read, or None) and what else zmq
        has queued (up to MAX_DRAIN messages) into *out*."""
        sock = self._sock
        for _ in range(MAX_DRAIN):
            if parts is None:
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    break
                parts = sock.recv_multipart(zmq.NOBLOCK)
            self.messages += 1
            identity = parts[0]
            for frame in itertools.islice(parts, 1, None):
                try:
                    out.append((identity, decode(frame)))
                except MalformedFrame as exc:
                    self.malformed += 1
                    bad = Envelope(exc.envelope_id, MsgKind.ERROR, "", 0.0, None, error_payload(exc))
                    self._send(identity, [bad.encode()])
            parts = None

    def reply(self, identity: bytes, env: Envelope) -> None:
        """Send *env* (a REPLY or ERROR) to the peer *identity*."""
        self.reply_many(identity, [env])

    def reply_many(self, identity: bytes, envs: list[Envelope]) -> None:
        """Send several answers to one peer in one multipart message. An
        answer whose payload cannot be encoded goes out as an ERROR instead.
        A peer that has gone away is not an error: zmq drops its answers."""
        frames = []
        for env in envs:
            try:
                frames.append(env.encode())
            except MalformedFrame as exc:
                env = Envelope(env.id, MsgKind.ERROR, env.op, 0.0, None, error_payload(exc))
                frames.append(env.encode())
            if env.kind is MsgKind.ERROR:
                self.errors += 1
            else:
                self.replies += 1
        self._send(identity, frames)

    def reply_error(self, identity: bytes, request_env: Envelope, exc: BaseException) -> None:
        """Answer *request_env* with an ERROR envelope describing *exc*."""
        self.reply_many(identity, [request_env.error(exc)])

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        lane = self._lane
        if lane is not None and lane.owns(identity):
            lane.send(identity, frames)
            return
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            raise wrap_zmq_error(exc, "mailbox reply") from None

    def stats(self) -> dict[str, int]:
        """Counters: zmq messages and envelopes received (a batch is one
        message of many envelopes), malformed frames, replies, errors sent."""
        out = {"messages": self.messages, "received": self.received, "malformed": self.malformed,
               "replies": self.replies, "errors": self.errors}
        if self._lane is not None:
            out.update(self._lane.stats())
        return out

    def close(self, linger: float = 0.0) -> None:
        """Close the socket; answers still queued are flushed for up to
        *linger* seconds (0: dropped). Idempotent; a no-op in a forked child."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            if self._lane is not None:
                self._lane.close()
            self._sock.close(int(linger * 1000))
