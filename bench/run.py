"""Lightning DB against its peers on LevelDB's db_bench workloads.

    python -m bench.run [--quick] [--num N] [--value-size B]
                        [--engines lightning,rocksdict,lmdb,plyvel,sqlite3]
                        [--benchmarks fillseq,...] [--out FILE.md]

One process runs every benchmark for every engine, one engine at a time, each
engine in its own fresh temporary directory, and prints a markdown table of
operations per second with the ratio Lightning/peer (above 1: Lightning is
faster). The settings and durability of every engine are printed with it; see
bench/peers.py for why they are comparable. Engines that are not installed
(or, for lightning, not usable yet) are skipped and said so.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from .peers import ENGINES, OPT_IN, Engine
from .workloads import BENCHMARKS, NEEDS, RUN, Workload, check_deleted, fill


@dataclass
class EngineRun:
    """What one engine did: ops/s per benchmark, problems, compaction time."""

    name: str
    ops: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    compact_s: list[float] = field(default_factory=list)


class _Session:
    """Keeps one engine's database between benchmarks so that overwrite and
    the reads reuse the state fillrandom left (untimed set-up otherwise)."""

    def __init__(self, cls: type[Engine], root: str, w: Workload, result: EngineRun) -> None:
        self.cls, self.root, self.w, self.result = cls, root, w, result
        self.db: Engine | None = None
        self.dir: str | None = None
        self.state = "none"  # none | other | filled | compacted

    def fresh(self) -> Engine:
        self.drop()
        self.dir = tempfile.mkdtemp(prefix="db-", dir=self.root)
        self.db = self.cls(self.dir)
        self.state = "other"
        return self.db

    def drop(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            db.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.state = "none"

    def prepare(self, need: str) -> Engine:
        if need == "fresh":
            return self.fresh()
        if self.state not in ("filled", "compacted"):
            _log(f"  [{self.cls.name}] set-up: fillrandom (untimed)")
            fill(self.fresh(), self.w.fill_keys, self.w.values)
            self.state = "filled"
        assert self.db is not None
        if need == "compacted" and self.state != "compacted":
            t0 = time.perf_counter()
            if self.db.compact():
                self.result.compact_s.append(time.perf_counter() - t0)
                _log(f"  [{self.cls.name}] set-up: compact {self.result.compact_s[-1]:.2f} s (untimed)")
            self.state = "compacted"
        return self.db


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_engine(cls: type[Engine], benchmarks: Sequence[str], w: Workload, tmp: str) -> EngineRun:
    result = EngineRun(cls.name)
    root = tempfile.mkdtemp(prefix=f"ldb-bench-{cls.name}-", dir=tmp)
    session = _Session(cls, root, w, result)
    try:
        for bench in benchmarks:
            try:
                db = session.prepare(NEEDS[bench])
                gc.collect()
                t0 = time.perf_counter()
                problem = RUN[bench](db, w)
                db.settle()
                secs = time.perf_counter() - t0
                if bench == "deleterandom":
                    problem = problem or check_deleted(db, w)
                    session.state = "other"
                elif bench == "fillrandom":
                    session.state = "filled"
                elif bench == "overwrite":
                    session.state = "filled"
                result.ops[bench] = w.num / secs
                if problem:
                    result.errors[bench] = problem
                _log(f"  [{cls.name}] {bench:<13} {w.num / secs:>12,.0f} ops/s  {secs:8.2f} s"
                     + (f"  WRONG: {problem}" if problem else ""))
            except Exception as e:  # noqa: BLE001 - report and go on with the next benchmark
                result.errors[bench] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
                _log(f"  [{cls.name}] {bench:<13} FAILED: {result.errors[bench]}")
                traceback.print_exc(limit=3, file=sys.stderr)
                try:
                    session.drop()
                except Exception:  # noqa: BLE001 - the engine is broken already
                    session.db, session.state = None, "none"
    finally:
        try:
            session.drop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _machine(tmp: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    fs = "?"
    try:
        real = os.path.realpath(tmp)
        with open("/proc/mounts") as f:
            mounts = [ln.split()[:3] for ln in f]
        best = max((m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
                   key=lambda m: len(m[1]), default=None)
        fs = best[2] if best else "?"
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = "RAM ?"
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, databases in {tmp} ({fs})")


def _fmt_ops(run: EngineRun, bench: str) -> str:
    if bench not in run.ops:
        return "failed" if bench in run.errors else "-"
    mark = " (wrong)" if bench in run.errors else ""
    return f"{run.ops[bench]:,.0f}{mark}"


def report(runs: list[EngineRun], benchmarks: Sequence[str], w: Workload, tmp: str,
           skipped: dict[str, str]) -> str:
    today = datetime.date.today().isoformat()
    out = [f"### db_bench workloads: {w.num:,} keys of 16 bytes, {w.value_size}-byte values ({today})", "",
           f"Machine: {_machine(tmp)}.", ""]
    lightning = next((r for r in runs if r.name == "lightning"), None)
    peers = [r for r in runs if r.name != "lightning"] if lightning and lightning.ops else []
    header = ["benchmark"] + [f"{r.name} ops/s" for r in runs] + [f"lightning/{p.name}" for p in peers]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" + "---:|" * (len(header) - 1))
    for bench in benchmarks:
        row = [bench] + [_fmt_ops(r, bench) for r in runs]
        for p in peers:
            a, b = lightning.ops.get(bench) if lightning else None, p.ops.get(bench)
            row.append(f"{a / b:.2f}x" if a and b else "-")
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Operations per second, higher is better; one Python call per operation (fillbatch and "
                "readbatch: per key, 1000 keys per batch or multi-get call). Ratio above 1: Lightning is faster.", "", "Engines:"]
    for r in runs:
        cls = ENGINES[r.name]
        out.append(f"- **{r.name}** {cls.version()}: durability: {cls.durability}; settings: {cls.describe()}.")
    for name, why in skipped.items():
        out.append(f"- **{name}**: skipped: {why}.")
    out += ["", "Notes:",
            "- Fills start from an empty database; overwrite and deleterandom run on the state fillrandom "
            "left; the reads run on that state after a full compaction (untimed) where the engine has one: "
            + (", ".join(f"{r.name} {sum(r.compact_s):.2f} s" for r in runs if r.compact_s) or "none ran") + ".",
            "- Random orders are permutations (each key once); readmissing looks up `%016d.` keys, which "
            "sort between existing keys, as db_bench does."]
    for r in runs:
        for bench, err in r.errors.items():
            out.append(f"- {r.name} {bench}: {err}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, help="number of keys (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="100,000 keys")
    ap.add_argument("--value-size", type=int, default=100, help="value size in bytes (default 100)")
    ap.add_argument("--engines", default=",".join(e for e in ENGINES if e not in OPT_IN),
                    help=f"comma list of {', '.join(ENGINES)} (default: all{' but ' + ', '.join(sorted(OPT_IN)) if OPT_IN else ''})")
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma list (default: all, in this order)")
    ap.add_argument("--out", help="also write the markdown fragment to this file")
    ap.add_argument("--tmpdir", default=tempfile.gettempdir(), help="where the databases go (default: system temp)")
    ap.add_argument("--seed", type=int, default=301)
    args = ap.parse_args(argv)

    num = args.num if args.num is not None else (100_000 if args.quick else 1_000_000)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [e for e in engines if e not in ENGINES] + [b for b in benchmarks if b not in RUN]
    if unknown or num < 1 or args.value_size < 1:
        ap.error(f"unknown engine or benchmark: {', '.join(unknown)}" if unknown else "--num and --value-size must be >= 1")

    skipped = {e: why for e in engines if (why := ENGINES[e].unavailable())}
    for name, why in skipped.items():
        _log(f"skipping {name}: {why}")
    _log(f"preparing {num:,} keys ...")
    w = Workload(num, args.value_size, args.seed)
    w.prepare(benchmarks)
    runs = []
    for name in engines:
        if name in skipped:
            continue
        _log(f"{name}:")
        runs.append(run_engine(ENGINES[name], benchmarks, w, args.tmpdir))
        gc.collect()

    text = report(runs, benchmarks, w, args.tmpdir, skipped)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
