"""Model-based test with two attached processes on one sharded database.

``DatabaseMachine`` (tests/test_model.py) drives a sharded database
(``shards=2``) against a dict. Here a second process, a small server that
reads commands from a pipe, opens the same path too and attaches to the same
node. Every write and read rule of the machine is run by a hypothesis-drawn
side: the local handle or the remote process's handle, so both processes
write and read, and every read (from either) is checked against the one
model; read-your-writes holds across processes. Snapshots are taken and read
on either side, and the remote handle is closed and reopened (detach +
re-attach) while the local handle keeps the node alive, as the inherited
``reopen`` rule does for the local handle while the remote one keeps it.

Every example starts a node and a second interpreter, so the default is
small; ``LDB_MODEL_ATTACHED_EXAMPLES`` sets the number of examples.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import consumes, precondition, rule, run_state_machine_as_test

from lightning_db import DatabaseClosed, InvalidArgument
from tests.test_model import (
    MAX_SNAPSHOTS,
    SMALL,
    DatabaseMachine,
    bounds,
    keys,
    limits,
    model_scan,
    ops,
    values,
)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
REPLY_TIMEOUT_S = 120.0      # one remote command; generous for a loaded machine
STOP_TIMEOUT_S = 30.0        # the remote process exiting after EOF on its pipe
NODE_EXIT_TIMEOUT_S = 60.0   # the node exiting after the last handle closed

sides = st.sampled_from(["local", "remote"])

# The second process: runs commands (target, op, args, kwargs) from its inbox
# pipe and answers ("ok", result) or ("err", type name, message, traceback).
# EOF on the inbox ends it; handles it did not close are detached at exit.
SERVER = r"""
import itertools, json, os, sys, traceback
from multiprocessing.connection import Connection
os.dup2(2, 1)                                # nothing may write to the test's stdout
import lightning_db as ldb

class Boom(Exception):
    pass

def run(objs, ids, path, options, target, op, args, kwargs):
    if target is None:                       # "open"
        n = next(ids)
        objs[("h", n)] = ldb.open(path, shards=args[0], **options)
        return n
    obj = objs[target]
    if op == "getitem":
        return obj[args[0]]
    if op == "contains":
        return args[0] in obj
    if op == "setitem":
        obj[args[0]] = args[1]
        return None
    if op == "delitem":
        del obj[args[0]]
        return None
    if op == "closed":
        return obj.closed
    if op == "snapshot":
        n = next(ids)
        objs[("s", n)] = obj.snapshot()
        return n
    if op == "put_many":
        items = args[0]
        obj.put_many(items if isinstance(items, dict) else iter(items))
        return None
    if op == "batch":
        batch_ops, abort = args
        try:
            with obj.batch() as b:
                for kind, k, v in batch_ops:
                    if kind == "put":
                        b.put(k, v)
                    else:
                        b.delete(k)
                if abort:
                    raise Boom()
        except Boom:
            pass
        return None
    out = getattr(obj, op)(*args, **kwargs)
    return list(out) if op == "scan" else out

def main():
    inbox = Connection(int(sys.argv[1]), writable=False)
    outbox = Connection(int(sys.argv[2]), readable=False)
    path, options = sys.argv[3], json.loads(sys.argv[4])
    objs, ids = {}, itertools.count(1)
    while True:
        try:
            target, op, args, kwargs = inbox.recv()
        except EOFError:
            return
        try:
            result = run(objs, ids, path, options, target, op, args, kwargs)
        except Exception as exc:
            outbox.send(("err", type(exc).__name__, str(exc), traceback.format_exc()))
        else:
            outbox.send(("ok", result))

