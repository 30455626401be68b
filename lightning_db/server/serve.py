"""``lightning-db serve``: the database behind a Redis-protocol (RESP) port.

Which process runs what: the serve process (this module's ``serve``, main
thread) opens the database, which starts the node and its shard workers
(or attaches to the node already serving the directory), then starts the
front ends (frontend.py), each a process of its own in its own session,
all listening on the same port (SO_REUSEPORT). It supervises them as
permanent children: one that exits is started again, unless more than
``RESTART_INTENSITY`` restarts fall within ``RESTART_PERIOD`` seconds or it
reports that the database shut down; then everything stops.

SIGINT or SIGTERM stops in order: the front ends first (they stop
accepting, finish the commands they are running, close their database
handles), then the database is flushed and closed, and serve waits for a
node it started to exit (the node stops its shards once its last caller
is gone), so nothing outlives it. Exit status: 0 after a signal, 1 when a
front end or the database failed, 2 for a usage error.

The serve process also answers HTTP on ``--http-port`` (default 9090; 0:
none): ``/metrics`` in Prometheus text format and ``/health`` (metrics.py),
and the native protocol on ``--native-port`` (default 7379; 0: none) for
``lightning_db.connect`` (remote/server.py, threads of this process).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psutil

from ..config import Config
from ..errors import InvalidArgument, LightningError
from .metrics import METRICS_DIR_ENV, STATS_WAIT_S, MetricsServer

__all__ = ["DEFAULT_PORT", "EXIT_FATAL", "EXIT_USAGE", "add_arguments", "default_frontends", "default_shards", "main",
           "run_args", "serve"]

DEFAULT_PORT = 6380
DEFAULT_HTTP_PORT = 9090
DEFAULT_NATIVE_PORT = 7379
READY_TIMEOUT = 120.0          # seconds a front end may take to listen
STOP_TIMEOUT = 20.0            # seconds a front end may take to stop before it is killed
NODE_EXIT_TIMEOUT = 60.0       # seconds to wait for a node this process started
RESTART_INTENSITY, RESTART_PERIOD = 5, 60.0
EXIT_USAGE, EXIT_FATAL = 2, 3  # front-end exit status: cannot listen or bad arguments; the database shut down

log = logging.getLogger("lightning_db.server")


class _StopFlag:
    """Set by the SIGINT/SIGTERM handler. Not a threading.Event: a handler
    runs between two bytecodes of the main thread, possibly inside
    Event.wait while it holds the event's lock, and Event.set would then
    wait for that lock forever."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value

    def wait(self, timeout: float) -> bool:
        """Sleep up to *timeout* seconds (less once set); whether it is set."""
        deadline = time.monotonic() + timeout
        while not self.value and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.value


