"""Frozen wire constants of the mailbox protocol (any process, any thread).

Shared by every encoder and decoder, like ``storage/format.py`` for files.
Never renumber a value here: a caller built from an older tree must still
talk to a newer worker, or be told clearly that it cannot. Retired values
stay as comments.

frame    := PROTOCOL_VERSION:u8 msgpack([id, kind, op, deadline, reply_to, payload])
message  := one zmq multipart message; each part after the ROUTER's routing
            identity is one frame (envelope), so many operations travel in one
            send (batching) and many messages are in flight at once (pipelining).

    id        u64   chosen by the asker, echoed in the reply; 0 = none
    kind      u8    MsgKind
    op        str   the operation name; control ops start with "_"
    deadline  f64   absolute time.time() after which nobody waits; 0 = none
    reply_to  bin | nil   where a forwarded reply should go (routing id or
                          address); nil = back to the sender
    payload   any msgpack value (tuples travel as arrays and arrive as lists)

An ERROR envelope's payload is [exception class name, message] optionally
followed by the taxonomy class name (TransientError, RecoverableError,
CriticalError, FatalError, InvalidArgument) so that an exception class the
receiver does not know still keeps its taxonomy class.
"""

from __future__ import annotations

from enum import IntEnum

PROTOCOL_VERSION = 1
"""First byte of every frame. A frame with another first byte is refused."""


class MsgKind(IntEnum):
    """Kind of an envelope. Part of the wire format: never renumber."""

    REQUEST = 1   # an ask: exactly one REPLY or ERROR comes back with the same id
    REPLY = 2     # the answer to a REQUEST or CONTROL
    ERROR = 3     # a failed REQUEST or CONTROL, or an unreadable frame
    TELL = 4      # fire and forget: nothing comes back
    CONTROL = 5   # runtime messages (_stop, _ping, _stats): answered like REQUEST


ENVELOPE_FIELDS = 6
"""Number of elements of the msgpack array after the version byte."""

MAX_FRAME_SIZE = 1 << 29
"""Largest frame (512 MiB) a peer accepts: room for a batch of maximum-size
values (64 MiB each by default) plus overhead. Larger frames are refused."""

MAX_ID = (1 << 64) - 1
"""Envelope ids are unsigned 64-bit integers."""

MAX_OP_LENGTH = 256
"""Longest operation name, in characters."""

CONTROL_STOP = "_stop"
CONTROL_PING = "_ping"
CONTROL_STATS = "_stats"
