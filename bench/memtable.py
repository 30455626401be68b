"""A memtable's insert paths side by side: the record loop against the bulk insert.

    python -m bench.memtable [--records 150000] [--sizes 66,128,200,1000,4000]

For each batch size, batches of distinct keys (16-byte ``key:%012d`` names,
100-byte values) go into a fresh 64 MiB memtable segment twice: once through
the record-by-record loop of ``Memtable.add_batch`` and once through
``memtable_bulk.add_bulk`` (whatever ``BULK_MIN`` says). Keys are drawn from
a keyspace of 100,000 names (many batches rewrite keys the memtable holds,
as a server's SETs do) and from 10^12 names (almost every key new, as a
fill does). Prints µs per record for each path; ``BULK_MIN`` in
``lightning_db/storage/memtable_bulk.py`` is where the bulk path starts to win.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from lightning_db.storage import memtable as memtable_module
from lightning_db.storage import memtable_bulk
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.memtable import Memtable

KEYSPACES = (100_000, 10 ** 12)


def batches(records: int, size: int, keyspace: int, seed: int) -> list[list[tuple[int, bytes, bytes]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(max(1, records // size)):
        keys = list(dict.fromkeys(b"key:%012d" % rng.randrange(keyspace) for _ in range(size)))
        out.append([(1, k, b"x" * 100) for k in keys])
    return out


def run(work: list[list[tuple[int, bytes, bytes]]], bulk: bool) -> float:
    """µs per record for *work* through one path."""
    with tempfile.TemporaryDirectory() as d:
        mt = Memtable(OSFileSystem(), os.path.join(d, "000001.seg"), 1, 64 << 20)
        try:
            seq, n = 1, 0
            started = time.perf_counter()
            for ops in work:
                if bulk:
                    if not memtable_bulk.add_bulk(mt, seq, ops):
                        raise SystemExit(f"add_bulk refused a batch of {len(ops)} records")
                else:
                    mt.add_batch(seq, ops)
                seq += len(ops)
                n += len(ops)
            return (time.perf_counter() - started) / n * 1e6
        finally:
            mt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=150_000, help="records per path and size (default 150000)")
    ap.add_argument("--sizes", default="66,128,200,1000,4000", help="batch sizes, comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    saved = memtable_bulk.BULK_MIN
    memtable_bulk.BULK_MIN = 1              # add_bulk: take any batch, below today's threshold too
    memtable_module.BULK_MIN = 1 << 62      # add_batch: always the loop
    try:
        print("| batch | keyspace | loop µs/record | bulk µs/record | bulk / loop |")
        print("|---:|---:|---:|---:|---:|")
        for size in sizes:
            for keyspace in KEYSPACES:
                work = batches(args.records, size, keyspace, args.seed)
                loop, bulk = run(work, False), run(work, True)
                print(f"| {size} | {keyspace:.0e} | {loop:.2f} | {bulk:.2f} | {bulk / loop:.2f} |")
    finally:
        memtable_bulk.BULK_MIN = memtable_module.BULK_MIN = saved
    print(f"\nBULK_MIN today: {saved}")


if __name__ == "__main__":
    main()
