"""The mailbox: wire format (msgpack envelopes) and ZeroMQ sockets.

The only package of Lightning DB that imports zmq (``server.py``,
``socket.py``, ``direct.py`` and ``context.py``); ``wire.py`` and
``envelope.py`` are pure and usable in any process. Workers bind a
``MailboxServer`` (ROUTER, server.py); callers connect a ``MailboxClient``
(DEALER, socket.py), and a thread that waits for its own answers has a
direct client (direct.py): a DEALER of its own, or on a worker's ipc
address a lane (lane.py, a Unix socket beside the ROUTER).
"""

from __future__ import annotations

from .context import IPC_PATH_MAX, check_address, context
from .envelope import Envelope, decode, error_from_payload, error_payload, raise_remote
from .errors import (
    MailboxBusy,
    MailboxClosed,
    MailboxError,
    MalformedFrame,
    PeerLost,
    RemoteError,
    Timeout,
    lookup_error,
    register_error,
)
from .server import MailboxServer
from .socket import MailboxClient, shutdown
from .wire import MAX_FRAME_SIZE, PROTOCOL_VERSION, MsgKind

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_SIZE",
    "IPC_PATH_MAX",
    "MsgKind",
    "Envelope",
    "decode",
    "error_payload",
    "error_from_payload",
    "raise_remote",
    "MailboxServer",
    "MailboxClient",
    "shutdown",
    "context",
    "check_address",
    "MalformedFrame",
    "RemoteError",
    "Timeout",
    "PeerLost",
    "MailboxBusy",
    "MailboxError",
    "MailboxClosed",
    "register_error",
    "lookup_error",
]
