"""Engine behaviour that the public API does not show directly: group commit,
sync policies, compaction rules, recovery details."""

from __future__ import annotations

import os
import threading

import pytest

from lightning_db.config import Config
from lightning_db.storage.engine import Engine
from lightning_db.storage.faultfs import FaultInjectingFileSystem
from lightning_db.storage.format import Kind, parse_name

V, D = int(Kind.VALUE), int(Kind.DELETE)

SMALL = dict(memtable_size=64 * 1024, block_size=1024, target_file_size=16 * 1024,
             l0_compaction_trigger=2, max_bytes_for_level_base=64 * 1024)


def files(path: str, kind: str) -> list[int]:
    return sorted(p[1] for p in map(parse_name, os.listdir(path)) if p and p[0] == kind)


def test_group_commit_shares_fsyncs(tmp_path):
    fs = FaultInjectingFileSystem()
    syncs = []
    real = fs._sync

    def counting(f):
        syncs.append(f.path)
        real(f)
    fs._sync = counting
    eng = Engine(str(tmp_path), Config(sync="never"), fs=fs)
    barrier = threading.Barrier(8)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(50):
            eng.write([(V, b"t%d-%d" % (t, i), b"x")], sync=True)
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal_syncs = [p for p in syncs if p.endswith(".log")]
    # Every one of the 400 writes waited for an fsync covering it; with eight
    # writers at once, fsyncs are shared, and never more than one per write.
    assert 0 < len(wal_syncs) <= 400
    assert eng.get(b"t7-49") == b"x"
    eng.close()


def test_sync_policies(tmp_path):
    never = Engine(str(tmp_path / "never"), Config(sync="never"))
    never.write([(V, b"k", b"v")])
    assert never.stats()["wal_syncs"] == 0
    never.close()
    always = Engine(str(tmp_path / "always"), Config(sync="always"))
    always.write([(V, b"k", b"v")])
    assert always._sv.wal.synced_size == always._sv.wal.size
    always.close()
    interval = Engine(str(tmp_path / "interval"), Config(sync="interval", sync_interval_ms=10))
    interval.write([(V, b"k", b"v")])
    wal = interval._sv.wal
    done = threading.Event()
    for _ in range(1000):                       # generous: up to ~10 s on a loaded box
        if wal.synced_size == wal.size:
            done.set()
            break
        threading.Event().wait(0.01)
    assert done.is_set(), "the interval syncer never synced the WAL"
    interval.close()


