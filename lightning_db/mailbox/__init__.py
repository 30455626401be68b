"""The mailbox: wire format (msgpack envelopes) and ZeroMQ sockets.

The only package of Lightning DB that imports zmq (``socket.py`` and
``context.py``); ``wire.py`` and ``envelope.py`` are pure and usable in any
process. Workers bind a ``MailboxServer`` (ROUTER); callers connect a
``MailboxClient`` (DEALER).
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
from .socket import MailboxClient, MailboxServer, shutdown
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