main()
"""

# Errors the rules expect, raised again here by type; anything else is a failure.
EXPECTED_ERRORS: dict[str, type[Exception]] = {
    "KeyError": KeyError,
    "DatabaseClosed": DatabaseClosed,
    "InvalidArgument": InvalidArgument,
}


class RemoteFailure(AssertionError):
    """The remote process raised something no rule expects, hung, or died."""


class RemoteProcess:
    """The second process and its command pipes."""

    def __init__(self, path: str, options: dict) -> None:
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(p2c_r), str(c2p_w), path, json.dumps(options)],
                pass_fds=(p2c_r, c2p_w), stdin=subprocess.DEVNULL, cwd=ROOT)
        except BaseException:
            for fd in (p2c_w, c2p_r):
                os.close(fd)
            raise
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
        self._out = Connection(p2c_w, readable=False)
        self._in = Connection(c2p_r, writable=False)
        self.stopped = False

    def call(self, target: tuple[str, int] | None, op: str, *args: Any, **kwargs: Any) -> Any:
        if self.stopped:
            # Only stale snapshots of a handle whose process exited get here.
            raise DatabaseClosed(f"the remote process {self.proc.pid} exited")
        try:
            self._out.send((target, op, args, kwargs))
            if not self._in.poll(REPLY_TIMEOUT_S):
                raise RemoteFailure(f"remote {op}{args!r}: no answer in {REPLY_TIMEOUT_S}s (pid {self.proc.pid})")
            reply = self._in.recv()
        except (EOFError, OSError) as exc:
            raise RemoteFailure(f"remote {op}{args!r}: the process is gone ({exc!r}, "
                                f"exit code {self.proc.poll()})") from None
        if reply[0] == "ok":
            return reply[1]
        _, name, msg, tb = reply
        if name in EXPECTED_ERRORS:
            raise EXPECTED_ERRORS[name](msg)
        raise RemoteFailure(f"remote {op}{args!r} raised {name}: {msg}\n{tb}")

    def open(self, shards: int | None = 2) -> RemoteDatabase:
        return RemoteDatabase(self, self.call(None, "open", shards))

    def stop(self) -> None:
        """EOF ends the server loop (its open handles detach at exit); one
        that does not exit in time is terminated, then killed, and reaped."""
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(OSError):
            self._out.close()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            with contextlib.suppress(OSError):
                self._in.close()


class RemoteSnapshot:
    """A snapshot held by the remote process, with the Snapshot read API."""

    def __init__(self, remote: RemoteProcess, sid: int) -> None:
        self._remote, self._target = remote, ("s", sid)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._remote.call(self._target, "get", key, default)

    def __getitem__(self, key: Any) -> bytes:
        return self._remote.call(self._target, "getitem", key)

    def __contains__(self, key: Any) -> bool:
        return self._remote.call(self._target, "contains", key)

    def get_many(self, ks: Iterable[Any]) -> list[bytes | None]:
        return self._remote.call(self._target, "get_many", list(ks))

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._remote.call(self._target, "scan", start=start, end=end, prefix=prefix,
                                      reverse=reverse, limit=limit))

    def close(self) -> None:
        self._remote.call(self._target, "close")


class RemoteBatch:
    """Collects a batch here; the remote process runs it as a real batch on
    commit, and runs and aborts it (an exception inside its ``with``) when
    the block here raised."""

    def __init__(self, db: RemoteDatabase) -> None:
        self._db, self._ops = db, []

    def put(self, key: bytes, value: bytes) -> None:
        self._ops.append(("put", key, value))

    def delete(self, key: bytes) -> None:
        self._ops.append(("delete", key, b""))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._db._call("batch", self._ops, exc_type is not None)
        return False


class RemoteDatabase:
    """One handle of the remote process, with the Database API (mapping
    sugar included) the machine's rules use; each call runs there."""

    def __init__(self, remote: RemoteProcess, hid: int) -> None:
        self._remote, self._target = remote, ("h", hid)

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self._remote.call(self._target, op, *args, **kwargs)

    def put(self, key: bytes, value: bytes) -> None:
        self._call("put", key, value)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._call("setitem", key, value)

    def delete(self, key: bytes) -> None:
        self._call("delete", key)

    def __delitem__(self, key: bytes) -> None:
        self._call("delitem", key)

    def put_many(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> None:
        self._call("put_many", dict(items) if isinstance(items, Mapping) else list(items))

    def batch(self) -> RemoteBatch:
        return RemoteBatch(self)

    def get(self, key: bytes, default: Any = None) -> Any:
        return self._call("get", key, default)

    def __getitem__(self, key: bytes) -> bytes:
        return self._call("getitem", key)

    def __contains__(self, key: bytes) -> bool:
        return self._call("contains", key)

    def get_many(self, ks: Iterable[bytes]) -> list[bytes | None]:
        return self._call("get_many", list(ks))

    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._call("scan", start=start, end=end, prefix=prefix, reverse=reverse, limit=limit))

    def snapshot(self) -> RemoteSnapshot:
        return RemoteSnapshot(self._remote, self._call("snapshot"))

    def flush(self) -> None:
        self._call("flush")

    def compact(self) -> None:
        self._call("compact")

    def stats(self) -> dict:
        return self._call("stats")

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return self._call("closed")


