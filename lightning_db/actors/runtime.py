"""Starting, addressing and stopping actors.

Owner process (any thread): ``spawn`` starts a worker process with
multiprocessing's spawn or forkserver start method, never fork: a process
that holds zmq sockets, threads and open databases must not be duplicated
(and a database opened in a process that later forks itself must keep
working in both). ``spawn`` returns once the child has bound its mailbox and
run ``on_start`` (the ready handshake), or raises.

Worker process (``_child_main``, main thread): ignore SIGINT (the owner
decides when workers stop), ask the kernel to SIGKILL it when its parent
dies (prctl PR_SET_PDEATHSIG; only when spawned from the owner's main
thread, since the kernel ties the signal to the thread that forked), pin to
the CPU, start the lifeline watchdog, build the actor, bind, on_start,
report ready, freeze what start-up allocated out of the garbage collector's
sight and raise its first threshold (``GC_THRESHOLDS``), run the loop.

Why the collector is tuned in workers (their process is ours, the caller's
is not): a shard decodes thousands of small containers a message (ops) and
keeps large long-lived ones (memtable indexes, key runs, cached blocks);
with the default first threshold of 700 allocations the young collections
ran every few ops and the older ones walked the long-lived containers, a
tenth of a fill's time in the worker (measured in bench/RESULTS.md).

The lifeline is the handshake pipe: the owner keeps its end open for as long
as the actor should live, in a per-process table (dropping an ``ActorRef``
does not stop the actor). When the owner dies, even by SIGKILL, the child
reads EOF and exits at once; the watchdog also exits when the child is
reparented. So a kill -9 of the owner leaves no orphan, with or without
PR_SET_PDEATHSIG. With forkserver the lifeline is what ends the actors: each
child of the fork server holds a copy of the server's own "owner alive"
pipe, so the server only exits (and PR_SET_PDEATHSIG only fires) after
its children are gone.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import select
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psutil

from ..errors import InvalidArgument, LightningError
from ..mailbox import (
    MailboxClient,
    MailboxServer,
    RemoteError,
    check_address,
    error_from_payload,
    error_payload,
    shutdown,
)
from ..mailbox.wire import CONTROL_PING, CONTROL_STATS, CONTROL_STOP
from .actor import Actor, ActorLoop
from .errors import ActorDead, ActorStartError
from .placement import PlacementRefused, pin, usable_cpus

__all__ = ["spawn", "ActorRef", "ipc_address", "DEFAULT_ASK_TIMEOUT", "DEFAULT_READY_TIMEOUT", "EXIT_ORPHANED"]

DEFAULT_ASK_TIMEOUT = 30.0     # seconds an ask waits by default
DEFAULT_READY_TIMEOUT = 120.0  # generous: a loaded machine may take seconds to import a child
TERM_GRACE = 5.0               # seconds between SIGTERM and SIGKILL in stop()
EXIT_START_FAILED = 3
GC_THRESHOLDS = (50_000, 10, 10)   # gc.set_threshold in worker processes (see the module docstring)
EXIT_ORPHANED = 75             # the owner died; the child left without on_stop
PR_SET_PDEATHSIG = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

# pid -> (process, owner end of the lifeline): the actors this process owns
_children: dict[int, tuple[Any, multiprocessing.connection.Connection]] = {}
_children_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A process forked from an owner owns nothing: it drops its copies of
    the lifelines (so the actors still die with their owner) and the table."""
    global _children_lock
    _children_lock = threading.Lock()
    for _, conn in _children.values():
        conn.close()
    _children.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def ipc_address(runtime_dir: str | os.PathLike[str], name: str) -> str:
    """The default address of actor *name*: a socket file in *runtime_dir*."""
    return f"ipc://{os.path.join(os.path.abspath(os.fspath(runtime_dir)), name + '.sock')}"


@dataclass(frozen=True)
class _Boot:
    name: str
    address: str
    cpu: int | None
    owner_pid: int
    direct_child: bool     # spawn: our parent is the owner; forkserver: the fork server
    pdeathsig: bool