def test_flush_and_recovery_remove_old_wals(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    for i in range(3000):
        eng.write([(V, b"%06d" % i, b"v" * 50)])
    eng.flush()
    live = eng._sv.wal.number
    assert files(str(tmp_path), "wal") == [live]
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert files(str(tmp_path), "wal") == [eng._sv.wal.number]
    assert len(files(str(tmp_path), "manifest")) == 1
    assert eng.get(b"002999") == b"v" * 50
    eng.close()


def test_sequential_load_moves_files_instead_of_rewriting(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    for i in range(0, 20000, 100):
        eng.write([(V, b"%08d" % j, b"v" * 40) for j in range(i, i + 100)])
    eng.flush()
    eng.compact()
    s = eng.stats()
    assert s["trivial_moves"] > 0
    assert eng.get(b"00012345") == b"v" * 40
    eng.close()


def test_tombstones_survive_until_bottom_and_snapshots_pin_versions(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    eng.write([(V, b"key", b"old")])
    eng.flush()
    eng.compact()                               # b"key" -> bottom level
    snap = eng.acquire_snapshot()
    eng.write([(V, b"key", b"new")])
    eng.write([(D, b"gone", b"")])
    eng.flush()
    eng.compact()
    assert eng.get(b"key") == b"new"
    assert eng.get(b"key", snap) == b"old"      # the snapshot kept the old version
    eng.release_snapshot(snap)
    eng.write([(D, b"key", b"")])
    eng.flush()
    eng.compact()
    assert eng.get(b"key") is None
    s = eng.stats()
    assert s["tombstones"] == 0 and s["table_entries"] == 0
    eng.close()


def test_flush_keeps_only_newest_versions_unless_a_snapshot_needs_older(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    for r in range(3):                          # every key three times in one memtable
        eng.write([(V, b"k%03d" % i, b"v%d" % r) for i in range(50)])
    snap = eng.acquire_snapshot()
    eng.write([(V, b"k%03d" % i, b"w") for i in range(0, 50, 2)])
    eng.flush()                                 # the snapshot needs the v2s of the rewritten keys
    kept = eng.stats()
    assert kept["table_entries"] == 75          # 25 w + 25 of their v2s + 25 v2s
    assert eng.get(b"k000", snap) == b"v2" and eng.get(b"k000") == b"w"
    eng.release_snapshot(snap)
    for r in range(3):
        eng.write([(V, b"k%03d" % i, b"x%d" % r) for i in range(50)])
    eng.flush()                                 # no snapshot: each key's newest version only
    s = eng.stats()
    assert s["table_entries"] == 75 + 50
    assert [eng.get(b"k%03d" % i) for i in range(50)] == [b"x2"] * 50
    eng.close()


def test_value_larger_than_memtable(tmp_path):
    eng = Engine(str(tmp_path), Config(memtable_size=64 * 1024))
    big = os.urandom(1 << 20)
    eng.write([(V, b"small", b"x")])
    eng.write([(V, b"big", big)])
    assert eng.get(b"big") == big
    eng.close()
    eng = Engine(str(tmp_path), Config(memtable_size=64 * 1024))
    assert eng.get(b"big") == big and eng.get(b"small") == b"x"
    eng.close()


def test_torn_wal_tail_is_cut_not_replayed(tmp_path):
    eng = Engine(str(tmp_path), Config(sync="never"))
    eng.write([(V, b"a", b"1")])
    eng.write([(V, b"b", b"2")])
    wal_path = eng._sv.wal.log.path
    eng.close()
    size = os.path.getsize(wal_path)
    with open(wal_path, "r+b") as f:
        f.truncate(size - 3)                    # tear the last record
    eng = Engine(str(tmp_path), Config())
    assert eng.get(b"a") == b"1" and eng.get(b"b") is None
    eng.close()


def test_scan_merges_all_sources(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    model = {}
    for round_ in range(6):
        for i in range(0, 400, round_ + 1):
            k = b"%04d" % i
            if (i + round_) % 7 == 0:
                eng.write([(D, k, b"")])
                model.pop(k, None)
            else:
                v = b"%d-%d" % (round_, i)
                eng.write([(V, k, v)])
                model[k] = v
        if round_ % 2:
            eng.flush()
    expect = sorted(model.items())
    assert list(eng.scan(None, None)) == expect
    assert list(eng.scan(None, None, reverse=True)) == expect[::-1]
    assert list(eng.scan(b"0100", b"0200")) == [kv for kv in expect if b"0100" <= kv[0] < b"0200"]
    eng.close()


def test_write_stall_times_out_when_background_falls_behind(tmp_path):
    from lightning_db.errors import WriteStalled
    eng = Engine(str(tmp_path), Config(memtable_size=64 * 1024, max_immutable_memtables=1,
                                       write_stall_timeout_s=0.5))
    blocker = threading.Event()
    eng._flush_one = lambda imm: blocker.wait()      # the background thread cannot flush
    try:
        with pytest.raises(WriteStalled, match="write_stall_timeout_s"):
            for i in range(10000):
                eng.write([(V, b"%06d" % i, b"v" * 100)])
        assert eng.stats()["immutable_memtables"] == 1
    finally:
        del eng._flush_one
        blocker.set()
    eng.flush()
    assert eng.get(b"000000") == b"v" * 100
    eng.close()


def test_unexpected_background_failure_is_classified(tmp_path):
    from lightning_db.errors import BackgroundError, CriticalError
    eng = Engine(str(tmp_path), Config())
    eng._bg_error = RuntimeError("simulated background failure")
    with pytest.raises(BackgroundError, match="simulated") as info:
        eng.write([(V, b"k", b"v")])
    assert isinstance(info.value, CriticalError)
    assert eng.get(b"k") is None                     # nothing was written
    eng._bg_error = None
    eng.close()


def test_deferred_syncs_wait_for_finish_and_share_one_fsync(tmp_path):
    """A shard worker defers its thread's syncs over one receive
    (``defer_syncs``) and makes them durable with one fsync per WAL
    (``finish_syncs``) before it answers; other threads sync as before."""
    import errno

    fs = FaultInjectingFileSystem()
    syncs = []
    real = fs._sync

    def counting(f):
        if f.path.endswith(".log"):                       # the WAL's (not the manifest's)
            syncs.append(f.path)
        real(f)
    fs._sync = counting
    eng = Engine(str(tmp_path), Config(sync="never"), fs=fs)
    wal = eng._sv.wal
    eng.defer_syncs()
    eng.write([(V, b"a", b"1")], sync=True)
    eng.write([(V, b"b", b"2")], sync=True)
    eng.sync_wal()
    assert eng.deferred_syncs() == 3 and syncs == []
    assert wal.log.synced_size < wal.log.size               # written, not durable yet
    other = threading.Thread(target=lambda: eng.write([(V, b"c", b"3")], sync=True))
    other.start()
    other.join()
    assert len(syncs) == 1                                 # another thread's sync is not deferred
    eng.write([(V, b"d", b"4")], sync=True)
    assert eng.finish_syncs() is None
    assert len(syncs) == 2 and wal.log.synced_size == wal.log.size
    assert eng.deferred_syncs() == 0
    eng.write([(V, b"e", b"5")], sync=True)                # no longer deferred
    assert len(syncs) == 3
    # A failed fsync is the answer of the deferred writes: returned, and
    # the engine refuses writes after it, as after any failed sync.
    eng.defer_syncs()
    eng.write([(V, b"f", b"6")], sync=True)
    fs.inject("sync", errno.EIO, ".log")
    failed = eng.finish_syncs()
    assert failed is not None and "fsync" in str(failed)
    with pytest.raises(type(failed)):
        eng.write([(V, b"g", b"7")])
    eng.close()


def test_deferred_syncs_of_an_engine_closed_meanwhile(tmp_path):
    """A shard closed (stopped, or replaced by a restore) while its writes'
    syncs were deferred: their answer is success only if the close made
    them durable."""
    import errno

    from lightning_db.errors import LightningError

    fs = FaultInjectingFileSystem()
    eng = Engine(str(tmp_path / "a"), Config(sync="never"), fs=fs)
    eng.defer_syncs()
    eng.write([(V, b"a", b"1")], sync=True)
    eng.close()
    assert eng.finish_syncs() is None               # the close synced the WAL
    eng = Engine(str(tmp_path / "b"), Config(sync="never"), fs=fs)
    eng.defer_syncs()
    eng.write([(V, b"a", b"1")], sync=True)
    fs.inject("sync", errno.EIO, ".log", count=10)
    try:
        eng.close()
    except LightningError:
        pass                                        # the close met the failed fsync
    assert isinstance(eng.finish_syncs(), LightningError)
