"""One front-end process: an asyncio RESP server on the shared port.

Which process runs what: ``python -m lightning_db.server.frontend`` is
started by serve.py, once per front end. Every front end binds the same
port with SO_REUSEPORT (the kernel spreads connections across them) and
opens the database itself (``lightning_db.open``: it attaches to the node
serve.py started).

Per connection, on the event loop, an asyncio protocol (``_Connection``:
callbacks, no stream reader or writer and no task per connection, which
cost a third more CPU a request, bench/RESULTS.md): parse what arrives
(resp.py), run the commands in order, write the replies. Commands marked
inline (no database call, or only reads served from shared memory) run on
the loop; the others run in a worker thread (``Settings.workers``), a
batch at a time, so a slow command of one client never holds up another,
except plain SETs, alone or in pipelined runs: the SetWriter
(setwriter.py) sends those of every connection from the loop itself, one
message per shard per loop turn. What a client sends while one of its
commands waits is queued behind it, and reading stops once a chunk
(``READ_CHUNK``) is queued or while its replies fill the transport's
buffer, so a client that sends faster than it is served (or reads its
replies slower) is held back by TCP instead of growing buffers: memory per
connection is bounded by the parser's limits, about a chunk of requests
and the transport's buffer plus ``OUT_CHUNK`` bytes of replies. A client
idle for ``timeout`` seconds (CONFIG SET timeout; 0: never) is closed by
the watcher, within WATCH_INTERVAL.

Stopping (SIGTERM/SIGINT, the parent gone, or the database shut down): stop
accepting, close idle connections, let running commands finish and send
their replies (up to ``STOP_GRACE`` seconds), then close the database.
Exit status: 0 stopped, 2 cannot listen or bad arguments, 3 the database
shut down (serve.py then stops everything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..actors.placement import batch_scheduling
from ..errors import LightningError
from .dispatch import Dispatcher
from .resp import RequestParser, error_line
from .serve import EXIT_FATAL, EXIT_USAGE
from .setwriter import SetWriter
from .state import ClientState, ServerState, Settings

__all__ = ["Frontend", "main", "settings_for"]

READ_CHUNK = 64 * 1024
OUT_CHUNK = 1 << 20          # replies written (and drained) once this many bytes are pending
STOP_GRACE = 10.0            # seconds running commands get to finish at stop
WATCH_INTERVAL = 0.5         # seconds between checks for a gone parent or a dead database

log = logging.getLogger("lightning_db.server")


def _addr(info: Any) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "")


class Frontend:
    """The RESP server of one front-end process over an open database."""

    def __init__(self, db: Any, settings: Settings, metrics: Any = None) -> None:
        self.server = ServerState(db, settings)
        self.metrics = metrics          # metrics.FrontendMetrics, or None
        self.dispatcher = Dispatcher(self.server, metrics)
        self.pool = ThreadPoolExecutor(max(1, settings.workers), thread_name_prefix="ldb-resp")
        self.connections: dict[int, _Connection] = {}   # client id -> its connection
        self._stop: asyncio.Event | None = None
        self.sets: SetWriter | None = None        # plain SETs without a thread (setwriter.py)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.stop_reason = ""

    # --- lifecycle --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the front end to stop (event loop thread)."""
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        if self._stop is not None:
            self._stop.set()

    async def run(self, ready: Callable[[], None] | None = None, watch_parent: bool = True) -> int:
        """Serve until stopped; the exit status (see the module docstring)."""
        s = self.server.settings
        self._stop = asyncio.Event()
        loop = self.loop = asyncio.get_running_loop()
        self.server.loop_api = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        self.server.loop_sched = batch_scheduling()     # after the mailbox's threads started: they keep theirs
        db = self.server.db
        if all(hasattr(db, a) for a in ("ring", "refs", "tokens", "_send_write")):
            self.sets = self.server.set_writer = SetWriter(db, loop, self.pool)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
            except (RuntimeError, ValueError):       # not the main thread (tests)
                pass
        listener = await loop.create_server(lambda: _Connection(self), s.host, s.port, reuse_port=True,
                                            backlog=511)
        if ready is not None:
            ready()
        watcher = asyncio.create_task(self._watch(os.getppid() if watch_parent else None))
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            listener.close()
            await self._close_connections()
            self.pool.shutdown(wait=True)
            if self.sets is not None:
                self.sets.close()
            if self.metrics is not None:
                self.metrics.flush()
        return EXIT_FATAL if self.server.fatal is not None else 0

    async def _watch(self, parent: int | None) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if parent is not None and os.getppid() != parent:
                self.request_stop("the serve process is gone")
            if self.server.fatal is not None:
                self.request_stop(f"the database is gone: {self.server.fatal}")
            if self.metrics is not None:
                self.metrics.flush()
            idle = self.server.settings.timeout
            if idle > 0:
                now = time.time()
                for conn in list(self.connections.values()):
                    conn.close_if_idle(idle, now)

    async def _close_connections(self) -> None:
        """Close the connections that wait for nothing now; the others once
        their command answered (they close themselves: ``stopping``), or at
        STOP_GRACE; a client that does not read its last replies is cut off
        a second later."""
        loop = asyncio.get_running_loop()
        for conn in list(self.connections.values()):
            if not conn.waiting:
                conn.close()
        deadline = loop.time() + STOP_GRACE
        while any(c.waiting for c in self.connections.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            conn.close()
        deadline = loop.time() + 1.0
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            conn.abort()

    def run_batch(self, client: ClientState, cmds: list[list[bytes]], i: int) -> tuple[list[bytes], int]:
        """Worker thread: commands from *i* on until the replies reach
        OUT_CHUNK bytes or the connection is closing."""
        dispatcher = self.dispatcher
        execute, set_run = dispatcher.execute, dispatcher.set_run
        out: list[bytes] = []
        size = 0
        while i < len(cmds) and size < OUT_CHUNK and not client.closing:
            n = set_run(client, cmds, i)
            if n:
                replies = dispatcher.execute_sets(client, cmds, i, n)
                out += replies
                size += len(replies[0]) * n
                i += n
                continue
            data = execute(client, cmds[i])
            out.append(data)
            size += len(data)
            i += 1
        return out, i


class _Connection(asyncio.Protocol):
    """One client connection (event loop thread): read a chunk, parse, run
    its commands in order, write their replies. A command that waits (a
    SET run on the SetWriter, or a batch in a worker thread) leaves the
    connection *waiting*: what the client sends meanwhile is parsed and
    queued behind it, and reading pauses once a chunk is queued (TCP then
    holds the client back); the rest runs when the answer comes. While the
    transport's buffer of replies is over its high-water mark no command
    runs and nothing is read."""

    def __init__(self, frontend: "Frontend") -> None:
        self.fe = frontend
        self.client: ClientState | None = None
        self.transport: Any = None
        self.parser: RequestParser | None = None
        self.cmds: list[list[bytes]] = []
        self.i = 0                   # the next command of cmds to run
        self.later: list[list[bytes]] = []     # commands read, not yet taken into cmds
        self.waiting = False         # a command's answer is awaited
        self.queued = 0              # bytes read while waiting (or blocked), not yet run
        self.paused = False          # reading paused here
        self.blocked = False         # the transport's buffer is full (pause_writing)
        self.started = 0.0           # when the lone SET awaited was sent (perf_counter)

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # uvloop's transports are not asyncio.Transport subclasses
        fe, server = self.fe, self.fe.server
        if fe.stopping or len(server.clients) >= server.settings.maxclients:
            server.stats["rejected_connections"] += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        try:
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        client = ClientState(server.next_client_id(), addr=_addr(transport.get_extra_info("peername")),
                             laddr=_addr(transport.get_extra_info("sockname")),
                             fd=sock.fileno() if sock is not None else -1)
        self.client = client
        self.parser = RequestParser(server.limits)
        server.clients[client.id] = client
        fe.connections[client.id] = self
        server.stats["total_connections_received"] += 1
        if fe.metrics is not None:
            fe.metrics.connections += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        fe = self.fe
        fe.server.clients.pop(client.id, None)
        fe.connections.pop(client.id, None)
        if fe.metrics is not None:
            fe.metrics.connections -= 1

    def data_received(self, data: bytes) -> None:
        client, parser = self.client, self.parser
        if client is None or parser is None or client.closing:
            return
        fe = self.fe
        fe.server.stats["total_net_input_bytes"] += len(data)
        if fe.metrics is not None:
            fe.metrics.bytes_in += len(data)
        client.last_active = time.time()
        self.later += parser.feed(data)
        client.qbuf = parser.buffered
        if self.waiting or self.blocked:
            # Behind the command that waits (a worker thread may be running
            # through self.cmds): taken up once it answered.
            self.queued += len(data)
            if self.queued >= READ_CHUNK:
                self._pause()
            return
        self._go()

    def pause_writing(self) -> None:
        self.blocked = True

    def resume_writing(self) -> None:
        self.blocked = False
        if not self.waiting:
            self._go()

    # --- running commands -------------------------------------------------------------------
    def _go(self) -> None:
        """Run the queued commands in order until one must wait for its
        answer, the replies fill the transport's buffer, or none is left."""
        client, fe = self.client, self.fe
        if client is None or self.waiting:
            return
        if not self.later and self.i >= len(self.cmds) and not (
                self.paused or client.closing or fe.stopping or self.parser.error):
            return              # nothing to run, nothing to resume or close
        dispatcher = fe.dispatcher
        if self.later:          # what was read since: behind what is left
            self.cmds = self.cmds[self.i:] + self.later if self.i < len(self.cmds) else self.later
            self.i, self.later, self.queued = 0, [], 0
        cmds, i = self.cmds, self.i
        n = len(cmds)
        out: list[bytes] = []
        size = 0
        metrics = fe.metrics
        gets, took = 0, 0.0     # GETs answered the short way here, and their time (counted once, below)
        while i < n and not client.closing:
            if size >= OUT_CHUNK:
                self._write(out)
                out, size = [], 0
            if self.blocked:
                break
            argv = cmds[i]
            nargs = len(argv)
            if nargs == 2 and (argv[0] == b"GET" or argv[0] == b"get"):
                # GETs run on the loop, always: a run of them the short way
                began = time.perf_counter() if metrics is not None else 0.0
                got, grew, j = dispatcher.get_run(client, cmds, i, OUT_CHUNK - size)
                if j > i:
                    if metrics is not None:
                        gets += j - i
                        took += time.perf_counter() - began
                    out += got
                    size += grew
                    i = j
                    continue
                data = dispatcher.execute(client, argv)             # the general path, counted there
            elif nargs == 3 and (argv[0] == b"SET" or argv[0] == b"set") and client.multi is None:
                data = None                                         # a write: never on the loop
            elif dispatcher.inline(client, argv):
                data = dispatcher.execute(client, argv)
            else:
                data = None
            if data is not None:
                out.append(data)
                size += len(data)
                i += 1
                continue
            if fe.stopping:
                client.closing = True
                break
            if out:
                self._write(out)
            if gets:
                metrics.commands("get", gets, took / gets, 0)
            sets = fe.sets
            if sets is not None and client.multi is None and sets.ready():
                # A run needs SET_RUN_MIN SETs in a row: none starts at the last command read.
                run = 0 if i + 1 == n else dispatcher.set_run(client, cmds, i)
                if not run and sets.plain(argv):            # a SET alone
                    self.i = i + 1
                    self.waiting = True
                    self.started = time.perf_counter()
                    sets.set_one(argv[1], argv[2], self._set_done)
                    return
                if run:
                    self.i = i + run
                    self.waiting = True
                    taken = cmds[i:i + run]
                    started = time.perf_counter()
                    sets.set_many([c[1] for c in taken], [c[2] for c in taken],
                                  lambda errors: self._sets_done(run, started, errors))
                    return
            self.i = i
            self.waiting = True
            fut = fe.loop.run_in_executor(fe.pool, fe.run_batch, client, cmds, i)
            fut.add_done_callback(self._batch_done)
            return
        self.i = i
        if out:
            self._write(out)
        if gets:
            metrics.commands("get", gets, took / gets, 0)
        if client.closing or fe.stopping:
            self.close()
        elif i >= n:
            parser = self.parser
            if parser is not None and parser.error is not None:
                client.closing = True
                self._write([error_line(f"ERR {parser.error}")])
                self.close()
            elif self.paused:
                self.paused = False
                self.transport.resume_reading()
        elif self.blocked:
            self._pause()

    def _resume(self, out: list[bytes]) -> None:
        """A waiting command answered: write *out*, run what follows."""
        self.waiting = False
        if self.client is None:
            return
        if out:
            self._write(out)
        self._go()

    def _set_done(self, exc: BaseException | None) -> None:
        """A SET alone answered (None: written; else its error): a run of one."""
        self._sets_done(1, self.started, None if exc is None else [exc])

    def _sets_done(self, run: int, started: float, errors: list[BaseException | None] | None) -> None:
        client = self.client
        if client is None:
            self.waiting = False
            return
        for e in errors or ():
            if e is not None and not isinstance(e, LightningError):
                self._fail(e)
                return
        each = (time.perf_counter() - started) / run
        self._resume([self.fe.dispatcher.set_replies(client, run, errors, each)])

    def _batch_done(self, fut: asyncio.Future[tuple[list[bytes], int]]) -> None:
        if fut.cancelled():
            self._fail(None)
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
            return
        out, self.i = fut.result()
        self._resume(out)

    def _fail(self, exc: BaseException | None) -> None:
        """A command failed outside the protocol (a defect, or the pool
        shut down): log it and drop the connection."""
        self.waiting = False
        if exc is not None:
            log.error("a command of client %s failed: %s: %s",
                      self.client.id if self.client else "?", type(exc).__name__, exc)
        self.abort()

    def _write(self, out: list[bytes]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        fe = self.fe
        fe.server.stats["total_net_output_bytes"] += len(data)
        if fe.metrics is not None:
            fe.metrics.bytes_out += len(data)
        self.transport.write(data)

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def close(self) -> None:
        """Close once the replies written so far are sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping replies not yet sent."""
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self, idle: float, now: float) -> None:
        """Close the connection if it waits for nothing and its client sent
        nothing for *idle* seconds (0: never)."""
        client = self.client
        if client is not None and not self.waiting and idle > 0 and now - client.last_active > idle:
            self.close()


# --- the process ------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lightning_db.server.frontend", description="One RESP front end.")
    p.add_argument("--data", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6380)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--frontends", type=int, default=1)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--config", default=None, help="Config fields as JSON")
    p.add_argument("--ready-fd", type=int, default=None, help="write 'ready' here once listening")
    return p.parse_args(argv)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv: less CPU per request than asyncio's own
    loop, bench/RESULTS.md) where it is installed, else asyncio's (None)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def settings_for(config: Any, **fields: Any) -> Settings:
    """Front-end settings whose limits follow the database's: a bulk string
    may be as long as the largest key or value, an incomplete request may
    hold two of the largest values."""
    biggest = max(config.max_value_size, config.max_key_size)
    return Settings(max_bulk=biggest, max_buffer=2 * biggest + (1 << 20), **fields)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"lightning-db frontend-{args.index} [%(process)d] %(levelname)s %(message)s")
    import lightning_db
    from lightning_db.errors import LightningError

    try:
        config = lightning_db.Config.from_dict(json.loads(args.config)) if args.config else lightning_db.Config()
        db = lightning_db.open(args.data, config=config)
    except (LightningError, ValueError) as exc:
        log.error("cannot open the database at %s: %s", args.data, exc)
        return EXIT_USAGE
    try:
        settings = settings_for(config, data_dir=os.path.abspath(args.data), host=args.host, port=args.port,
                                index=args.index, frontends=args.frontends, workers=args.workers)
        from .metrics import METRICS_DIR_ENV, FrontendMetrics
        metrics_dir = os.environ.get(METRICS_DIR_ENV)
        frontend = Frontend(db, settings, FrontendMetrics(metrics_dir) if metrics_dir else None)

        def ready() -> None:
            if args.ready_fd is not None:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)

        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                return runner.run(frontend.run(ready))
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
            return EXIT_USAGE
    finally:
        try:
            db.close()
        except LightningError as exc:
            log.warning("closing the database: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
