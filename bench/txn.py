"""Transactions: 2 reads and 2 writes on random keys, Lightning DB against SQLite and LMDB.

    python -m bench.txn [--keys 100000] [--seconds 5] [--clients 1,4]
                        [--engines lightning,lightning-0,sqlite3,lmdb,lmdb-nosync]
                        [--shards N] [--out FILE.md] [--profile DIR]

Each engine gets a fresh temporary directory and ``--keys`` keys (16-byte
keys, 100-byte values whose first 20 bytes are a signed integer counter,
loaded in batches of 1000, untimed). Then, for each client count C in
``--clients``, C client processes (multiprocessing, spawn) each open the
database themselves, run 20 untimed transactions, wait at a common start
barrier and run transactions for ``--seconds``: pick two distinct keys
(uniform), read both, write counter+1 to the first and counter-1 to the
second, commit. A client counts commits and attempts (an attempt that did
not commit is a conflict: Lightning's ``TransactionConflict``, retried by
``run_transaction``; SQLite's ``database is locked`` past the busy timeout)
and times each transaction from its first attempt to its commit (p50/p99).
After the last client count the counters must still sum to 0 over all keys
(no lost update, no half-applied transaction), and the run says so.

The engines and what each transaction is:

- ``lightning``: ``open(path, shards=N)`` (N worker processes under a node,
  default one per usable CPU; every client attaches to the same node),
  ``db.run_transaction(fn, retries=50, isolation="snapshot")``.
- ``lightning-0``: ``open(path, shards=0)``, the in-process engine, same
  call. Its directory belongs to one process, so it runs with 1 client only.
- ``sqlite3``: WAL, ``synchronous=NORMAL``, table ``kv(k BLOB PRIMARY KEY,
  v BLOB) WITHOUT ROWID``, one connection per client, ``BEGIN IMMEDIATE``
  ... ``COMMIT`` per transaction, busy timeout 60 s.
- ``lmdb``: one environment per client, ``env.begin(write=True)`` per
  transaction (LMDB runs one writer at a time), LMDB's default durability
  ``sync=True, metasync=True`` (fsync on every commit).
- ``lmdb-nosync``: the same with ``sync=False, metasync=False`` (no fsync),
  the durability of the other engines' settings here.

The table gives transactions per second (commits of all clients over the
longest client's window), the ratio to sqlite3 with the same client count
(above 1: faster than SQLite), the latency percentiles and the share of
attempts that conflicted. ``--profile DIR`` runs the first client of every
run under cProfile and writes ``DIR/<engine>-c<clients>.pstats``.

Every process the run starts (clients, and for ``lightning`` the node and
its workers) is stopped before it returns, on errors and Ctrl-C as well,
and the temporary directories are removed.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
import datetime
import multiprocessing as mp
import os
import queue
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

PAD = b"." * 80
WARMUP = 20           # untimed transactions per client before the barrier
PAIRS = 100_000       # key pairs drawn per client before the barrier (used in a cycle)
LOAD_BATCH = 1000
MiB = 1024 * 1024


def _key(i: int) -> bytes:
    return b"%016d" % i


def _value(counter: int) -> bytes:
    return b"%+020d" % counter + PAD                 # 100 bytes


def _counter(value: bytes | None) -> int:
    if value is None:
        raise RuntimeError("a loaded key was not found")
    return int(value[:20])


def _load_pairs(keys: int) -> Iterator[list[tuple[bytes, bytes]]]:
    zero = _value(0)
    for s in range(0, keys, LOAD_BATCH):
        yield [(_key(i), zero) for i in range(s, min(keys, s + LOAD_BATCH))]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- engines ------------------------------------------------------------------------------------
#
# An engine class is used on both sides. In the benchmark's process,
# ``host(path, keys, shards)`` loads the keys and returns a ``Host`` that
# lives until every client count has run (``total()`` reads every counter
# back, ``close()`` stops what it started). In each client process,
# ``cls(path)`` opens the database, ``txn(ka, kb)`` runs one transaction
# (``attempts`` counts every try, ``GIVE_UP`` is what a transaction that
# never committed raises), ``close()`` closes it.

class Host:
    def __init__(self, total: Any, close: Any = None) -> None:
        self.total = total                # () -> (keys, sum of counters)
        self._close = close

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()


class TxEngine(ABC):
    name = "?"
    durability = "?"
    settings = "?"
    max_clients: int | None = None        # None: any number of client processes
    GIVE_UP: tuple[type[BaseException], ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path
        self.attempts = 0

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    @classmethod
    def version(cls) -> str:
        return "?"

    @classmethod
    @abstractmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        ...

    @abstractmethod
    def txn(self, ka: bytes, kb: bytes) -> None:
        ...

    def close(self) -> None:
        pass


def _lightning_total(db: Any) -> tuple[int, int]:
    n = total = 0
    for _, v in db.scan():
        n += 1
        total += _counter(v)
    return n, total


def _nodes_started(before: set[int]) -> list[Any]:
    """The Lightning nodes this process started since *before* (its child
    pids then), each with its workers: what ``open(path, shards=N)`` starts."""
    import psutil

    out: list[Any] = []
    for p in psutil.Process().children():
        try:
            if p.pid not in before and "lightning_db.shards.node" in " ".join(p.cmdline()):
                out += [p] + p.children(recursive=True)
        except psutil.Error:
            pass
    return out


def _stop_tree(procs: list[Any], what: str, grace: float = 30.0) -> None:
    """Wait up to *grace* seconds for *procs* (psutil processes this run
    started) to exit; terminate, then kill, the ones still there."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        if grace:
            _log(f"  {what}: {len(alive)} process(es) still running {grace:g} s after close; stopping them")
        for p in alive:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)


