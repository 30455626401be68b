"""Tests for the fault-injecting filesystem used by the storage tests."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
from hypothesis import given, settings, strategies as st

from lightning_db.errors import DatabaseLocked, DiskFull, IOFault
from lightning_db.storage.faultfs import TRASH_PREFIX, FaultInjectingFileSystem, SimulatedCrash
from lightning_db.storage.fs import OSFileSystem


def _durable_file(fs: FaultInjectingFileSystem, path: str, data: bytes) -> None:
    fs.write_file(path, data)
    fs.sync_dir(os.path.dirname(path))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- file data ----------------------------------------------------------------


def test_unsynced_data_lost_synced_kept(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "wal")
    f = fs.create(p)
    fs.sync_dir(str(tmp_path))
    f.write(b"durable")
    f.sync()
    f.write(b"-lost")
    assert fs.synced_size(p) == 7
    assert _read(p) == b"durable-lost"      # the OS has it, the disk does not
    fs.power_loss()
    assert _read(p) == b"durable"
    assert f.closed


def test_torn_power_loss_keeps_prefix_of_unsynced_tail(tmp_path):
    sizes = set()
    for seed in range(30):
        d = tmp_path / str(seed)
        d.mkdir()
        fs = FaultInjectingFileSystem()
        p = str(d / "wal")
        f = fs.create(p)
        fs.sync_dir(str(d))
        f.write(b"A" * 10)
        f.sync()
        f.write(b"0123456789")
        fs.power_loss(random.Random(seed), torn=True)
        data = _read(p)
        assert (b"A" * 10 + b"0123456789").startswith(data) and len(data) >= 10
        sizes.add(len(data))
    assert len(sizes) > 3          # the cut really is random


def test_torn_false_ignores_rng(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "f")
    f = fs.create(p)
    fs.sync_dir(str(tmp_path))
    f.write(b"x" * 100)
    fs.power_loss(random.Random(1), torn=False)
    assert _read(p) == b""


def test_truncate_is_durable(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "f")
    f = fs.create(p)
    fs.sync_dir(str(tmp_path))
    f.write(b"0123456789")
    fs.truncate(p, 4)
    assert fs.synced_size(p) == 4
    f.write(b"zz")
    fs.power_loss()
    assert _read(p) == b"0123"


def test_recreate_without_sync_loses_old_content(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "f")
    _durable_file(fs, p, b"old")
    f = fs.create(p)             # O_TRUNC: not a directory operation
    f.write(b"new")
    assert fs.pending_dir_ops(str(tmp_path)) == []
    fs.power_loss()
    assert _read(p) == b""


# --- directory entries -----------------------------------------------------------


def test_create_without_dir_sync_vanishes(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "sst")
    fs.write_file(p, b"synced data")          # data fsynced, entry not
    assert fs.pending_dir_ops(str(tmp_path)) == [("create", p)]
    fs.power_loss()
    assert not os.path.exists(p)


def test_create_with_dir_sync_survives(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "sst")
    _durable_file(fs, p, b"synced data")
    assert fs.pending_dir_ops(str(tmp_path)) == []
    fs.power_loss()
    assert _read(p) == b"synced data"


def test_rename_without_dir_sync_reverts_and_restores_destination(tmp_path):
    fs = FaultInjectingFileSystem()
    cur, tmp = str(tmp_path / "CURRENT"), str(tmp_path / "CURRENT.tmp")
    _durable_file(fs, cur, b"manifest-1")
    _durable_file(fs, tmp, b"manifest-2")
    fs.rename(tmp, cur)
    assert _read(cur) == b"manifest-2"
    assert sorted(fs.listdir(str(tmp_path))) == ["CURRENT"]
    assert fs.pending_dir_ops(str(tmp_path)) == [("rename", tmp, cur)]
    fs.power_loss()
    assert _read(cur) == b"manifest-1"
    assert _read(tmp) == b"manifest-2"
    assert sorted(os.listdir(tmp_path)) == ["CURRENT", "CURRENT.tmp"]


def test_rename_with_dir_sync_is_durable_and_trash_deleted(tmp_path):
    fs = FaultInjectingFileSystem()
    cur, tmp = str(tmp_path / "CURRENT"), str(tmp_path / "CURRENT.tmp")
    _durable_file(fs, cur, b"manifest-1")
    _durable_file(fs, tmp, b"manifest-2")
    fs.rename(tmp, cur)
    fs.sync_dir(str(tmp_path))
    assert os.listdir(tmp_path) == ["CURRENT"]          # no trash left on disk
    fs.power_loss()
    assert _read(cur) == b"manifest-2"
    assert os.listdir(tmp_path) == ["CURRENT"]


def test_undo_runs_in_reverse_order(tmp_path):
    fs = FaultInjectingFileSystem()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fs.write_file(a, b"data")                 # create a (pending)
    fs.rename(a, b)                           # a -> b (pending)
    fs.remove(b)                              # remove b (pending)
    fs.power_loss()
    assert os.listdir(tmp_path) == []


def test_remove_without_dir_sync_comes_back(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "old.sst")
    _durable_file(fs, p, b"table")
    fs.remove(p)
    assert not fs.exists(p)
    assert fs.listdir(str(tmp_path)) == []
    assert any(n.startswith(TRASH_PREFIX) for n in os.listdir(tmp_path))   # hidden trash
    fs.power_loss()
    assert _read(p) == b"table"
    assert os.listdir(tmp_path) == ["old.sst"]


def test_remove_after_dir_sync_is_gone(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "old.sst")
    _durable_file(fs, p, b"table")
    fs.remove(p)
    fs.sync_dir(str(tmp_path))
    assert os.listdir(tmp_path) == []
    fs.power_loss()
    assert os.listdir(tmp_path) == []


def test_remove_missing_raises_file_not_found(tmp_path):
    fs = FaultInjectingFileSystem()
    with pytest.raises(FileNotFoundError):
        fs.remove(str(tmp_path / "nope"))


def test_link_without_dir_sync_vanishes(tmp_path):
    fs = FaultInjectingFileSystem()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _durable_file(fs, a, b"x")
    fs.link(a, b)
    assert fs.pending_dir_ops(str(tmp_path)) == [("link", b)]
    fs.power_loss()
    assert os.listdir(tmp_path) == ["a"]


def test_listdir_hides_trash(tmp_path):
    fs = FaultInjectingFileSystem()
    for name in ("a", "b", "c"):
        _durable_file(fs, str(tmp_path / name), name.encode())
    fs.remove(str(tmp_path / "a"))
    fs.rename(str(tmp_path / "b"), str(tmp_path / "c"))
    assert len(os.listdir(tmp_path)) == 3               # c plus two trash files
    assert fs.listdir(str(tmp_path)) == ["c"]


def test_pending_ops_are_per_directory(tmp_path):
    fs = FaultInjectingFileSystem()
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    fs.makedirs(str(d1))
    fs.makedirs(str(d2))
    fs.write_file(str(d1 / "x"), b"1")
    fs.write_file(str(d2 / "y"), b"2")
    fs.sync_dir(str(d1))
    assert fs.pending_dir_ops(str(d1)) == []
    assert fs.pending_dir_ops(str(d2)) == [("create", str(d2 / "y"))]
    fs.power_loss()
    assert os.listdir(d1) == ["x"] and os.listdir(d2) == []


# --- crash points -------------------------------------------------------------------


def test_crash_at_raises_and_everything_after_raises(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "wal")
    f = fs.create(p)                                    # op 1
    fs.sync_dir(str(tmp_path))                          # op 2
    f.write(b"abc")                                     # op 3
    assert fs.ops == 3
    fs.crash_at = 5
    f.sync()                                            # op 4
    with pytest.raises(SimulatedCrash):
        f.write(b"never")                               # op 5: does not happen
    assert _read(p) == b"abc"
    assert not issubclass(SimulatedCrash, Exception)
    for call in (lambda: f.write(b"x"), f.sync, lambda: fs.exists(p),
                 lambda: fs.listdir(str(tmp_path)), lambda: fs.read_file(p),
                 lambda: fs.open_readable(p), lambda: fs.create(p + "2"),
                 lambda: fs.sync_dir(str(tmp_path)), lambda: fs.file_size(p),
                 lambda: fs.lock(str(tmp_path / "LOCK"))):
        with pytest.raises(SimulatedCrash):
            call()
    caught = []

    def other_thread():
        try:
            fs.exists(p)
        except SimulatedCrash as exc:
            caught.append(exc)
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(caught) == 1
    f.close()                                           # closing never raises
    fs.power_loss()
    with pytest.raises(SimulatedCrash):                 # unusable after power loss
        fs.exists(p)
    fs.power_loss()                                     # idempotent
    assert OSFileSystem().read_file(p) == b"abc"


def test_crash_at_in_constructor_and_operation_not_done(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fs = FaultInjectingFileSystem(crash_at=3)
    with pytest.raises(SimulatedCrash):
        fs.write_file(a, b"data")          # create is op 1, write 2, sync 3
    assert fs.ops == 3 and fs.synced_size(a) == 0
    fs.power_loss()
    assert not os.path.exists(a)            # never synced, entry never synced
    OSFileSystem().write_file(a, b"data")
    fs = FaultInjectingFileSystem(crash_at=1)
    with pytest.raises(SimulatedCrash):
        fs.rename(a, b)
    assert os.path.exists(a) and not os.path.exists(b)
    fs.power_loss()
    assert _read(a) == b"data"              # files it never touched are left alone


def test_torn_write_at_crash_writes_strict_prefix(tmp_path):
    fs = FaultInjectingFileSystem(torn_write_at_crash=True, rng=7)
    p = str(tmp_path / "wal")
    f = fs.create(p)
    fs.crash_at = fs.ops + 1
    with pytest.raises(SimulatedCrash):
        f.write(b"0123456789")
    data = _read(p)
    assert 0 < len(data) < 10 and b"0123456789".startswith(data)


def test_ops_counter_is_thread_safe(tmp_path):
    fs = FaultInjectingFileSystem()
    files = [fs.create(str(tmp_path / f"f{i}")) for i in range(8)]
    start = fs.ops

    def writer(f):
        for _ in range(200):
            f.write(b"x")
    threads = [threading.Thread(target=writer, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fs.ops == start + 8 * 200


def test_crash_from_another_thread_stops_all_threads(tmp_path):
    fs = FaultInjectingFileSystem()
    f = fs.create(str(tmp_path / "f"))
    fs.crash_at = fs.ops + 50
    crashed = []

    def writer():
        try:
            while True:
                f.write(b"x")
        except SimulatedCrash:
            crashed.append(1)
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(crashed) == 4
    assert os.path.getsize(tmp_path / "f") == 49


# --- power loss releases resources -----------------------------------------------------


def test_power_loss_releases_lock_and_handles(tmp_path):
    fs = FaultInjectingFileSystem()
    lock_path = str(tmp_path / "LOCK")
    fs.lock(lock_path)
    with pytest.raises(DatabaseLocked):
        OSFileSystem().lock(lock_path)
    p = str(tmp_path / "data")
    _durable_file(fs, p, b"hello")
    r = fs.open_readable(p)
    assert r.read(0, 5) == b"hello"
    seg = fs.map_segment(str(tmp_path / "seg"), 4096)
    seg[:3] = b"abc"
    w = fs.create(str(tmp_path / "w"))
    fs.power_loss()
    assert seg.closed and w.closed
    lk = OSFileSystem().lock(lock_path)
    lk.release()
    fs2 = FaultInjectingFileSystem()
    fs2.lock(lock_path).release()
    assert fs2.read_file(p) == b"hello"


# --- error injection ---------------------------------------------------------------------


def test_eio_on_sync_raises_iofault_and_keeps_synced_size(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "wal")
    f = fs.create(p)
    f.write(b"abc")
    f.sync()
    f.write(b"def")
    fs.inject("sync", errno.EIO)
    with pytest.raises(IOFault) as ei:
        f.sync()
    assert not isinstance(ei.value, DiskFull)
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.EIO
    assert fs.synced_size(p) == 3
    f.sync()                                   # count=1: the next one works
    assert fs.synced_size(p) == 6


def test_enospc_on_write_raises_diskfull_and_writes_nothing(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "wal")
    f = fs.create(p)
    fs.inject("write", errno.ENOSPC)
    with pytest.raises(DiskFull):
        f.write(b"abc")
    assert f.size == 0 and os.path.getsize(p) == 0
    fs.inject("write", errno.EDQUOT)
    with pytest.raises(DiskFull):
        f.write(b"abc")


def test_inject_path_after_count_and_wildcard(tmp_path):
    fs = FaultInjectingFileSystem()
    fs.inject("create", errno.EIO, path_contains=".sst", count=2, after=1)
    fs.create(str(tmp_path / "a.log")).close()          # path does not match
    fs.create(str(tmp_path / "1.sst")).close()          # skipped (after=1)
    for name in ("2.sst", "3.sst"):
        with pytest.raises(IOFault):
            fs.create(str(tmp_path / name))
        assert not os.path.exists(tmp_path / name)
    fs.create(str(tmp_path / "4.sst")).close()          # count exhausted
    fs.inject("*", errno.EIO, path_contains="x", count=100)
    with pytest.raises(IOFault):
        fs.rename(str(tmp_path / "a.log"), str(tmp_path / "x.log"))
    assert fs.exists(str(tmp_path / "a.log"))            # reads are not hit by '*'
    fs.clear_faults()
    fs.rename(str(tmp_path / "a.log"), str(tmp_path / "x.log"))
    fs.inject("remove", errno.ENOENT)
    with pytest.raises(FileNotFoundError):
        fs.remove(str(tmp_path / "x.log"))
    fs.inject("read", errno.EIO)
    with pytest.raises(IOFault):
        fs.read_file(str(tmp_path / "x.log"))
    with pytest.raises(ValueError):
        fs.inject("frobnicate", errno.EIO)


def test_failed_sync_dir_keeps_ops_pending(tmp_path):
    fs = FaultInjectingFileSystem()
    p = str(tmp_path / "f")
    fs.write_file(p, b"x")
    fs.inject("sync_dir", errno.EIO)
    with pytest.raises(IOFault):
        fs.sync_dir(str(tmp_path))
    assert fs.pending_dir_ops(str(tmp_path)) == [("create", p)]
    fs.power_loss()
    assert not os.path.exists(p)


# --- property: what survives is a prefix, at least the synced part ---------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=20), st.just(None)), max_size=15),
       st.integers(0, 2**32))
def test_power_loss_leaves_prefix_at_least_synced(tmp_path_factory, steps, seed):
    d = tmp_path_factory.mktemp("prop")
    fs = FaultInjectingFileSystem()
    p = str(d / "wal")
    f = fs.create(p)
    fs.sync_dir(str(d))
    written, synced = b"", 0
    for step in steps:
        if step is None:
            f.sync()
            synced = len(written)
        else:
            f.write(step)
            written += step
    fs.power_loss(random.Random(seed))
    data = _read(p)
    assert written.startswith(data) and len(data) >= synced
