"""One stress client: a separate process that runs operations and records them.

Run as ``python -m lightning_db.stress.client SPEC.json`` by the harness
(run.py), which writes the spec: the client's index and count, the target
(``{"kind": "embedded", "path", "shards", "options"}`` or ``{"kind":
"redis", "url"}``), the workload (a mix, or the list-append transactions),
keys, distribution, seed, optional rate, and the paths of its history file
and of the stop file.

Which process runs what: this process, main thread only. Every operation
is recorded before it starts ("invoke", flushed: a kill must not lose the
invoke of a write that took effect) and after it ends ("ok", "fail" or
"info", outcomes.py); the format is in history.py.

- Writes go through single-key batches (``put_many``, ``batch().delete``),
  which return after the shard acknowledged them: a plain ``put`` is
  pipelined (shards/pipeline.py) and returns before the acknowledgement,
  so its return is no "ok".
- After an "info" the client takes a new process id (the old one may still
  have an operation in flight, as far as the checkers know); ids are
  ``index + clients * generation``. The reads of a scan each get an id of
  their own (``id + SCAN_STRIDE * (position + 1)``), since one process has
  at most one operation outstanding.
- A broken handle (a fatal error, a dropped connection, an error that is not
  the database's) or a long run of errors: the handle is closed and opened
  again with backoff, and the client goes on (a "reopen" note).
- SIGUSR1 drops the client's connection at once (the drop-connection
  fault of a Redis target); SIGTERM stops it like the stop file.

Keys rotate: every ``rotate_s`` seconds (from the run's common ``start``)
the client moves to a fresh generation of the keyspace (``g<N>:k<index>``),
so that no key's history grows without bound and the checkers can take one
generation at a time; the keys left behind stay, and are read back at the
end like the others.

It stops when the stop file appears, when its deadline passes, or when the
harness that started it is gone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from ..check.appendload import _decode, plan_txn
from ..errors import LightningError
from .outcomes import outcome, reopen_needed, taxonomy
from .workload import TXN_PREFIX, KeyChooser, Mix, OpSource, versioned_key

__all__ = ["SCAN_STRIDE", "main", "open_backend"]

SCAN_STRIDE = 1_000_000
ERRORS_BEFORE_REOPEN = 50       # consecutive errors that make the client reopen its handle
BACKOFF_CAP_S = 0.5
SOCKET_TIMEOUT_S = 15.0         # a Redis reply that takes longer is an "info"
MESSAGE_CHARS = 200             # of an error's message, kept in the history


class _BeforeCommit(Exception):
    """A transaction failed before its commit was sent: nothing was written."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


# --- backends ---------------------------------------------------------------------------------


class EmbeddedBackend:
    """``lightning_db.open`` on the data directory (attaches to its node)."""

    def __init__(self, target: dict[str, Any]) -> None:
        import lightning_db
        self.db: Any = lightning_db.open(target["path"], target.get("shards"), **target.get("options", {}))

    def read(self, key: str) -> str | None:
        v = self.db.get(key.encode())
        return None if v is None else bytes(v).decode()

    def write(self, key: str, value: str) -> None:
        self.db.put_many({key.encode(): value.encode()})       # returns after the acknowledgement

    def delete(self, key: str) -> None:
        with self.db.batch() as b:
            b.delete(key.encode())

    def scan(self, keys: list[str]) -> dict[str, str | None]:
        end = keys[-1].encode() + b"\x00"
        got = {bytes(k).decode(): bytes(v).decode() for k, v in self.db.scan(start=keys[0].encode(), end=end)}
        return {k: got.get(k) for k in keys}

    def txn(self, plan: list[list[Any]]) -> list[list[Any]]:
        tx = self.db.transaction(isolation="serializable")
        ops: list[list[Any]] = []
        try:
            for f, k, v in plan:
                kb = TXN_PREFIX + k.encode()
                cur = _decode(tx.get(kb), kb)
                if f == "r":
                    ops.append(["r", k, cur])
                else:
                    ops.append(["append", k, v])
                    tx.put(kb, msgpack.packb(cur + [v]))
        except Exception as exc:
            tx.rollback()
            raise _BeforeCommit(exc) from exc
        tx.commit()
        return ops

    def read_lists(self, keys: list[str]) -> dict[str, list[Any]]:
        vals = self.db.get_many([TXN_PREFIX + k.encode() for k in keys])
        return {k: _decode(v, k.encode()) for k, v in zip(keys, vals)}

    def drop(self) -> None:
        """No connection to drop: the embedded handle talks to the shards over ipc."""

    def close(self) -> None:
        self.db.close()


