"""Memory of a reading caller: how much a process grows beyond the mapped files.

    python -m bench.rss [--keys 1000000] [--reads 1000000] [--shards 2]

Loads ``--keys`` keys (16-byte keys, 100-byte values) into a sharded
database, then a separate caller process attaches, does ``--reads`` random
``get`` calls (answered from the shards' published versions) and reports its
anonymous memory (RSS minus file-backed shared pages: what the process
itself allocated, not the page cache of the mapped segments and tables)
before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile


def _anon_mib() -> float:
    """Resident anonymous memory of this process (RssAnon), in MiB."""
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _caller(path: str, keys: int, reads: int, out) -> None:
    import lightning_db as ldb
    db = ldb.open(path)
    rng = random.Random(7)
    sample = [b"%016d" % rng.randrange(keys) for _ in range(100_000)]
    for k in sample[:1000]:
        db.get(k)                                     # map the files, warm the imports
    before = _anon_mib()
    get, missed = db.get, 0
    for i in range(reads):
        if get(sample[i % 100_000]) is None:
            missed += 1
    after = _anon_mib()
    out.put({"before_mib": round(before, 1), "after_mib": round(after, 1),
             "growth_mib": round(after - before, 1), "missed": missed, "shared_reads": db.shared_reads})
    db.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args(argv)
    import lightning_db as ldb

    base = tempfile.mkdtemp(prefix="ldb-rss-")
    path = os.path.join(base, "db")
    try:
        with ldb.open(path, shards=args.shards, sync="never") as db:
            value = b"v" * 100
            for s in range(0, args.keys, 1000):
                db.put_many([(b"%016d" % i, value) for i in range(s, min(args.keys, s + 1000))])
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            p = ctx.Process(target=_caller, args=(path, args.keys, args.reads, out))
            p.start()
            r = out.get(timeout=3600)
            p.join(60)
        print(f"{args.reads:,} reads over {args.keys:,} keys ({args.shards} shards): anonymous RSS "
              f"{r['before_mib']} MiB -> {r['after_mib']} MiB (+{r['growth_mib']} MiB); "
              f"{r['shared_reads']:,} from shared memory, {r['missed']} missed")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
