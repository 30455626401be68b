"""One front-end process: an asyncio RESP server on the shared port.

Which process runs what: ``python -m lightning_db.server.frontend`` is
started by serve.py, once per front end. Every front end binds the same
port with SO_REUSEPORT (the kernel spreads connections across them) and
opens the database itself (``lightning_db.open``: it attaches to the node
serve.py started).

Per connection, on the event loop: read a chunk, parse (resp.py), run the
commands in order, write the replies, read again. Commands marked inline
(no database call, or only reads served from shared memory) run on the
loop; the others run in a worker thread (``Settings.workers``), a batch at
a time, so a slow command of one client never holds up another, except
plain SETs, alone or in pipelined runs: the SetWriter (setwriter.py) sends
those of every connection from the loop itself, one message per shard per
loop turn. While its
commands run a connection is not read, so a client that sends faster than
it is served (or reads its replies slower) is held back by TCP instead of
growing buffers: memory per connection is bounded by the parser's limits,
one read chunk of requests and about ``OUT_CHUNK`` bytes of replies.

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
        self._pool = ThreadPoolExecutor(max(1, settings.workers), thread_name_prefix="ldb-resp")
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._busy: set[int] = set()
        self._stop: asyncio.Event | None = None
        self._sets: SetWriter | None = None       # plain SETs without a thread (setwriter.py)
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
        loop = asyncio.get_running_loop()
        self.server.loop_api = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        db = self.server.db
        if all(hasattr(db, a) for a in ("ring", "refs", "tokens", "_send_write")):
            self._sets = SetWriter(db, loop, self._pool)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
            except (RuntimeError, ValueError):       # not the main thread (tests)
                pass
        listener = await asyncio.start_server(self._on_connect, s.host, s.port, reuse_port=True,
                                              limit=READ_CHUNK, backlog=511)
        if ready is not None:
            ready()
        watcher = asyncio.create_task(self._watch(os.getppid() if watch_parent else None))
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            listener.close()
            await self._close_connections()
            self._pool.shutdown(wait=True)
            if self._sets is not None:
                self._sets.close()
        return EXIT_FATAL if self.server.fatal is not None else 0

    async def _watch(self, parent: int | None) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if parent is not None and os.getppid() != parent:
                self.request_stop("the serve process is gone")
            if self.server.fatal is not None:
                self.request_stop(f"the database is gone: {self.server.fatal}")

    async def _close_connections(self) -> None:
        loop = asyncio.get_running_loop()
        for cid, task in list(self._tasks.items()):
            if cid not in self._busy:
                task.cancel()
        deadline = loop.time() + STOP_GRACE
        while self._busy and loop.time() < deadline:
            await asyncio.sleep(0.02)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)

    # --- connections ------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = self.server
        if self.stopping or len(server.clients) >= server.settings.maxclients:
            server.stats["rejected_connections"] += 1
            try:
                writer.write(b"-ERR max number of clients reached\r\n")
                await writer.drain()
            except OSError:
                pass
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        try:
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        client = ClientState(server.next_client_id(), addr=_addr(writer.get_extra_info("peername")),
                             laddr=_addr(writer.get_extra_info("sockname")),
                             fd=sock.fileno() if sock is not None else -1)
        server.clients[client.id] = client
        server.stats["total_connections_received"] += 1
        if self.metrics is not None:
            self.metrics.connections.inc()
        task = asyncio.current_task()
        if task is not None:
            self._tasks[client.id] = task
        try:
            await self._serve(client, reader, writer)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            server.clients.pop(client.id, None)
            self._tasks.pop(client.id, None)
            if self.metrics is not None:
                self.metrics.connections.dec()
            writer.close()

    async def _serve(self, client: ClientState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server, settings = self.server, self.server.settings
        parser = RequestParser(server.limits)
        while not client.closing and not self.stopping:
            if settings.timeout > 0:
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), settings.timeout)
                except TimeoutError:
                    return
            else:
                data = await reader.read(READ_CHUNK)
            if not data:
                return
            server.stats["total_net_input_bytes"] += len(data)
            if self.metrics is not None:
                self.metrics.bytes_in.inc(len(data))
            client.last_active = time.time()
            cmds = parser.feed(data)
            client.qbuf = parser.buffered
            if cmds:
                await self._run(client, cmds, writer)
            if parser.error is not None and not client.closing:
                client.closing = True
                await self._write(writer, [error_line(f"ERR {parser.error}")])
        await writer.drain()

    async def _run(self, client: ClientState, cmds: list[list[bytes]], writer: asyncio.StreamWriter) -> None:
        """Run *cmds* in order: inline ones on the loop, the rest in a worker thread."""
        dispatcher, loop = self.dispatcher, asyncio.get_running_loop()
        i, n = 0, len(cmds)
        while i < n and not client.closing:
            out: list[bytes] = []
            size = 0
            while i < n and size < OUT_CHUNK and not client.closing and dispatcher.inline(client, cmds[i]):
                data = dispatcher.execute(client, cmds[i])
                out.append(data)
                size += len(data)
                i += 1
            if out:
                await self._write(writer, out)
                continue
            if self.stopping:
                return
            sets = self._sets
            if sets is not None and client.multi is None and sets.ready():
                run = dispatcher.set_run(client, cmds, i) or (1 if sets.plain(cmds[i]) else 0)
                if run:
                    started = time.perf_counter()
                    taken = cmds[i:i + run]
                    errors = await sets.set_many([c[1] for c in taken], [c[2] for c in taken])
                    for e in errors or ():
                        if e is not None and not isinstance(e, LightningError):
                            raise e
                    each = (time.perf_counter() - started) / run
                    await self._write(writer, [dispatcher.set_replies(client, run, errors, each)])
                    i += run
                    continue
            self._busy.add(client.id)
            try:
                out, i = await loop.run_in_executor(self._pool, self._run_batch, client, cmds, i)
            finally:
                self._busy.discard(client.id)
            await self._write(writer, out)

    def _run_batch(self, client: ClientState, cmds: list[list[bytes]], i: int) -> tuple[list[bytes], int]:
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

    async def _write(self, writer: asyncio.StreamWriter, out: list[bytes]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        self.server.stats["total_net_output_bytes"] += len(data)
        if self.metrics is not None:
            self.metrics.bytes_out.inc(len(data))
        writer.write(data)
        await writer.drain()


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
        from .metrics import MULTIPROC_ENV, FrontendMetrics
        frontend = Frontend(db, settings, FrontendMetrics() if os.environ.get(MULTIPROC_ENV) else None)

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
