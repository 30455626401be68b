"""Attaching a caller process to the node that serves a data directory.

Which process runs what: everything here runs in the caller (any process, any
thread). ``attach`` finds the node of DIR or starts one with
``subprocess.Popen(python -m lightning_db.shards.node ..., start_new_session=True)``
(stdout and stderr to DIR/node.log), so the node is not a child that dies with
the caller and the caller needs no ``__main__`` guard: only the node uses
multiprocessing. Concurrent starters, in any processes, are serialised by an
flock on DIR/START.lock; DIR/SHARDS records the shard count (JSON: shards,
vnodes, format).

The node keeps a session for each attach and checks the session's pid (and
its start time), so a caller killed with -9 is noticed; when the last session
is gone the node stops its shards and exits. ``Session.detach`` is idempotent
and registered with atexit; the detach that ends the last session waits (up
to ``STOP_WAIT_S``) until the node has exited: its workers stopped, their
files closed, node.json and the runtime directory removed, so the caller
may copy, move or delete the directory as soon as ``close()`` returns.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import psutil

from ..errors import (
    ActorStartError,
    CorruptionError,
    DatabaseLocked,
    DatabaseShutdown,
    InvalidArgument,
    LightningError,
)
from ..mailbox import MailboxClient, MalformedFrame, PeerLost, Timeout, error_from_payload
from ..storage.format import CURRENT
from ..storage.restore import swap_pending
from .node import (
    EXIT_LOCKED,
    NODE_LOCK,
    NODE_LOG,
    START_ERROR,
    read_node_file,
    same_process,
    shard_dir,
    write_json_atomic,
)
from .ring import DEFAULT_VNODES

__all__ = ["MAX_SHARDS", "SHARDS_FILE", "SHARDS_FORMAT", "START_LOCK", "Session", "attach"]

SHARDS_FILE, START_LOCK = "SHARDS", "START.lock"
SHARDS_FORMAT = 1
MAX_SHARDS = 1024
PING_TIMEOUT_S = 5.0
ATTACH_TIMEOUT_S = 10.0       # one attach request; a node that stopped meanwhile is looked up again
STOP_WAIT_S = 60.0            # the last detach waits this long at most for the node to exit
LOG_TAIL_BYTES = 4000

_started: list[subprocess.Popen] = []     # nodes this process started (and still runs)
_started_lock = threading.Lock()


class Session:
    """One attachment of this process to a node. ``shards`` (count),
    ``addresses`` (one ipc address per shard, in shard order), ``node_pid``,
    ``session`` (id), ``path`` (the data directory), ``control`` (the node's
    control address), ``config`` (the settings the node was started with,
    as a dict; None from a node that does not say). ``detach()`` is
    idempotent; it is also run at exit."""

    def __init__(self, path: str, session: str, addresses: list[str], node_pid: int, control: str,
                 node_create_time: float | None = None, config: dict[str, Any] | None = None) -> None:
        self.path, self.session, self.addresses = path, session, list(addresses)
        self.config = config
        self._node_ctime = node_create_time
        self.shards, self.node_pid, self.control = len(addresses), node_pid, control
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._detached = False
        atexit.register(self.detach)

    @property
    def detached(self) -> bool:
        return self._detached

    @property
    def runtime_dir(self) -> str:
        """The node's runtime directory (where its control socket is): every
        process attached takes the commit gate and the published versions
        from there, wherever its own environment would put one."""
        return os.path.dirname(self.control.removeprefix("ipc://"))

    def request(self, op: str, payload: Any = None, timeout: float = PING_TIMEOUT_S) -> Any:
        """Ask the node (``ping``, ``stats``, ``shutdown``); raises what it answers."""
        return _request(self.control, op, payload, timeout)

    def detach(self) -> None:
        """Tell the node this session ended; the last one ends the node and
        returns once it has exited (at most STOP_WAIT_S). Idempotent; in a
        process forked from the attacher it does nothing (the session is
        the parent's)."""
        with self._lock:
            if self._detached or os.getpid() != self._pid:
                return
            self._detached = True
        atexit.unregister(self.detach)
        if not same_process(self.node_pid, self._node_ctime):
            return                                       # the node is gone: nothing to tell
        with contextlib.suppress(LightningError):
            reply = _request(self.control, "detach", self.session, PING_TIMEOUT_S)
            if isinstance(reply, dict) and reply.get("stopping"):
                _await_exit(self.node_pid, self._node_ctime, time.monotonic() + STOP_WAIT_S)
        _reap_started()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Session({self.path!r}, shards={self.shards}, node_pid={self.node_pid}, session={self.session!r})"


def attach(path: str | os.PathLike[str], shards: int | None = None, config: dict[str, Any] | None = None,
           timeout: float = 60.0, *, actor: str | None = None) -> Session:
    """Attach this process to the node serving *path*, starting one if none
    runs. *shards*: None means the recorded count, or for a new database
    ``len(os.sched_getaffinity(0))``; an explicit count that differs from the
    recorded one raises InvalidArgument. *config* (JSON-able dict) and
    *actor* (``module:Class``) are used only when a node is started.
    Raises DatabaseLocked when the node lock is held by a node that never
    shows up, DatabaseShutdown when the node shut down after a fatal error,
    ActorStartError (quoting node.log) when a started node exits, Timeout
    when *timeout* seconds pass."""
    if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool)
                               or not 1 <= shards <= MAX_SHARDS):
        raise InvalidArgument(f"shards must be None or an integer 1..{MAX_SHARDS}, got {shards!r}")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise InvalidArgument(f"config must be a dict, got {type(config).__name__}")
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"config must be JSON-serialisable: {exc}") from None
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidArgument(f"timeout must be > 0 seconds, got {timeout!r}")
    data = os.path.abspath(os.fspath(path))
    os.makedirs(data, exist_ok=True)
    deadline = time.monotonic() + timeout
    me = psutil.Process()
    with _flock(os.path.join(data, START_LOCK), deadline):
        count, complete = _shard_count(data, shards)
        if complete and actor is None:          # shards of the engine's own actor
            _check_shard_dirs(data, count)
        while True:
            info = _live_node(data, deadline)
            if info is None:
                _await_lock_free(data, deadline)
                proc = _start_node(data, count, config_json, actor)
                info = _await_node(data, proc, deadline)
            try:
                reply = _request(info["control"], "attach", [me.pid, me.create_time()],
                                 min(ATTACH_TIMEOUT_S, _left(deadline)))
                break
            except (DatabaseShutdown, PeerLost):           # stopping (its socket may close under us)
                _await_gone_or_fatal(data, info, deadline)   # then start a fresh one
            except Timeout:
                # It answered the ping but not the attach: it began to stop
                # in between (its last caller detached) and its socket went
                # without a disconnect to see, or it is very slow. Look again.
                _left(deadline)
        if not complete:        # the node started every shard once: from now on each must be there
            write_json_atomic(os.path.join(data, SHARDS_FILE), _shards_record(count, True))
    if len(reply["shards"]) != count:
        _request(info["control"], "detach", reply["session"], PING_TIMEOUT_S)
        raise InvalidArgument(f"the node of {data} serves {len(reply['shards'])} shard(s), "
                              f"but {SHARDS_FILE} records {count}")
    node_config = reply.get("config")
    return Session(data, reply["session"], reply["shards"], reply["node_pid"], info["control"],
                   info.get("create_time"), node_config if isinstance(node_config, dict) else None)


