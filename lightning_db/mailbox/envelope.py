"""Envelopes: the one record every mailbox frame carries (any process, any
thread; pure functions over bytes, no zmq).

An ``Envelope`` keeps the routing metadata (id, kind, op, deadline, reply_to)
apart from the payload, like pykka's envelope. ``encode`` writes the frame
laid out in ``wire.py``; ``decode`` reads one and raises ``MalformedFrame``
for anything wrong, and never any other exception: it faces bytes from any
peer, and a worker must survive every one of them.

Errors cross the wire as ERROR envelopes whose payload is
``[class name, message, taxonomy name]`` (see ``error_payload``);
``raise_remote`` turns one back into an exception of the registered class of
that name, falling back to the taxonomy class or ``RemoteError``. Names are
looked up in a table, never evaluated.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import msgpack

from ..errors import (
    CriticalError,
    FatalError,
    InvalidArgument,
    LightningError,
    RecoverableError,
    TransientError,
    classify,
)
from .errors import MalformedFrame, RemoteError, lookup_error
from .wire import (
    ENVELOPE_FIELDS,
    MAX_FRAME_SIZE,
    MAX_ID,
    MAX_OP_LENGTH,
    PROTOCOL_VERSION,
    MsgKind,
)

__all__ = ["Envelope", "decode", "error_payload", "error_from_payload", "raise_remote"]

# The version byte is written by packing it as a msgpack value: a positive
# fixint (< 128) encodes to exactly that byte, which saves a concatenation
# (a copy of the whole frame) per encode.
assert 0 <= PROTOCOL_VERSION < 128

_KINDS = {k.value: k for k in MsgKind}
_TAXONOMY = {c.__name__: c for c in (TransientError, RecoverableError, CriticalError, FatalError, InvalidArgument)}


class Envelope:
    """One message: metadata plus payload. Treat it as immutable once built.

    id        int, chosen by the asker and echoed in the answer (0 = none)
    kind      MsgKind
    op        str, the operation; control ops start with "_"
    deadline  float, absolute ``time.time()`` after which nobody waits (0 = none)
    reply_to  bytes | None, where a forwarded answer should go (None = the sender)
    payload   any msgpack-able value
    """

    __slots__ = ("id", "kind", "op", "deadline", "reply_to", "payload")

    def __init__(self, id: int, kind: MsgKind, op: str, deadline: float = 0.0,
                 reply_to: bytes | None = None, payload: Any = None) -> None:
        self.id = id
        self.kind = kind
        self.op = op
        self.deadline = deadline
        self.reply_to = reply_to
        self.payload = payload

    def encode(self) -> bytes:
        """The frame: version byte + msgpack array. Raises ``MalformedFrame``
        when a field or the payload cannot be encoded or the frame would
        exceed ``MAX_FRAME_SIZE``."""
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        try:
            packer.pack(PROTOCOL_VERSION)
            packer.pack([self.id, int(self.kind), self.op, self.deadline, self.reply_to, self.payload])
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedFrame(f"cannot encode envelope {self.op!r}: {exc}", self._safe_id()) from None
        data = packer.bytes()
        if len(data) > MAX_FRAME_SIZE:
            raise MalformedFrame(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME_SIZE} bytes",
                                 self._safe_id())
        return data

    def _safe_id(self) -> int:
        return self.id if type(self.id) is int and 0 <= self.id <= MAX_ID else 0

    def reply(self, payload: Any) -> Envelope:
        """The REPLY answering this envelope."""
        return Envelope(self.id, MsgKind.REPLY, self.op, 0.0, None, payload)

    def error(self, exc: BaseException) -> Envelope:
        """The ERROR envelope answering this envelope with *exc*."""
        return Envelope(self.id, MsgKind.ERROR, self.op, 0.0, None, error_payload(exc))

    @staticmethod
    def decode(data: Any) -> Envelope:
        """Same as the module's ``decode``."""
        return decode(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return (self.id, self.kind, self.op, self.deadline, self.reply_to, self.payload) == (
            other.id, other.kind, other.op, other.deadline, other.reply_to, other.payload)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Envelope(id={self.id}, kind={self.kind!r}, op={self.op!r}, deadline={self.deadline}, "
                f"reply_to={self.reply_to!r}, payload={self.payload!r:.200})")


def decode(data: Any) -> Envelope:
    """Read one frame. Raises ``MalformedFrame`` (and nothing else) for a
    wrong version byte, bytes that are not one msgpack value, a value that is
    not a well-typed envelope array, or a frame over ``MAX_FRAME_SIZE``.
    Arrays in the payload arrive as lists."""
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError):
        raise MalformedFrame(f"a frame is a bytes-like object, not {type(data).__name__}") from None
    size = len(view)
    if size == 0:
        raise MalformedFrame("empty frame")
    if size > MAX_FRAME_SIZE:
        raise MalformedFrame(f"frame of {size} bytes exceeds the limit of {MAX_FRAME_SIZE} bytes")
    if view[0] != PROTOCOL_VERSION:
        raise MalformedFrame(f"protocol version {view[0]} is not {PROTOCOL_VERSION}")
    try:
        fields = msgpack.unpackb(view[1:], raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises many types on bad input; all mean the same here
        raise MalformedFrame(f"frame is not one msgpack value: {type(exc).__name__}") from None
    if type(fields) is not list or len(fields) != ENVELOPE_FIELDS:
        raise MalformedFrame(f"an envelope is an array of {ENVELOPE_FIELDS} fields")
    id_, kind, op, deadline, reply_to, payload = fields
    if type(id_) is not int or not 0 <= id_ <= MAX_ID:
        raise MalformedFrame("envelope id is not an unsigned 64-bit integer")
    kind_ = _KINDS.get(kind) if type(kind) is int else None
    if kind_ is None:
        raise MalformedFrame(f"unknown message kind {kind!r:.40}", id_)
    if type(op) is not str or len(op) > MAX_OP_LENGTH:
        raise MalformedFrame(f"op is not a string of at most {MAX_OP_LENGTH} characters", id_)
    if type(deadline) is int:
        deadline = float(deadline)
    if type(deadline) is not float or not (math.isfinite(deadline) and deadline >= 0.0):
        raise MalformedFrame("deadline is not a finite, non-negative number", id_)
    if reply_to is not None and type(reply_to) is not bytes:
        raise MalformedFrame("reply_to is neither bytes nor nil", id_)
    return Envelope(id_, kind_, op, deadline, reply_to, payload)


def error_payload(exc: BaseException) -> list[Any]:
    """What an ERROR envelope carries for *exc*: its class name, its message
    and the name of its taxonomy class (None for an exception not ours)."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    taxonomy = classify(exc)
    return [type(exc).__name__, message, taxonomy.__name__ if taxonomy is not None else None]


def error_from_payload(payload: Any) -> LightningError:
    """Rebuild the exception an ERROR envelope describes (never raises).

    A registered class of that name (``lightning_db.errors`` and the mailbox's
    and actors' own classes) is rebuilt as itself; an unknown name keeps its
    taxonomy class when the sender named one, and becomes ``RemoteError``
    (critical) otherwise. The remote class name is kept in ``remote_name``.
    """
    if not (isinstance(payload, list) and len(payload) in (2, 3)
            and isinstance(payload[0], str) and isinstance(payload[1], str)):
        return MalformedFrame(f"unreadable error payload {payload!r:.80}")
    name, message = payload[0], payload[1]
    taxonomy = payload[2] if len(payload) == 3 and isinstance(payload[2], str) else None
    cls = lookup_error(name)
    if cls is not None:
        try:
            exc = cls(message)
        except Exception:  # a constructor that wants more than a message
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
    elif taxonomy in _TAXONOMY and taxonomy != "CriticalError":
        exc = _TAXONOMY[taxonomy](f"{name}: {message}")
    else:
        exc = RemoteError(f"{name}: {message}", name)
    exc.remote_name = name  # type: ignore[attr-defined]
    return exc


def raise_remote(payload: Any) -> NoReturn:
    """Raise the exception an ERROR envelope's payload describes."""
    raise error_from_payload(payload)
