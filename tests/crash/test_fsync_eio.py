"""I/O errors from the disk: EIO on the WAL's fsync, ENOSPC on a WAL write,
EIO in a background flush or compaction, ENOSPC in a background flush.

The rules (DESIGN §5, errors.py, wal.py): the write that met the error is not
acknowledged and raises a classified error (IOFault / DiskFull, both
RecoverableError); a failed fsync is never retried, so every later write is
refused until the database is reopened; reads keep working; a reopen (with a
healthy disk) finds every acknowledged write. A full disk is not sticky: the
failed WAL write is cut back off the file and later writes succeed once
there is room again; a flush that met it removes its partial tables and is
tried again.
"""

from __future__ import annotations

import errno
import os
import random
from contextlib import suppress

import pytest

from lightning_db.errors import DiskFull, IOFault, RecoverableError, classify
from lightning_db.storage.faultfs import FaultInjectingFileSystem
from lightning_db.storage.format import parse_name
from tests.crash.util import open_db, wait_until

pytestmark = [pytest.mark.crash, pytest.mark.timeout(120)]

SMALL = {"memtable_size": 64 * 1024, "l0_compaction_trigger": 2, "block_size": 4096,
         "target_file_size": 64 * 1024, "max_manifest_size": 4096, "write_stall_timeout_s": 10.0}


