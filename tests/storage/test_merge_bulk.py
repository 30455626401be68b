"""A compaction's bulk merge (storage/merge_bulk.py) against the record-by-record merge."""

from __future__ import annotations

import errno
import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lightning_db.config import Config
from lightning_db.errors import DiskFull
from lightning_db.storage import merge_bulk
from lightning_db.storage.compaction import merge_internal, write_tables
from lightning_db.storage.faultfs import FaultInjectingFileSystem
from lightning_db.storage.format import Kind, pack_seqkind
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.merge_bulk import bulk_merge, plain_inputs
from lightning_db.storage.outputs import TableOutputs
from lightning_db.storage.table import TableReader, TableWriter

FS = OSFileSystem()
V, D, T = int(Kind.VALUE), int(Kind.DELETE), int(Kind.VALUE_TTL)


def _table(path: str, rows: list[tuple[bytes, int, int, bytes]], number: int) -> TableReader:
    """A table of (key, seq, kind, value) rows, written in internal order."""
    w = TableWriter(FS, path, Config(block_size=256))
    for key, seq, kind, value in sorted(rows, key=lambda r: (r[0], -r[1])):
        w.add(key, pack_seqkind(seq, kind), value)
    w.finish()
    return TableReader.open(FS, path, number, None)


def _records(metas: list, d: str) -> list[tuple[bytes, int, bytes]]:
    out = []
    for m in metas:
        r = TableReader.open(FS, os.path.join(d, f"{m.number:06d}.ldb"), m.number, None)
        try:
            out += [(k, sk, bytes(v)) for k, sk, v in r.iter_internal()]
        finally:
            r.close()
    return out


def _numbers(start: int):
    it = itertools.count(start)
    return lambda: next(it)


table_st = st.dictionaries(st.binary(min_size=1, max_size=3), st.tuples(st.sampled_from([V, V, D]),
                                                                          st.binary(max_size=40)),
                           max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=st.lists(table_st, min_size=1, max_size=5), base=st.sampled_from([b"", b"\x80", b"\xff"]),
       target=st.sampled_from([200, 1000, 1 << 20]), chunk=st.sampled_from([1, 2, 32]))
def test_bulk_merge_writes_what_the_record_merge_writes(tmp_path_factory, tables, base, target, chunk):
    d = str(tmp_path_factory.mktemp("m"))
    readers, seq = [], 1
    for i, t in enumerate(tables):                  # each table newer than the one before
        rows = []
        for key, (kind, value) in t.items():
            rows.append((key, seq, kind, b"" if kind == D else value))
            seq += 1
        readers.append(_table(os.path.join(d, f"in{i}.ldb"), rows, 900 + i))
    readers = readers[::-1][:1] + readers[:-1]      # input order does not matter

    def is_base(key: bytes) -> bool:                # no deeper level holds keys at or above *base*
        return key >= base

    cfg = Config(block_size=256, target_file_size=target)
    old_chunk = merge_bulk.CHUNK_BLOCKS
    merge_bulk.CHUNK_BLOCKS = chunk
    try:
        assert plain_inputs(readers, seq) == readers
        got, got_counts = bulk_merge(readers, is_base, TableOutputs(FS, d, cfg, _numbers(1)))
        want, want_counts = write_tables(FS, d, cfg, merge_internal([r.iter_internal() for r in readers]), seq,
                                         is_base, _numbers(500), cut=True)
    finally:
        merge_bulk.CHUNK_BLOCKS = old_chunk
        for r in readers:
            r.close()
    assert _records(got, d) == _records(want, d)
    assert {k: got_counts[k] for k in ("read", "dropped", "written")} == \
        {k: want_counts[k] for k in ("read", "dropped", "written")}
    # Cut where the record path cuts (near the target, between keys). A
    # bound on file sizes would not do: a small table's index, filter and
    # point index can outweigh its records.
    keys = [(m.smallest, m.largest) for m in got]
    assert keys == [(m.smallest, m.largest) for m in want]
    assert all(a[1] < b[0] for a, b in zip(keys, keys[1:]))


def test_plain_inputs_refuses_what_only_the_record_merge_handles(tmp_path):
    one = _table(str(tmp_path / "a.ldb"), [(b"a", 5, V, b"1"), (b"b", 6, D, b"")], 1)
    two = _table(str(tmp_path / "b.ldb"), [(b"a", 7, V, b"2"), (b"a", 3, V, b"0")], 2)   # two versions
    ttl = _table(str(tmp_path / "c.ldb"), [(b"c", 8, T, b"\0" * 8 + b"x")], 3)
    try:
        assert plain_inputs([one], 6) == [one]
        assert plain_inputs([one], 5) is None        # a snapshot sees b's older state
        assert plain_inputs([one, two], 100) is None
        assert plain_inputs([one, ttl], 100) is None
        assert plain_inputs([one, None], 100) is None
    finally:
        for r in (one, two, ttl):
            r.close()


def test_bulk_merge_on_a_full_disk_leaves_no_table(tmp_path):
    fs = FaultInjectingFileSystem()
    readers = [_table(str(tmp_path / f"in{i}.ldb"), [(b"%05d" % k, i * 1000 + k + 1, V, b"v" * 50)
                                                     for k in range(i, 600, 2)], 900 + i) for i in range(2)]
    fs.inject("write", errno.ENOSPC, "0000", after=30)   # the outputs' writes: past the first table
    before = set(os.listdir(tmp_path))
    made: list[int] = []
    try:
        with pytest.raises(DiskFull):
            bulk_merge(readers, lambda k: True, TableOutputs(fs, str(tmp_path), Config(block_size=256, target_file_size=4000),
                                                             lambda: made.append(len(made) + 1) or len(made)))
    finally:
        for r in readers:
            r.close()
    assert len(made) >= 2                           # a finished table, then the one being written
    after = {n for n in os.listdir(tmp_path) if not n.startswith(".faultfs")}
    assert after == before                          # the finished ones discarded, the open one abandoned


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EIO])
def test_a_table_whose_finish_fails_is_removed(tmp_path, fault):
    """The fsync that finishes an output table fails: that table is
    abandoned (its file removed), whichever error it was."""
    fs = FaultInjectingFileSystem()
    out = TableOutputs(fs, str(tmp_path), Config(block_size=256), _numbers(1))
    out.writer().add_many([b"a", b"b"], [pack_seqkind(1, V), pack_seqkind(2, V)], [b"1", b"2"])
    fs.inject("sync", fault, "000001")
    with pytest.raises(Exception) as failed:
        out.close()
    out.fail(failed.value)
    assert out.open is None and out.files == []
    assert not [n for n in os.listdir(tmp_path) if not n.startswith(".faultfs")]