def default_frontends() -> int:
    """One front end per usable CPU, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def default_shards() -> int:
    """Shard workers for a directory serve creates: half as many as the
    default front ends, at least one. A front end spends more CPU on a
    request (parsing, replies, GETs from shared memory) than a shard worker
    on a SET, and every shard a front end writes to is a message of its
    own: with fewer shards each message carries more SETs (2 cores, 50
    clients: 1 shard against 2 made unpipelined SETs 1.3x as fast;
    bench/RESULTS.md)."""
    return max(1, default_frontends() // 2)


MAX_FRONTENDS = 256         # front-end processes: past a few per CPU they only compete
MAX_WORKERS = 1024          # database threads per front end


METRICS_PREFIX = "ldb-metrics-"     # + the serve process's pid: its front ends' counters


def _sweep_metrics_dirs() -> None:
    """Remove the front ends' counter directories of serve processes that
    are gone (one killed with -9 cannot remove its own)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        pid = name[len(METRICS_PREFIX):].partition("-")[0]
        if name.startswith(METRICS_PREFIX) and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _plural(n: int | str, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _has_shard_count(path: str) -> bool:
    from ..shards.attach import SHARDS_FILE

    return os.path.exists(os.path.join(path, SHARDS_FILE))


class _Frontends:
    """The front-end processes of one serve call."""

    def __init__(self, data: str, host: str, port: int, count: int, config: Config, workers: int,
                 metrics_dir: str | None = None) -> None:
        self.count = count
        self._base = [sys.executable, "-m", "lightning_db.server.frontend", "--data", data, "--host", host,
                      "--port", str(port), "--frontends", str(count), "--workers", str(workers),
                      "--config", json.dumps(config.to_dict())]
        env = dict(os.environ)
        paths = [os.path.abspath(p or os.curdir) for p in sys.path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        if metrics_dir is not None:
            env[METRICS_DIR_ENV] = metrics_dir      # where the front ends write their metrics (metrics.py)
        self.metrics_dir = metrics_dir
        self._env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._restarts: list[float] = []

    def start(self, i: int, ready_fd: int | None = None) -> subprocess.Popen[bytes]:
        cmd = self._base + ["--index", str(i)]
        fds: tuple[int, ...] = ()
        if ready_fd is not None:
            cmd += ["--ready-fd", str(ready_fd)]
            fds = (ready_fd,)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=self._env, pass_fds=fds, close_fds=True,
                                start_new_session=True)
        self.procs[i] = proc
        return proc

    def start_all(self, stop: _StopFlag) -> bool:
        """Start every front end and wait until each listens; False when one
        failed (or *stop* was set) first."""
        pipes: dict[int, int] = {}
        try:
            for i in range(self.count):
                r, w = os.pipe()
                try:
                    self.start(i, w)
                finally:
                    os.close(w)
                pipes[r] = i
            deadline = time.monotonic() + READY_TIMEOUT
            while pipes:
                if stop.is_set() or time.monotonic() > deadline:
                    return False
                readable, _, _ = select.select(list(pipes), [], [], 0.2)
                for r in readable:
                    if os.read(r, 64).startswith(b"ready"):
                        os.close(r)
                        del pipes[r]
                    else:                          # closed without a word: it exited
                        i = pipes.pop(r)
                        os.close(r)
                        log.error("front end %d exited before it was ready (status %s)", i,
                                  self.procs[i].wait() if self.procs[i] is not None else None)
                        return False
            return True
        finally:
            for r in pipes:
                os.close(r)

    def check(self) -> int | None:
        """Restart front ends that exited; a status to exit with when that
        is over (the database shut down, or restarts too frequent)."""
        for i, proc in enumerate(self.procs):
            code = None if proc is None else proc.poll()
            if proc is None or code is None:
                continue
            if code == EXIT_FATAL:
                log.error("front end %d reports that the database shut down", i)
                return 1
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_PERIOD] + [now]
            if len(self._restarts) > RESTART_INTENSITY:
                log.error("front ends exited %d times within %gs; giving up", len(self._restarts), RESTART_PERIOD)
                return 1
            log.warning("front end %d exited with status %s; starting it again", i, code)
            self.start(i)
        return None

    def stop(self) -> None:
        """SIGTERM every front end, wait, SIGKILL what is left; all reaped."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("front end pid %d did not stop in %gs; killing it", p.pid, STOP_TIMEOUT)
                p.kill()
                p.wait()


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on the port already. The front ends share
    it with SO_REUSEPORT, which would also let them share it silently with
    another server of the same user; a plain bind tells."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        return False
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return True
        raise


def _workers_of(db: Any) -> Callable[[], list[dict[str, Any]]] | None:
    """The node's view of its workers (state, missed heartbeats, restarts),
    which it answers without asking them, within STATS_WAIT_S (a stopped
    node: Timeout, and /health says down); None for an in-process database."""
    workers = getattr(db, "_workers", None)
    return None if workers is None else functools.partial(workers, timeout=STATS_WAIT_S)


def _node_of(db: Any) -> psutil.Process | None:
    """The node process when this process started it (it is our child)."""
    session = getattr(db, "_session", None)
    pid = getattr(session, "node_pid", None)
    if pid is None:
        return None
    try:
        node = psutil.Process(pid)
        return node if node.ppid() == os.getpid() else None
    except psutil.Error:
        return None


def _await_exit(proc: psutil.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.05)
    log.warning("the node (pid %d) is still running after %gs", proc.pid, timeout)


def serve(data_dir: str | os.PathLike[str], port: int = DEFAULT_PORT, shards: int | None = None,
          frontends: int | None = None, config: Config | None = None, *, host: str = "127.0.0.1",
          workers: int = 16, out: TextIO | None = None, http_port: int = DEFAULT_HTTP_PORT,
          native_port: int = DEFAULT_NATIVE_PORT) -> int:
    """Serve the database at *data_dir* over RESP until SIGINT/SIGTERM;
    the exit status (see the module docstring). Main thread only.
    *http_port*: ``/metrics`` and ``/health`` (metrics.py); *native_port*:
    the native protocol for ``lightning_db.connect`` (remote/); 0: none.
    *shards*: None opens a directory with the count it was created with,
    and creates a new one with ``default_shards()``."""
    import lightning_db
    from lightning_db.storage.format import CURRENT

    out = out or sys.stdout
    path = os.path.abspath(os.fspath(data_dir))
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgument(f"port must be 1..65535, got {port!r}")
    from lightning_db.shards.attach import MAX_SHARDS
    if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool)
                               or not 1 <= shards <= MAX_SHARDS):
        raise InvalidArgument(f"serve needs shards from 1 to {MAX_SHARDS} (front ends are processes of their "
                              f"own), got {shards!r}")
    if os.path.exists(os.path.join(path, CURRENT)):
        raise InvalidArgument(f"{path} holds an in-process database (shards=0); serve needs a sharded one")
    count = default_frontends() if frontends is None else frontends
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_FRONTENDS:
        raise InvalidArgument(f"frontends must be from 1 to {MAX_FRONTENDS}, got {frontends!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise InvalidArgument(f"workers must be from 1 to {MAX_WORKERS} threads per front end, got {workers!r}")
    config = config or Config()
    for what, p in (("http", http_port), ("native", native_port)):
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < 65536:
            raise InvalidArgument(f"{what} port must be 0 (none) or 1..65535, got {p!r}")
    named = [(what, p) for what, p in (("port", port), ("http port", http_port), ("native port", native_port)) if p]
    for i, (what, p) in enumerate(named):
        for other, q in named[i + 1:]:
            if p == q:
                raise InvalidArgument(f"the {what} and the {other} are both {p}: each needs a port of its own")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidArgument(f"host {host!r} is not an address this machine can listen on: {exc}") from None
    for p in (port, http_port, native_port):
        if p and _port_in_use(host, p):
            log.error("%s:%d is in use by another process", host, p)
            return 1
    _sweep_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-") if http_port else None

    stop = _StopFlag()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 1
    try:
        if shards is None and not _has_shard_count(path):
            try:
                db = lightning_db.open(path, default_shards(), config=config)
            except InvalidArgument:
                if not _has_shard_count(path):
                    raise
                db = lightning_db.open(path, None, config=config)   # created by another process meanwhile
        else:
            db = lightning_db.open(path, shards, config=config)
        node = _node_of(db)
        fronts = _Frontends(path, host, port, count, config, workers, metrics_dir)
        http = (MetricsServer(db.stats, host, http_port, metrics_dir, _workers_of(db)).start()
                if http_port else None)
        native = None
        if native_port:
            from ..remote import NativeServer
            native = NativeServer(db, f"tcp://{host}:{native_port}").start()
        try:
            if fronts.start_all(stop):
                shard_count = len(getattr(db, "refs", ())) or "?"
                print(f"lightning-db: serving {path} on {host}:{port} ({_plural(count, 'front end')}, "
                      f"{_plural(shard_count, 'shard')}); "
                      f"connect with: redis-cli -p {port}", file=out, flush=True)
                status = 0
                while not stop.wait(0.2):
                    code = fronts.check()
                    if code is not None:
                        status = code
                        break
            elif stop.is_set():
                status = 0
        finally:
            fronts.stop()
            if native is not None:
                native.stop()
            if http is not None:
                http.stop()
            try:
                db.flush()
            except LightningError as exc:
                log.error("flush at shutdown failed: %s", exc)
                status = status or 1
            db.close()
            if node is not None:
                _await_exit(node, NODE_EXIT_TIMEOUT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (shared with ``lightning-db serve``)."""
    p.add_argument("--data", default="./data", metavar="DIR", help="data directory (default ./data)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"RESP port (default {DEFAULT_PORT})")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, metavar="PORT",
                   help=f"/metrics and /health (default {DEFAULT_HTTP_PORT}; 0: none)")
    p.add_argument("--native-port", type=int, default=DEFAULT_NATIVE_PORT, metavar="PORT",
                   help=f"the native protocol for lightning_db.connect (default {DEFAULT_NATIVE_PORT}; 0: none)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="for a new directory: shard worker processes (default half the default front ends, "
                        "at least 1; a directory keeps the count it was created with)")
    p.add_argument("--frontends", type=int, default=None, metavar="N",
                   help="front-end processes sharing the port (default one per usable CPU, at most 8)")
    p.add_argument("--workers", type=int, default=16, metavar="N",
                   help="threads per front end for database calls (default 16)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML or TOML file of Config settings")


def run_args(args: argparse.Namespace) -> int:
    """Serve as the parsed *args* say (``lightning-db serve``)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="lightning-db serve [%(process)d] %(levelname)s %(message)s")
    config = Config.from_file(args.config) if args.config else None
    return serve(args.data, args.port, args.shards, args.frontends, config, host=args.host, workers=args.workers,
                 http_port=args.http_port, native_port=args.native_port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lightning-db serve",
                                description="Serve a Lightning DB over the Redis protocol (RESP2/RESP3).")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_args(args)
    except LightningError as exc:
        print(f"lightning-db serve: error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidArgument) else 1


if __name__ == "__main__":
    sys.exit(main())
