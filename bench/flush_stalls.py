"""How long a flush holds the GIL: the stalls a shard's message loop sees.

    python -m bench.flush_stalls [--keys 250000] [--switch 0.001] [--rounds 3]

A shard worker runs its engine's flush and compaction on a background
thread beside the thread that answers messages; every long call that
holds the GIL there delays every answer by as long. This fills an
in-process engine with ``--keys`` keys (16-byte keys, 100-byte values, in
batches of 1000), then flushes it while a probe thread sleeps 0.2 ms at a
time and notes how much later than that it got to run again (its wait for
the GIL; the garbage collector is off meanwhile, so that what is timed is
the GIL and not a collection the probe's own allocations set off).
``--switch``: the GIL switch interval of the run (a shard worker
uses 0.001; Python's default is 0.005). Prints, per round, the flush time
and the probe's waits: the longest, the 99th percentile and the sum of
those over 5 ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np

from lightning_db.config import Config
from lightning_db.storage.engine import Engine

PROBE_SLEEP_S = 0.0002


def one_round(keys: int, seed: int) -> tuple[float, np.ndarray]:
    d = tempfile.mkdtemp(prefix="ldb-stalls-")
    try:
        eng = Engine(d, Config(memtable_size=max(64 << 20, keys * 256)))
        rng = random.Random(seed)
        order = list(range(keys))
        rng.shuffle(order)
        value = os.urandom(100)
        for i in range(0, keys, 1000):
            eng.write([(1, b"%016d" % k, value) for k in order[i:i + 1000]])
        stop = threading.Event()
        waits: list[float] = []

        def probe() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                time.sleep(PROBE_SLEEP_S)
                waits.append(time.perf_counter() - t0 - PROBE_SLEEP_S)

        th = threading.Thread(target=probe, daemon=True)
        gc.disable()                # the probe's own allocations must not time collections
        th.start()
        t0 = time.perf_counter()
        eng.flush()
        took = time.perf_counter() - t0
        stop.set()
        th.join()
        gc.enable()
        eng.close()
        return took, np.array(waits) * 1e3
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=250_000)
    ap.add_argument("--switch", type=float, default=0.001)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sys.setswitchinterval(args.switch)
    print(f"flush of {args.keys:,} keys, GIL switch interval {args.switch * 1e3:g} ms")
    print("| round | flush ms | longest wait ms | p99 wait ms | waits over 5 ms, sum ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in range(args.rounds):
        took, w = one_round(args.keys, r)
        print(f"| {r + 1} | {took * 1e3:,.0f} | {w.max():.1f} | {np.percentile(w, 99):.1f} | {w[w > 5].sum():,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