class RecordingFS(FaultInjectingFileSystem):
    """Records the outcome of every fsync of a file: (name, succeeded)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.syncs: list[tuple[str, bool]] = []

    def _sync(self, f) -> None:
        name = os.path.basename(f.path)
        try:
            super()._sync(f)
        except BaseException:
            self.syncs.append((name, False))
            raise
        self.syncs.append((name, True))

    def wal_syncs_after_failure(self) -> tuple[int, list[tuple[str, bool]]]:
        """How many WAL fsyncs failed, and every WAL fsync tried after the first failure."""
        wal = [e for e in self.syncs if e[0].endswith(".log")]
        failed = [i for i, e in enumerate(wal) if not e[1]]
        return len(failed), (wal[failed[0] + 1:] if failed else [])


def _k(i: int) -> bytes:
    return b"key-%05d" % i


def _v(i: int, gen: int = 0) -> bytes:
    return b"val-%d-%d-" % (i, gen) + bytes([97 + (i + gen) % 26]) * (200 + i % 300)


def _fill(db, model: dict[bytes, bytes], rng: random.Random, n: int, sync: bool | None) -> None:
    """Acknowledged writes of every kind, recorded in *model*."""
    for i in range(n):
        r = rng.random()
        ki = rng.randrange(400)
        if r < 0.6:
            db.put(_k(ki), _v(ki, i), sync=sync)
            model[_k(ki)] = _v(ki, i)
        elif r < 0.8:
            db.delete(_k(ki), sync=sync)
            model.pop(_k(ki), None)
        else:
            items = {_k(j): _v(j, i) for j in rng.sample(range(400), 3)}
            db.put_many(items, sync=sync)
            model.update(items)


def _check_reads(db, model: dict[bytes, bytes], maybe: dict[bytes, set]) -> None:
    """Reads see exactly the acknowledged data; keys in *maybe* (a write
    whose outcome is unknown) may hold any of the listed states."""
    scanned = dict(db.scan())
    for k in set(model) | set(scanned) | set(maybe):
        allowed = maybe.get(k, {model.get(k)})
        assert scanned.get(k) in allowed, f"scan: {k!r} = {scanned.get(k)!r:.40}, allowed {allowed!r:.80}"
        assert db.get(k) in allowed, f"get: {k!r} = {db.get(k)!r:.40}, allowed {allowed!r:.80}"
    keys = sorted(model)
    assert db.get_many(keys) == [scanned.get(k) for k in keys]
    assert list(db.scan(reverse=True)) == sorted(scanned.items(), reverse=True)
    with db.snapshot() as s:
        assert dict(s.scan()) == scanned


def _reopen_and_check(path: str, model: dict[bytes, bytes], maybe: dict[bytes, set]) -> None:
    try:
        db = open_db(path, FaultInjectingFileSystem(), sync="never", **SMALL)
    except Exception as exc:
        raise AssertionError(f"the reopen failed: {exc!r}") from exc
    try:
        _check_reads(db, model, maybe)
        db.verify()
        db.put(b"after-reopen", b"ok", sync=True)      # a healthy disk takes writes again
        assert db.get(b"after-reopen") == b"ok"
    finally:
        db.close()


def _refused(db, what: str, exc_type: type = IOFault) -> None:
    """Every kind of write is refused with a classified error."""
    attempts = [
        ("put sync", lambda: db.put(b"late-1", b"x", sync=True)),
        ("put", lambda: db.put(b"late-2", b"x", sync=False)),
        ("delete", lambda: db.delete(_k(1), sync=True)),
        ("put_many", lambda: db.put_many({b"late-3": b"x", b"late-4": b"y"})),
        ("batch", lambda: _batch(db)),
    ]
    for name, call in attempts:
        with pytest.raises(exc_type) as ei:
            call()
        assert classify(ei.value) is RecoverableError, f"{what}: {name} raised {ei.value!r}"


def _batch(db) -> None:
    with db.batch() as b:
        b.put(b"late-5", b"x")
        b.delete(_k(2))


@pytest.mark.parametrize("policy", ["never", "always"])
@pytest.mark.parametrize("ending", ["reopen", "power-loss"])
def test_wal_fsync_eio_refuses_writes_and_never_retries(tmp_path, policy, ending):
    path = str(tmp_path / "db")
    fs = RecordingFS()
    db = open_db(path, fs, sync=policy, **SMALL)
    rng = random.Random(1)
    model: dict[bytes, bytes] = {}
    try:
        # Acknowledged and durable (synced) writes, some of them already in tables.
        _fill(db, model, rng, 150, sync=True)
        db.flush()
        _fill(db, model, rng, 60, sync=True)

        # One failing fsync: a retry would succeed, which is exactly what must not happen.
        fs.inject("sync", errno.EIO, path_contains=".log", count=1)
        old = model.get(_k(7))
        with pytest.raises(IOFault) as ei:
            db.put(_k(7), b"never acknowledged", sync=True)
        assert classify(ei.value) is RecoverableError
        assert fs.wal_syncs_after_failure() == (1, [])
        maybe = {_k(7): {old, b"never acknowledged"}}      # outcome unknown: in the file, not synced

        for _ in range(3):
            _refused(db, "after the failed fsync")
        with pytest.raises(IOFault):
            db.flush()
        _check_reads(db, model, maybe)                     # reads keep working
        db.verify()
        failures, retried = fs.wal_syncs_after_failure()
        assert failures == 1 and not retried, f"the WAL fsync was tried again after EIO: {retried}"

        if ending == "reopen":
            db.close()
            failures, retried = fs.wal_syncs_after_failure()
            assert failures == 1 and not retried, f"close() tried to fsync the WAL after EIO: {retried}"
        else:
            fs.power_loss(random.Random(2), torn=True)
            with suppress(BaseException):     # the filesystem is gone: close just ends the threads
                db.close()
    finally:
        if not db.closed:
            with suppress(BaseException):
                db.close()
    _reopen_and_check(path, model, maybe)


def test_wal_fsync_eio_in_interval_syncer(tmp_path):
    """sync='interval': the syncer thread meets the EIO; from then on writes
    are refused, reads work, and a reopen finds every acknowledged write."""
    path = str(tmp_path / "db")
    fs = RecordingFS()
    db = open_db(path, fs, sync="interval", sync_interval_ms=5, **SMALL)
    model: dict[bytes, bytes] = {}
    try:
        _fill(db, model, random.Random(3), 100, sync=None)
        fs.inject("sync", errno.EIO, path_contains=".log", count=1)
        db.put(b"trigger", b"t")        # gives the syncer something to sync
        maybe = {b"trigger": {None, b"t"}}
        wait_until(lambda: db.stats()["write_error"] is not None, 60, "the syncer to meet the EIO")
        _refused(db, "after the syncer's failed fsync")
        _check_reads(db, model, maybe)
        db.close()
        failures, retried = fs.wal_syncs_after_failure()
        assert failures == 1 and not retried, f"the WAL fsync was tried again after EIO: {retried}"
    finally:
        if not db.closed:
            db.close()
    _reopen_and_check(path, model, maybe)


def test_enospc_on_wal_write(tmp_path):
    path = str(tmp_path / "db")
    fs = FaultInjectingFileSystem()
    db = open_db(path, fs, sync="never", **SMALL)
    model: dict[bytes, bytes] = {}
    try:
        _fill(db, model, random.Random(4), 200, sync=None)
        old = model.get(_k(9))
        fs.inject("write", errno.ENOSPC, path_contains=".log", count=1)
        with pytest.raises(DiskFull) as ei:
            db.put(_k(9), b"no space", sync=False)
        assert isinstance(ei.value, IOFault) and classify(ei.value) is RecoverableError
        # Not acknowledged, and not visible: the record never reached the WAL.
        assert db.get(_k(9)) == old
        _check_reads(db, model, {})
        # The failed frame was cut back off the WAL: with room again, writes go on.
        db.put(b"later", b"written after ENOSPC", sync=True)
        model[b"later"] = b"written after ENOSPC"
        _check_reads(db, model, {})
        db.verify()
    finally:
        db.close()
    _reopen_and_check(path, model, {})


BACKGROUND_FAULTS = [
    # (case, op, path_contains, after): 'after' lets the flush's own table sync through.
    ("flush: table write EIO", "write", ".ldb", 0),
    ("flush: table fsync EIO", "sync", ".ldb", 0),
    ("flush: manifest fsync EIO", "sync", "MANIFEST", 0),
    ("compaction: output fsync EIO", "sync", ".ldb", 1),
]


@pytest.mark.parametrize("case,op,where,after", BACKGROUND_FAULTS, ids=[c[0] for c in BACKGROUND_FAULTS])
def test_background_io_error(tmp_path, case, op, where, after):
    path = str(tmp_path / "db")
    fs = FaultInjectingFileSystem()
    db = open_db(path, fs, sync="never", **SMALL)
    err = errno.ENOSPC if "ENOSPC" in case else errno.EIO
    model: dict[bytes, bytes] = {}
    rng = random.Random(5)
    try:
        _fill(db, model, rng, 40, sync=None)
        if case.startswith("compaction"):
            db.flush()                           # L0 = 1; the next flush reaches the trigger
        fs.inject(op, err, path_contains=where, count=1, after=after)
        # Fill the memtable until it rotates: the flush (and compaction) run
        # in the background. Each write is either acknowledged or refused.
        i = 0
        first_refusal = None
        while db.stats()["background_error"] is None:
            assert i < 5000, "the background error never surfaced"
            try:
                db.put(_k(i % 400), _v(i, 7))
            except IOFault as exc:
                first_refusal = exc
                break
            model[_k(i % 400)] = _v(i, 7)
            i += 1
            if db.stats()["immutable_memtables"] or i % 50 == 0:
                # the rotation happened: wait for the flush to fail (or finish)
                wait_until(lambda: db.stats()["background_error"] is not None
                           or not db.stats()["immutable_memtables"], 60, "the background flush")
        stats = db.stats()
        assert stats["background_error"] is not None
        if case.startswith("compaction"):
            assert stats["levels"][0]["files"] == 2, f"the compaction should have failed: {stats['levels']}"
        exc_type = DiskFull if err == errno.ENOSPC else IOFault
        if first_refusal is not None:
            assert isinstance(first_refusal, exc_type), repr(first_refusal)
        _refused(db, case, exc_type)
        with pytest.raises(exc_type):
            db.flush()
        _check_reads(db, model, {})
        db.verify()
    finally:
        db.close()
    _reopen_and_check(path, model, {})
    # The reopen cleaned up whatever the failed background job left behind.
    db = open_db(path, FaultInjectingFileSystem(), sync="never", **SMALL)
    try:
        live = {f.number for f in db._engine._sv.version.files()}
        on_disk = {p[1] for p in map(parse_name, os.listdir(path)) if p and p[0] == "table"}
        assert on_disk == live, f"orphan tables after reopen: {sorted(on_disk - live)}"
    finally:
        db.close()


@pytest.mark.parametrize("where", [".ldb", "MANIFEST"])
def test_a_full_disk_in_a_flush_is_retried(tmp_path, where):
    """ENOSPC while a flush writes its table (or the manifest edit naming
    it): the partial outputs are removed at once, the flush is tried again
    and succeeds once there is room, and writes never stop."""
    path = str(tmp_path / "db")
    fs = FaultInjectingFileSystem()
    db = open_db(path, fs, sync="never", **SMALL)
    model: dict[bytes, bytes] = {}
    rng = random.Random(6)
    try:
        _fill(db, model, rng, 40, sync=None)
        fs.inject("write", errno.ENOSPC, path_contains=where, count=2)
        i = 0
        while db.stats()["background_disk_full"] < 1:
            assert i < 5000, "the flush never met the full disk"
            db.put(_k(i % 400), _v(i, 8))
            model[_k(i % 400)] = _v(i, 8)
            i += 1
        wait_until(lambda: not db.stats()["immutable_memtables"], 60, "the retried flush")
        stats = db.stats()
        assert stats["background_error"] is None and stats["background_disk_full"] >= 1
        db.put(b"after", b"the full disk", sync=True)
        model[b"after"] = b"the full disk"
        db.flush()

        def strays() -> list[int]:
            live = {f.number for f in db._engine._sv.version.files()}
            return sorted({p[1] for p in map(parse_name, os.listdir(path)) if p and p[0] == "table"} - live)
        # A compaction may be writing its outputs right now: those become
        # live or go; a table the failed flush left would stay.
        wait_until(lambda: not strays(), 60, "no table but the live ones")
        _check_reads(db, model, {})
        db.verify()
    finally:
        db.close()
    _reopen_and_check(path, model, {})
