"""The per-process zmq context, endpoint checks and zmq error wrapping
(any process, any thread). Part of the mailbox: the only package that
imports zmq.

One zmq context per process (``context()``). A process forked from one that
had a context gets a fresh one: a zmq context must never be used, nor
destroyed, across fork, so the inherited one is abandoned untouched.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import threading
from typing import Any

import zmq

from ..errors import InvalidArgument, LightningError
from .errors import MailboxBusy, MailboxClosed, MailboxError
from .wire import MAX_FRAME_SIZE

__all__ = ["context", "destroy_context", "check_address", "ipc_in_use", "wrap_zmq_error", "make_socket", "IPC_PATH_MAX", "HWM"]

IPC_PATH_MAX = 107          # sun_path is 108 bytes including the terminating NUL
HWM = 100_000               # messages queued per peer before zmq pushes back

# --- the per-process context -------------------------------------------------------------

_ctx: zmq.Context | None = None
_ctx_pid = 0
_ctx_lock = threading.Lock()
_abandoned: list[zmq.Context] = []   # inherited over fork: kept referenced so never destroyed


def context() -> zmq.Context:
    """This process's zmq context, created on first use and re-created (the
    old one abandoned, untouched) in a process forked from its creator."""
    global _ctx, _ctx_pid
    ctx, pid = _ctx, os.getpid()
    if ctx is not None and _ctx_pid == pid:
        return ctx
    with _ctx_lock:
        if _ctx is None or _ctx_pid != pid:
            if _ctx is not None:
                _abandoned.append(_ctx)
            _ctx, _ctx_pid = zmq.Context(), pid
        return _ctx


def destroy_context(linger: float = 0.0) -> None:
    """Close this process's sockets (waiting up to *linger* seconds for
    queued messages, including those of sockets already closed with a
    linger) and terminate its context. Callers must have stopped every
    thread using a socket first."""
    global _ctx
    with _ctx_lock:
        ctx, _ctx = (_ctx, None) if _ctx_pid == os.getpid() else (None, _ctx)
    if ctx is not None:
        ctx.destroy(int(linger * 1000))


def _after_fork_in_child() -> None:
    # The lock may have been held by a thread that does not exist in the child.
    global _ctx_lock
    _ctx_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def wrap_zmq_error(exc: zmq.ZMQError, what: str) -> LightningError:
    """The taxonomy class for a zmq error met while doing *what*."""
    if isinstance(exc, zmq.Again) or exc.errno in (errno.EAGAIN, errno.EINTR):
        return MailboxBusy(f"{what}: {exc.strerror}")
    if exc.errno in (zmq.ETERM, errno.ENOTSOCK):
        return MailboxClosed(f"{what}: {exc.strerror}")
    return MailboxError(f"{what}: {exc.strerror} (errno {exc.errno})", exc.errno)


def check_address(address: str) -> str:
    """Validate an endpoint: ``ipc://path`` (at most IPC_PATH_MAX bytes),
    ``tcp://host:port`` or ``inproc://name``. Raises InvalidArgument."""
    if not isinstance(address, str):
        raise InvalidArgument(f"an address is a str, not {type(address).__name__}")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("ipc", "tcp", "inproc") or not rest:
        raise InvalidArgument(f"address {address!r} is not ipc://PATH, tcp://HOST:PORT or inproc://NAME")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
            raise InvalidArgument(f"address {address!r} needs a port from 1 to 65535 (or * to bind any): "
                                  "tcp://HOST:PORT")
    if scheme == "ipc" and len(os.fsencode(rest)) > IPC_PATH_MAX:
        raise InvalidArgument(f"ipc path {rest!r} is longer than the limit of {IPC_PATH_MAX} bytes")
    return address


def ipc_in_use(address: str) -> bool:
    """Whether something listens on the ipc socket file of *address*. zmq's
    ipc bind unlinks an existing file first, which would silently steal the
    address from a live worker; a stale file (its owner died) is fine."""
    path = address.partition("://")[2]
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def make_socket(kind: int, what: str) -> zmq.Socket:
    try:
        sock = context().socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_SIZE)
    except zmq.ZMQError as exc:
        raise wrap_zmq_error(exc, what) from None
    return sock


class TimedReceiver:
    """Blocking receives on *sock* bounded by its RCVTIMEO: zmq waits for the
    message itself, half the system calls of a poll followed by a read. The
    option is set only when the bound changes. One thread uses it."""

    __slots__ = ("_sock", "_ms")

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._ms: int | None = None

    def recv(self, seconds: float | None, multipart: bool = False) -> Any:
        """The next message (a frame, or the parts of a multipart one), or
        None when none came within *seconds* (None: wait for one)."""
        ms = -1 if seconds is None else max(0, math.ceil(seconds * 1000))
        if ms != self._ms:
            self._sock.setsockopt(zmq.RCVTIMEO, ms)
            self._ms = ms
        try:
            return self._sock.recv_multipart() if multipart else self._sock.recv()
        except zmq.Again:
            return None
