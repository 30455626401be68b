"""The database a stress run drives, and the harness's hold on it.

Runs in the harness process. Three kinds:

- ``EmbeddedTarget`` (``--target PATH``, or none: a fresh temporary
  directory): every client opens the directory with ``lightning_db.open``
  and attaches to its node. The harness creates the database (shard count
  ``shards`` for a new directory) with a restart intensity high enough for
  hundreds of kills, and reaches the node through its control socket
  (``node.json``) for worker pids, without holding a session of its own
  during the run.
- ``ServeTarget`` (``--target serve:PATH``): the harness runs ``python -m
  lightning_db.server.serve`` on PATH on a free port, in a session of its
  own, and the clients speak RESP to it. It can kill the serve process with
  its front ends, node and workers, and start it again.
- ``RemoteTarget`` (``--target redis://HOST:PORT``): a server someone else
  runs; the harness owns no process of it, so only drop-connection applies.

``disk-full`` needs a data directory the harness made itself (no PATH given):
it loop-mounts a small ext4 file system there (root only) and fills it
during the fault.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import psutil

from ..errors import InvalidArgument, LightningError, RecoverableError, TransientError

__all__ = [
    "CORRUPT_OPTIONS",
    "FAULTS",
    "NODE_OPTIONS",
    "EmbeddedTarget",
    "RemoteTarget",
    "ServeTarget",
    "Target",
    "disk_problem",
    "make_target",
    "node_stats",
]

FAULTS = ("kill-worker", "kill-server", "pause", "disk-full", "corrupt", "drop-connection")
# Hundreds of worker kills a minute must not read as a crash loop (Config.restart_intensity).
NODE_OPTIONS: dict[str, Any] = {"restart_intensity": 1_000_000, "restart_period": 60.0}
# With corrupt among the faults: small memtables, so that tables are written
# (and can be damaged) within seconds.
CORRUPT_OPTIONS: dict[str, Any] = {"memtable_size": 64 * 1024}
WHOLE_TIMEOUT_S = 120.0        # generous: a loaded 2-core machine
SERVE_READY_S = 120.0
SERVE_STOP_S = 90.0            # serve waits up to 60 s for its node
DISK_SIZE = "1g"               # sparse: it costs what is written


def node_stats(path: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The stats of the node serving *path* (pids, states and restarts of its
    shard workers), asked over its control socket; None when no node runs
    or it does not answer."""
    from ..shards.attach import _request
    from ..shards.node import read_node_file, same_process
    info = read_node_file(path)
    if info is None or info.get("status") != "running" or not same_process(info.get("pid", -1),
                                                                           info.get("create_time")):
        return None
    try:
        stats = _request(info["control"], "stats", None, timeout)
    except LightningError:
        return None
    stats["create_time"] = info.get("create_time")
    return stats


def _whole(stats: dict[str, Any] | None) -> bool:
    return stats is not None and all(s.get("state") == "running" and s.get("pid") for s in stats["shards"])


