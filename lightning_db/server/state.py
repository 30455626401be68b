"""State of one front end and of its connections.

Which process runs what: a front-end process. ``ServerState`` is shared by
every connection of the front end (the database handle, settings, counters,
the client registry); ``ClientState`` belongs to one connection. A
connection's commands run one at a time (on the event loop or in one worker
thread), so its state needs no lock; the registry is changed on the event
loop only and read as a copy. Counters are plain integers: a lost increment
under thread switches is accepted for INFO figures.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .resp import Limits
from .store import DirectStore

__all__ = ["MAX_CURSORS", "ClientState", "ServerState", "Settings"]

MAX_CURSORS = 4096           # SCAN cursors kept per connection (oldest dropped)


@dataclass
class Settings:
    """A front end's settings (CONFIG GET shows them; ``timeout`` and
    ``maxclients`` may be changed by CONFIG SET, per front end)."""

    data_dir: str
    host: str = "127.0.0.1"
    port: int = 6380
    index: int = 0                  # this front end's number, 0..frontends-1
    frontends: int = 1
    maxclients: int = 10000
    timeout: int = 0                # seconds a client may stay idle (0: forever)
    max_bulk: int = 64 << 20
    max_buffer: int = 128 << 20
    max_args: int = 1024 * 1024
    workers: int = 16               # threads running database calls


class ServerState:
    def __init__(self, db: Any, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.direct = DirectStore(db)
        self.limits = Limits(settings.max_bulk, settings.max_buffer, settings.max_args)
        self.started = time.time()
        self.pid = os.getpid()
        self.clients: dict[int, ClientState] = {}
        self._ids = itertools.count(1)
        self.stats: dict[str, int] = dict.fromkeys(
            ("total_connections_received", "total_commands_processed", "rejected_connections",
             "total_net_input_bytes", "total_net_output_bytes", "keyspace_hits", "keyspace_misses",
             "total_error_replies", "unexpected_error_replies"), 0)
        self.fatal: BaseException | None = None     # the database is gone: the front end stops
        self.loop_api = "asyncio"        # the event loop serving it: "uvloop" or "asyncio" (INFO)
        self.loop_sched = "normal"       # the loop thread's scheduling policy obtained: "batch" or "normal" (INFO)
        self.set_writer: Any = None       # the front end's SetWriter, if any (its counters go in INFO stats)

    def next_client_id(self) -> int:
        """Ids unique across front ends: n * frontends + index."""
        return next(self._ids) * self.settings.frontends + self.settings.index

    def reset_stats(self) -> None:
        for k in self.stats:
            self.stats[k] = 0
        if self.set_writer is not None:
            self.set_writer.reset_stats()


@dataclass(eq=False)
class ClientState:
    id: int
    addr: str = ""
    laddr: str = ""
    fd: int = -1
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    name: bytes | None = None
    lib_name: bytes = b""
    lib_ver: bytes = b""
    resp: int = 2
    last_cmd: str = "NULL"
    multi: list[list[bytes]] | None = None     # queued commands while in MULTI
    multi_dirty: bool = False                  # a queued command was refused: EXEC aborts
    watched: dict[bytes, Any] = field(default_factory=dict)   # key -> (value, expiry) at WATCH
    cursors: dict[int, bytes] = field(default_factory=dict)   # SCAN cursor -> last key returned
    next_cursor: int = 0
    closing: bool = False                      # QUIT, or a fatal error: close after the reply
    qbuf: int = 0
    commands: int = 0

    def reset_multi(self) -> None:
        self.multi = None
        self.multi_dirty = False
        self.watched = {}

    def new_cursor(self, last_key: bytes) -> int:
        self.next_cursor += 1
        self.cursors[self.next_cursor] = last_key
        if len(self.cursors) > MAX_CURSORS:
            del self.cursors[next(iter(self.cursors))]
        return self.next_cursor

    def flags(self) -> str:
        return "x" if self.multi is not None else "N"
