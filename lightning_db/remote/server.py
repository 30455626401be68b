"""``NativeServer``: the Database API of one handle, served over the native protocol.

Which thread runs what (server process): one *loop thread* owns the
mailbox's ROUTER (``MailboxServer`` is single-threaded): it receives
requests, answers ``ping`` and ``touch`` itself, hands every other request
to a thread pool, and sends the answers the pool threads queue for it. A
slow call (a compaction, a sharded read that waits for a busy shard) thus
delays nobody else. The mailbox gives the loop no way to be woken by
another thread, so while requests are in flight it alternates between a
non-blocking receive and a short wait for finished work (50 us growing to
2 ms); with nothing in flight it blocks in receive. A lone client's
request is answered the moment its handler finishes.

The handle is any object with the Database API: an in-process ``Database``
or a ``ShardedDatabase``. The server does not own it: ``stop`` leaves it
open. Writes are answered once the database holds them in its WAL: a
sharded handle's pipelined writes are never used (``sync=None`` is sent on
as ``sync=False``, which still fsyncs under the ``always`` policy), so a
client told OK by one server sees its write through any other.

Snapshots, transactions and scan cursors live on the server between
requests (``objects.py``); ops and payloads are in ``protocol.py``. Every
error goes back as an ERROR envelope and is rebuilt on the client by class
name, so a ``TransactionConflict`` arrives as itself and
``run_transaction`` retries. A request whose deadline passed before a
pool thread took it is dropped unrun: its client has already given up.

Run one standalone with ``python -m lightning_db.remote.server --data DIR``
(SIGTERM or SIGINT stop it cleanly).
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Config
from ..errors import InvalidArgument, LightningError
from ..mailbox import Envelope, MailboxServer, MsgKind
from ..mailbox.wire import CONTROL_PING
from ..transaction import ISOLATION_LEVELS
from .objects import Cursor, Registry, release
from .protocol import (
    DEFAULT_ADDRESS,
    MAX_PAGE_ROWS,
    NATIVE_VERSION,
    PAGE_BYTES,
    TxAction,
    Write,
)

__all__ = ["NativeServer", "main"]

IDLE_POLL = 0.025        # seconds the loop blocks in receive with nothing in flight (and stop waits)
MIN_SLICE, MAX_SLICE = 0.00005, 0.002
REAP_EVERY = 1.0         # seconds between sweeps for silent sessions


def _args(payload: Any, n: int, op: str) -> list[Any]:
    if type(payload) is not list or len(payload) != n:
        raise InvalidArgument(f"op {op!r} takes an array of {n} arguments")
    return payload


def _sync(sync: Any) -> bool:
    # None -> False: acknowledged after the WAL write, never pipelined.
    return False if sync is None else sync


def _page(page: Any) -> int:
    if type(page) is not int or not 0 < page <= MAX_PAGE_ROWS:
        raise InvalidArgument(f"a scan page is 1 to {MAX_PAGE_ROWS} rows, got {page!r:.40}")
    return page


def _apply(target: Any, w: Any) -> None:
    """One buffered write onto a batch or a transaction."""
    if type(w) is list and len(w) == 5 and w[0] == Write.PUT:
        target.put(w[1], w[2], ttl=w[3], expire_at=w[4])
    elif type(w) is list and len(w) == 2 and w[0] == Write.DELETE:
        target.delete(w[1])
    else:
        raise InvalidArgument(f"a write is [{int(Write.PUT)}, key, value, ttl, expire_at] or "
                              f"[{int(Write.DELETE)}, key], got {w!r:.60}")


def _plain(x: Any, depth: int = 0) -> Any:
    """*x* as msgpack-able plain data (stats)."""
    if x is None or isinstance(x, (bool, float, str, bytes)):
        return x
    if isinstance(x, int):
        return x if -(1 << 63) <= x < (1 << 64) else str(x)
    if depth > 16:
        return str(x)
    if isinstance(x, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in x]
    return str(x)


# Where a request names its session (the ops that make server-side objects).
_SESSION_AT = {"snapshot": 0, "scan": 1, "tx": 1, "bye": 0}


class NativeServer:
    """Serves *db* at *address* (``tcp://HOST:PORT``; port ``*`` picks a
    free one, ``address`` holds the bound endpoint after ``start``).

    *workers* threads run the handlers; *idle_timeout* seconds of silence
    from a client session release its snapshots, transactions and cursors.
    """

    def __init__(self, db: Any, address: str = DEFAULT_ADDRESS, *, workers: int = 8,
                 idle_timeout: float = 300.0) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise InvalidArgument(f"workers must be an integer >= 1, got {workers!r:.40}")
        if not isinstance(idle_timeout, (int, float)) or isinstance(idle_timeout, bool) or not idle_timeout > 0:
            raise InvalidArgument(f"idle_timeout must be a number of seconds > 0, got {idle_timeout!r:.40}")
        self.db = db
        self.address = address
        self.workers = workers
        self.registry = Registry(float(idle_timeout))
        # The session each connection (zmq identity) names in its requests:
        # any request on that connection counts as hearing from it.
        self._session_of: dict[bytes, bytes] = {}
        self.error: LightningError | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._done: collections.deque[tuple[bytes, Envelope | None]] = collections.deque()
        self._wake = threading.Event()
        self._inflight = 0
        self._started_at = 0.0
        self.requests = self.errors = self.dropped = 0
        cfg = getattr(db, "config", None)
        self._config = cfg if isinstance(cfg, Config) else Config()
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "hello": self._hello, "get": self._get, "get_ex": self._get_ex, "get_many": self._get_many,
            "put": self._put, "delete": self._delete, "put_many": self._put_many, "batch": self._batch,
            "scan": self._scan, "scan_next": self._scan_next, "snapshot": self._snapshot,
            "snap_get": self._snap_get, "snap_get_many": self._snap_get_many, "release": self._release,
            "bye": self._bye, "tx": self._tx, "flush": self._maintenance("flush"),
            "compact": self._maintenance("compact"), "verify": self._maintenance("verify"),
            "stats": self._stats, "health": self._health,
        }

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> NativeServer:
        """Bind and start serving; returns self. Raises the bind error
        (MailboxError for an address in use, InvalidArgument for a bad one)."""
        if self._thread is not None:
            raise InvalidArgument("this server was already started")
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ldb-native")
        self._thread = threading.Thread(target=self._run, name=f"ldb-native-loop {self.address}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop receiving, let running handlers finish and send their
        answers, release every server-side object, close the socket. The
        database handle stays open. Idempotent."""
        self._stopping = True
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def __enter__(self) -> NativeServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- the loop thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            mbox = MailboxServer(self.address)
        except LightningError as exc:
            self.error = exc
            self._pool.shutdown(wait=False)
            self._ready.set()
            return
        self._mbox = mbox
        self.address = mbox.address
        self._started_at = time.monotonic()
        self._ready.set()
        slice_ = MIN_SLICE
        next_reap = time.monotonic() + REAP_EVERY
        try:
            while not self._stopping:
                self._send_done()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + REAP_EVERY
                    gone = self.registry.expire()
                    if gone:
                        self._pool.submit(lambda gone=gone: [release(e) for e in gone])
                    live = self.registry.sessions()
                    self._session_of = {i: t for i, t in self._session_of.items() if t in live}
                if self._inflight:
                    batch = mbox.recv(0)
                    if not batch:
                        if self._wake.wait(slice_):
                            slice_ = MIN_SLICE
                        else:
                            slice_ = min(slice_ * 2, MAX_SLICE)
                        continue
                else:
                    batch = mbox.recv(IDLE_POLL)
                slice_ = MIN_SLICE
                for identity, env in batch:
                    self._dispatch(identity, env)
        except LightningError as exc:
            self.error = exc
        finally:
            self._stopping = True
            self._pool.shutdown(wait=True, cancel_futures=True)
            try:
                self._send_done()
            except LightningError:
                pass
            for e in self.registry.drain():
                release(e)
            mbox.close(linger=0.2)

    def _dispatch(self, identity: bytes, env: Envelope) -> None:
        self.requests += 1
        kind = env.kind
        if kind not in (MsgKind.REQUEST, MsgKind.CONTROL, MsgKind.TELL):
            self.dropped += 1
            return
        op = env.op
        session = self._session_of.get(identity)
        if session is not None:
            self.registry.touch(session)
        else:
            at = _SESSION_AT.get(op)
            p = env.payload
            if at is not None and type(p) is list and len(p) > at and type(p[at]) is bytes:
                self._session_of[identity] = p[at]
        if op in ("ping", "touch", CONTROL_PING):
            if type(env.payload) is list and env.payload:
                self.registry.touch(env.payload[0])
            if kind is not MsgKind.TELL:
                self._answer(identity, env.reply(True))
            return
        handler = self._handlers.get(op)
        if handler is None:
            if kind is not MsgKind.TELL:
                self.errors += 1
                self._answer(identity, env.error(InvalidArgument(f"unknown op {op!r:.60}")))
            return
        self._inflight += 1
        self._pool.submit(self._work, identity, env, handler)

    def _answer(self, identity: bytes, env: Envelope) -> None:
        try:
            self._mbox.reply(identity, env)
        except LightningError:          # the peer's queue is full: it is not reading; drop
            self.dropped += 1

    def _send_done(self) -> None:
        self._wake.clear()
        done = self._done
        groups: dict[bytes, list[Envelope]] = {}
        while done:
            identity, out = done.popleft()
            self._inflight -= 1
            if out is not None:
                groups.setdefault(identity, []).append(out)
        for identity, envs in groups.items():
            self.errors += sum(1 for e in envs if e.kind is MsgKind.ERROR)
            try:
                self._mbox.reply_many(identity, envs)
            except LightningError:      # the peer's queue is full: it is not reading; drop
                self.dropped += len(envs)

    # --- a pool thread ----------------------------------------------------------------------------
    def _work(self, identity: bytes, env: Envelope, handler: Callable[[Any], Any]) -> None:
        out: Envelope | None = None
        try:
            if env.deadline and time.time() > env.deadline:
                pass                        # nobody waits for it any more
            else:
                result = handler(env.payload)
                if env.kind is not MsgKind.TELL:
                    out = env.reply(result)
        except Exception as exc:  # noqa: BLE001 - every error goes back to the client, by class
            if env.kind is not MsgKind.TELL:
                out = env.error(exc)
        self._done.append((identity, out))
        self._wake.set()

    # --- handlers (pool threads) ------------------------------------------------------------------
    def _hello(self, p: Any) -> dict[str, Any]:
        _args(p, 1, "hello")
        cfg = self._config
        return {"version": NATIVE_VERSION, "max_key_size": cfg.max_key_size,
                "max_value_size": cfg.max_value_size, "transaction_max_age": cfg.transaction_max_age,
                "address": self.address, "database": type(self.db).__name__,
                "isolation_levels": list(ISOLATION_LEVELS)}

    def _get(self, p: Any) -> Any:
        (key,) = _args(p, 1, "get")
        v = self.db.get(key)
        return v if v is None or type(v) is bytes else bytes(v)

    def _get_ex(self, p: Any) -> Any:
        (key,) = _args(p, 1, "get_ex")
        fn = getattr(self.db, "get_with_expiry", None)
        if fn is None:
            raise InvalidArgument("this database has no key expiry (get_with_expiry)")
        r = fn(key)
        return None if r is None else [bytes(r[0]), r[1]]

    def _get_many(self, p: Any) -> Any:
        (keys,) = _args(p, 1, "get_many")
        if type(keys) is not list:
            raise InvalidArgument("get_many takes an array of keys")
        return self.db.get_many(keys)

    def _put(self, p: Any) -> None:
        key, value, sync, ttl, expire_at = _args(p, 5, "put")
        if ttl is None and expire_at is None:
            self.db.put(key, value, _sync(sync))
        else:
            self.db.put(key, value, _sync(sync), ttl=ttl, expire_at=expire_at)

    def _delete(self, p: Any) -> None:
        key, sync = _args(p, 2, "delete")
        self.db.delete(key, _sync(sync))

    def _put_many(self, p: Any) -> None:
        pairs, sync = _args(p, 2, "put_many")
        if type(pairs) is not list or not all(type(kv) is list and len(kv) == 2 for kv in pairs):
            raise InvalidArgument("put_many takes an array of [key, value] pairs")
        self.db.put_many(pairs, _sync(sync))

    def _batch(self, p: Any) -> None:
        writes, sync = _args(p, 2, "batch")
        if type(writes) is not list:
            raise InvalidArgument("batch takes an array of writes")
        with self.db.batch(_sync(sync)) as b:       # an error discards it: nothing written
            for w in writes:
                _apply(b, w)

    def _open_scan(self, session: Any, it: Any, page: int, lock: threading.Lock | None = None) -> list[Any]:
        cursor = Cursor(it)
        rows, done = cursor.page(page, PAGE_BYTES)
        if done:
            cursor.close()
            return [rows, 0]
        return [rows, self.registry.add(session, "cursor", cursor, lock)]

    def _scan(self, p: Any) -> list[Any]:
        snap, session, start, end, reverse, limit, page = _args(p, 7, "scan")
        page = _page(page)
        owner = self.db if snap == 0 else self.registry.get(snap, "snapshot").obj
        it = owner.scan(start=start, end=end, reverse=reverse, limit=limit)
        return self._open_scan(session, it, page)

    def _scan_next(self, p: Any) -> list[Any]:
        cid, page = _args(p, 2, "scan_next")
        page = _page(page)
        e = self.registry.get(cid, "cursor")
        with e.lock:
            rows, done = e.obj.page(page, PAGE_BYTES)
        if done:
            if self.registry.pop(cid) is not None:
                e.obj.close()
            return [rows, 0]
        return [rows, cid]

    def _snapshot(self, p: Any) -> int:
        (session,) = _args(p, 1, "snapshot")
        if type(session) is not bytes:
            raise InvalidArgument("a session token is bytes")
        s = self.db.snapshot()
        try:
            return self.registry.add(session, "snapshot", s)
        except BaseException:
            s.close()
            raise

    def _snap_get(self, p: Any) -> Any:
        sid, key = _args(p, 2, "snap_get")
        v = self.registry.get(sid, "snapshot").obj.get(key)
        return v if v is None or type(v) is bytes else bytes(v)

    def _snap_get_many(self, p: Any) -> Any:
        sid, keys = _args(p, 2, "snap_get_many")
        if type(keys) is not list:
            raise InvalidArgument("snap_get_many takes an array of keys")
        return self.registry.get(sid, "snapshot").obj.get_many(keys)

    def _release(self, p: Any) -> None:
        (oid,) = _args(p, 1, "release")
        e = self.registry.pop(oid)
        if e is not None:
            release(e)

    def _bye(self, p: Any) -> None:
        (session,) = _args(p, 1, "bye")
        for e in self.registry.end_session(session):
            release(e)

    def _tx(self, p: Any) -> list[Any]:
        tid, session, isolation, sync, writes, action, args = _args(p, 7, "tx")
        if type(writes) is not list or type(args) is not list:
            raise InvalidArgument("tx takes arrays of writes and of arguments")
        try:
            action = TxAction(action)
        except ValueError:
            raise InvalidArgument(f"unknown transaction action {action!r:.40}") from None
        created = tid == 0
        if created:
            tx = self.db.transaction(isolation=isolation, sync=sync)
            try:
                tid = self.registry.add(session, "tx", tx)
            except BaseException:
                tx.rollback()
                raise
        e = self.registry.get(tid, "tx")
        tx = e.obj
        with e.lock:
            try:
                for w in writes:
                    _apply(tx, w)
                result = self._tx_action(tx, e.lock, session, action, args)
            except BaseException:
                # A new transaction that failed is dropped (the client still
                # holds its writes and starts again); an old one only once over.
                if created or tx.state != "open":
                    self.registry.pop(tid)
                    tx.rollback()
                raise
            if tx.state != "open":
                self.registry.pop(tid)
        return [tid, result]

    def _tx_action(self, tx: Any, lock: threading.Lock, session: Any, action: TxAction, args: list[Any]) -> Any:
        if action is TxAction.GET:
            v = tx.get(*_args(args, 1, "tx get"))
            return v if v is None or type(v) is bytes else bytes(v)
        if action is TxAction.GET_MANY:
            (keys,) = _args(args, 1, "tx get_many")
            if type(keys) is not list:
                raise InvalidArgument("get_many takes an array of keys")
            return tx.get_many(keys)
        if action is TxAction.GET_EX:
            r = tx.get_with_expiry(*_args(args, 1, "tx get_ex"))
            return None if r is None else [bytes(r[0]), r[1]]
        if action is TxAction.COMMIT:
            tx.commit()
            return None
        if action is TxAction.ROLLBACK:
            tx.rollback()
            return None
        if action is TxAction.SCAN:
            start, end, reverse, limit, page = _args(args, 5, "tx scan")
            page = _page(page)
            # The cursor shares the transaction's lock: its pages and the
            # transaction's other requests never run at once.
            return self._open_scan(session, tx.scan(start=start, end=end, reverse=reverse, limit=limit),
                                   page, lock)
        return None

    def _maintenance(self, name: str) -> Callable[[Any], Any]:
        def run(p: Any) -> Any:
            return _plain(getattr(self.db, name)())
        return run

    def _stats(self, p: Any) -> dict[str, Any]:
        s = _plain(self.db.stats())
        s["native_server"] = self.stats()
        return s

    def _health(self, p: Any) -> dict[str, Any]:
        return {"status": "ok" if self.running else "stopping", "address": self.address,
                "uptime_s": round(time.monotonic() - self._started_at, 3),
                "database_closed": bool(getattr(self.db, "closed", False))}

    def stats(self) -> dict[str, Any]:
        """Plain data: requests, errors, in flight, server-side objects."""
        return {"address": self.address, "workers": self.workers, "requests": self.requests,
                "errors": self.errors, "dropped": self.dropped, "inflight": self._inflight,
                "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
                **self.registry.stats()}

    def __repr__(self) -> str:
        return f"<lightning_db.remote.NativeServer {self.address}{'' if self.running else ' stopped'}>"


# --- standalone ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_db.remote.server --data DIR [--address A] [--shards N]``:
    open the database, serve it until SIGTERM or SIGINT, then stop and close."""
    from ..db import open as open_database

    parser = argparse.ArgumentParser(prog="python -m lightning_db.remote.server",
                                     description="Serve a Lightning DB over the native protocol.")
    parser.add_argument("--data", required=True, help="data directory (created if missing)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"endpoint to bind (default {DEFAULT_ADDRESS})")
    parser.add_argument("--shards", type=int, default=None,
                        help="shard worker processes (0: in-process; default: as the directory says, "
                             "or one per CPU for a new one)")
    parser.add_argument("--workers", type=int, default=8, help="handler threads (default 8)")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="seconds of silence after which a client's snapshots and transactions are released")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        db = open_database(args.data, shards=args.shards)
        try:
            server = NativeServer(db, args.address, workers=args.workers, idle_timeout=args.idle_timeout).start()
            try:
                print(f"lightning-db native server listening on {server.address}", flush=True)
                while not stop.wait(0.2):
                    if not server.running:
                        break
            finally:
                server.stop()
        finally:
            db.close()
    except LightningError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if server.error is not None:
        print(f"error: {server.error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
