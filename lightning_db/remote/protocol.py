"""Frozen constants of the native protocol (any process, any thread).

The native protocol is what ``lightning_db.connect`` speaks to a
``NativeServer``. It rides on the mailbox (``mailbox/wire.py``): every
request is one REQUEST envelope whose ``op`` is one of the names below and
whose payload is a msgpack array; the answer is a REPLY (the result) or an
ERROR (the exception, rebuilt on the client by class name). A ``release``
sent from a finaliser or for an abandoned scan is a TELL (nothing comes
back); ``touch`` is meant as a TELL; the mailbox's own ``_ping`` CONTROL
is answered like ``ping``.

Never rename an op or renumber a value here: an older client must keep
talking to a newer server, or be told clearly that it cannot
(``hello`` answers the server's ``NATIVE_VERSION``). Retired values stay as
comments.

    op           payload                                          answer
    hello        [session]                                        {version, limits, server info}
    ping         [session]                                        True
    touch        [session]                  (TELL)                -
    bye          [session]                                        nil (the session's objects released)
    get          [key]                                            value | nil
    get_ex       [key]                                            [value, expiry | nil] | nil
    get_many     [keys]                                           [value | nil, ...]
    put          [key, value, sync, ttl, expire_at]               nil
    delete       [key, sync]                                      nil
    put_many     [[[key, value], ...], sync]                      nil
    batch        [[write, ...], sync]                             nil
    scan         [snapshot, session, start, end, reverse, limit, page]   [[[k, v], ...], cursor]
    scan_next    [cursor, page]                                   [[[k, v], ...], cursor]
    snapshot     [session]                                        snapshot id
    snap_get     [snapshot, key]                                  value | nil
    snap_get_many [snapshot, keys]                                [value | nil, ...]
    release      [object id]                (REQUEST or TELL)     nil
    tx           [tx, session, isolation, sync, [write, ...], action, args]   [tx, result]
    flush, compact, verify, stats, health    []                   nil | dict

``snapshot`` of a scan is 0 (the database) or a snapshot id (a
transaction scans with the ``tx`` action SCAN). ``cursor`` 0 means the
scan is complete; any other value names the server-side iterator to read
on from (the same id until the end). ``tx`` 0 begins a transaction (the
answer names it); ``action`` is a ``TxAction``. A ``write`` is
``[Write.PUT, key, value, ttl, expire_at]`` or ``[Write.DELETE, key]``.
``sync`` nil means the server's policy; the server never acknowledges a
write before the database has it in its WAL. ``session`` is the token
(16 random bytes) of the connection that owns the objects created.
"""

from __future__ import annotations

from enum import IntEnum

NATIVE_VERSION = 1
"""Version of the op set below, answered by ``hello``."""

DEFAULT_PORT = 7379
DEFAULT_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"


class Write(IntEnum):
    """First element of a write in ``batch`` and ``tx``. Never renumber."""

    PUT = 0
    DELETE = 1


class TxAction(IntEnum):
    """What a ``tx`` request does after applying its buffered writes. Never renumber."""

    NONE = 0       # only the writes (never sent alone today; kept for symmetry)
    GET = 1        # args [key]            -> value | nil
    GET_MANY = 2   # args [keys]           -> [value | nil, ...]
    GET_EX = 3     # args [key]            -> [value, expiry | nil] | nil
    COMMIT = 4     # args []               -> nil
    ROLLBACK = 5   # args []               -> nil
    SCAN = 6       # args [start, end, reverse, limit, page] -> [[[k, v], ...], cursor]


OPS = ("hello", "ping", "touch", "bye", "get", "get_ex", "get_many", "put", "delete", "put_many",
       "batch", "scan", "scan_next", "snapshot", "snap_get", "snap_get_many", "release", "tx",
       "flush", "compact", "verify", "stats", "health")

PAGE_ROWS = 1024
"""Rows a client asks for per scan page."""

MAX_PAGE_ROWS = 65536
"""Most rows a server puts in one page, whatever the client asked."""

PAGE_BYTES = 8 << 20
"""A server closes a page once its keys and values reach this many bytes
(a page always holds at least one row), so a page of large values stays
far below the mailbox's frame limit."""
