"""quarantine() moves a file aside with its bytes intact, writes a note,
syncs both directories and never overwrites or deletes."""

from __future__ import annotations

import importlib
import json
import os

import pytest

from lightning_db.errors import CorruptionError, InvalidArgument
from lightning_db.supervisor import list_quarantined, quarantine

T = 1714564800.123456          # 2024-05-01T12:00:00.123456Z

# the package re-exports the function under the module's name
quarantine_mod = importlib.import_module("lightning_db.supervisor.quarantine")


def test_quarantine_keeps_the_bytes_and_writes_a_note(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = data / "000012.ldb"
    payload = os.urandom(4096)
    table.write_bytes(payload)
    reason = CorruptionError("block checksum mismatch", path=str(table))
    new = quarantine(table, data / "quarantine", reason, clock=lambda: T)
    assert not table.exists()
    assert new == data / "quarantine" / "20240501T120000.123456Z-000012.ldb"
    assert new.read_bytes() == payload
    note = json.loads((new.parent / (new.name + ".note.json")).read_text())
    assert note["original_path"] == str(table.resolve())
    assert note["quarantined_path"] == str(new)
    assert note["reason"] == str(reason) and note["reason_type"] == "CorruptionError"
    assert note["size"] == 4096 and note["time"] == "20240501T120000.123456Z" and note["unix_time"] == T
    [entry] = list_quarantined(data / "quarantine")
    assert entry.path == new and entry.note == note


def test_the_same_file_twice_in_one_microsecond_gets_two_names(tmp_path):
    qdir = tmp_path / "quarantine"
    first = tmp_path / "MANIFEST-000003"
    first.write_bytes(b"one")
    a = quarantine(first, qdir, "bad", clock=lambda: T)
    first.write_bytes(b"two")
    b = quarantine(first, qdir, "worse", clock=lambda: T)
    assert a != b and a.read_bytes() == b"one" and b.read_bytes() == b"two"
    assert b.name == "20240501T120000.123456Z.001-MANIFEST-000003"
    assert [(q.path.read_bytes(), q.note["reason"]) for q in list_quarantined(qdir)] == \
        [(b"one", "bad"), (b"two", "worse")]
    assert len(os.listdir(qdir)) == 4              # two files, two notes


def test_both_directories_are_synced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(quarantine_mod, "_fsync_dir", lambda p: synced.append(os.fspath(p)))
    src = tmp_path / "db" / "000007.log"
    src.parent.mkdir()
    src.write_bytes(b"wal")
    qdir = tmp_path / "db" / "quarantine"
    quarantine(src, qdir, "torn", clock=lambda: T)
    # the new folder's entry, then the new name, then the old name's removal
    assert synced == [str(tmp_path / "db"), str(qdir), str(tmp_path / "db")]


def test_what_cannot_be_quarantined(tmp_path):
    with pytest.raises(InvalidArgument, match="no such file"):
        quarantine(tmp_path / "missing", tmp_path / "q", "x")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        quarantine(tmp_path, tmp_path / "q", "x")
    assert not (tmp_path / "q").exists()


def test_listing(tmp_path):
    assert list_quarantined(tmp_path / "nothing") == []
    (tmp_path / "20240101T000000.000000Z-x.ldb").write_bytes(b"x")     # its note was lost in a crash
    (tmp_path / "20240101T000000.000001Z-y.ldb").write_bytes(b"y")
    (tmp_path / "20240101T000000.000001Z-y.ldb.note.json").write_text("{not json")
    rows = list_quarantined(tmp_path)
    assert [(r.path.name, r.note) for r in rows] == [("20240101T000000.000000Z-x.ldb", None),
                                                     ("20240101T000000.000001Z-y.ldb", None)]