class Lightning(TxEngine):
    name = "lightning"
    durability = ("sync='interval' (Config default, 100 ms): a commit on one shard is written to the "
                  "OS and fsynced by the shard's syncer within 100 ms; a transaction that writes on two "
                  "shards commits by two-phase commit, whose prepare records and decision (the commit "
                  "at the lowest shard) are always fsynced")
    settings = "shards={shards} (worker processes under one node; every client attaches to it), Config defaults"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import lightning_db

        self.GIVE_UP = (lightning_db.TransactionConflict,)
        self.db = self._open(path)

    def _open(self, path: str) -> Any:
        import lightning_db

        return lightning_db.open(path)          # the shard count recorded in the directory

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import lightning_db  # noqa: F401
        except ImportError as e:
            return f"lightning_db cannot be imported: {e}"
        return None

    @classmethod
    def version(cls) -> str:
        import lightning_db

        return lightning_db.__version__

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        import psutil

        import lightning_db

        before = {p.pid for p in psutil.Process().children()}
        db = None
        try:
            db = lightning_db.open(path, shards=shards)
            for batch in _load_pairs(keys):
                db.put_many(batch)
            db.flush()
        except BaseException:
            # A failed or interrupted open or load: whatever node it started goes now.
            try:
                if db is not None:
                    db.close()
            finally:
                _stop_tree(_nodes_started(before), cls.name, 30.0 if db is not None else 0.0)
            raise

        def close() -> None:
            started = _nodes_started(before)
            try:
                db.close()                        # the node exits once the last caller detached
            finally:
                _stop_tree(started, cls.name)

        return Host(lambda: _lightning_total(db), close)

    def txn(self, ka: bytes, kb: bytes) -> None:
        def fn(tx: Any) -> None:
            self.attempts += 1
            a = tx.get(ka)
            b = tx.get(kb)
            tx.put(ka, _value(_counter(a) + 1))
            tx.put(kb, _value(_counter(b) - 1))

        self.db.run_transaction(fn, retries=50, isolation="snapshot")

    def close(self) -> None:
        self.db.close()


class LightningInProcess(Lightning):
    name = "lightning-0"
    durability = ("sync='interval' (Config default, 100 ms): each commit written to the OS, the WAL "
                  "fsynced by a background thread within 100 ms")
    settings = "shards=0 (in process; the directory belongs to one process), Config defaults"
    max_clients = 1

    def _open(self, path: str) -> Any:
        import lightning_db

        return lightning_db.open(path, shards=0)

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        import lightning_db

        db = lightning_db.open(path, shards=0)
        try:
            for batch in _load_pairs(keys):
                db.put_many(batch)
            db.flush()
        finally:
            db.close()                            # the client process opens it next

        def total() -> tuple[int, int]:
            db = lightning_db.open(path, shards=0)
            try:
                return _lightning_total(db)
            finally:
                db.close()

        return Host(total)


