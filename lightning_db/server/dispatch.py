"""From a parsed request to an encoded reply: lookup, arity, MULTI queueing,
the handler, and the mapping of database errors to Redis errors.

Which process runs what: a front-end process, on the event loop or in a
worker thread (``Dispatcher.inline`` says which a request may use).

Database errors by taxonomy (errors.py), never by message text:
``InvalidArgument`` -> ``ERR <message>``; ``TransientError`` (a conflict
that outlived its retries, a timeout, a stalled write) -> ``TRYAGAIN
<message>``: retrying helps; recoverable and critical faults -> ``ERR
<class>: <message>``; a ``FatalError`` (the database shut down) -> ``ERR``
and the connection closes, and the front end stops.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import (
    FatalError,
    InvalidArgument,
    LightningError,
    TransactionConflict,
    TransientError,
)
from . import admin, keyspace, multi, strings  # noqa: F401 - they register their commands
from .commands import Command, Context, err_arity, lookup
from .multi import exec_block
from .resp import QUEUED, ReplyError, encode, error_line
from .state import ClientState, ServerState

__all__ = ["Dispatcher", "db_error"]

log = logging.getLogger("lightning_db.server")

# Run at once even inside MULTI (everything else is queued).
_NOT_QUEUED = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})
# A pipelined run of at least SET_RUN_MIN plain SETs (no options) is written
# together: by the front end's SetWriter where it has one (setwriter.py),
# else one put_many per shard (not atomic across shards; Redis does not make
# a pipeline atomic either). The replies are the same.
SET_RUN_MIN, SET_RUN_MAX = 8, 4096
_OK_LINE = b"+OK\r\n"


def db_error(exc: LightningError) -> ReplyError:
    """The reply for a database error (see the module docstring)."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, InvalidArgument):
        return ReplyError(f"ERR {msg}")
    if isinstance(exc, TransientError):
        return ReplyError(f"TRYAGAIN {type(exc).__name__}: {msg}")
    return ReplyError(f"ERR {type(exc).__name__}: {msg}")


def _unknown(argv: list[bytes]) -> ReplyError:
    args = ""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += "'" + a.decode("utf-8", "replace")[:128 - len(args)] + "' "
    return ReplyError(f"ERR unknown command '{argv[0].decode('utf-8', 'replace')[:128]}', "
                      f"with args beginning with: {args}")


