"""The node: the supervisor process that owns a data directory's shard workers.

Which process runs what. ``python -m lightning_db.shards.node --data DIR
--shards N --config JSON [--actor module:Class] [--grace S]`` is started by
``attach.py`` in its own session (``start_new_session``), so it is not a child
that dies with the caller, and the caller never needs an ``if __name__ ==
"__main__"`` guard: the node, not the caller, uses multiprocessing. In the
node process:

- main thread: takes the exclusive flock on ``DIR/NODE.lock`` (held: exit 3),
  starts the shard actors (``actors.spawn``, one per CPU of the affinity, round
  robin) under a ``supervisor.Supervisor`` (one_for_one, permanent), binds the
  control ``MailboxServer``, writes ``DIR/node.json`` (temp + rename) and then
  serves control requests and checks the attached sessions' pids every
  ~0.5 s; a caller found dead has its in-doubt cross-shard batches settled
  (by the pid in their txid) on a short-lived thread;
- a ``supervisor.Monitor`` thread: polls the tree (dead workers, heartbeats by
  ``ActorRef.ping``, so a SIGSTOPped worker is killed and restarted). A
  restarted shard keeps its ipc address and reopens its directory.

Control ops (REQUEST payloads): ``attach [pid, create_time]`` -> ``{"session",
"shards", "node_pid", "config"}`` (config: the settings the node was started
with, which every caller attached shares); ``detach session`` -> ``{"detached", "stopping"}``
(stopping: that was the last session, the node now stops); ``ping``;
``stats``; ``shutdown``.

Exit: when no session is left (or none attached within the startup grace), or
on SIGTERM/SIGINT, or on ``shutdown``: node.json removed, shards stopped in
reverse order (their ``on_stop`` closes the engines), lock released, exit 0.
When the restart intensity is exceeded (fatal) the tree has stopped every
shard: an alert goes through ``AlertSink``, node.json says ``"shutdown"`` with
the reason, every later request is answered with ``DatabaseShutdown`` until
the sessions are gone (at most FATAL_LINGER_S), exit 4.

Shard workers (``spawn``'s children) die with the node, even on kill -9 (the
actor runtime's lifeline and PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

import psutil
import xxhash

from ..actors import Actor, ActorRef, spawn
from ..config import Config
from ..errors import (
    DatabaseShutdown,
    InvalidArgument,
    LightningError,
    RestartIntensityExceeded,
)
from ..mailbox import Envelope, MailboxServer, MsgKind, error_payload
from ..mailbox import shutdown as mailbox_shutdown
from ..supervisor import AlertSink, ChildSpec, Monitor, Supervisor
from .gate import CommitGate
from .actor import ShardActor
from .resolve import settle_gone, txid_pid

__all__ = [
    "DEFAULT_ACTOR",
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_LOCKED",
    "EXIT_OK",
    "NODE_FILE",
    "NODE_KEYS",
    "NODE_LOCK",
    "NODE_LOG",
    "START_ERROR",
    "Node",
    "main",
    "read_node_file",
    "runtime_dir_for",
    "same_process",
    "shard_dir",
    "published_path",
    "write_json_atomic",
]

DEFAULT_ACTOR = "lightning_db.shards.actor:ShardActor"
NODE_FILE, NODE_LOCK, NODE_LOG = "node.json", "NODE.lock", "node.log"
# Why a node's start failed, for the caller that started it: {"pid", "error": error_payload}.
START_ERROR = "START.error"
EXIT_OK, EXIT_FAILED, EXIT_LOCKED, EXIT_FATAL = 0, 1, 3, 4
DEFAULT_GRACE_S = 10.0        # no attach within this long after start: exit
SESSION_CHECK_S = 0.5         # how often attached pids are checked
SETTLE_TIMEOUT_S = 10.0       # per ask while settling what dead callers left in doubt
FATAL_LINGER_S = 10.0         # after a fatal error, answer DatabaseShutdown this long at most
# Where runtime directories go (runtime_dir_for): tmpfs where there is one.
_RUNTIME_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else "/tmp"
# The node's settings are Config fields; these are their defaults.
DEFAULT_INTENSITY, DEFAULT_PERIOD = Config.restart_intensity, Config.restart_period
DEFAULT_HEARTBEAT_S, DEFAULT_HEARTBEAT_MISSES = Config.heartbeat_interval, Config.heartbeat_misses
NODE_KEYS = frozenset({"restart_intensity", "restart_period", "heartbeat_interval", "heartbeat_misses",
                       "shard_stop_timeout"})
"""Config keys the node reads itself; they are not passed to the shard actors."""

log = logging.getLogger("lightning_db.node")


# --- helpers shared with attach.py (any process) ----------------------------------------------


def runtime_dir_for(data_dir: str) -> str:
    """The short directory for the node's ipc sockets (ipc paths are limited
    to 107 bytes), its workers' published superblocks and the commit gate's
    files: ``<root>/ldb-<uid>/<xxh3 of the absolute data path>``, where the
    root is ``/dev/shm`` (tmpfs) when it is a writable directory, else
    ``/tmp``. Nothing there outlives the node, and a commit across shards
    creates and removes a marker file there: on tmpfs that costs a third of
    what it costs on a disk file system's journal (20 against 63 µs)."""
    digest = xxhash.xxh3_64_hexdigest(os.fsencode(os.path.abspath(data_dir)))
    return os.path.join(_RUNTIME_ROOT, f"ldb-{os.getuid()}", digest)


