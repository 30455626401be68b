"""The command table and what every handler shares.

Which process runs what: a front-end process. A handler is
``fn(ctx, argv) -> reply`` (argv[0] is the command name as sent); it runs
on the event loop when its command is marked ``inline`` (no database call,
or only reads served from shared memory), else in a worker thread. It
raises ``ReplyError`` with Redis's exact text for a caller's mistake and
must do so before it writes anything (EXEC keeps going after a failed
command, and ``Store.atomic`` may run it again after a conflict).

``@command`` registers a handler with what ``COMMAND INFO`` and ``COMMAND
DOCS`` report: arity (N exactly, -N at least N, name included), flags, key
positions, ACL categories, group, summary, version and complexity.
Subcommands (``CONFIG GET``) are commands of their own, found by
``container|sub``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .resp import ReplyError
from .store import Store

if TYPE_CHECKING:
    from .state import ClientState, ServerState

__all__ = [
    "COMMANDS",
    "INT_MAX",
    "INT_MIN",
    "MAX_EXPIRE_MS",
    "Command",
    "Context",
    "command",
    "err_arity",
    "err_int",
    "err_syntax",
    "lookup",
    "parse_float",
    "parse_int",
]

INT_MAX = (1 << 63) - 1
INT_MIN = -(1 << 63)
MAX_EXPIRE_MS = 10**14 - 1         # the engine keeps expiry times below 1e11 unix seconds
_INT = re.compile(rb"-?[1-9][0-9]{0,19}|0")
_FLOAT = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)", re.IGNORECASE)
_HEX_FLOAT = re.compile(rb"[+-]?0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?[0-9]+)?", re.IGNORECASE)

Handler = Callable[["Context", list[bytes]], Any]


@dataclass(eq=False)
class Command:
    name: str                          # lower case; "container|sub" for a subcommand
    handler: Handler | None
    arity: int
    flags: tuple[str, ...]
    keys: tuple[int, int, int]         # first key, last key (-1: the last argument), step
    categories: tuple[str, ...]
    group: str
    summary: str
    since: str
    complexity: str
    inline: bool
    subcommands: dict[bytes, Command] = field(default_factory=dict)

    def info(self) -> list[Any]:
        """The COMMAND INFO entry (Redis 7 layout)."""
        return [self.name.encode(), self.arity, [f.encode() for f in self.flags], *self.keys,
                [c.encode() for c in self.categories], [], [],
                [s.info() for s in self.subcommands.values()]]

    def docs(self) -> dict[bytes, Any]:
        d: dict[bytes, Any] = {b"summary": self.summary.encode(), b"since": self.since.encode(),
                               b"group": self.group.encode(), b"complexity": self.complexity.encode()}
        if self.subcommands:
            d[b"subcommands"] = {s.name.encode(): s.docs() for s in self.subcommands.values()}
        return d


COMMANDS: dict[bytes, Command] = {}

_CATEGORY = {"string": "@string", "generic": "@keyspace", "connection": "@connection",
             "server": "@admin", "transactions": "@transaction"}


def command(name: str, arity: int, flags: str = "", keys: tuple[int, int, int] = (0, 0, 0), *,
            group: str, summary: str, since: str = "1.0.0", complexity: str = "O(1)",
            inline: bool = False, acl: str = "") -> Callable[[Handler | None], Handler | None]:
    """Register the decorated handler as *name* (``"config|get"`` for a
    subcommand; a container is registered with handler None)."""

    def register(fn: Handler | None) -> Handler | None:
        fl = tuple(flags.split())
        cats = [_CATEGORY.get(group, "@" + group)]
        cats += ["@write"] if "write" in fl else ["@read"] if "readonly" in fl else []
        cats += ["@fast"] if "fast" in fl else ["@slow"]
        cats += acl.split()
        cmd = Command(name, fn, arity, fl, keys, tuple(dict.fromkeys(cats)), group, summary, since,
                      complexity, inline)
        parent, _, sub = name.partition("|")
        if sub:
            COMMANDS[parent.encode()].subcommands[sub.encode()] = cmd
        else:
            COMMANDS[name.encode()] = cmd
        return fn

    return register


def lookup(name: bytes) -> Command | None:
    return COMMANDS.get(name) or COMMANDS.get(name.lower())


class Context:
    """What a handler sees: the connection, the front end and the store
    its command runs against."""

    __slots__ = ("client", "server", "store")

    def __init__(self, client: ClientState, server: ServerState, store: Store) -> None:
        self.client, self.server, self.store = client, server, store

    @property
    def db(self) -> Any:
        return self.server.db


# --- argument parsing with Redis's error texts -----------------------------------------------------


def err_arity(name: str) -> ReplyError:
    return ReplyError(f"ERR wrong number of arguments for '{name}' command")


def err_syntax() -> ReplyError:
    return ReplyError("ERR syntax error")


def err_int() -> ReplyError:
    return ReplyError("ERR value is not an integer or out of range")


def parse_int(b: bytes, error: Callable[[], ReplyError] = err_int) -> int:
    """A signed 64-bit integer in canonical decimal (Redis's string2ll)."""
    if _INT.fullmatch(b) is None:
        raise error()
    n = int(b)
    if not INT_MIN <= n <= INT_MAX:
        raise error()
    return n


def parse_float(b: bytes) -> float:
    """A number as Redis's string2ld (strtold) reads it: decimal or
    hexadecimal (0x10, 0x1.8p3), no spaces, no NaN."""
    if _FLOAT.fullmatch(b) is not None:
        return float(b)
    if _HEX_FLOAT.fullmatch(b) is not None:
        try:
            return float.fromhex(b.decode())
        except OverflowError:
            return math.copysign(math.inf, -1.0 if b.startswith(b"-") else 1.0)
    raise ReplyError("ERR value is not a valid float")


def now_ms() -> int:
    return int(time.time() * 1000)
