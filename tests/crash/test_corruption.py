"""Random damage to one file of a small database: single-byte flips and
truncations of tables (.ldb), the WAL (.log), the manifest (MANIFEST-*) and
CURRENT. Each trial damages a fresh copy of a reference database, then opens
it, reads every key with get and with a full scan, and runs verify(). A trial
must either raise CorruptionError (at open or at a read) or return exactly
the right data; for damage to the WAL a correct recovery may also hold a
prefix of the WAL's records (a damaged tail record is treated as torn), never
a wrong value and never data that was not written. Any other exception, or a
trial that takes too long, fails the test.

Long form: ``LDB_CORRUPTION_FLIPS=20000``.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import time
import zlib

import pytest

from lightning_db.config import Config
from lightning_db.db import Database
from lightning_db.errors import CorruptionError
from lightning_db.storage.engine import Engine
from lightning_db.storage.format import CURRENT, parse_name
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.wal import read_wal
from tests.crash.util import env_int, full_state, quiesce

pytestmark = pytest.mark.crash

TRIALS = env_int("LDB_CORRUPTION_FLIPS", 2000)
TRIAL_LIMIT_S = 20.0          # one trial is a copy, an open and a few hundred reads
NKEYS = 240
KEYS = [b"ck%04d" % i for i in range(NKEYS)] + [b"never-written-%d" % i for i in range(8)]
CONFIG = Config(sync="never", memtable_size=64 * 1024, block_size=1024, l0_compaction_trigger=2,
                target_file_size=8 * 1024, max_bytes_for_level_base=16 * 1024,
                max_manifest_size=1 << 20)


class NoSyncFileSystem(OSFileSystem):
    """The real filesystem without fsync: durability plays no part in these
    trials, and a thousand opens should not wait for the disk."""

    def _sync(self, f) -> None:
        pass

    def sync_dir(self, path: str) -> None:
        pass

    def truncate(self, path: str, size: int) -> None:
        os.truncate(path, size)


def _value(rng: random.Random, gen: int, ki: int) -> bytes:
    return b"g%d.%d:" % (gen, ki) + rng.randbytes(rng.randint(20, 300))


class Reference:
    """The reference database and what a correct open may return."""

    def __init__(self, path: str) -> None:
        self.path = path
        rng = random.Random(99)
        model: dict[bytes, bytes] = {}
        db = Database(Engine(path, CONFIG, fs=NoSyncFileSystem()))
        # Tables at several levels: rounds of overwrites and deletes, flushed.
        for gen in range(10):
            for ki in rng.sample(range(NKEYS), 130):
                k = KEYS[ki]
                if rng.random() < 0.15:
                    db.delete(k)
                    model.pop(k, None)
                else:
                    model[k] = _value(rng, gen, ki)
                    db.put(k, model[k])
            db.flush()
            if gen == 6:
                db.compact()
        quiesce(db._engine)
        # Then records that stay in the WAL: each write is one record.
        self.base = dict(model)
        self.prefixes = [dict(model)]
        for n in range(40):
            r = rng.random()
            if r < 0.5:
                ki = rng.randrange(NKEYS)
                model[KEYS[ki]] = _value(rng, 100 + n, ki)
                db.put(KEYS[ki], model[KEYS[ki]])
            elif r < 0.75:
                k = rng.choice(sorted(model))
                db.delete(k)
                del model[k]
            else:
                with db.batch() as b:
                    for ki in rng.sample(range(NKEYS), 3):
                        if rng.random() < 0.3:
                            b.delete(KEYS[ki])
                            model.pop(KEYS[ki], None)
                        else:
                            model[KEYS[ki]] = _value(rng, 100 + n, ki)
                            b.put(KEYS[ki], model[KEYS[ki]])
            self.prefixes.append(dict(model))
        self.full = dict(model)
        self.levels = [lvl["files"] for lvl in db.stats()["levels"]]
        db.close()
        self.files: dict[str, list[str]] = collections.defaultdict(list)
        for name in sorted(os.listdir(path)):
            p = parse_name(name)
            kind = "current" if name == CURRENT else p[0] if p else None
            if kind in ("table", "wal", "manifest", "current"):
                self.files[kind].append(name)
        # The reference must hold what the trials claim to damage.
        assert sum(1 for n in self.levels if n) >= 3, f"tables at fewer than 3 levels: {self.levels}"
        assert len(self.files["table"]) >= 4 and len(self.files["wal"]) == 1, dict(self.files)
        assert len(self.files["manifest"]) == 1, dict(self.files)
        wal = read_wal(OSFileSystem(), os.path.join(path, self.files["wal"][0]))
        assert len(wal.records) == 40 and wal.good_size == wal.file_size


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    return Reference(str(tmp_path_factory.mktemp("corruption") / "ref"))


def _damage(path: str, rng: random.Random) -> str:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if rng.random() < 0.75 and data:
        pos = rng.randrange(len(data))
        data[pos] ^= rng.randint(1, 255)
        what = f"flip at {pos}/{len(data)}"
    else:
        size = rng.randrange(len(data)) if data else 0
        what = f"truncate to {size}/{len(data)}"
        del data[size:]
    with open(path, "wb") as f:
        f.write(data)
    return what


def _show(v: bytes | None) -> str | None:
    return None if v is None else f"{v.split(b':', 1)[0].decode()}(len {len(v)}, crc {zlib.crc32(v):08x})"


def _trial(ref: Reference, path: str) -> tuple[str, dict[bytes, bytes] | None]:
    """('open' | 'read', None) when CorruptionError was raised, else
    ('ok', the database contents)."""
    try:
        db = Database(Engine(path, CONFIG, fs=NoSyncFileSystem()))
    except CorruptionError:
        return "open", None
    try:
        state = full_state(db, KEYS)
        db.verify()
    except CorruptionError:
        return "read", None
    finally:
        db.close()
    return "ok", state


@pytest.mark.timeout(max(600, TRIALS // 10))
def test_random_damage(reference, tmp_path):
    ref = reference
    rng = random.Random(env_int("LDB_CORRUPTION_SEED", 4242))
    kinds = ["table"] * 4 + ["wal"] * 3 + ["manifest"] * 2 + ["current"]
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    t0 = time.monotonic()
    slowest = 0.0
    for trial in range(TRIALS):
        kind = rng.choice(kinds)
        name = rng.choice(ref.files[kind])
        path = str(tmp_path / f"t{trial}")
        shutil.copytree(ref.path, path)
        what = _damage(os.path.join(path, name), rng)
        label = f"trial {trial}: {name} {what}"
        start = time.monotonic()
        try:
            where, state = _trial(ref, path)
        except Exception as exc:
            raise AssertionError(f"{label}: raised {exc!r}, not CorruptionError") from exc
        took = time.monotonic() - start
        slowest = max(slowest, took)
        assert took < TRIAL_LIMIT_S, f"{label}: took {took:.1f}s"
        if where != "ok":
            outcomes[kind][f"detected at {where}"] += 1
        elif state == ref.full:
            outcomes[kind]["recovered"] += 1
        elif kind == "wal" and state in ref.prefixes:
            outcomes[kind]["prefix-recovered"] += 1
        else:
            wrong = {k: (_show(ref.full.get(k)), _show(state.get(k))) for k in set(ref.full) | set(state)
                     if ref.full.get(k) != state.get(k)}
            raise AssertionError(f"{label}: opened and returned wrong data without CorruptionError; "
                                 f"{len(wrong)} keys differ (expected, found): {dict(list(wrong.items())[:5])}")
        shutil.rmtree(path)
    took = time.monotonic() - t0
    print(f"\ncorruption: {TRIALS} trials in {took:.1f}s (slowest {slowest:.2f}s), tables per level "
          f"{ref.levels}, files { {k: len(v) for k, v in ref.files.items()} }")
    for kind in ("table", "wal", "manifest", "current"):
        print(f"  {kind:8s} {dict(outcomes[kind])}")
    # Damage must actually be seen: each kind of file was hit and some of it detected.
    for kind in ("table", "wal", "manifest", "current"):
        assert sum(outcomes[kind].values()) > 0 or TRIALS < 100, kind
        assert any(k.startswith("detected") for k in outcomes[kind]) or TRIALS < 100, (kind, outcomes[kind])
