"""Restore points and rebuilding a shard from one (storage/restore.py)."""

from __future__ import annotations

import os

import pytest

from lightning_db.config import Config
from lightning_db.errors import CorruptionError
from lightning_db.storage import restore
from lightning_db.storage.engine import Engine
from lightning_db.storage.fs import OSFileSystem

CFG = Config(memtable_size=64 * 1024, restore_interval=3600)
FS = OSFileSystem()


def fill(e: Engine, lo: int, hi: int, tag: bytes = b"") -> dict[bytes, bytes]:
    out = {}
    for i in range(lo, hi):
        k, v = b"k%05d" % i, b"v%d" % i + tag + b"." * 30
        e.write([(1, k, v)])
        out[k] = v
    return out


def check(path: str, expect: dict[bytes, bytes], config: Config = CFG) -> None:
    e = Engine(path, config, restore_points=True)
    try:
        assert [k for k, v in expect.items() if e.get(k) != v] == []
        assert dict(e.scan(None, None)) == expect
    finally:
        e.close()


def tables(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".ldb"))


def test_point_plus_archived_wals_rebuild_every_write(tmp_path):
    path = str(tmp_path / "s")
    e = Engine(path, CFG, restore_points=True)
    expect = fill(e, 0, 2000)
    e.flush()
    expect.update(fill(e, 1000, 1500, b"b"))               # overwrites, in the live WAL
    assert e.stats()["restore_points"] == 1                 # the one taken at open
    archived = [n for n in os.listdir(os.path.join(path, "restore")) if n.endswith(".log")]
    assert len(archived) >= 2                               # retired WALs moved, not unlinked
    e.close()
    for t in tables(path):                                  # lose every table
        os.remove(os.path.join(path, t))
    info = restore.restore(FS, path, CFG.num_levels)
    assert info["live_wals"] >= 1
    check(path, expect)


def test_recovery_archives_the_wals_it_replayed(tmp_path):
    path = str(tmp_path / "s")
    e = Engine(path, CFG, restore_points=True)
    expect = fill(e, 0, 300)
    e.close()                        # no flush: the writes are only in the WAL
    e = Engine(path, CFG, restore_points=True)     # recovery replays it into a table
    e.close()
    for t in tables(path):
        os.remove(os.path.join(path, t))
    restore.restore(FS, path, CFG.num_levels)
    check(path, expect)


def test_point_copies_are_not_links_and_are_reused(tmp_path):
    path = str(tmp_path / "s")
    cfg = Config(memtable_size=64 * 1024, restore_interval=0.0001)
    e = Engine(path, cfg, restore_points=True)
    fill(e, 0, 1500)
    e.flush()
    before = e.stats()["restore_points"]
    fill(e, 1500, 1600)
    e.flush()
    assert e.stats()["restore_points"] > before
    point = os.path.join(path, "restore")
    for t in tables(path):
        copy = os.path.join(point, t)
        if os.path.exists(copy):
            assert not os.path.samefile(copy, os.path.join(path, t))
    e.close()


def _flip(path: str, offsets: range) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))