class Sqlite3(TxEngine):
    name = "sqlite3"
    durability = ("journal_mode=WAL, synchronous=NORMAL: each commit written to the WAL, fsync only at "
                  "checkpoints")
    settings = ("table kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID, one connection per client, "
                "BEGIN IMMEDIATE ... COMMIT per transaction, busy timeout 60 s (SQLite's busy handler "
                "sleeps between retries), 256 MiB page cache")
    BUSY_RETRIES = 50

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.conn = self._connect(path)
        self.GIVE_UP = (sqlite3.OperationalError,)

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{256 * MiB // 1024}")
        return conn

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        os.makedirs(path, exist_ok=True)
        conn = cls._connect(path)
        try:
            conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            for batch in _load_pairs(keys):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO kv VALUES (?, ?)", batch)
                conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

        def total() -> tuple[int, int]:
            conn = cls._connect(path)
            try:
                n = t = 0
                for (v,) in conn.execute("SELECT v FROM kv"):
                    n += 1
                    t += _counter(v)
                return n, t
            finally:
                conn.close()

        return Host(total)

    def txn(self, ka: bytes, kb: bytes) -> None:
        c = self.conn
        for i in range(self.BUSY_RETRIES + 1):
            self.attempts += 1
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:      # busy past the timeout: try again
                if i == self.BUSY_RETRIES:
                    raise
                continue
            try:
                a = c.execute("SELECT v FROM kv WHERE k = ?", (ka,)).fetchone()
                b = c.execute("SELECT v FROM kv WHERE k = ?", (kb,)).fetchone()
                c.execute("UPDATE kv SET v = ? WHERE k = ?", (_value(_counter(a and a[0]) + 1), ka))
                c.execute("UPDATE kv SET v = ? WHERE k = ?", (_value(_counter(b and b[0]) - 1), kb))
                c.execute("COMMIT")
                return
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.conn.close()


class Lmdb(TxEngine):
    name = "lmdb"
    SYNC = True
    durability = "sync=True, metasync=True (LMDB's default): every commit fsyncs the data file"
    settings = "one environment per client, env.begin(write=True) per transaction (one writer at a time)"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.env = self._env(path)

    @classmethod
    def _env(cls, path: str) -> Any:
        import lmdb

        # map_size is only address space (the file grows as needed).
        return lmdb.open(path, map_size=1 << 34, sync=cls.SYNC, metasync=cls.SYNC, readahead=False,
                         max_spare_txns=1)

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("lmdb") else "lmdb is not installed (pip install -e '.[bench]')"

    @classmethod
    def version(cls) -> str:
        import lmdb

        return f"{lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"

    @classmethod
    def host(cls, path: str, keys: int, shards: int) -> Host:
        env = cls._env(path)
        try:
            for batch in _load_pairs(keys):
                with env.begin(write=True) as t:
                    t.cursor().putmulti(batch)
            env.sync(True)
        finally:
            env.close()

        def total() -> tuple[int, int]:
            env = cls._env(path)
            try:
                n = t = 0
                with env.begin() as txn:
                    for _, v in txn.cursor():
                        n += 1
                        t += _counter(v)
                return n, t
            finally:
                env.close()

        return Host(total)

    def txn(self, ka: bytes, kb: bytes) -> None:
        self.attempts += 1
        with self.env.begin(write=True) as t:
            a = t.get(ka)
            b = t.get(kb)
            t.put(ka, _value(_counter(a) + 1))
            t.put(kb, _value(_counter(b) - 1))

    def close(self) -> None:
        self.env.close()


class LmdbNoSync(Lmdb):
    name = "lmdb-nosync"
    SYNC = False
    durability = "sync=False, metasync=False: each commit written to the OS, no fsync"


ENGINES: dict[str, type[TxEngine]] = {e.name: e for e in (Lightning, LightningInProcess, Sqlite3, Lmdb,
                                                          LmdbNoSync)}


# --- clients ------------------------------------------------------------------------------------

def _client(engine: str, path: str, keys: int, seconds: float, seed: int, start: Any, out: Any,
            profile: str | None) -> None:
    db = None
    try:
        db = ENGINES[engine](path)
        rng = random.Random(seed)
        pairs = [tuple(_key(i) for i in rng.sample(range(keys), 2)) for _ in range(PAIRS)]
        for ka, kb in pairs[-WARMUP:]:
            db.txn(ka, kb)
        give_up = db.GIVE_UP
        attempts0 = db.attempts
        lat = array("d")
        commits = failed = 0
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
        out.put(("ready", seed))
        start.wait()
        if prof is not None:
            prof.enable()
        clock, txn, n = time.perf_counter, db.txn, len(pairs)
        t0 = clock()
        end = t0 + seconds
        i = 0
        while True:
            ka, kb = pairs[i % n]
            i += 1
            t = clock()
            try:
                txn(ka, kb)
                commits += 1
            except give_up:
                failed += 1
            t2 = clock()
            lat.append(t2 - t)
            if t2 >= end:
                break
        secs = clock() - t0
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        out.put(("done", {"commits": commits, "failed": failed, "attempts": db.attempts - attempts0,
                          "secs": secs, "lat": lat.tobytes()}))
    except BaseException:  # noqa: BLE001 - reported to the benchmark's process, which stops the run
        out.put(("error", f"client {seed} of {engine}: {traceback.format_exc()}"))
    finally:
        if db is not None:
            try:
                db.close()
            except Exception:  # noqa: BLE001, S110 - reported with the result or the error above
                pass


def _collect(out: Any, procs: list[Any], kind: str, timeout: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            what, data = out.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode is not None and p.exitcode != 0]
            if dead:
                raise RuntimeError(f"a client process exited with code {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"clients did not report {kind!r} within {timeout:.0f} s") from None
            continue
        if what == "error":
            raise RuntimeError(data)
        if what != kind:
            raise RuntimeError(f"a client said {what!r}, expected {kind!r}")
        got.append(data)
    return got


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(10)


def _percentile(sorted_values: array, q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_clients(engine: str, path: str, keys: int, clients: int, seconds: float, seed: int,
                profile: str | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, name=f"txn-{engine}-{i}",
                         args=(engine, path, keys, seconds, seed * 1000 + i, start, out,
                               profile if i == 0 else None))
             for i in range(clients)]
    try:
        for p in procs:
            p.start()
        _collect(out, procs, "ready", 300)     # every client open and warm before the clock
        start.set()
        results = _collect(out, procs, "done", seconds * 4 + 120)
        for p in procs:
            p.join(60)
    finally:
        _stop(procs)
        out.cancel_join_thread()
        out.close()
    lat = array("d")
    for r in results:
        lat.frombytes(r["lat"])
    lat = array("d", sorted(lat))
    commits = sum(r["commits"] for r in results)
    attempts = sum(r["attempts"] for r in results)
    secs = max(r["secs"] for r in results)
    return {"engine": engine, "clients": clients, "commits": commits, "failed": sum(r["failed"] for r in results),
            "attempts": attempts, "secs": secs, "tps": commits / secs,
            "p50": _percentile(lat, 0.50) * 1e3, "p99": _percentile(lat, 0.99) * 1e3,
            "conflicts": 100.0 * (attempts - commits) / attempts if attempts else 0.0}


# --- the report ---------------------------------------------------------------------------------

def report(rows: list[dict[str, Any]], engines: Sequence[str], clients: Sequence[int], args: Any,
           shards: int, checks: dict[str, str], skipped: dict[str, str], errors: dict[str, str]) -> str:
    from .run import _machine

    today = datetime.date.today().isoformat()
    out = [(f"### Transactions: 2 reads + 2 writes on random keys, {args.keys:,} keys, {args.seconds:g} s per "
            f"run ({today})"), "", f"Machine: {_machine(args.tmpdir)}.", "",
           "| engine | clients | txn/s | vs sqlite3 | p50 ms | p99 ms | conflicts % |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    base = {r["clients"]: r["tps"] for r in rows if r["engine"] == "sqlite3" and "tps" in r}
    for e in engines:
        for c in clients:
            r = next((r for r in rows if r["engine"] == e and r["clients"] == c), None)
            if r is None:
                continue
            if "tps" not in r:
                out.append(f"| {e} | {c} | {r['note']} | - | - | - | - |")
                continue
            ratio = f"{r['tps'] / base[c]:.2f}x" if base.get(c) else "-"
            out.append(f"| {e} | {c} | {r['tps']:,.0f} | {ratio} | {r['p50']:.3f} | {r['p99']:.3f} | "
                       f"{r['conflicts']:.2f} |")
    out += ["", ("Transactions per second: commits of all clients over the longest client's timed window, "
                 "higher is better. Each client is its own process with its own connection/handle; a "
                 "transaction reads two distinct uniform random keys and writes both (counter +1 / -1). "
                 "Latency: first attempt to commit, retries included. Conflicts: attempts that did not "
                 "commit, per 100 attempts. Ratio above 1: faster than sqlite3 with the same client count."),
            "", "Engines:"]
    for e in engines:
        cls = ENGINES[e]
        if e in skipped:
            out.append(f"- **{e}**: skipped: {skipped[e]}.")
            continue
        settings = cls.settings.format(shards=shards)
        out.append(f"- **{e}** {cls.version()}: durability: {cls.durability}; settings: {settings}.")
    out += ["", "Checks:"]
    for e in engines:
        if e in checks:
            out.append(f"- {e}: {checks[e]}")
    for r in rows:
        if r.get("failed"):
            out.append(f"- {r['engine']} with {r['clients']} clients: {r['failed']:,} transactions gave up "
                       "(conflicted on every retry); not counted as commits")
    for e, err in errors.items():
        out.append(f"- {e}: FAILED: {err}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.txn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per engine and client count")
    ap.add_argument("--clients", default="1,4", help="comma list of client process counts")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    ap.add_argument("--shards", type=int, default=None, help="lightning's shard count (default: usable CPUs)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--tmpdir", default=tempfile.gettempdir(), help="where the databases go")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", metavar="DIR", help="cProfile the first client of each run into DIR")
    args = ap.parse_args(argv)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        ap.error("--clients must be a comma list of integers")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"unknown engine: {', '.join(unknown)}")
    if args.keys < 2 or not clients or min(clients) < 1 or args.seconds <= 0:
        ap.error("--keys must be >= 2, --clients >= 1, --seconds > 0")
    if args.shards is None:
        from lightning_db.actors.placement import usable_cpus

        shards = len(usable_cpus())
    else:
        shards = args.shards
    if shards < 1:
        ap.error("--shards must be >= 1")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    skipped = {e: why for e in engines if (why := ENGINES[e].unavailable())}
    rows: list[dict[str, Any]] = []
    checks: dict[str, str] = {}
    errors: dict[str, str] = {}
    base = tempfile.mkdtemp(prefix="ldb-bench-txn-", dir=args.tmpdir)
    try:
        for e in engines:
            if e in skipped:
                _log(f"skipping {e}: {skipped[e]}")
                continue
            cls = ENGINES[e]
            path = os.path.join(base, e)
            host = None
            try:
                t0 = time.perf_counter()
                host = cls.host(path, args.keys, shards)
                _log(f"{e}: {args.keys:,} keys loaded in {time.perf_counter() - t0:.1f} s (untimed)")
                for c in clients:
                    if cls.max_clients is not None and c > cls.max_clients:
                        rows.append({"engine": e, "clients": c, "note": "n/a (one process per directory)"})
                        continue
                    prof = os.path.join(args.profile, f"{e}-c{c}.pstats") if args.profile else None
                    r = run_clients(e, path, args.keys, c, args.seconds, args.seed + c, prof)
                    rows.append(r)
                    _log(f"  [{e}] clients={c}: {r['tps']:>10,.0f} txn/s  p50 {r['p50']:.3f} ms  "
                         f"p99 {r['p99']:.3f} ms  conflicts {r['conflicts']:.2f}%  ({r['commits']:,} commits "
                         f"in {r['secs']:.2f} s)")
                n, total = host.total()
                ok = n == args.keys and total == 0
                checks[e] = (f"{n:,} keys, counters sum to {total} after the runs: "
                             + ("consistent" if ok else "WRONG (expected all keys and a sum of 0)"))
                if not ok:
                    errors[e] = checks[e]
            except Exception as exc:  # noqa: BLE001 - report and go on with the next engine
                errors[e] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]
                _log(f"  [{e}] FAILED: {errors[e]}")
                traceback.print_exc(limit=5, file=sys.stderr)
            finally:
                try:
                    if host is not None:
                        host.close()
                finally:
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    text = report(rows, engines, clients, args, shards, checks, skipped, errors)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