class RedisBackend:
    """redis-py on one connection, without redis-py's own retries: a request
    sent again after a dropped connection could take effect twice."""

    def __init__(self, target: dict[str, Any]) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self.r = redis.Redis.from_url(target["url"], socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5.0,
                                      retry=Retry(NoBackoff(), 0), single_connection_client=True)
        self.r.ping()

    def read(self, key: str) -> str | None:
        v = self.r.get(key)
        return None if v is None else v.decode()

    def write(self, key: str, value: str) -> None:
        self.r.set(key, value)

    def delete(self, key: str) -> None:
        self.r.delete(key)

    def scan(self, keys: list[str]) -> dict[str, str | None]:
        return {k: None if v is None else v.decode() for k, v in zip(keys, self.r.mget(keys))}

    def txn(self, plan: list[list[Any]]) -> list[list[Any]]:
        """WATCH every key, read them, MULTI, SET the appended lists, EXEC: an
        EXEC refused because a watched key changed (WatchError) wrote nothing."""
        names = sorted({k for _, k, _ in plan})
        wire = {k: TXN_PREFIX + k.encode() for k in names}
        with self.r.pipeline(transaction=True) as p:
            try:
                p.watch(*wire.values())
                lists = {k: _decode(p.get(wire[k]), wire[k]) for k in names}
                ops: list[list[Any]] = []
                written: set[str] = set()
                for f, k, v in plan:
                    if f == "r":
                        ops.append(["r", k, list(lists[k])])
                    else:
                        lists[k].append(v)
                        written.add(k)
                        ops.append(["append", k, v])
                p.multi()
                for k in sorted(written):
                    p.set(wire[k], msgpack.packb(lists[k]))
                if not written:
                    p.exists(wire[names[0]])        # EXEC still checks the watched keys
            except Exception as exc:
                raise _BeforeCommit(exc) from exc
            p.execute()
        return ops

    def read_lists(self, keys: list[str]) -> dict[str, list[Any]]:
        wire = [TXN_PREFIX + k.encode() for k in keys]
        return {k: _decode(v, w) for k, v, w in zip(keys, self.r.mget(wire), wire)}

    def drop(self) -> None:
        """Cut the connections under whatever request is in flight (signal
        handler): the client's own and the pool's (a transaction's pipeline
        takes one from the pool)."""
        pool = self.r.connection_pool
        conns = [getattr(self.r, "connection", None)]
        conns += list(getattr(pool, "_in_use_connections", ())) + list(getattr(pool, "_available_connections", ()))
        for conn in conns:
            sock = getattr(conn, "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.r.close()


def open_backend(target: dict[str, Any]) -> EmbeddedBackend | RedisBackend:
    if target["kind"] == "embedded":
        return EmbeddedBackend(target)
    if target["kind"] == "redis":
        return RedisBackend(target)
    raise ValueError(f"unknown target kind {target['kind']!r}")


def _expected(exc: BaseException) -> bool:
    """An error the database, the connection or the OS can cause (recorded,
    and the client goes on), as opposed to a bug of this client."""
    if isinstance(exc, (LightningError, OSError, EOFError, ValueError)):
        return True
    try:
        from redis.exceptions import RedisError
    except ImportError:                    # pragma: no cover - redis is a test dependency
        return False
    return isinstance(exc, RedisError)


# --- the client loop --------------------------------------------------------------------------


class Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.index, self.clients = int(spec["index"]), int(spec["clients"])
        self.rng = random.Random(f"{spec['seed']}:{self.index}")
        self.generation = 0
        self.counter = 0
        self.backend: EmbeddedBackend | RedisBackend | None = None
        self.stop_file = spec["stop"]
        self.deadline = time.monotonic() + float(spec.get("deadline_s", 86400.0))
        self.parent = os.getppid()
        self.stopping = False
        self.errors_in_a_row = 0
        self.counts = {"ok": 0, "fail": 0, "info": 0, "reopens": 0}
        self.log = open(spec["history"], "a", encoding="utf-8", buffering=1)
        self.rate = float(spec.get("rate") or 0.0)
        self.next_at = time.monotonic()
        keys, dist = int(spec["keys"]), spec["distribution"]
        if spec.get("mix"):
            mix = Mix(tuple((op, float(w)) for op, w in spec["mix"]))
            self.source: OpSource | None = OpSource(mix, keys, dist, self.rng, cursor=self.rng.randrange(keys))
            self.chooser: KeyChooser | None = None
        else:
            self.source = None
            self.chooser = KeyChooser(keys, dist, self.rng)
        self.max_ops = int(spec.get("max_ops", 4))
        self.rotate_s = float(spec.get("rotate_s", 10.0))
        self.start = float(spec.get("start", time.monotonic()))

    @property
    def process(self) -> int:
        return self.index + self.clients * self.generation

    # -- recording --

    def emit(self, ev: dict[str, Any]) -> None:
        self.log.write(json.dumps(ev, separators=(",", ":")) + "\n")

    def note(self, event: str, **detail: Any) -> None:
        self.emit({"type": "meta", "event": event, "client": self.index, "process": self.process,
                   "time": time.monotonic(), **detail})

    def failed(self, inv: dict[str, Any], exc: BaseException, f: str) -> str:
        kind = outcome(f, exc)
        self.emit({**inv, "type": kind, "time": time.monotonic(), "error": type(exc).__name__,
                   "class": taxonomy(exc), "message": str(exc)[:MESSAGE_CHARS]})
        self.counts[kind] += 1
        if kind == "info":
            self.generation += 1
        return kind

    # -- operations --

    def single(self, f: str, key: str, value: str | None = None) -> None:
        assert self.backend is not None
        inv = {"process": self.process, "type": "invoke", "f": f, "key": key, "value": value,
               "time": time.monotonic()}
        self.emit(inv)
        try:
            if f == "read":
                got: str | None = self.backend.read(key)
            elif f == "write":
                self.backend.write(key, value)  # type: ignore[arg-type]
                got = value
            else:
                self.backend.delete(key)
                got = None
        except Exception as exc:
            self.failed(inv, exc, f)
            raise
        self.emit({**inv, "type": "ok", "value": got, "time": time.monotonic()})
        self.counts["ok"] += 1

    def scan(self, first: int, count: int) -> None:
        assert self.backend is not None
        gen = self.key_generation()
        keys = [self.key(first + i, gen) for i in range(count)]
        t0 = time.monotonic()
        invs = [{"process": self.process + SCAN_STRIDE * (i + 1), "type": "invoke", "f": "read", "key": k,
                 "value": None, "time": t0} for i, k in enumerate(keys)]
        for inv in invs:
            self.emit(inv)
        try:
            got = self.backend.scan(keys)
        except Exception as exc:
            t1 = time.monotonic()
            for inv in invs:
                self.emit({**inv, "type": "fail", "time": t1, "error": type(exc).__name__,
                           "class": taxonomy(exc), "message": str(exc)[:MESSAGE_CHARS]})
            self.counts["fail"] += 1
            raise
        t1 = time.monotonic()
        for inv in invs:
            self.emit({**inv, "type": "ok", "value": got[inv["key"]], "time": t1})
        self.counts["ok"] += 1

    def key_generation(self) -> int:
        """The generation of the keyspace now (not the process-id generation)."""
        return int((time.monotonic() - self.start) // self.rotate_s) if self.rotate_s > 0 else 0

    def key(self, index: int, gen: int | None = None) -> str:
        return versioned_key(self.key_generation() if gen is None else gen, index)

    def txn(self) -> None:
        assert self.backend is not None and self.chooser is not None
        gen = self.key_generation()
        plan: list[list[Any]] = []
        for f, _ in plan_txn(self.rng, 1, self.max_ops):
            k = self.key(self.chooser.next(), gen)
            if f == "r":
                plan.append(["r", k, None])
            else:
                self.counter += 1
                plan.append(["append", k, self.counter * self.clients + self.index])
        inv = {"process": self.process, "type": "invoke", "f": "txn", "ops": plan, "time": time.monotonic()}
        self.emit(inv)
        try:
            ops = self.backend.txn(plan)
        except _BeforeCommit as wrapped:
            self.emit({**inv, "type": "fail", "time": time.monotonic(), "error": type(wrapped.exc).__name__,
                       "class": taxonomy(wrapped.exc), "message": str(wrapped.exc)[:MESSAGE_CHARS]})
            self.counts["fail"] += 1
            raise wrapped.exc from None
        except Exception as exc:
            self.failed(inv, exc, "txn")
            raise
        self.emit({**inv, "type": "ok", "ops": ops, "time": time.monotonic()})
        self.counts["ok"] += 1

    def one(self) -> None:
        if self.source is None:
            self.txn()
            return
        op = self.source.next()
        f = op[0]
        if f == "scan":
            self.scan(op[1], op[2])
        elif f == "rmw":
            key = self.key(op[1])
            self.single("read", key)
            self.counter += 1
            self.single("write", key, f"{self.index}-{self.counter}")
        elif f == "write":
            self.counter += 1
            self.single("write", self.key(op[1]), f"{self.index}-{self.counter}")
        else:
            self.single(f, self.key(op[1]))

    # -- the loop --

    def should_stop(self) -> bool:
        return (self.stopping or os.path.exists(self.stop_file) or time.monotonic() > self.deadline
                or os.getppid() != self.parent)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def close_backend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.close()
            except Exception:                      # a broken handle may fail to close; it is dropped
                pass

    def connect(self) -> bool:
        """Open the backend, with backoff; False when told to stop first."""
        delay = 0.02
        while not self.should_stop():
            try:
                self.backend = open_backend(self.spec["target"])
                return True
            except Exception as exc:
                if not _expected(exc):
                    raise
                self.note("open-failed", error=type(exc).__name__, detail=str(exc)[:MESSAGE_CHARS])
                self.sleep(self.rng.uniform(0, delay))
                delay = min(delay * 2, 1.0)
        return False

    def run(self) -> int:
        first = True
        while not self.should_stop():
            if self.backend is None:
                if not self.connect():
                    break
                self.note("ready" if first else "reopen")
                if not first:
                    self.counts["reopens"] += 1
                first = False
            if self.rate > 0:
                self.next_at = max(self.next_at + 1.0 / self.rate, time.monotonic() - 1.0)
                wait = self.next_at - time.monotonic()
                if wait > 0:
                    self.sleep(wait)
            try:
                self.one()
                self.errors_in_a_row = 0
            except Exception as exc:
                if not _expected(exc):
                    raise                          # a bug of the client: the harness reports the crash
                self.errors_in_a_row += 1
                if reopen_needed(exc) or self.errors_in_a_row >= ERRORS_BEFORE_REOPEN:
                    self.note("broken", error=type(exc).__name__, detail=str(exc)[:MESSAGE_CHARS])
                    self.close_backend()
                    self.errors_in_a_row = 0
                else:
                    self.sleep(self.rng.uniform(0, min(BACKOFF_CAP_S, 0.005 * 2 ** min(self.errors_in_a_row, 8))))
        self.close_backend()
        self.note("done", **self.counts)
        self.log.close()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m lightning_db.stress.client SPEC.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    client = Client(spec)

    def on_term(signum: int, frame: Any) -> None:
        client.stopping = True

    def on_drop(signum: int, frame: Any) -> None:
        if client.backend is not None:
            client.backend.drop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_drop)
    try:
        return client.run()
    except LightningError as exc:          # pragma: no cover - run() handles the database's errors
        print(f"stress client {client.index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
