"""Transactions: 2 reads and 2 writes on random keys, Lightning DB against SQLite and LMDB.

    python -m bench.txn [--keys 100000] [--seconds 5] [--clients 1,4]
                        [--engines lightning,lightning-1,lightning-0,sqlite3,lmdb,lmdb-nosync]
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
- ``lightning-1``: the same with ``shards=1`` whatever ``--shards`` says:
  one worker, so no transaction needs a two-phase commit or the commit gate
  (the cost of committing across shards, measured beside it).
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
import datetime
import multiprocessing as mp
import os
import queue
import random
import shutil
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Sequence
from typing import Any

from .txn_engines import ENGINES, key_of, log

WARMUP = 20           # untimed transactions per client before the barrier
PAIRS = 100_000       # key pairs drawn per client before the barrier (used in a cycle)


# --- clients ------------------------------------------------------------------------------------

def _client(engine: str, path: str, keys: int, seconds: float, seed: int, start: Any, out: Any,
            profile: str | None) -> None:
    db = None
    try:
        db = ENGINES[engine](path)
        rng = random.Random(seed)
        pairs = [tuple(key_of(i) for i in rng.sample(range(keys), 2)) for _ in range(PAIRS)]
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
                log(f"skipping {e}: {skipped[e]}")
                continue
            cls = ENGINES[e]
            path = os.path.join(base, e)
            host = None
            try:
                t0 = time.perf_counter()
                host = cls.host(path, args.keys, shards)
                log(f"{e}: {args.keys:,} keys loaded in {time.perf_counter() - t0:.1f} s (untimed)")
                for c in clients:
                    if cls.max_clients is not None and c > cls.max_clients:
                        rows.append({"engine": e, "clients": c, "note": "n/a (one process per directory)"})
                        continue
                    prof = os.path.join(args.profile, f"{e}-c{c}.pstats") if args.profile else None
                    r = run_clients(e, path, args.keys, c, args.seconds, args.seed + c, prof)
                    rows.append(r)
                    log(f"  [{e}] clients={c}: {r['tps']:>10,.0f} txn/s  p50 {r['p50']:.3f} ms  "
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
                log(f"  [{e}] FAILED: {errors[e]}")
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