def test_a_damaged_live_table_never_becomes_the_points_copy(tmp_path):
    """Damage in place before the next point is taken: the point keeps its
    previous copies, the engine reports the live file (so a shard restores
    from the good point), and a restore from a point whose copy is damaged
    refuses rather than bring the damage back."""
    path = str(tmp_path / "s")
    cfg = Config(memtable_size=64 * 1024, restore_interval=3600)
    e = Engine(path, cfg, restore_points=True)
    try:
        fill(e, 0, 1500)
        e.flush()                                   # new tables; the point (taken at open) has none
        live = os.path.join(path, tables(path)[0])
        _flip(live, range(64, 4000, 97))
        point_before = sorted(os.listdir(os.path.join(path, "restore")))
        e._last_point = None                        # a point is due
        errors = e.stats()["restore_point_errors"]
        e._maybe_restore_point()
        assert e.stats()["restore_point_errors"] == errors + 1
        assert isinstance(e._bg_error, CorruptionError) and e._bg_error.path == live
        assert sorted(os.listdir(os.path.join(path, "restore"))) == point_before
    finally:
        e.close()
    # A point that holds a damaged copy (made before copies were checked): restore refuses.
    point = os.path.join(path, "restore")
    copy = os.path.join(point, os.path.basename(live))
    with open(live, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    manifest = [n for n in os.listdir(point) if n.startswith("MANIFEST")]
    assert manifest
    with pytest.raises(CorruptionError, match="is damaged"):
        restore.restore(FS, path, cfg.num_levels)
    assert not os.path.exists(path + ".restoring")


def test_no_point_is_a_corruption_error_and_changes_nothing(tmp_path):
    path = str(tmp_path / "s")
    e = Engine(path, CFG)                 # restore points off (the in-process default)
    fill(e, 0, 100)
    e.close()
    names = sorted(os.listdir(path))
    with pytest.raises(CorruptionError, match="no restore point"):
        restore.restore(FS, path, CFG.num_levels)
    assert sorted(os.listdir(path)) == names
    assert not os.path.exists(path + ".restoring")


@pytest.mark.parametrize("stage", ["built", "point_moved", "dir_moved"])
def test_an_interrupted_restore_is_finished_by_the_next_settle(tmp_path, stage):
    path = str(tmp_path / "s")
    e = Engine(path, CFG, restore_points=True)
    expect = fill(e, 0, 1500)
    e.flush()
    e.close()
    for t in tables(path):
        os.remove(os.path.join(path, t))
    # what restore() does before its final settle, stopped at *stage*
    work = path + ".restoring"
    os.makedirs(work)
    point = os.path.join(path, "restore")
    for n in os.listdir(point):
        with open(os.path.join(point, n), "rb") as src, open(os.path.join(work, n), "wb") as dst:
            dst.write(src.read())
    for n in os.listdir(path):
        if n.endswith(".log") and not os.path.exists(os.path.join(work, n)):
            with open(os.path.join(path, n), "rb") as src, open(os.path.join(work, n), "wb") as dst:
                dst.write(src.read())
    open(os.path.join(work, "COMPLETE"), "wb").close()
    if stage in ("point_moved", "dir_moved"):
        os.rename(point, os.path.join(work, "restore"))
    if stage == "dir_moved":
        os.rename(path, path + ".replaced")
    restore.settle(FS, path)
    assert not os.path.exists(work) and not os.path.exists(path + ".replaced")
    assert os.path.exists(os.path.join(path, "restore", "CURRENT"))
    check(path, expect)


def test_an_incomplete_restore_is_discarded(tmp_path):
    path = str(tmp_path / "s")
    e = Engine(path, CFG, restore_points=True)
    expect = fill(e, 0, 200)
    e.close()
    os.makedirs(path + ".restoring")
    open(os.path.join(path + ".restoring", "000001.log"), "wb").close()
    restore.settle(FS, path)
    assert not os.path.exists(path + ".restoring")
    check(path, expect)


def test_a_stalled_writer_does_not_deadlock_the_point(tmp_path):
    """Writers waiting for the background thread hold the write lock: the
    point is skipped for now, never waited for."""
    path = str(tmp_path / "s")
    cfg = Config(memtable_size=64 * 1024, restore_interval=0.0001, max_immutable_memtables=1,
                 write_stall_timeout_s=30)
    e = Engine(path, cfg, restore_points=True)
    expect = {}
    for i in range(0, 6000, 50):
        batch = [(1, b"k%05d" % j, b"y" * 200) for j in range(i, i + 50)]
        e.write(batch)
        expect.update((k, v) for _, k, v in batch)
    e.flush()
    assert e.stats()["restore_points"] >= 1 and e.stats()["restore_point_errors"] == 0
    e.close()
    check(path, expect, cfg)
