"""Simulated power loss at every filesystem operation of a workload.

The workload (powerloss_workload.py) writes with and without sync, flushes,
fills the memtable so that it rotates and L0 reaches the compaction trigger,
switches manifests (tiny max_manifest_size), closes and reopens. It is run
once to count its filesystem operations; then, for every operation index i,
it is run again with ``crash_at=i``; the simulated machine loses power
(unsynced data dropped, torn tails kept at random) and the directory is
reopened with a fresh filesystem. The open must succeed, every write that
was durable before the crash (acknowledged with sync=True, or before a
flush/close returned) must be there with its value or a later one, nothing
that was never written may appear, and batches are all or nothing.

A second test crashes the open itself (recovery) at every operation, from
several crash states, and checks that the next open finds exactly what an
uninterrupted recovery finds.

CI runs every index under two rng seeds (torn writes and torn tails differ).
Long form: ``LDB_POWERLOSS_FULL=1`` (four seeds, and recovery crashed from
every seventh crash state instead of eight of them).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import time
from contextlib import suppress

import pytest

from lightning_db.db import Database
from lightning_db.storage.engine import Engine
from lightning_db.storage.faultfs import FaultInjectingFileSystem, SimulatedCrash
from tests.crash.powerloss_workload import (
    CONFIG,
    KEYS,
    History,
    abandon,
    quiesce,
    run_workload,
)
from tests.crash.util import full_state

pytestmark = pytest.mark.crash

FULL = os.environ.get("LDB_POWERLOSS_FULL") == "1"
MAX_INDEXES = 2000          # above this many operations CI takes a stride


def _tag(v: bytes | None) -> str | None:
    return None if v is None else v.split(b"|", 1)[0].decode()


def count_operations(tmp_path) -> int:
    fs = FaultInjectingFileSystem()
    wl = run_workload(str(tmp_path / "count"), fs)
    assert wl.done, f"the workload did not finish: {wl.error!r}"
    n = fs.ops
    # The workload must reach what it claims to cover.
    assert wl.counters["flushes"] >= 3, wl.counters
    assert wl.counters["compactions"] >= 2, wl.counters
    assert len(wl.manifests) >= 4, f"manifest switches: {sorted(wl.manifests)}"
    assert any(w.sync and w.acked for w in wl.h.writes) and any(not w.sync for w in wl.h.writes)
    wl.db.close()
    # And it must be deterministic: a second run does the same operations.
    fs2 = FaultInjectingFileSystem()
    wl2 = run_workload(str(tmp_path / "count2"), fs2)
    assert wl2.done and fs2.ops == n, f"operation count differs between runs: {n} vs {fs2.ops}"
    wl2.db.close()
    shutil.rmtree(tmp_path / "count")
    shutil.rmtree(tmp_path / "count2")
    return n


def check_against_history(state: dict[bytes, bytes], h: History, label: str) -> str:
    """Every key's recovered state must be allowed by the history; batches
    all-or-nothing. Returns how the in-flight write ended (for the tally)."""
    unknown = set(state) - set(KEYS)
    assert not unknown, f"{label}: keys that were never written: {sorted(unknown)[:5]}"
    per_key: dict[bytes, list[tuple[int, bytes | None]]] = collections.defaultdict(list)
    for w in h.writes:
        for k, v in w.effects.items():
            per_key[k].append((w.index, v))
    durable = {w.index for w in h.writes if (w.acked and w.sync) or w.index < h.durable_upto}
    for k in KEYS:
        hist = per_key.get(k, [])
        found = state.get(k)
        last_durable = max((i for i, _ in hist if i in durable), default=None)
        if last_durable is None:
            allowed = {None} | {v for _, v in hist}
        else:
            allowed = {v for i, v in hist if i >= last_durable}
        if found not in allowed:
            raise AssertionError(
                f"{label}: key {k!r} holds {_tag(found)}, allowed {sorted(map(str, map(_tag, allowed)))}; "
                f"last durable write to it: #{last_durable}; writes to it: "
                f"{[(i, _tag(v)) for i, v in hist]}; durable_upto={h.durable_upto}")
    # A batch is all or nothing: if one key shows the batch's own value, every
    # key of the batch shows the batch's state or a later write's.
    for w in h.writes:
        if len(w.effects) < 2:
            continue
        if any(v is not None and state.get(k) == v for k, v in w.effects.items()):
            for k in w.effects:
                later = {v for i, v in per_key[k] if i >= w.index}
                assert state.get(k) in later, (
                    f"{label}: batch #{w.index} applied only in part: key {k!r} holds "
                    f"{_tag(state.get(k))}, expected one of {sorted(map(str, map(_tag, later)))}")
    last = h.writes[-1] if h.writes else None
    if last is None or last.acked:
        return "no write in flight"
    applied = all(state.get(k) == v for k, v in last.effects.items())
    return "in-flight write applied" if applied else "in-flight write lost"


def reopen_and_check(path: str, h: History, label: str) -> tuple[dict[bytes, bytes], str]:
    fs = FaultInjectingFileSystem()
    try:
        db = Database(Engine(path, CONFIG, fs=fs))
    except Exception as exc:
        raise AssertionError(f"{label}: the open after the power loss failed: {exc!r}") from exc
    try:
        quiesce(db._engine)
        state = full_state(db, KEYS)
        db.verify()
        outcome = check_against_history(state, h, label)
        db.put(b"after-recovery", b"ok", sync=True)      # and the database takes writes again
        assert db.get(b"after-recovery") == b"ok"
        db.delete(b"after-recovery", sync=True)
    finally:
        db.close()
    return state, outcome


def crash_state(path: str, i: int, seed: int) -> History:
    """Run the workload with a crash at operation *i*, lose power, and leave
    the directory as the machine would find it after the reboot."""
    rng = random.Random(seed * 1_000_003 + i)
    fs = FaultInjectingFileSystem(crash_at=i, torn_write_at_crash=rng.random() < 0.5, rng=rng)
    wl = run_workload(path, fs)
    try:
        assert wl.crashed() and not wl.done, f"crash_at={i} did not crash the workload (nondeterministic?)"
    finally:
        fs.power_loss(rng, torn=rng.random() < 0.8)
        abandon(wl)
    return wl.h


@pytest.mark.timeout(1200 if FULL else 400)
def test_power_loss_at_every_operation(tmp_path):
    t0 = time.monotonic()
    n = count_operations(tmp_path)
    seeds = (1, 2, 3, 4) if FULL else (1, 2)
    stride = 1 if FULL or n <= MAX_INDEXES else -(-n // MAX_INDEXES)
    indexes = range(1, n + 1, stride)
    tally: collections.Counter = collections.Counter()
    steps: collections.Counter = collections.Counter()
    for seed in seeds:
        for i in indexes:
            path = str(tmp_path / f"s{seed}-op{i}")
            h = crash_state(path, i, seed)
            steps[h.steps[-1]] += 1
            _, outcome = reopen_and_check(path, h, f"crash at operation {i}/{n} (seed {seed}, step {h.steps[-1]!r})")
            tally[outcome] += 1
            shutil.rmtree(path)
    print(f"\npower loss: {n} operations, {len(indexes) * len(seeds)} crashes (stride {stride}), "
          f"{time.monotonic() - t0:.1f}s; crashes per step {dict(steps)}; outcomes {dict(tally)}")


def _open_until_idle(path: str, fs: FaultInjectingFileSystem) -> Database:
    db = Database(Engine(path, CONFIG, fs=fs))
    try:
        quiesce(db._engine)
    except BaseException:
        with suppress(BaseException):     # a crashed filesystem: close just ends the threads
            db._engine.close()
        raise
    return db


@pytest.mark.timeout(1200 if FULL else 400)
def test_crash_during_recovery(tmp_path):
    """Recovery crashed at each of its operations (and sometimes crashed again
    on the next open) ends where an uninterrupted recovery ends."""
    t0 = time.monotonic()
    n = count_operations(tmp_path)
    picks = sorted({max(1, n * k // 9) for k in range(1, 9)}) if not FULL else list(range(1, n + 1, 7))
    rng = random.Random(11)
    trials = double = 0
    for i in picks:
        pre = str(tmp_path / f"pre{i}")
        h = crash_state(pre, i, seed=5)
        base = str(tmp_path / "base")
        shutil.copytree(pre, base)
        fs = FaultInjectingFileSystem()
        try:
            db = _open_until_idle(base, fs)
        except Exception as exc:
            raise AssertionError(f"open after the crash at operation {i} failed: {exc!r}") from exc
        m = fs.ops                  # operations of an uninterrupted recovery (and its compaction)
        expected = full_state(db, KEYS)
        db.close()
        shutil.rmtree(base)
        check_against_history(expected, h, f"recovery baseline from crash at {i}")
        for j in range(1, m + 1):
            label = f"recovery of the crash state at op {i} crashed at its op {j}/{m}"
            path = str(tmp_path / "trial")
            shutil.copytree(pre, path)
            for attempt in range(2):
                fs = FaultInjectingFileSystem(crash_at=j, torn_write_at_crash=rng.random() < 0.5, rng=rng)
                opened = False
                try:
                    db = _open_until_idle(path, fs)
                    opened = True
                    db.close()                   # the second crash point may fall here
                except SimulatedCrash:
                    pass
                if opened and attempt == 0:
                    raise AssertionError(f"{label}: the open did not crash (nondeterministic?)")
                fs.power_loss(rng, torn=rng.random() < 0.8)
                if rng.random() < 0.7:
                    break
                double += 1
                j = rng.randint(1, m)        # crash the next recovery too
            fs = FaultInjectingFileSystem()
            try:
                db = _open_until_idle(path, fs)
            except Exception as exc:
                raise AssertionError(f"{label}: the next open failed: {exc!r}") from exc
            try:
                got = full_state(db, KEYS)
                db.verify()
            finally:
                db.close()
            if got != expected:
                diff = {k: (_tag(expected.get(k)), _tag(got.get(k))) for k in set(expected) | set(got)
                        if expected.get(k) != got.get(k)}
                raise AssertionError(f"{label}: differs from an uninterrupted recovery "
                                     f"(expected, found): {dict(list(diff.items())[:6])}")
            shutil.rmtree(path)
            trials += 1
        shutil.rmtree(pre)
    print(f"\ncrash during recovery: {len(picks)} crash states, {trials} crashed recoveries "
          f"({double} crashed twice), {time.monotonic() - t0:.1f}s")