def _retrying(fn: Any, deadline: float) -> Any:
    """fn() again while it meets a transient or recoverable error."""
    delay = 0.01
    while True:
        try:
            return fn()
        except (TransientError, RecoverableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def disk_problem() -> str | None:
    """Why a small file system cannot be mounted for disk-full here (None: it can)."""
    if os.geteuid() != 0:
        return "disk-full mounts a small ext4 file system (a loop device) on the data directory, which needs root"
    for tool in ("mount", "umount", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"disk-full needs {tool}"
    probe = tempfile.mkdtemp(prefix="ldb-stress-probe-")
    try:
        try:
            _mount_disk(probe, "4m")
        except RuntimeError as exc:
            return str(exc)
        _unmount(probe)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


HOLDS_DATA = ("holds data already: the checkers take every value read for one the run wrote, so a "
              "run needs an empty database (leave --target out for a fresh one)")


class Target(abc.ABC):
    """What the harness does with the database; see the module docstring."""

    kind = "target"
    faults: frozenset[str] = frozenset()
    path: str | None = None
    owned = False             # the harness made the directory (and removes it)
    own_fs = False            # it goes on a file system of its own (disk-full)
    requested: str | None = None
    mounted = False           # the harness mounted a file system of its own on it

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.server_restarts = 0
        self.options = dict(NODE_OPTIONS if options is None else options)   # Config fields for the node

    @abc.abstractmethod
    def describe(self) -> str:
        """One line naming the target (the run's header)."""

    @abc.abstractmethod
    def start(self, run_dir: str) -> None:
        """Make the target ready for clients (its files under *run_dir*)."""

    def clients_started(self) -> None:
        """The clients are attached: the harness lets go of what held the database for them."""

    @abc.abstractmethod
    def client_target(self) -> dict[str, Any]:
        """What a client process needs to reach the target."""

    def workers(self) -> list[dict[str, Any]] | None:
        """The node's shard workers (id, pid, state, restarts), None when unknown."""
        if self.path is None:
            return None
        stats = node_stats(self.path)
        return None if stats is None else stats["shards"]

    def await_whole(self, timeout: float) -> bool:
        """Wait until the node runs every worker (True), or *timeout*."""
        if self.path is None:
            return True
        deadline = time.monotonic() + timeout
        while not _whole(node_stats(self.path)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def kill_server(self) -> tuple[str, Any]:
        """kill -9 the server (or node); (what was killed, a token for await_server).
        Only targets that list kill-server in ``faults`` are asked."""
        raise RuntimeError(f"a {self.kind} target has no server process of the harness's to kill")

    def await_server(self, token: Any, timeout: float) -> bool:
        """Wait until the server killed with *token* serves again (True), or *timeout*."""
        raise RuntimeError(f"a {self.kind} target has no server process of the harness's to restart")

    @abc.abstractmethod
    def final_values(self, keys: list[str], list_keys: list[str]) -> tuple[dict[str, str | None],
                                                                          dict[str, list[Any]]]:
        """The values of *keys* and the lists of *list_keys* after the run."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release everything the harness started or made."""


    def _take_directory(self) -> None:
        """Before the run: the directory asked for, or a fresh one (on a
        file system of its own for disk-full)."""
        if self.owned:
            self.path = tempfile.mkdtemp(prefix="ldb-stress-data-")
            if self.own_fs:
                _mount_disk(self.path)
                self.mounted = True
        else:
            assert self.requested is not None
            self.path = os.path.abspath(self.requested)

    def _release_directory(self, kill_node: bool) -> None:
        """After the run: wait for the directory's node to exit (it does once
        its last client detached; *kill_node*: kill it after 60 s when the
        harness made the directory), unmount the harness's file system, and
        remove a directory the harness made."""
        if self.path is not None:
            from ..shards.node import read_node_file, same_process
            info = read_node_file(self.path)
            if info is not None and same_process(info.get("pid", -1), info.get("create_time")):
                _await_exit(info["pid"], 60.0)
                if kill_node and self.owned and same_process(info["pid"], info.get("create_time")):
                    with contextlib.suppress(psutil.Error):
                        psutil.Process(info["pid"]).kill()   # the node of a directory we made; its workers follow
                    _await_exit(info["pid"], 10.0)
        if self.mounted and self.path is not None:
            _unmount(self.path)
            self.mounted = False
        if self.owned and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


class EmbeddedTarget(Target):
    kind = "embedded"

    def __init__(self, path: str | None, shards: int, own_fs: bool = False,
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.owned = path is None
        self.requested = path
        self.shards = shards
        self.own_fs = own_fs
        self.mounted = False
        self._holder: Any = None
        self.faults = frozenset({"kill-worker", "kill-server", "pause", "corrupt"} | ({"disk-full"} if own_fs and path is None else set()))

    def describe(self) -> str:
        return f"embedded {self.path}" + (" (own file system)" if self.mounted else "")

    def start(self, run_dir: str) -> None:
        import lightning_db

        from ..shards.attach import SHARDS_FILE
        self._take_directory()
        assert self.path is not None
        new = not os.path.exists(os.path.join(self.path, SHARDS_FILE))
        deadline = time.monotonic() + WHOLE_TIMEOUT_S
        # The harness's handle starts the node with its options and keeps it
        # up until the clients have attached (clients_started).
        self._holder = _retrying(lambda: lightning_db.open(self.path, self.shards if new else None,
                                                           **self.options), deadline)
        if not hasattr(self._holder, "refs"):
            self._holder.close()
            raise ValueError(f"{self.path} holds an in-process database (shards=0); the stress harness needs "
                             "a sharded one (worker processes to kill)")
        if next(iter(self._holder.scan(limit=1)), None) is not None:
            self._holder.close()
            raise InvalidArgument(f"{self.path} {HOLDS_DATA}")
        self.shards = len(self._holder.refs)

    def clients_started(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(LightningError):
                holder.close()

    def client_target(self) -> dict[str, Any]:
        return {"kind": "embedded", "path": self.path, "shards": self.shards, "options": self.options}

    def kill_server(self) -> tuple[str, Any]:
        """SIGKILL the node (its workers die with it); the clients' next
        open starts a new one."""
        from ..shards.node import read_node_file, same_process
        assert self.path is not None
        info = read_node_file(self.path)
        if info is None or not same_process(info.get("pid", -1), info.get("create_time")):
            raise _NotNow("no node is running")
        proc = psutil.Process(info["pid"])
        proc.kill()
        self.server_restarts += 1
        return f"node pid {info['pid']}", info["pid"]

    def await_server(self, token: Any, timeout: float) -> bool:
        assert self.path is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = node_stats(self.path)
            if stats is not None and stats.get("node_pid") != token and _whole(stats):
                return True
            time.sleep(0.02)
        return False

    def final_values(self, keys: list[str], list_keys: list[str]) -> tuple[dict[str, str | None],
                                                                          dict[str, list[Any]]]:
        """Through a fresh handle once every worker runs and no transaction
        is left prepared; the node is left to exit after it (waited for)."""
        import lightning_db

        from ..check.appendload import _decode
        from .workload import TXN_PREFIX
        deadline = time.monotonic() + WHOLE_TIMEOUT_S
        db = _retrying(lambda: lightning_db.open(self.path, None, **self.options), deadline)
        node_pid = db._session.node_pid
        try:
            while not _whole(node_stats(self.path)) and time.monotonic() < deadline:
                time.sleep(0.05)
            if list_keys:
                while time.monotonic() < deadline:
                    stats = _retrying(db.stats, deadline)
                    if not any(s.get("prepared_transactions") for s in stats["shards"]):
                        break
                    time.sleep(0.05)
            values = {k: _text(_retrying(lambda k=k: db.get(k.encode()), deadline)) for k in keys}
            lists = {k: _decode(_retrying(lambda k=k: db.get(TXN_PREFIX + k.encode()), deadline), k.encode())
                     for k in list_keys}
        finally:
            db.close()
            _await_exit(node_pid, 60.0)
        return values, lists

    def stop(self) -> None:
        self.clients_started()
        self._release_directory(kill_node=True)


class ServeTarget(Target):
    kind = "serve"

    def __init__(self, path: str | None, shards: int, frontends: int = 2, own_fs: bool = False,
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.owned = path is None
        self.requested = path
        self.shards, self.frontends = shards, frontends
        self.own_fs = own_fs
        self.mounted = False
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_dir = ""
        self.faults = frozenset({"kill-worker", "kill-server", "pause", "corrupt", "drop-connection"}
                                | ({"disk-full"} if own_fs and path is None else set()))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def describe(self) -> str:
        return f"lightning-db serve on {self.path} at {self.url}"

    def start(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._take_directory()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        with open(os.path.join(run_dir, "serve-config.json"), "w", encoding="utf-8") as fh:
            json.dump(self.options, fh)                 # JSON is YAML: Config.from_file reads it
        self._spawn()
        if not self.owned:
            import redis
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=5) as r:
                if r.dbsize():
                    raise InvalidArgument(f"{self.path} {HOLDS_DATA}")

    def _spawn(self) -> None:
        assert self.path is not None
        cmd = [sys.executable, "-m", "lightning_db.server.serve", "--data", self.path, "--port", str(self.port),
               "--shards", str(self.shards), "--frontends", str(self.frontends), "--http-port", "0", "--native-port", "0",
               "--config", os.path.join(self.run_dir, "serve-config.json")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(p or os.curdir) for p in sys.path]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(os.path.join(self.run_dir, "serve.log"), "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + SERVE_READY_S
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"lightning-db serve exited with status {self.proc.returncode}; "
                                   f"see {os.path.join(self.run_dir, 'serve.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lightning-db serve did not answer within {SERVE_READY_S:g}s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        import redis
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2) as r:
                return bool(r.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def client_target(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url}

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.Error:
            return []

    def kill_server(self) -> tuple[str, Any]:
        """SIGKILL serve, its front ends, its node and the node's workers
        (all started by serve, which the harness started), then start serve again."""
        procs = self._tree()
        if not procs:
            raise _NotNow("serve is not running")
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
        assert self.proc is not None
        self.proc.wait(30)
        self.server_restarts += 1
        old = self.proc.pid
        self._spawn()
        return f"serve pid {old} and {len(procs) - 1} processes under it; restarted as pid {self.proc.pid}", None

    def await_server(self, token: Any, timeout: float) -> bool:
        assert self.path is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers() and _whole(node_stats(self.path)):
                return True
            time.sleep(0.05)
        return False

    def final_values(self, keys: list[str], list_keys: list[str]) -> tuple[dict[str, str | None],
                                                                          dict[str, list[Any]]]:
        assert self.path is not None
        deadline = time.monotonic() + WHOLE_TIMEOUT_S
        while not (self._answers() and _whole(node_stats(self.path))) and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                self._spawn()
            time.sleep(0.05)
        return _redis_final(self.url, keys, list_keys, deadline)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVE_STOP_S)
            except subprocess.TimeoutExpired:
                for p in self._tree():
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                self.proc.wait(30)
        self._release_directory(kill_node=False)


class RemoteTarget(Target):
    kind = "redis"
    faults = frozenset({"drop-connection"})

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def describe(self) -> str:
        return f"server at {self.url}"

    def start(self, run_dir: str) -> None:
        import redis
        with redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5) as r:
            r.ping()
            if r.dbsize():
                raise InvalidArgument(f"the server at {self.url} {HOLDS_DATA} (FLUSHALL it first)")

    def client_target(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url}

    def final_values(self, keys: list[str], list_keys: list[str]) -> tuple[dict[str, str | None],
                                                                          dict[str, list[Any]]]:
        return _redis_final(self.url, keys, list_keys, time.monotonic() + WHOLE_TIMEOUT_S)

    def stop(self) -> None:
        pass


class _NotNow(Exception):
    """The fault has nothing to act on at the moment (the injector tries again)."""


def _text(v: Any) -> str | None:
    return None if v is None else bytes(v).decode()


def _redis_final(url: str, keys: list[str], list_keys: list[str],
                 deadline: float) -> tuple[dict[str, str | None], dict[str, list[Any]]]:
    import redis

    from ..check.appendload import _decode
    from .workload import TXN_PREFIX
    values: dict[str, str | None] = {}
    lists: dict[str, list[Any]] = {}
    todo = [("v", k) for k in keys] + [("l", k) for k in list_keys]
    delay = 0.05
    while todo:
        try:
            with redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5) as r:
                while todo:
                    chunk = todo[:500]
                    wire = [k.encode() if kind == "v" else TXN_PREFIX + k.encode() for kind, k in chunk]
                    for (kind, k), raw, w in zip(chunk, r.mget(wire), wire):
                        if kind == "v":
                            values[k] = _text(raw)
                        else:
                            lists[k] = _decode(raw, w)
                    del todo[:len(chunk)]
        except (redis.exceptions.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    return values, lists


def _await_exit(pid: int, timeout: float) -> None:
    try:
        psutil.Process(pid).wait(timeout)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
        pass


def _image_of(path: str) -> str:
    return os.path.join(tempfile.gettempdir(), "ldb-stress-" + path.strip("/").replace("/", "_") + ".ext4")


def _mount_disk(path: str, size: str = DISK_SIZE) -> None:
    """A sparse ext4 image (no reserved blocks) loop-mounted on *path*.
    Not a tmpfs: a read fault on a hole of a mapped tmpfs file allocates a
    page, so a full tmpfs kills readers (the callers mapping memtable
    segments) with SIGBUS, which no real disk does."""
    image = _image_of(path)
    subprocess.run(["truncate", "-s", size, image], check=True, capture_output=True, timeout=30)
    steps = (["mkfs.ext4", "-q", "-F", "-m", "0", image], ["mount", "-o", "loop", image, path])
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            with contextlib.suppress(OSError):
                os.unlink(image)
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: "
                               f"{r.stderr.decode(errors='replace').strip() or r.returncode}")


def _unmount(path: str) -> None:
    r = subprocess.run(["umount", path], capture_output=True, timeout=60, check=False)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=60, check=False)
    with contextlib.suppress(OSError):
        os.unlink(_image_of(path))


def make_target(spec: str | None, shards: int, faults: Sequence[str] = ()) -> Target:
    """The target a ``--target`` value names (see the module docstring),
    prepared for *faults*."""
    own_fs = "disk-full" in faults
    options = dict(NODE_OPTIONS, **(CORRUPT_OPTIONS if "corrupt" in faults else {}))
    if spec and spec.startswith(("redis://", "rediss://", "serve:")) and importlib.util.find_spec("redis") is None:
        raise ValueError("a Redis-protocol target needs redis-py (pip install redis)")
    if spec is None or spec == "":
        return EmbeddedTarget(None, shards, own_fs, options)
    if spec.startswith(("redis://", "rediss://")):
        return RemoteTarget(spec)
    if spec.startswith("serve:"):
        rest = spec[len("serve:"):]
        return ServeTarget(rest or None, shards, own_fs=own_fs, options=options)
    if "://" in spec:
        raise ValueError(f"unsupported target URL {spec!r}: expected redis://HOST:PORT")
    return EmbeddedTarget(spec, shards, own_fs, options)
