"""YCSB core workloads A-F against Lightning DB (in process, process pool, server) and its peers.

    python -m bench.ycsb [--records 100000] [--operations 100000] [--workloads a,b,c,d,e,f]
                         [--engines lightning,lightning-2,lightning-server,rocksdict,lmdb,plyvel,sqlite3,diskcache]
                         [--threads 1] [--value-size 100] [--out FILE.md] [--seed S]
                         [--tmpdir DIR] [--profile DIR]

The workloads are YCSB's core workloads (workloads/workloada ... workloadf
and CoreWorkload in brianfrankcooper/YCSB), with the same mixes and key
choosers:

- A, update heavy: 50% read, 50% update, zipfian.
- B, read mostly: 95% read, 5% update, zipfian.
- C, read only: 100% read, zipfian.
- D, read latest: 95% read, 5% insert, "latest" (SkewedLatestGenerator: the
  most recently inserted records are the most popular).
- E, short ranges: 95% scan, 5% insert, zipfian start key, scan length
  uniform in 1..100.
- F, read-modify-write: 50% read, 50% read-modify-write (read a record,
  then write it back), zipfian.

The generators are ports of YCSB's: ``ZipfianGenerator`` (theta 0.99, Gray
et al.'s method, with the incremental zeta when the item count grows),
``ScrambledZipfianGenerator`` (a zipfian over 10^10 items with YCSB's
precomputed zeta, hashed with FNV-64 onto the key range, so the popular keys
are spread over the key space), ``SkewedLatestGenerator``,
``UniformLongGenerator`` for scan lengths and ``DiscreteGenerator`` for the
operation mix. Keys are YCSB's hashed insert order: record number i is
``user<fnvhash64(i)>`` (decimal), so the load writes keys in random order.
As in CoreWorkload, the zipfian key chooser covers ``recordcount +
2 * operationcount * insertproportion`` items and draws again when it picks
a record that is not inserted yet; inserts take the next record number.

One simplification: a YCSB record has 10 fields of 100 bytes; here a record
is one value of ``--value-size`` bytes (random printable bytes, as YCSB's
RandomByteIterator), and a read or an update reads or writes that whole value.

Per workload and engine: a fresh database in a temporary directory, the
load phase (``--records`` records in batches of 1000, untimed), then the run
phase (``--operations`` operations, timed). The operation sequence is drawn
before the clock starts (same seed, same sequence for every engine), so the
generators' cost is in no engine's time. Every operation is timed with
``time.perf_counter_ns``; the table gives the run's operations per second
(all operations over the wall time of the run phase), and per operation type
its rate and p50/p95/p99 latency in microseconds. A read-modify-write is
timed as one operation (read + write); its read is not counted again under
"read" (YCSB reports it under both). ``--threads N`` deals the sequence
round-robin to N threads of this process sharing the engine (each thread
gets its own SQLite connection / LMDB read transaction), as YCSB's client
threads share one DB binding; in D and E a read or scan may then reach a
record whose insert went to another thread and has not run yet (YCSB's
acknowledged counter prevents that): the report counts reads that found
nothing.

Engines (see bench/peers.py for the peer settings and why they compare):
``lightning`` is ``open(path, shards=0)``, ``lightning-2`` is ``open(path,
shards=2)`` (two worker processes; ``put`` is pipelined, and the run phase
ends with the pipeline barrier inside the timed window), ``lightning-server``
is ``python -m lightning_db.server.serve --shards 2 --frontends 2`` as a
subprocess, driven with redis-py (hiredis parser): GET, SET, MSET for the
load; the Redis protocol has no range scan, so workload E is n/a for it.
``diskcache`` (a key-value cache on SQLite) keeps no key order and has no
range scan either. ``rocksdict``, ``lmdb``, ``plyvel`` and ``sqlite3`` scan
in key order from the start key.

Every process the run starts (the server, its front ends, the node and its
workers) is stopped before it returns, also on errors, Ctrl-C and SIGTERM,
and the temporary directories are removed. ``--profile DIR`` runs each run
phase under cProfile and writes ``DIR/<engine>-<workload>.pstats``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Sequence
from typing import Any

from .ycsb_engines import ENGINES, LIGHTNING, log
from .ycsb_workloads import (OP_NAMES, READ, RMW, SCAN, UPDATE, WORKLOADS, Op, Workload, load_pairs, operations,
                             value_pool)

LOAD_BATCH = 1000

# --- running --------------------------------------------------------------------------------------

def _work(db: Any, ops: Sequence[Op], lat: list[array], stat: list[int]) -> None:
    """Run *ops* on *db*, one latency sample (ns) per operation into *lat*."""
    get, put = db.get, db.put
    scan = db.scan
    clock = time.perf_counter_ns
    l_read, l_update, l_insert, l_scan, l_rmw = (a.append for a in lat)
    misses = scanned = 0
    for op, key, arg in ops:
        if op == READ:
            t = clock()
            v = get(key)
            l_read(clock() - t)
            if v is None:
                misses += 1
        elif op == UPDATE:
            t = clock()
            put(key, arg)
            l_update(clock() - t)
        elif op == SCAN:
            t = clock()
            rows = scan(key, arg)
            l_scan(clock() - t)
            scanned += len(rows)
        elif op == RMW:
            t = clock()
            v = get(key)
            put(key, arg)
            l_rmw(clock() - t)
            if v is None:
                misses += 1
        else:
            t = clock()
            put(key, arg)
            l_insert(clock() - t)
    stat[0] += misses
    stat[1] += scanned


def _pct(s: Sequence[int], q: float) -> float:
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0       # µs


def run_phase(db: Any, ops: list[Op], threads: int, profile: str | None) -> dict[str, Any]:
    clients = db.clients(threads)
    lats = [[array("q") for _ in OP_NAMES] for _ in range(threads)]
    stats = [[0, 0] for _ in range(threads)]
    gc.collect()
    clock = time.perf_counter_ns
    if threads == 1:
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = clock()
        _work(clients[0], ops, lats[0], stats[0])
        db.barrier()
        t1 = clock()
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
    else:
        start = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def target(i: int) -> None:
            try:
                start.wait()
                _work(clients[i], ops[i::threads], lats[i], stats[i])
            except BaseException as e:  # noqa: BLE001 - raised again in the main thread
                errors.append(e)

        ts = [threading.Thread(target=target, args=(i,), name=f"ycsb-{i}", daemon=True) for i in range(threads)]
        for t in ts:
            t.start()
        start.wait()
        t0 = clock()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        db.barrier()
        t1 = clock()
    secs = (t1 - t0) / 1e9
    per_op: dict[str, dict[str, float]] = {}
    for i, name in enumerate(OP_NAMES):
        samples = sorted(x for lat in lats for x in lat[i])
        if samples:
            per_op[name] = {"count": len(samples), "rate": len(samples) / secs, "p50": _pct(samples, 0.50),
                            "p95": _pct(samples, 0.95), "p99": _pct(samples, 0.99)}
    return {"secs": secs, "ops": len(ops) / secs, "per_op": per_op, "misses": sum(s[0] for s in stats),
            "scanned": sum(s[1] for s in stats)}


def run_one(cls: type[Any], w: Workload, pairs: list[tuple[bytes, bytes]], ops: list[Op], threads: int,
            tmp: str, profile: str | None) -> dict[str, Any]:
    """Load a fresh database, run the workload, close and remove it."""
    if w.scan and cls.SCAN_NA:
        return {"note": cls.SCAN_NA}
    root = tempfile.mkdtemp(prefix=f"ldb-ycsb-{cls.name}-{w.letter.lower()}-", dir=tmp)
    db = None
    try:
        db = cls(root)
        t0 = time.perf_counter()
        for i in range(0, len(pairs), LOAD_BATCH):
            db.write_batch(pairs[i:i + LOAD_BATCH])
        db.barrier()
        load_s = time.perf_counter() - t0
        r = run_phase(db, ops, threads, profile)
        r["load_s"] = load_s
        return r
    finally:
        try:
            if db is not None:
                db.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --- the report -----------------------------------------------------------------------------------

def _us(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    x = a / b
    return f"{x:.2f}x" if x >= 0.095 else f"{x:.3f}x"


def report(results: dict[str, dict[str, dict[str, Any]]], workloads: Sequence[str], engines: Sequence[str],
           args: Any, skipped: dict[str, str]) -> str:
    from .run import _machine

    today = datetime.date.today().isoformat()
    out = [(f"### YCSB workloads {', '.join(WORKLOADS[w].letter for w in workloads)}: {args.records:,} records, "
            f"{args.operations:,} operations, {args.value_size}-byte values, {args.threads} client "
            f"thread{'s' if args.threads != 1 else ''} ({today})"), "", f"Machine: {_machine(args.tmpdir)}.", ""]
    for wl in workloads:
        w = WORKLOADS[wl]
        rows = results.get(wl, {})
        ops_names = [OP_NAMES[op] for op, _ in w.mix()]
        peers = {e: r["ops"] for e, r in rows.items() if e not in LIGHTNING and "ops" in r}
        best = max(peers, key=peers.get) if peers else None
        rocks = peers.get("rocksdict")
        out += [f"#### Workload {w.letter}, {w.title}: {w.describe()}", ""]
        header = ["engine", "ops/s", f"vs {best} (best peer)" if best else "vs best peer", "vs rocksdict"]
        for name in ops_names:
            header += [f"{name} ops/s", f"{name} µs p50 / p95 / p99"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|---|" + "---:|" * (len(header) - 1))
        for e in engines:
            if e in skipped or e not in rows:
                continue
            r = rows[e]
            if "ops" not in r:
                out.append(f"| {e} | {r.get('note') or 'failed'} |" + " - |" * (len(header) - 2))
                continue
            row = [e, f"{r['ops']:,.0f}", _ratio(r["ops"], peers[best]) if best else "-",
                   _ratio(r["ops"], rocks) if rocks else "-"]
            for name in ops_names:
                p = r["per_op"].get(name)
                row += ["-", "-"] if p is None else [f"{p['rate']:,.0f}",
                                                     f"{_us(p['p50'])} / {_us(p['p95'])} / {_us(p['p99'])}"]
            out.append("| " + " | ".join(row) + " |")
        loads = [f"{e} {r['load_s']:.1f} s" for e, r in rows.items() if "load_s" in r]
        notes = [f"Load ({args.records:,} records in batches of {LOAD_BATCH}, untimed): {', '.join(loads)}."]
        scans = {e: r["scanned"] / r["per_op"]["scan"]["count"] for e, r in rows.items()
                 if "per_op" in r and "scan" in r["per_op"]}
        if scans:
            notes.append("Records per scan (mean): " + ", ".join(f"{e} {v:.1f}" for e, v in scans.items()) + ".")
        missed = [f"{e} {r['misses']:,}" for e, r in rows.items() if r.get("misses")]
        if missed:
            notes.append("Reads that found nothing: " + ", ".join(missed) + ".")
        for e, r in rows.items():
            if r.get("error"):
                notes.append(f"{e} FAILED: {r['error']}")
        out += ["", " ".join(notes), ""]
    out += [("Operations per second over the run phase's wall time (all operation types), higher is better; "
             "per type: its operations over the same time, and latency percentiles of single operations in "
             "microseconds (a read-modify-write is one read + one write, timed together). Ratios above 1: "
             "faster than the best peer of that workload (the fastest engine that is not Lightning) / than "
             "rocksdict."),
            "", "Engines:"]
    for e in engines:
        cls = ENGINES[e]
        if e in skipped:
            out.append(f"- **{e}**: skipped: {skipped[e]}.")
            continue
        out.append(f"- **{e}** {cls.version()}: durability: {cls.durability}; settings: {cls.describe()}.")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ycsb", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="recordcount (default 100,000)")
    ap.add_argument("--operations", type=int, default=100_000, help="operationcount (default 100,000)")
    ap.add_argument("--workloads", default="a,b,c,d,e,f", help="comma list of a..f (default: all)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)} (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="client threads (default 1)")
    ap.add_argument("--value-size", type=int, default=100, help="bytes per record (default 100)")
    ap.add_argument("--out", help="also write the markdown to this file")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tmpdir", default=tempfile.gettempdir(), help="where the databases go (default: system temp)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile each run phase into DIR/<engine>-<workload>.pstats")
    args = ap.parse_args(argv)

    workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS] + [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"unknown workload or engine: {', '.join(unknown)}")
    if args.records < 2 or args.operations < 1 or args.threads < 1 or args.value_size < 1:
        ap.error("--records must be >= 2, --operations, --threads and --value-size >= 1")
    if args.profile:
        if args.threads != 1:
            ap.error("--profile needs --threads 1")
        os.makedirs(args.profile, exist_ok=True)

    # SIGTERM unwinds like Ctrl-C, so that every finally block stops what it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    skipped = {e: why for e in engines if (why := ENGINES[e].unavailable())}
    for e, why in skipped.items():
        log(f"skipping {e}: {why}")
    values = value_pool(args.value_size, args.seed)
    pairs = load_pairs(args.records, values)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failed = False
    for wl in workloads:
        w = WORKLOADS[wl]
        t0 = time.perf_counter()
        ops = operations(w, args.records, args.operations, values, args.seed + ord(wl))
        log(f"workload {w.letter} ({w.describe()}): {len(ops):,} operations drawn in "
             f"{time.perf_counter() - t0:.1f} s")
        results[wl] = {}
        for e in engines:
            if e in skipped:
                continue
            prof = os.path.join(args.profile, f"{e}-{wl}.pstats") if args.profile else None
            try:
                r = run_one(ENGINES[e], w, pairs, ops, args.threads, args.tmpdir, prof)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next engine
                failed = True
                r = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]}
                log(f"  [{e}] {w.letter} FAILED: {r['error']}")
                traceback.print_exc(limit=5, file=sys.stderr)
            results[wl][e] = r
            if "ops" in r:
                per = "  ".join(f"{n} {p['p50']:.1f}/{p['p95']:.1f}/{p['p99']:.1f} µs"
                                for n, p in r["per_op"].items())
                log(f"  [{e}] {w.letter}: {r['ops']:>10,.0f} ops/s  {r['secs']:6.2f} s  (load "
                     f"{r['load_s']:.1f} s)  {per}" + (f"  misses {r['misses']:,}" if r["misses"] else ""))
            elif "note" in r:
                log(f"  [{e}] {w.letter}: {r['note']}")
            gc.collect()

    text = report(results, workloads, engines, args, skipped)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
