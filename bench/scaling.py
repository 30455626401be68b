"""Multi-core scaling of the process pool: reader and writer processes.

    python -m bench.scaling [--keys 1000000] [--shards N] [--procs 1,2,4,8] [--seconds 5] [--out FILE]

Loads ``--keys`` keys (16-byte keys, 100-byte values) into a database with
``--shards`` workers (default: one per usable CPU), then, for each process
count P in ``--procs``, runs P reader processes doing random ``get`` calls
(answered from the shards' published versions) for ``--seconds`` and P
writer processes doing pipelined ``put`` calls (each ends with ``flush()``,
the barrier, inside the timed window), and reports the aggregate ops/s and
the ratio to P = 1. Every process attaches to the same node, as separate
programs would.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import sys
import tempfile
import time

VALUE = b"v" * 100


def _key(i: int) -> bytes:
    return b"%016d" % i


def _reader(path: str, keys: int, seconds: float, seed: int, start, out) -> None:
    import lightning_db as ldb
    db = ldb.open(path)
    rng = random.Random(seed)
    sample = [_key(rng.randrange(keys)) for _ in range(200_000)]
    get, n, missed = db.get, 0, 0
    for k in sample[:1000]:
        get(k)                                   # maps the published files
    out.put("ready")
    start.wait()
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for k in sample[(n % 200_000):(n % 200_000) + 1000]:
            if get(k) is None:
                missed += 1
        n += 1000
        if time.perf_counter() >= end:
            break
    out.put({"ops": n, "secs": time.perf_counter() - t0, "missed": missed, "shared": db.shared_reads})
    db.close()


def _writer(path: str, keys: int, seconds: float, seed: int, start, out) -> None:
    import lightning_db as ldb
    db = ldb.open(path)
    rng = random.Random(seed)
    sample = [_key(rng.randrange(keys)) for _ in range(100_000)]
    put, n = db.put, 0
    out.put("ready")
    start.wait()
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for k in sample[(n % 100_000):(n % 100_000) + 1000]:
            put(k, VALUE)
        n += 1000
        if time.perf_counter() >= end:
            break
    db.flush()                                   # every write answered, inside the window
    out.put({"ops": n, "secs": time.perf_counter() - t0})
    db.close()


def _run(kind: str, path: str, keys: int, procs: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    target = _reader if kind == "read" else _writer
    ps = [ctx.Process(target=target, args=(path, keys, seconds, 1000 + i, start, out)) for i in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:                                 # every process attached and warmed before the clock
        assert out.get(timeout=300) == "ready"
    start.set()
    results = [out.get(timeout=seconds * 4 + 120) for _ in ps]
    for p in ps:
        p.join(60)
    secs = max(r["secs"] for r in results)
    return {"procs": procs, "ops": sum(r["ops"] for r in results), "secs": round(secs, 3),
            "ops_per_s": round(sum(r["ops"] for r in results) / secs),
            "missed": sum(r.get("missed", 0) for r in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--procs", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--dir", default=None, help="parent folder of the database (default: a temp dir)")
    args = ap.parse_args(argv)
    import lightning_db as ldb
    from lightning_db.actors.placement import usable_cpus

    cpus = len(usable_cpus())
    shards = args.shards or cpus
    base = tempfile.mkdtemp(prefix="ldb-scaling-", dir=args.dir)
    path = os.path.join(base, "db")
    report: dict = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": cpus,
                    "python": sys.version.split()[0], "keys": args.keys, "shards": shards,
                    "seconds": args.seconds}
    try:
        db = ldb.open(path, shards=shards, sync="never")
        t0 = time.perf_counter()
        for s in range(0, args.keys, 1000):
            for i in range(s, min(args.keys, s + 1000)):
                db.put(_key(i), VALUE)
        db.flush()
        report["load_ops_per_s"] = round(args.keys / (time.perf_counter() - t0))
        db.compact()
        print(f"{cpus} CPUs, {shards} shards, {args.keys:,} keys loaded at {report['load_ops_per_s']:,}/s",
              flush=True)
        for kind in ("read", "write"):
            rows = []
            for p in [int(x) for x in args.procs.split(",")]:
                r = _run(kind, path, args.keys, p, args.seconds)
                r["scaling"] = round(r["ops_per_s"] / rows[0]["ops_per_s"], 2) if rows else 1.0
                rows.append(r)
                print(f"{kind:5} procs={p:2d} {r['ops_per_s']:>12,} ops/s  x{r['scaling']}", flush=True)
            report[kind] = rows
        db.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