def node_process(path: str) -> psutil.Process | None:
    """The node serving *path*: a child of this process (the local handle,
    opened first, started it)."""
    for p in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "lightning_db.shards.node" in cmd and path in cmd:
                return p
    return None


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_node(path: str) -> None:
    """After a failed start: the node of *path* (if any) gets a moment to
    exit by itself, then it and its workers are killed and reaped."""
    node = node_process(path)
    if node is None:
        return
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not alive(node), 5.0, "the node to exit")
    with contextlib.suppress(psutil.Error):
        procs = [node, *node.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)


class AttachedMachine(DatabaseMachine):
    """``DatabaseMachine`` over two attached processes. ``self.db`` is the
    local handle; a rule run on the remote side swaps the remote handle (and
    its count of live snapshots) in for the duration of the inherited rule."""

    SHARDS = 2

    def __init__(self) -> None:
        try:
            super().__init__()                   # the local handle: starts the node
        except BaseException:
            # The attach may have failed after starting a node that nobody
            # attached to, and no teardown follows a failed __init__.
            if getattr(self, "dir", None):
                kill_node(self.dir)
                shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.remote: RemoteProcess | None = None
        try:
            self.node = node_process(self.dir)
            self.remote = RemoteProcess(self.dir, self.OPTIONS)
            self.remote_db: RemoteDatabase = self.remote.open(2)
        except BaseException:
            try:
                if self.remote is not None:
                    self.remote.stop()
                self.db.close()
            finally:
                kill_node(self.dir)
                shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.remote_live = 0
        self.remote_reopens = 0
        self.remote_restarts = 0

    def teardown(self) -> None:
        try:
            try:
                if not self.remote.stopped and not self.remote_db.closed:
                    assert list(self.remote_db.scan()) == sorted(self.model.items())
                    self.remote_db.close()
            finally:
                self.remote.stop()
            if not self.db.closed:
                assert list(self.db.scan()) == sorted(self.model.items())
                event(f"remote reopens: {min(self.remote_reopens, 2)}")
                event(f"remote process restarts: {min(self.remote_restarts, 1)}")
        finally:
            try:
                self.db.close()
                if self.node is not None:
                    try:
                        wait_until(lambda: not alive(self.node), NODE_EXIT_TIMEOUT_S,
                                   f"the node (pid {self.node.pid}) to exit after both handles closed")
                    except AssertionError:
                        kill_node(self.dir)
                        raise
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def _via(self, side: str) -> Iterator[None]:
        if side == "local":
            yield
            return
        local_db, local_live = self.db, self.live_snapshots
        self.db, self.live_snapshots = self.remote_db, self.remote_live
        try:
            yield
        finally:
            self.remote_db, self.remote_live = self.db, self.live_snapshots
            self.db, self.live_snapshots = local_db, local_live

    def _side_of(self, snap: tuple) -> str:
        return "remote" if isinstance(snap[2], RemoteDatabase) else "local"

    # --- writes, on either side ----------------------------------------------------------
    @rule(via=sides, key=keys, value=values)
    def put(self, via, key, value):
        with self._via(via):
            super().put(key, value)

    @rule(via=sides, key=keys, value=values)
    def setitem(self, via, key, value):
        with self._via(via):
            super().setitem(key, value)

    @rule(via=sides, key=keys)
    def delete(self, via, key):
        with self._via(via):
            super().delete(key)

    @precondition(lambda self: self.model)
    @rule(via=sides, data=st.data())
    def delete_present(self, via, data):
        with self._via(via):
            super().delete_present(data)

    @rule(via=sides, key=keys)
    def delitem(self, via, key):
        with self._via(via):
            super().delitem(key)

    @rule(via=sides, items=st.dictionaries(keys, values, max_size=8))
    def put_many_dict(self, via, items):
        with self._via(via):
            super().put_many_dict(items)

    @rule(via=sides, pairs=st.lists(st.tuples(keys, values), max_size=8))
    def put_many_pairs(self, via, pairs):
        with self._via(via):
            super().put_many_pairs(pairs)

    @rule(via=sides, seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.25, 0.5, 1.0]))
    def bulk(self, via, seed, fraction):
        with self._via(via):
            super().bulk(seed, fraction)

    @rule(via=sides, ops=ops)
    def batch(self, via, ops):
        with self._via(via):
            super().batch(ops)

    @rule(via=sides, ops=ops)
    def batch_aborted(self, via, ops):
        with self._via(via):
            super().batch_aborted(ops)

    # --- reads, on either side ------------------------------------------------------------
    @rule(via=sides, key=keys)
    def get(self, via, key):
        with self._via(via):
            super().get(key)

    @rule(via=sides, key=keys)
    def getitem_contains(self, via, key):
        with self._via(via):
            super().getitem_contains(key)

    @rule(via=sides, ks=st.lists(keys, max_size=8))
    def get_many(self, via, ks):
        with self._via(via):
            super().get_many(ks)

    @rule(via=sides, start=bounds, end=bounds, prefix=bounds, reverse=st.booleans(), limit=limits)
    def scan(self, via, start, end, prefix, reverse, limit):
        with self._via(via):
            super().scan(start, end, prefix, reverse, limit)

    @rule(via=sides, prefix=keys, reverse=st.booleans())
    def scan_prefix_only(self, via, prefix, reverse):
        with self._via(via):
            super().scan_prefix_only(prefix, reverse)

    @rule(writer=sides, key=keys, value=st.none() | values)
    def write_then_read_other_side(self, writer, key, value):
        """Read-your-writes across processes: a write acknowledged on one
        side (put and delete are pipelined: flush() waits for the answer)
        is seen by the very next reads on the other."""
        w, r = (self.db, self.remote_db) if writer == "local" else (self.remote_db, self.db)
        if value is None:
            w.delete(key)
            self.model.pop(key, None)
        else:
            w.put(key, value)
            self.model[key] = value
        assert w.get(key) == value          # the writer sees its own write at once
        w.flush()
        assert r.get(key) == value
        assert r.get_many([key]) == [value]
        assert list(r.scan(prefix=key[:1])) == model_scan(self.model, None, None, key[:1], False, None)

    # --- snapshots: taken on either side, read where they were taken -------------------------
    @precondition(lambda self: min(self.live_snapshots, self.remote_live) < MAX_SNAPSHOTS)
    @rule(target=DatabaseMachine.snapshots, data=st.data())
    def take_snapshot(self, data):
        free = [s for s, n in (("local", self.live_snapshots), ("remote", self.remote_live)) if n < MAX_SNAPSHOTS]
        with self._via(data.draw(st.sampled_from(free), label="via")):
            return super().take_snapshot()

    @rule(snap=DatabaseMachine.snapshots, key=keys)
    def snapshot_get(self, snap, key):
        with self._via(self._side_of(snap)):
            super().snapshot_get(snap, key)

    @rule(snap=DatabaseMachine.snapshots, ks=st.lists(keys, max_size=6))
    def snapshot_get_many(self, snap, ks):
        with self._via(self._side_of(snap)):
            super().snapshot_get_many(snap, ks)

    @rule(snap=DatabaseMachine.snapshots, start=bounds, end=bounds, prefix=bounds, reverse=st.booleans(),
          limit=limits)
    def snapshot_scan(self, snap, start, end, prefix, reverse, limit):
        with self._via(self._side_of(snap)):
            super().snapshot_scan(snap, start, end, prefix, reverse, limit)

    @rule(snap=consumes(DatabaseMachine.snapshots), key=keys)
    def release_snapshot(self, snap, key):
        with self._via(self._side_of(snap)):
            super().release_snapshot(snap, key)

    # --- maintenance, on either side; the remote handle detaches and re-attaches -------------
    @rule(via=sides)
    def flush(self, via):
        with self._via(via):
            super().flush()

    @rule(via=sides)
    def compact(self, via):
        with self._via(via):
            super().compact()

    @rule(shards=st.sampled_from([2, None]))
    def reopen_remote(self, shards):
        """Close the remote handle (detach) and open a new one (attach) while
        the local handle keeps the node alive; shards=None opens the recorded
        count."""
        old = self.remote_db
        old.close()
        assert old.closed
        with pytest.raises(DatabaseClosed):
            old.get(b"a")
        self.remote_live = 0                     # they belong to the closed handle now
        self.remote_db = self.remote.open(shards)
        self.remote_reopens += 1
        assert list(self.remote_db.scan()) == sorted(self.model.items())

    @rule()
    def restart_remote_process(self):
        """The remote process exits without closing its handle (it detaches
        at exit) and a fresh process attaches to the same node."""
        self.remote.stop()
        assert self.remote.proc.returncode == 0
        self.remote_live = 0
        self.remote = RemoteProcess(self.dir, self.OPTIONS)
        self.remote_db = self.remote.open(2)
        self.remote_restarts += 1
        assert list(self.remote_db.scan()) == sorted(self.model.items())


def test_attached_processes_match_dict_model(tmp_path):
    machine = type("AttachedMachine", (AttachedMachine,), {"OPTIONS": SMALL, "BASE_DIR": str(tmp_path)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("LDB_MODEL_ATTACHED_EXAMPLES", "10")),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