# --- internals --------------------------------------------------------------------------------


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("attach timed out")
    return left


def _sleep(delay: float, deadline: float, cap: float = 0.05) -> float:
    """Sleep *delay* (not past *deadline*); the next delay, doubled up to *cap*."""
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
    return min(delay * 2, cap)


@contextlib.contextmanager
def _flock(path: str, deadline: float, held: Callable[[], LightningError] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on *path*, polling until *deadline*; then
    raise *held*() (default: Timeout)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise (held() if held else Timeout(f"attach timed out waiting for {path}")) from None
                delay = _sleep(delay, deadline)
        yield
    finally:
        os.close(fd)       # releases the lock


def _shards_record(count: int, complete: bool) -> dict[str, Any]:
    return {"format": SHARDS_FORMAT, "shards": count, "vnodes": DEFAULT_VNODES, "complete": complete}


def _shard_count(data: str, shards: int | None) -> tuple[int, bool]:
    """Read DIR/SHARDS, or create it (caller holds START.lock): the shard
    count, and whether a node started every shard once (``complete``; a
    record without the flag predates it and is)."""
    path = os.path.join(data, SHARDS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        fmt, count = recorded.get("format"), recorded["shards"]
        if not isinstance(fmt, int) or not 1 <= fmt <= SHARDS_FORMAT:
            raise CorruptionError(f"{path} has format {fmt!r}; this version reads format {SHARDS_FORMAT}", path)
        if not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"bad shard count {count!r}")
        complete = recorded.get("complete", True) is not False
    except FileNotFoundError:
        count = shards if shards is not None else len(os.sched_getaffinity(0))
        write_json_atomic(path, _shards_record(count, False))
        return count, False
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(f"{path} is unreadable: {exc}", path) from None
    if shards is not None and shards != count:
        raise InvalidArgument(f"{data} was created with {count} shard(s); cannot open it with shards={shards} "
                              f"(pass shards=None or {count})")
    return count, complete


def _check_shard_dirs(data: str, count: int) -> None:
    """Every shard a node once started still has its engine's files: one
    gone is damage (its keys would read as absent), never a fresh shard."""
    for i in range(count):
        current = os.path.join(shard_dir(data, i), CURRENT)
        if not os.path.exists(current) and not swap_pending(shard_dir(data, i)):
            raise CorruptionError(f"shard {i} of {data} has lost its data ({current} is missing); restore the "
                                  "directory from a checkpoint", current)


def _live_node(data: str, deadline: float) -> dict[str, Any] | None:
    """node.json when it names a running node that answers ping, else None.
    A node that shut down after a fatal error and still runs: DatabaseShutdown."""
    info = read_node_file(data)
    if info is None or not same_process(info.get("pid", -1), info.get("create_time")):
        return None
    if info.get("status") == "shutdown":
        raise DatabaseShutdown(f"the database at {data} shut down: {info.get('reason')}")
    try:
        _request(info["control"], "ping", None, min(PING_TIMEOUT_S, _left(deadline)))
    except (DatabaseShutdown, PeerLost):        # stopping: its control socket may close under us
        _await_gone_or_fatal(data, info, deadline)
        return None
    except Timeout:
        if same_process(info["pid"], info.get("create_time")):
            raise Timeout(f"the node of {data} (pid {info['pid']}) does not answer") from None
        return None
    return info


def _await_gone_or_fatal(data: str, info: dict[str, Any], deadline: float) -> None:
    """The node is stopping: wait until it has exited (a fatal shutdown is raised)."""
    delay = 0.001
    while same_process(info["pid"], info.get("create_time")):
        fresh = read_node_file(data)
        if fresh is not None and fresh.get("pid") == info["pid"] and fresh.get("status") == "shutdown":
            raise DatabaseShutdown(f"the database at {data} shut down: {fresh.get('reason')}")
        _left(deadline)
        delay = _sleep(delay, deadline)


def _await_exit(pid: int, create_time: float | None, deadline: float) -> None:
    """Wait until the node *pid* has exited (it takes some 50 ms: polled
    every 10 ms at most), or *deadline* (monotonic) passes."""
    delay = 0.001
    while same_process(pid, create_time) and time.monotonic() < deadline:
        delay = _sleep(delay, deadline, 0.01)


def _start_error(data: str, pid: int) -> LightningError | None:
    """The error the node *pid* wrote when its start failed (START_ERROR,
    taken away), rebuilt as its own class; None when it wrote none."""
    path = os.path.join(data, START_ERROR)
    try:
        with open(path, "rb") as f:
            note = json.load(f)
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
    if not isinstance(note, dict) or note.get("pid") != pid:
        return None                         # another node's, from an earlier start
    exc = error_from_payload(note.get("error"))
    return None if isinstance(exc, MalformedFrame) else exc


def _await_lock_free(data: str, deadline: float) -> None:
    """Wait until no node holds NODE.lock (one may be finishing its exit)."""
    with _flock(os.path.join(data, NODE_LOCK), deadline,
                lambda: DatabaseLocked(f"{data}/{NODE_LOCK} is held by a node that does not answer")):
        pass


def _start_node(data: str, shards: int, config_json: str, actor: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_db.shards.node", "--data", data, "--shards", str(shards),
           "--config", config_json]
    if actor is not None:
        cmd += ["--actor", actor]
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    _reap_started()
    with open(os.path.join(data, NODE_LOG), "ab") as logf:
        logf.write(f"--- node started by pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=data,
                                env=env, close_fds=True, start_new_session=True)
    with _started_lock:
        _started.append(proc)
    threading.Thread(target=proc.wait, name=f"ldb-reap-node-{proc.pid}", daemon=True).start()   # no zombie
    return proc


def _await_node(data: str, proc: subprocess.Popen, deadline: float) -> dict[str, Any]:
    """Wait until the started node's node.json is "running" and it answers ping."""
    delay = 0.001
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(data)
            if code == EXIT_LOCKED:
                raise DatabaseLocked(f"the node for {data} exited: another node holds {NODE_LOCK}\n{tail}")
            cause = _start_error(data, proc.pid)
            if cause is not None:          # a worker's own error: its class, the log's tail in the message
                cause.args = (f"{cause.args[0] if cause.args else cause}\n(the node for {data} exited during "
                              f"start; tail of {NODE_LOG}:\n{tail})",)
                raise cause
            raise ActorStartError(f"the node for {data} exited during start with code {code}; "
                                  f"tail of {NODE_LOG}:\n{tail}", code)
        info = read_node_file(data)
        if info is not None and info.get("pid") == proc.pid and info.get("status") == "running":
            try:
                _request(info["control"], "ping", None, min(PING_TIMEOUT_S, _left(deadline)))
                return info
            except (Timeout, DatabaseShutdown, PeerLost):
                pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ActorStartError(f"the node for {data} was not ready in time (killed); tail of {NODE_LOG}:\n"
                                  f"{_log_tail(data)}", None)
        delay = _sleep(delay, deadline)


def _log_tail(data: str) -> str:
    try:
        with open(os.path.join(data, NODE_LOG), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {NODE_LOG}: {exc})"


def _request(address: str, op: str, payload: Any, timeout: float) -> Any:
    """One request to the node's control mailbox (a short-lived client)."""
    with MailboxClient(address, name="node-control") as client:
        return client.request(op, payload, timeout).result(timeout + 5.0)


def _reap_started() -> None:
    """Reap nodes this process started that have exited (no zombies)."""
    with _started_lock:
        _started[:] = [p for p in _started if p.poll() is None]
