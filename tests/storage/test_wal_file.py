"""A WAL's file allocated ahead of its records (fs.WritableFile's reserve),
and what a crash leaves of it (log.read_log, recovery)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from lightning_db.config import Config
from lightning_db.errors import CorruptionError
from lightning_db.storage import fs as fs_module
from lightning_db.storage.engine import Engine
from lightning_db.storage.format import LOG_FILE_HEADER, LOG_FRAME, WAL_MAGIC, Kind
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.log import LogWriter, encode_frame, read_log
from lightning_db.storage.wal import WAL_RESERVE

FS = OSFileSystem()
RESERVE = 64 * 1024


def test_a_reserved_file_is_allocated_ahead_and_cut_back_on_close(tmp_path):
    path = str(tmp_path / "f")
    f = FS.create(path, RESERVE)
    f.write(b"x" * 1000)
    assert f.size == 1000 and os.path.getsize(path) == 1000 + RESERVE      # allocated ahead
    f.write(b"y" * (RESERVE + 5000))                                       # past the reserve: more
    assert f.size == RESERVE + 6000 and os.path.getsize(path) >= f.size + RESERVE
    f.close()
    with open(path, "rb") as g:
        assert g.read() == b"x" * 1000 + b"y" * (RESERVE + 5000)       # nothing but what was written


def test_a_reserved_file_syncs_its_data_a_plain_one_its_metadata_too(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fs_module.os, "fdatasync", lambda fd: calls.append("fdatasync"))
    monkeypatch.setattr(fs_module.os, "fsync", lambda fd: calls.append("fsync"))
    reserved, plain = FS.create(str(tmp_path / "r"), RESERVE), FS.create(str(tmp_path / "p"))
    for f in (reserved, plain):
        f.write(b"data")
        f.sync()
        f.close()
    assert calls == ["fdatasync", "fsync"]


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSPC])
def test_a_file_system_that_cannot_allocate_leaves_plain_appends(tmp_path, monkeypatch, err):
    def refuse(fd, offset, length):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(fs_module.os, "posix_fallocate", refuse)
    path = str(tmp_path / "f")
    f = FS.create(path, RESERVE)
    f.write(b"abc")
    f.write(b"def")
    assert f.reserve == 0 and f.size == os.path.getsize(path) == 6
    f.close()
    with open(path, "rb") as g:
        assert g.read() == b"abcdef"


def test_a_rollback_gives_the_reserve_back_and_appends_go_on(tmp_path):
    path = str(tmp_path / "f")
    f = FS.create(path, RESERVE)
    f.write(b"a" * 100)
    f.rollback(40)                      # a write that failed part way is cut back off
    assert f.size == os.path.getsize(path) == 40
    f.write(b"b" * 10)
    assert os.path.getsize(path) == 50 + RESERVE
    f.close()
    with open(path, "rb") as g:
        assert g.read() == b"a" * 40 + b"b" * 10


def _log(tmp_path, records: list[bytes]) -> tuple[str, LogWriter]:
    path = str(tmp_path / "000007.log")
    w = LogWriter(FS, path, WAL_MAGIC, RESERVE)
    for r in records:
        w.add(r)
    return path, w


def test_a_log_a_crash_left_longer_ends_where_its_records_end(tmp_path):
    records = [b"first", b"second" * 50, b"third"]
    path, w = _log(tmp_path, records)
    size = w.size                                  # not closed: as a killed process leaves it
    got = read_log(FS, path, WAL_MAGIC)
    assert got.records == records and got.good_size == size and got.file_size > size + RESERVE // 2
    w.close()


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 20])
def test_a_frame_torn_by_a_crash_before_the_zeros_is_the_end(tmp_path, cut):
    path, w = _log(tmp_path, [b"kept"])
    size = w.size
    frame = encode_frame(b"torn" * 10)
    with open(path, "r+b") as f:                   # part of the next frame reached the disk
        f.seek(size)
        f.write(frame[:cut])
    got = read_log(FS, path, WAL_MAGIC)
    assert got.records == [b"kept"] and got.good_size == size
    w.close()


def test_damage_with_records_behind_it_is_still_corruption(tmp_path):
    path, w = _log(tmp_path, [b"one", b"two", b"three"])
    start = LOG_FILE_HEADER.size + LOG_FRAME.size + len(b"one")     # the second frame's header
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff")
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        read_log(FS, path, WAL_MAGIC)
    w.close()


def test_an_engine_recovers_a_wal_left_longer_and_cuts_it_back(tmp_path):
    live, crashed = str(tmp_path / "live"), str(tmp_path / "crashed")
    eng = Engine(live, Config(sync="never"))
    try:
        for i in range(200):
            eng.write([(int(Kind.VALUE), b"k%03d" % i, b"v%d" % i)], False)
        wal = eng._sv.wal.log.path
        assert os.path.getsize(wal) > eng._sv.wal.size + WAL_RESERVE // 2    # allocated ahead
        shutil.copytree(live, crashed)             # the files as a kill -9 now would leave them
    finally:
        eng.close()
    again = Engine(crashed, Config(sync="never"))
    try:
        assert [again.get(b"k%03d" % i) for i in range(200)] == [b"v%d" % i for i in range(200)]
    finally:
        again.close()