def spawn(actor_cls: type[Actor], *args: Any, name: str, address: str | None = None, cpu: int | None = None,
          runtime_dir: str | os.PathLike[str] | None = None, start_method: str = "spawn",
          ready_timeout: float = DEFAULT_READY_TIMEOUT, **kwargs: Any) -> ActorRef:
    """Start ``actor_cls(*args, **kwargs)`` in a new worker process and return
    its ref once it is ready (owner process, any thread).

    *address* defaults to ``ipc://<runtime_dir>/<name>.sock``; *cpu* pins the
    worker (one of ``usable_cpus()``; refused pinning degrades to unpinned and
    is reported by ``_stats``). The class, args and kwargs must be picklable
    and the class importable by the child. Raises InvalidArgument for bad
    options, ActorStartError when the child dies, hangs or fails during
    start (an on_start error with a taxonomy class of its own is raised as
    that class).
    """
    if not (isinstance(actor_cls, type) and issubclass(actor_cls, Actor)):
        raise InvalidArgument(f"{actor_cls!r} is not an Actor subclass")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"actor name {name!r} is not 1-64 of [A-Za-z0-9_.-] starting alphanumeric")
    if start_method not in ("spawn", "forkserver"):
        raise InvalidArgument(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
    if cpu is not None and cpu not in usable_cpus():
        raise InvalidArgument(f"cpu {cpu!r} is not one of the usable cpus {usable_cpus()}")
    if address is None:
        if runtime_dir is None:
            raise InvalidArgument("spawn needs an address or a runtime_dir")
        os.makedirs(runtime_dir, exist_ok=True)
        address = ipc_address(runtime_dir, name)
    check_address(address)
    ctx = multiprocessing.get_context(start_method)
    owner_end, child_end = ctx.Pipe(duplex=True)
    boot = _Boot(name, address, cpu, os.getpid(), start_method == "spawn",
                 threading.current_thread() is threading.main_thread())
    proc = ctx.Process(target=_child_main, args=(boot, actor_cls, args, kwargs, child_end), name=f"ldb-actor-{name}")
    try:
        proc.start()
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        owner_end.close()
        raise InvalidArgument(f"actor {name!r}: class, args and kwargs must be picklable: {exc}") from None
    except OSError as exc:
        owner_end.close()
        raise ActorStartError(f"cannot start a process for actor {name!r}: {exc}") from None
    finally:
        child_end.close()
    try:
        ready = _await_ready(proc, owner_end, name, ready_timeout)
    except BaseException:
        owner_end.close()
        _reap(proc, 0.0)
        raise
    with _children_lock:
        _children[proc.pid] = (proc, owner_end)
    return ActorRef(name, address, proc.pid, ready["create_time"])


def _await_ready(proc: Any, conn: multiprocessing.connection.Connection, name: str, timeout: float) -> dict[str, Any]:
    """Owner: wait for the child's "ready" (or its error, or its death)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ActorStartError(f"actor {name!r} did not become ready within {timeout}s (killed)")
        ready = multiprocessing.connection.wait([conn, proc.sentinel], left)
        if conn in ready:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is not None and msg[0] == "ready":
                return msg[1]
            if msg is not None and msg[0] == "error":
                proc.join(30)
                exc = error_from_payload(msg[1])
                text = f"actor {name!r} failed to start (exit code {proc.exitcode}): {exc}\n{msg[2]}"
                if type(exc) is RemoteError:
                    raise ActorStartError(text, proc.exitcode)
                exc.args = (text,)
                exc.exitcode = proc.exitcode  # type: ignore[attr-defined]
                raise exc
        if proc.sentinel in ready or (conn in ready):
            proc.join(30)
            raise ActorStartError(f"actor {name!r} died during start with exit code {proc.exitcode}", proc.exitcode)


def _reap(proc: Any, grace: float) -> int | None:
    """Owner: make sure *proc* is dead and reaped: wait *grace* seconds,
    then SIGTERM, then SIGKILL. Returns its exit code."""
    proc.join(grace)
    if proc.exitcode is None:
        proc.terminate()
        proc.join(TERM_GRACE)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return proc.exitcode


@atexit.register
def _stop_children() -> None:
    """Owner exiting normally: no worker outlives it (runs before
    multiprocessing joins its children, which would otherwise wait forever)."""
    with _children_lock:
        items = list(_children.values())
        _children.clear()
    for proc, conn in items:
        conn.close()          # the lifeline: the child exits on EOF
    for proc, _ in items:
        _reap(proc, 2.0)


class ActorRef:
    """A handle on an actor (any thread). The owner's ref also stops, kills
    and reaps the process; a copy in another process (refs pickle to name,
    address, pid) can ask and tell, ``stop`` sends ``_stop`` and ``kill``
    signals the pid (after checking it is still the same process)."""

    def __init__(self, name: str, address: str, pid: int, create_time: float | None = None, *,
                 fail_fast: bool = False) -> None:
        self.name = name
        self.fail_fast = fail_fast            # asks fail at once while the actor is gone (see MailboxClient)
        self.address = address
        self.pid = pid
        self._create_time = create_time
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        self._client: MailboxClient | None = None
        self._dead: str | None = None
        self._exitcode: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return ActorRef, (self.name, self.address, self.pid, self._create_time)

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r}, {self.address!r}, pid={self.pid})"

    def _mailbox(self) -> MailboxClient:
        if self._dead is not None:
            raise ActorDead(f"actor {self.name!r} (pid {self.pid}) {self._dead}")
        client, pid = self._client, os.getpid()
        if client is None or client._pid != pid:         # first use, or a copy of this ref forked off
            if self._lock_pid != pid:                    # a fork may have copied the lock held
                self._lock, self._lock_pid = threading.Lock(), pid
            with self._lock:
                if self._client is None or self._client._pid != pid:
                    self._client = MailboxClient(self.address, name=self.name, fail_fast=self.fail_fast)
                client = self._client
        return client

    def disconnect(self) -> None:
        """Close this process's connection to the actor (the actor runs on);
        asks still in flight fail with ``MailboxClosed``. The next call
        connects again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and client._pid == os.getpid():
            client.close()

    def tell(self, op: str, payload: Any = None) -> None:
        """Send without waiting; nothing comes back, not even an error."""
        self._mailbox().tell(op, payload)

    def barrier_here(self, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """What to wait for before an ask on the shared connection that must
        come after this thread's ``tell_here``s (None: nothing)."""
        client = self._client
        return None if client is None else client.barrier_here(timeout)

    def tell_here(self, op: str, payload: Any = None) -> bool:
        """``tell`` on this thread's own connection, in order with its
        ``ask_here``s; False: it went on the shared one."""
        return self._mailbox().tell_here(op, payload)

    def ask(self, op: str, payload: Any = None, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Future:
        """Send and return a future for the reply (Timeout once *timeout*
        seconds pass; None: no deadline)."""
        return self._mailbox().request(op, payload, timeout)

    def ask_here(self, op: str, payload: Any = None, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """``ask`` for an answer that this thread waits for itself: sent on
        the thread's own connection, with no hop through the mailbox's I/O
        thread (see mailbox/direct.py). What it returns has ``result``,
        ``exception`` and ``done``, and only this thread may wait on it."""
        return self._mailbox().ask_here(op, payload, timeout)

    def ask_many(self, ops: list[tuple[str, Any]], timeout: float | None = DEFAULT_ASK_TIMEOUT) -> list[Future]:
        """Several asks in one send; one future each, in order."""
        return self._mailbox().request_many(ops, timeout)

    def control(self, op: str, payload: Any = None, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Future:
        """Send a CONTROL message (answered by the runtime or ``on_control``)."""
        return self._mailbox().control(op, payload, timeout)

    def ping(self, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Future:
        """Heartbeat: resolves with {"pid", "beat", "handled"}."""
        return self._mailbox().control(CONTROL_PING, None, timeout)

    def stats(self, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Future:
        """Resolves with the actor's placement (as obtained) and counters."""
        return self._mailbox().control(CONTROL_STATS, None, timeout)

    def _owned(self) -> tuple[Any, multiprocessing.connection.Connection] | None:
        return _children.get(self.pid)

    def _process(self) -> psutil.Process | None:
        """The live process behind a ref this process does not own (checked
        against its start time, so a reused pid is not mistaken for it)."""
        try:
            proc = psutil.Process(self.pid)
            if self._create_time is not None and proc.create_time() != self._create_time:
                return None
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except psutil.Error:
            return None

    def is_alive(self) -> bool:
        """Whether the actor's process is running (a zombie is not)."""
        owned = self._owned()
        if owned is not None:
            return bool(owned[0].is_alive())
        return self._process() is not None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop gracefully: ``_stop`` (on_stop runs, the answer comes back),
        then SIGTERM, then SIGKILL; the owner always reaps, so no zombie is
        left. The graceful part takes at most about *timeout* seconds, SIGTERM
        gets TERM_GRACE more. Returns the exit code (None when not the owner).
        Idempotent: a later call returns the same code."""
        owned = self._owned()
        deadline = time.monotonic() + timeout
        try:
            if self._dead is None and self.is_alive():
                try:
                    self._mailbox().control(CONTROL_STOP, None, timeout).result(timeout + 1.0)
                except (LightningError, TimeoutError):
                    pass
            if owned is not None:
                self._exitcode = _reap(owned[0], max(0.0, deadline - time.monotonic()))
            return self._exitcode
        finally:
            if self._dead is None:
                self._forget("was stopped")

    def kill(self) -> None:
        """SIGKILL the actor (tests, the supervisor); the owner reaps it.
        Idempotent."""
        owned = self._owned()
        try:
            if owned is not None:
                owned[0].kill()
                owned[0].join()
                self._exitcode = owned[0].exitcode
            else:
                proc = self._process()
                if proc is not None:
                    proc.kill()
        except psutil.Error:
            pass
        finally:
            self._forget("was killed")

    def _forget(self, why: str) -> None:
        self._dead = why
        with _children_lock:
            entry = _children.pop(self.pid, None)
        if entry is not None:
            entry[1].close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close(ActorDead(f"actor {self.name!r} (pid {self.pid}) {why}"))


# --- worker process -------------------------------------------------------------------------


def _set_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_lifeline(conn: multiprocessing.connection.Connection, parent: int) -> None:
    """Worker, watchdog thread: exit at once when the owner is gone (EOF on
    the lifeline) or this process was reparented."""
    fd = conn.fileno()
    while True:
        readable, _, _ = select.select([fd], [], [], 1.0)
        if os.getppid() != parent:
            os._exit(EXIT_ORPHANED)
        if readable:
            try:
                conn.recv()
            except (EOFError, OSError):
                os._exit(EXIT_ORPHANED)


def _child_main(boot: _Boot, actor_cls: type[Actor], args: tuple[Any, ...], kwargs: dict[str, Any],
                conn: multiprocessing.connection.Connection) -> None:
    """Worker process entry point (main thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if boot.pdeathsig:
        _set_pdeathsig(signal.SIGKILL)
    parent = os.getppid()
    if boot.direct_child and parent != boot.owner_pid:
        os._exit(EXIT_ORPHANED)          # the owner died before PR_SET_PDEATHSIG took effect
    notes: dict[str, str] = {}
    try:
        if boot.cpu is not None:
            try:
                pin(boot.cpu)
            except PlacementRefused as exc:
                notes["cpu_fallback"] = str(exc)
        threading.Thread(target=_watch_lifeline, args=(conn, parent), name="ldb-lifeline", daemon=True).start()
        switch = getattr(actor_cls, "switch_interval", None)
        if switch is not None:
            sys.setswitchinterval(switch)
        actor = actor_cls(*args, **kwargs)
        actor.name = boot.name
        server = MailboxServer(boot.address)
        actor.address = server.address
        actor.on_start()
    except Exception as exc:
        conn.send(("error", error_payload(exc), traceback.format_exc(limit=8)))
        os._exit(EXIT_START_FAILED)
    conn.send(("ready", {"pid": os.getpid(), "create_time": psutil.Process().create_time()}))
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    loop = ActorLoop(actor, server, requested_cpu=boot.cpu, placement_notes=notes)
    code = loop.run()
    server.close(linger=2.0)
    shutdown(linger=2.0)                 # flushes the last answers (the _stop reply)
    os._exit(code)