class Dispatcher:
    """Runs requests of the front end's connections."""

    def __init__(self, server: ServerState, metrics: Any = None) -> None:
        self.server = server
        self.metrics = metrics          # metrics.FrontendMetrics, or None

    def resolve(self, argv: list[bytes]) -> Command | ReplyError:
        """The command (or subcommand) *argv* names, arity checked."""
        cmd = lookup(argv[0])
        if cmd is None:
            return _unknown(argv)
        n = len(argv)
        if cmd.subcommands and n >= 2:
            sub = cmd.subcommands.get(argv[1].lower())
            if sub is None:
                return ReplyError(f"ERR unknown subcommand '{argv[1].decode('utf-8', 'replace')[:128]}'. "
                                  f"Try {cmd.name.upper()} HELP.")
            cmd = sub
        if (cmd.arity > 0 and n != cmd.arity) or n < -cmd.arity:
            return err_arity(cmd.name)
        return cmd

    def inline(self, client: ClientState, argv: list[bytes]) -> bool:
        """Whether the request may run on the event loop (no database call,
        or reads served from shared memory only)."""
        cmd = self.resolve(argv)
        if isinstance(cmd, ReplyError):
            return True
        if client.multi is not None:
            return cmd.name != "exec" and cmd.name != "watch"
        return cmd.inline

    def execute(self, client: ClientState, argv: list[bytes]) -> bytes:
        """Run one request; its encoded reply."""
        if self.metrics is None:
            return self._execute(client, argv)
        started = time.perf_counter()
        data = self._execute(client, argv)
        cmd = lookup(argv[0])
        self.metrics.command("unknown" if cmd is None else cmd.name, time.perf_counter() - started,
                             data[:1] == b"-")
        return data

    def get_run(self, client: ClientState, cmds: list[list[bytes]], i: int, budget: int,
                ) -> tuple[list[bytes], int, int]:
        """The short way of a run of ``GET key`` requests (``argv[0]``
        ``GET`` or ``get``, two arguments) from ``cmds[i]`` on, the hot read
        of pipelines: answered from shared memory outside MULTI, counted in
        the server's and the client's counters as the general path counts
        them, the metrics left to the caller (it counts the run at once).
        Stops before the first other command, the first read that fails
        (the general path answers it its way), or once the replies reach
        *budget* bytes. Returns (replies, their size, the index of the
        first command not answered)."""
        if client.multi is not None:
            return [], 0, i
        get = self.server.direct.get
        resp3 = client.resp == 3
        out: list[bytes] = []
        size = hits = 0
        j, n = i, len(cmds)
        while j < n:
            argv = cmds[j]
            if len(argv) != 2 or not (argv[0] == b"GET" or argv[0] == b"get"):
                break
            try:
                v = get(argv[1])
            except Exception:  # noqa: BLE001 - the general path reads again and answers the error its way
                break
            if type(v) is bytes:
                data = b"$%d\r\n%s\r\n" % (len(v), v)
                hits += 1
            else:
                data = encode(v, resp3)
                hits += v is not None
            out.append(data)
            size += len(data)
            j += 1
            if size >= budget:
                break
        if j > i:
            stats = self.server.stats
            stats["total_commands_processed"] += j - i
            stats["keyspace_hits"] += hits
            stats["keyspace_misses"] += j - i - hits
            client.commands += j - i
            client.last_cmd = "get"
        return out, size, j

    def _execute(self, client: ClientState, argv: list[bytes]) -> bytes:
        server = self.server
        server.stats["total_commands_processed"] += 1
        client.commands += 1
        reply = self._call(client, argv)
        if isinstance(reply, ReplyError):
            server.stats["total_error_replies"] += 1
            return error_line(reply.message)
        try:
            return encode(reply, client.resp == 3)
        except TypeError:
            log.exception("cannot encode the reply of %r", argv[0])
            return error_line("ERR internal error: the reply could not be encoded")

    def _call(self, client: ClientState, argv: list[bytes]) -> Any:
        cmd = self.resolve(argv)
        if isinstance(cmd, ReplyError):
            if client.multi is not None:
                if argv[0].lower() == b"exec":       # as Redis: a bad EXEC ends the transaction
                    client.reset_multi()
                    return ReplyError("EXECABORT Transaction discarded because of: "
                                      + cmd.message.removeprefix("ERR "))
                client.multi_dirty = True
            return cmd
        client.last_cmd = cmd.name
        if client.multi is not None and cmd.name.partition("|")[0] not in _NOT_QUEUED:
            client.multi.append(argv)
            return QUEUED
        ctx = Context(client, self.server, self.server.direct)
        try:
            if cmd.name == "exec":
                return exec_block(self, ctx)
            assert cmd.handler is not None
            return cmd.handler(ctx, argv)
        except ReplyError as exc:
            return exc
        except LightningError as exc:
            return self._db_failure(client, exc)
        except Exception as exc:
            log.exception("command %r failed", cmd.name)
            self.server.stats["unexpected_error_replies"] += 1
            return ReplyError(f"ERR internal error in '{cmd.name}': {type(exc).__name__}: {exc}")

    def set_run(self, client: ClientState, cmds: list[list[bytes]], i: int) -> int:
        """How many plain SETs with valid keys and values start at *i* (0
        when fewer than SET_RUN_MIN)."""
        if client.multi is not None:
            return 0
        config = self.server.db.config
        max_key, max_value = config.max_key_size, config.max_value_size
        j, end = i, min(len(cmds), i + SET_RUN_MAX)
        while j < end:
            c = cmds[j]
            if (len(c) != 3 or (c[0] != b"SET" and c[0] != b"set" and c[0].lower() != b"set")
                    or not 0 < len(c[1]) <= max_key or len(c[2]) > max_value):
                break
            j += 1
        return j - i if j - i >= SET_RUN_MIN else 0

    def execute_sets(self, client: ClientState, cmds: list[list[bytes]], i: int, n: int) -> list[bytes]:
        """The replies of the *n* plain SETs at *i*, written as one batch."""
        self.server.stats["total_commands_processed"] += n
        client.commands += n
        client.last_cmd = "set"
        pairs = {c[1]: c[2] for c in cmds[i:i + n]}           # the last SET of a key wins
        started = time.perf_counter()
        try:
            self.server.direct.put_each_shard(list(pairs.items()))
        except LightningError as exc:
            self.server.stats["total_error_replies"] += n
            replies = [error_line(self._db_failure(client, exc).message)] * n
        else:
            replies = [_OK_LINE] * n
        if self.metrics is not None:
            self.metrics.commands("set", n, (time.perf_counter() - started) / n,
                                  n if replies[0][:1] == b"-" else 0)
        return replies

    def set_replies(self, client: ClientState, n: int, errors: list[BaseException | None] | None,
                    seconds: float) -> bytes:
        """Account *n* plain SETs written by the SetWriter (*errors*: None
        when all were written, else each one's error or None); their replies,
        joined. *seconds*: each one's share of the time they took."""
        stats = self.server.stats
        stats["total_commands_processed"] += n
        client.commands += n
        client.last_cmd = "set"
        if errors is None:
            replies = _OK_LINE * n
        else:
            out = []
            for e in errors:
                if e is None:
                    out.append(_OK_LINE)
                else:
                    assert isinstance(e, LightningError)
                    stats["total_error_replies"] += 1
                    out.append(error_line(self._db_failure(client, e).message))
            replies = b"".join(out)
        if self.metrics is not None:
            self.metrics.commands("set", n, seconds, 0 if errors is None else sum(e is not None for e in errors))
        return replies

    def run_queued(self, ctx: Context, argv: list[bytes]) -> Any:
        """One command of an EXEC block against its transaction; its reply
        (an error reply for its own failure). A conflict or a database fault
        ends the whole block."""
        cmd = self.resolve(argv)
        if isinstance(cmd, ReplyError):
            return cmd
        assert cmd.handler is not None
        try:
            return cmd.handler(ctx, argv)
        except ReplyError as exc:
            return exc
        except InvalidArgument as exc:
            return db_error(exc)

    def _db_failure(self, client: ClientState, exc: LightningError) -> ReplyError:
        if isinstance(exc, FatalError):
            client.closing = True
            if self.server.fatal is None:
                self.server.fatal = exc
                log.error("the database is gone (%s: %s); this front end stops", type(exc).__name__, exc)
        elif not isinstance(exc, (InvalidArgument, TransactionConflict)):
            log.warning("%s: %s", type(exc).__name__, exc)
        return db_error(exc)
