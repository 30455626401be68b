"""MULTI / EXEC / DISCARD / WATCH / UNWATCH on top of optimistic transactions.

Which process runs what: a front-end process (see commands.py); queueing
happens in dispatch.py. EXEC runs every queued command in ONE serializable
transaction (``TxStore``), so the block is atomic and isolated across every
front end, and returns the array of their replies (a command that fails
gives its error in the array; the others still apply, as in Redis). A
commit that loses a conflict runs the whole block again (the commands are
deterministic) unless keys were watched, in which case EXEC answers a null
array as Redis does when a watched key changed.

WATCH remembers each key's value and expiry; EXEC reads them again inside
its transaction and aborts (null array) when any differs. The reads are part
of the serializable transaction, so a change that lands after them fails the
commit instead. Unlike Redis, a key overwritten with the same value and
expiry does not count as changed.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from ..errors import TransactionConflict
from .commands import Context, command
from .resp import NULL_ARRAY, OK, ReplyError
from .store import TxStore

if TYPE_CHECKING:
    from .dispatch import Dispatcher

__all__ = ["EXEC_RETRIES", "exec_block"]

EXEC_RETRIES = 50
_BACKOFF_BASE, _BACKOFF_CAP = 0.002, 0.25


@command("multi", 1, "noscript loading stale fast allow-busy", group="transactions", since="1.2.0", inline=True,
         summary="Starts a transaction.")
def multi(ctx: Context, argv: list[bytes]) -> Any:
    c = ctx.client
    if c.multi is not None:
        raise ReplyError("ERR MULTI calls can not be nested")
    c.multi = []
    c.multi_dirty = False
    return OK


@command("discard", 1, "noscript loading stale fast allow-busy", group="transactions", since="2.0.0",
         inline=True, summary="Discards a transaction.")
def discard(ctx: Context, argv: list[bytes]) -> Any:
    if ctx.client.multi is None:
        raise ReplyError("ERR DISCARD without MULTI")
    ctx.client.reset_multi()
    return OK


@command("watch", -2, "noscript loading stale fast allow-busy", (1, -1, 1), group="transactions", since="2.2.0",
         summary="Monitors changes to keys to determine the execution of a transaction.", complexity="O(N)")
def watch(ctx: Context, argv: list[bytes]) -> Any:
    c = ctx.client
    if c.multi is not None:
        raise ReplyError("ERR WATCH inside MULTI is not allowed")
    for key in argv[1:]:
        if key not in c.watched:
            c.watched[key] = ctx.store.get_ex(key)
    return OK


@command("unwatch", 1, "noscript loading stale fast allow-busy", group="transactions", since="2.2.0",
         inline=True, summary="Forgets about watched keys of a transaction.")
def unwatch(ctx: Context, argv: list[bytes]) -> Any:
    ctx.client.watched = {}
    return OK


@command("exec", 1, "noscript loading stale skip-slowlog", group="transactions", since="1.2.0",
         summary="Executes all commands in a transaction.", complexity="Depends on commands in the transaction")
def exec_(ctx: Context, argv: list[bytes]) -> Any:
    raise AssertionError("EXEC is run by the dispatcher")      # dispatch.py calls exec_block


def exec_block(dispatcher: Dispatcher, ctx: Context) -> Any:
    """EXEC: the queued commands in one serializable transaction."""
    c = ctx.client
    if c.multi is None:
        raise ReplyError("ERR EXEC without MULTI")
    queued, dirty, watched = c.multi, c.multi_dirty, c.watched
    c.reset_multi()
    if dirty:
        raise ReplyError("EXECABORT Transaction discarded because of previous errors.")
    db, expiry = ctx.server.db, ctx.server.direct.expiry
    attempt = 0
    while True:
        try:
            with db.transaction(isolation="serializable") as tx:
                store = TxStore(tx, expiry)
                if any(store.get_ex(k) != v for k, v in watched.items()):
                    tx.rollback()
                    return NULL_ARRAY
                inner = Context(c, ctx.server, store)
                return [dispatcher.run_queued(inner, argv) for argv in queued]
        except TransactionConflict:
            if watched or attempt >= EXEC_RETRIES:
                if watched:
                    return NULL_ARRAY
                raise
            time.sleep(random.uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** attempt)))
            attempt += 1
