"""Issue 4: reads without messages, raced against flushes and compactions.

A writer (this process) keeps overwriting keys with increasing counters
(acknowledged single-key batches, and pipelined puts between them) through
``open(path, shards=2)`` with a tiny memtable, so memtables rotate,
flush and compact all the time; reader processes attached to the same
database read random keys from the shards' published versions. Every read
must return a well-formed value (never a half-written record or a recycled
file's bytes) that is at least as new as the last write acknowledged before
the read began (read-your-writes across processes) and never older than
what the same reader saw before (monotonic). Short scans, also answered from
shared memory, must return every key of their range in order, each value at
least as new as its last acknowledged write.

``LDB_RACE_SECONDS`` sets how long it races (default 8).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
import time

import lightning_db as ldb
from tests.waiting import wait_until

SECONDS = float(os.environ.get("LDB_RACE_SECONDS", "8"))
KEYS = 400
READERS = 2
SMALL = dict(memtable_size=64 * 1024, l0_compaction_trigger=2, max_bytes_for_level_base=256 * 1024,
             target_file_size=64 * 1024)


def key(i: int) -> bytes:
    return b"race-%04d" % i


def value(i: int, n: int) -> bytes:
    body = b"%d:%d:" % (i, n)
    return body + b"#" * (100 - len(body))


def parse(i: int, v: bytes) -> int | None:
    """The counter in a well-formed value of key *i*, else None."""
    try:
        ki, n, pad = v.split(b":", 2)
    except ValueError:
        return None
    if int(ki) != i or pad != b"#" * (100 - len(ki) - len(n) - 2):
        return None
    return int(n)


def reader(path: str, acked, stop, out) -> None:
    db = ldb.open(path)
    rng = random.Random(os.getpid())
    seen = [0] * KEYS
    reads = violations = scans = 0
    problems: list[str] = []
    try:
        while not stop.is_set():
            if reads % 50 == 0:                    # a short ordered read now and then
                lo = rng.randrange(KEYS - 20)
                floors = [acked[i] for i in range(lo, lo + 20)]
                rows = list(db.scan(key(lo), key(lo + 20)))
                scans += 1
                ok = [k for k, _ in rows] == [key(i) for i in range(lo, lo + 20)]
                for (k, v), floor in zip(rows, floors):
                    i = int(k[5:])
                    n = parse(i, v)
                    ok = ok and n is not None and n >= floor
                if not ok:
                    violations += 1
                    if len(problems) < 5:
                        problems.append(f"scan from key {lo}: {rows[:3]!r:.200}")
            i = rng.randrange(KEYS)
            floor = acked[i]                       # acknowledged before this read began
            v = db.get(key(i))
            reads += 1
            n = None if v is None else parse(i, v)
            if n is None or n < floor or n < seen[i]:
                violations += 1
                if len(problems) < 5:
                    problems.append(f"key {i}: read {v!r:.60} (counter {n}), acked {floor}, seen {seen[i]}")
            else:
                seen[i] = n
        loads = [r.loads for r in db._readers if r is not None]
        out.put({"reads": reads, "shared": db.shared_reads, "violations": violations, "problems": problems,
                 "loads": loads, "scans": scans})
    finally:
        db.close()


def test_readers_race_flushes_and_compactions(tmp_path):
    path = str(tmp_path / "db")
    db = ldb.open(path, shards=2, **SMALL)
    ctx = mp.get_context("spawn")
    acked = ctx.Array("q", KEYS, lock=False)
    stop, out = ctx.Event(), ctx.Queue()
    for i in range(KEYS):                          # every key exists before the readers start
        db.put(key(i), value(i, 0))
    procs = [ctx.Process(target=reader, args=(path, acked, stop, out), daemon=True) for _ in range(READERS)]
    failure: list[BaseException] = []
    writes = 0

    def write() -> None:
        nonlocal writes
        rng = random.Random(1)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                i = rng.randrange(KEYS)
                if n % 4:
                    db.put_many({key(i): value(i, n)})   # acknowledged when it returns
                    acked[i] = n
                else:
                    db.put(key(i), value(i, n))          # pipelined: checked for shape and order only
                writes += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    try:
        before = db.stats()
        for p in procs:
            p.start()
        writer.start()
        deadline = time.monotonic() + SECONDS
        wait_until(lambda: time.monotonic() > deadline or failure or not all(p.is_alive() for p in procs),
                   timeout=SECONDS + 60, what="the race to run its course")
        stop.set()
        writer.join(60)
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        assert not failure, repr(failure[0])
        after = db.stats()
        flushes = after["flushes"] - before["flushes"]
        compactions = after["compactions"] + after["trivial_moves"] - before["compactions"] - before["trivial_moves"]
        reads = sum(r["reads"] for r in results)
        print(f"\n{SECONDS:.0f}s: {writes} writes, {flushes} flushes, {compactions} compactions; "
              f"{reads} reads and {sum(r['scans'] for r in results)} scans in {READERS} processes, {sum(r['shared'] for r in results)} from shared memory, "
              f"version loads {[r['loads'] for r in results]}")
        assert all(r["violations"] == 0 for r in results), [r["problems"] for r in results]
        assert flushes >= 4 and compactions >= 1, (flushes, compactions)
        assert all(r["reads"] > 100 and r["shared"] >= 0.99 * r["reads"] for r in results), results
        assert all(r["scans"] > 10 for r in results), results
        assert all(sum(r["loads"]) >= 4 for r in results), results      # they followed new versions
        db.flush()
        final = [parse(i, v) for i, v in enumerate(db.get_many([key(i) for i in range(KEYS)]))]
        assert all(f is not None and f >= a for f, a in zip(final, acked))
    finally:
        stop.set()
        writer.join(60)
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(30)
        db.close()


def test_snapshot_reads_come_from_shared_memory_and_stay_put(tmp_path):
    """A snapshot's get, get_many and scan read the published versions at
    the snapshot's sequence numbers (registered on the shards, so compaction
    keeps what they see), whatever is written, flushed and compacted after."""
    with ldb.open(tmp_path / "db", shards=2, **SMALL) as db:
        before = {key(i): value(i, 1) for i in range(KEYS)}
        for k, v in before.items():
            db.put(k, v)
        with db.snapshot() as snap:
            for rnd in range(2, 5):                       # overwrite everything, flush, compact
                for i in range(KEYS):
                    db.put(key(i), value(i, rnd))
                db.flush()
            db.put(key(0), b"")
            db.delete(key(1))
            db.compact()
            reads = db.shared_reads
            assert snap.get(key(0)) == before[key(0)] and snap.get(key(1)) == before[key(1)]
            assert snap.get_many(list(before)) == list(before.values())
            assert list(snap.scan()) == sorted(before.items())
            assert list(snap.scan(key(10), key(20), reverse=True)) == sorted(
                (k, v) for k, v in before.items() if key(10) <= k < key(20))[::-1]
            assert db.shared_reads > reads                 # answered without asking the workers
        assert db.get(key(2)) == value(2, 4) and db.get(key(1)) is None