def shard_dir(data_dir: str, shard_id: int) -> str:
    return os.path.join(data_dir, f"shard-{shard_id:03d}")


def published_path(runtime_dir: str, shard_id: int) -> str:
    """The shard's published-version superblock (storage/published.py): in
    the node's runtime directory, so it goes with the node."""
    return os.path.join(runtime_dir, f"shard-{shard_id:03d}.pub")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to a temp file, fsync, rename over *path*."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_node_file(data_dir: str) -> dict[str, Any] | None:
    """The node.json of *data_dir*, or None when absent or unreadable."""
    try:
        with open(os.path.join(data_dir, NODE_FILE), encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def same_process(pid: int, create_time: float | None) -> bool:
    """Whether *pid* runs (not a zombie) and, if given, started at *create_time*."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def load_actor(spec: str) -> type[Actor]:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise InvalidArgument(f"--actor {spec!r} is not module:Class naming an Actor subclass")
    return cls


# --- the node (node process) -----------------------------------------------------------------


class _Heartbeat:
    """``Supervisor(heartbeat=...)``: never blocks. A beat is answered when
    the previous ping came back; one still outstanding is a miss."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pending: weakref.WeakKeyDictionary[Any, Future] = weakref.WeakKeyDictionary()

    def __call__(self, child: Any) -> bool:
        fut = self._pending.get(child)
        if fut is not None and not fut.done():
            return False
        ok = fut is None or (not fut.cancelled() and fut.exception() is None)
        try:
            self._pending[child] = child.ping(timeout=self._timeout)
        except LightningError:
            return False
        return ok


class Node:
    """One node serving *data_dir* (node process, main thread: ``run``)."""

    def __init__(self, data_dir: str, shards: int, config: dict[str, Any], actor_cls: type[Actor],
                 grace: float = DEFAULT_GRACE_S) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.shards, self.config, self.actor_cls, self.grace = shards, config, actor_cls, grace
        self.actor_config = {k: v for k, v in config.items() if k not in NODE_KEYS}
        self.runtime_dir = runtime_dir_for(self.data_dir)
        self.addresses = [f"ipc://{self.runtime_dir}/shard-{i:03d}.sock" for i in range(shards)]
        self.control_address = f"ipc://{self.runtime_dir}/control.sock"
        self.sessions: dict[str, tuple[int, float]] = {}
        self.alerts = AlertSink()
        self.fatal: RestartIntensityExceeded | None = None
        self._ever_attached = False
        self._stop_reason: str | None = None
        self._lock_fd: int | None = None
        self._server: MailboxServer | None = None
        self._sup: Supervisor | None = None
        self._monitor: Monitor | None = None
        # Callers that died: what they coordinated may sit in doubt on the shards.
        self._settles = issubclass(actor_cls, ShardActor)
        self._orphans: set[int] = set()
        self._orphans_lock = threading.Lock()
        self._settler: threading.Thread | None = None

    # -- start ----------------------------------------------------------------------------

    def lock(self) -> bool:
        """Take DIR/NODE.lock; False when another node holds it."""
        fd = os.open(os.path.join(self.data_dir, NODE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _spec(self, i: int, cpus: list[int]) -> ChildSpec:
        extra = {"publish_path": published_path(self.runtime_dir, i)} if self._settles else {}

        def start() -> ActorRef:
            return spawn(self.actor_cls, name=f"shard-{i:03d}", address=self.addresses[i], cpu=cpus[i % len(cpus)],
                         shard_dir=shard_dir(self.data_dir, i), config=self.actor_config, shard_id=i, **extra)
        return ChildSpec(f"shard-{i:03d}", start, shutdown_timeout=float(self.config.get("shard_stop_timeout", Config.shard_stop_timeout)))

    def start(self) -> None:
        cfg = self.config
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        for i in range(self.shards):
            os.makedirs(shard_dir(self.data_dir, i), exist_ok=True)
        cpus = sorted(os.sched_getaffinity(0))
        beat = float(cfg.get("heartbeat_interval", DEFAULT_HEARTBEAT_S))
        misses = int(cfg.get("heartbeat_misses", DEFAULT_HEARTBEAT_MISSES))
        self._sup = Supervisor([self._spec(i, cpus) for i in range(self.shards)], "one_for_one",
                               int(cfg.get("restart_intensity", DEFAULT_INTENSITY)),
                               float(cfg.get("restart_period", DEFAULT_PERIOD)), id="node",
                               on_escalate=self._escalate, heartbeat=_Heartbeat(beat * misses),
                               heartbeat_interval=beat, max_missed_heartbeats=misses)
        self._server = MailboxServer(self.control_address)
        self._sup.start()
        self._monitor = Monitor(self._sup, interval=0.05).start()
        me = psutil.Process()
        write_json_atomic(os.path.join(self.data_dir, NODE_FILE), {
            "pid": me.pid, "create_time": me.create_time(), "control": self.control_address,
            "shards": self.addresses, "status": "running"})
        log.info("node %d serving %s with %d shard(s)", me.pid, self.data_dir, self.shards)

    def _escalate(self, exc: RestartIntensityExceeded) -> None:
        """Monitor thread, under the tree's lock; the tree stopped every shard."""
        self.alerts.alert(exc, source="node supervisor", action="shutdown")
        self.fatal = exc

    # -- serve ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the last session leaves, a signal, a shutdown request
        or a fatal error; then shut down. Returns the exit code."""
        assert self._server is not None
        started = time.monotonic()
        next_check = 0.0
        fatal_since: float | None = None
        while self._stop_reason is None:
            if self.fatal is not None and fatal_since is None:
                fatal_since = time.monotonic()
                self._write_shutdown_status()
            for identity, env in self._server.recv(0.1):
                self._handle(identity, env)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + SESSION_CHECK_S
                self._check_sessions()
            if fatal_since is not None:
                if not self.sessions or now - fatal_since > FATAL_LINGER_S:
                    self._stop_reason = "fatal"
            elif not self.sessions and (self._ever_attached or now - started > self.grace):
                self._stop_reason = "last session detached" if self._ever_attached else "nobody attached"
        log.info("node stopping: %s", self._stop_reason)
        return EXIT_FATAL if self.fatal is not None else EXIT_OK

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    def _handle(self, identity: bytes, env: Envelope) -> None:
        assert self._server is not None
        if env.kind not in (MsgKind.REQUEST, MsgKind.CONTROL):
            return
        try:
            value = self._dispatch(env.op, env.payload)
        except Exception as exc:  # noqa: BLE001 - every failure is the asker's answer
            self._server.reply_error(identity, env, exc)
        else:
            self._server.reply(identity, env.reply(value))

    def _dispatch(self, op: str, payload: Any) -> Any:
        if self.fatal is not None or self._stop_reason is not None:
            if op == "detach":
                self.sessions.pop(str(payload), None)
            if self.fatal is not None:
                raise DatabaseShutdown(f"the database at {self.data_dir} shut down: {self.fatal}")
            raise DatabaseShutdown(f"the node of {self.data_dir} is stopping")
        if op in ("ping", "_ping"):
            return {"pid": os.getpid(), "status": "running"}
        if op == "attach":
            if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], int)
                    and isinstance(payload[1], (int, float))):
                raise InvalidArgument(f"attach takes [pid, create_time], got {payload!r}")
            session = secrets.token_hex(8)
            self.sessions[session] = (payload[0], float(payload[1]))
            self._ever_attached = True
            log.info("session %s attached (pid %d)", session, payload[0])
            return {"session": session, "shards": self.addresses, "node_pid": os.getpid(), "config": self.config}
        if op == "detach":
            gone = self.sessions.pop(str(payload), None)
            if gone is not None:
                log.info("session %s detached (pid %d)", payload, gone[0])
            # The last one: stop now (a later attach waits for a fresh node),
            # and say so, so that its caller waits for the exit.
            stopping = gone is not None and not self.sessions
            if stopping:
                self._stop_reason = "last session detached"
            return {"detached": gone is not None, "stopping": stopping}
        if op == "stats":
            return self.stats()
        if op == "shutdown":
            self._stop_reason = "shutdown requested"
            return True
        raise InvalidArgument(f"the node has no op {op!r}")

    def stats(self) -> dict[str, Any]:
        assert self._sup is not None
        tree = self._sup.stats()
        shards = [{"id": cid, "address": self.addresses[i], "pid": c["pid"], "state": c["state"],
                   "restarts": c["restarts"], "last_exit": c["last_exit"],
                   "missed_heartbeats": c["missed_heartbeats"], "hang_kills": c["hang_kills"]}
                  for i, (cid, c) in enumerate(tree["children"].items())]
        return {"node_pid": os.getpid(), "sessions": len(self.sessions), "status": "running",
                "restarts": tree["restarts"], "shards": shards, "alerts": self.alerts.counts()}

    def _check_sessions(self) -> None:
        for session, (pid, ctime) in list(self.sessions.items()):
            if not same_process(pid, ctime):
                log.warning("session %s: process %d is gone; dropped", session, pid)
                self.sessions.pop(session, None)
                if self._settles:
                    with self._orphans_lock:
                        self._orphans.add(pid)
        self._settle_orphans()

    def _settle_orphans(self) -> None:
        """Settle, on a thread of its own, the cross-shard batches that dead
        callers left in doubt (txid_pid names the coordinator): committed
        where the primary holds the decision, else aborted. Tried again at
        the next check until every shard answered."""
        with self._orphans_lock:
            # A pid that attached again meanwhile is a new caller's (pid reuse): not settled.
            self._orphans -= {pid for pid, _ in list(self.sessions.values())}
            pids = set(self._orphans)
        if not pids or (self._settler is not None and self._settler.is_alive()) or self.fatal is not None:
            return

        def settle() -> None:
            refs = [ActorRef(f"shard-{i:03d}", a, 0, fail_fast=True) for i, a in enumerate(self.addresses)]
            def theirs(txid: bytes) -> bool:
                return txid_pid(txid) in pids

            try:
                counts = settle_gone(refs, SETTLE_TIMEOUT_S, theirs, CommitGate(self.runtime_dir))
            finally:
                for r in refs:
                    r.disconnect()
            if counts["committed"] or counts["aborted"] or counts["forgotten"]:
                log.warning("settled what callers %s left in doubt: %s", sorted(pids), counts)
            if not counts["failed"]:
                with self._orphans_lock:
                    self._orphans -= pids

        self._settler = threading.Thread(target=settle, name="ldb-settle-orphans", daemon=True)
        self._settler.start()

    def _write_shutdown_status(self) -> None:
        log.critical("fatal: %s; every request now gets DatabaseShutdown", self.fatal)
        with contextlib.suppress(OSError):
            write_json_atomic(os.path.join(self.data_dir, NODE_FILE), {
                "pid": os.getpid(), "create_time": psutil.Process().create_time(),
                "control": self.control_address, "shards": self.addresses, "status": "shutdown",
                "reason": str(self.fatal)})

    # -- stop -----------------------------------------------------------------------------

    def close(self) -> None:
        """Answer what is queued with DatabaseShutdown, remove node.json
        (unless it records a fatal shutdown), stop the shards in reverse
        order, release the lock. Idempotent."""
        if self._stop_reason is None:
            self._stop_reason = "closed"
        if self._server is not None:
            with contextlib.suppress(LightningError):
                for identity, env in self._server.recv(0):
                    self._handle(identity, env)
        if self.fatal is None and self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.data_dir, NODE_FILE))
        if self._settler is not None:
            self._settler.join(SETTLE_TIMEOUT_S)     # what it leaves, the next open settles
        if self._monitor is not None:
            self._monitor.stop()
        if self._sup is not None:
            self._sup.stop()
        if self._server is not None:
            self._server.close(linger=1.0)
            self._server = None
        if self._lock_fd is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        mailbox_shutdown(linger=1.0)


def main(argv: list[str] | None = None) -> int:
    """Node process entry point."""
    parser = argparse.ArgumentParser(prog="python -m lightning_db.shards.node")
    parser.add_argument("--data", required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--config", default="{}")
    parser.add_argument("--actor", default=DEFAULT_ACTOR)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s node[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        config = json.loads(args.config)
    except ValueError as exc:
        config = exc
    if not isinstance(config, dict):
        print(f"lightning_db node: --config is not a JSON object: {config!r}", file=sys.stderr)
        return EXIT_FAILED
    if args.shards < 1:
        print(f"lightning_db node: --shards must be >= 1, got {args.shards}", file=sys.stderr)
        return EXIT_FAILED
    try:
        actor_cls = load_actor(args.actor)
    except (ImportError, InvalidArgument) as exc:
        print(f"lightning_db node: cannot load actor {args.actor!r}: {exc!r}", file=sys.stderr)
        return EXIT_FAILED
    os.makedirs(args.data, exist_ok=True)
    node = Node(args.data, args.shards, config, actor_cls, args.grace)
    if not node.lock():
        print(f"lightning_db node: {node.data_dir} is already served by another node "
              f"({NODE_LOCK} is locked); exiting", file=sys.stderr)
        return EXIT_LOCKED
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: node.request_stop(f"signal {signal.Signals(signum).name}"))
    code = EXIT_FAILED
    try:
        try:
            node.start()
        except LightningError as exc:       # a worker's own error (a damaged file, a full disk): the caller's too
            payload = error_payload(exc)
            payload[1] = payload[1].split("\n", 1)[0]          # its first line: not the worker's traceback
            with contextlib.suppress(OSError):
                write_json_atomic(os.path.join(node.data_dir, START_ERROR), {"pid": os.getpid(), "error": payload})
            raise
        code = node.run()
    except Exception:
        log.exception("node failed")
        code = EXIT_FAILED
    finally:
        node.close()
        log.info("node exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
