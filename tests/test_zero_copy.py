"""Issue 4: ``get(key, copy=False)`` returns a memoryview into the mapped
data that stays valid for as long as it is held, through flushes,
compactions (the file unlinked) and later writes, in process and sharded."""

from __future__ import annotations

import gc

import pytest

import lightning_db as ldb

SMALL = dict(memtable_size=64 * 1024, l0_compaction_trigger=2)


@pytest.mark.parametrize("shards", [0, 2])
def test_views_outlive_flushes_and_compactions(tmp_path, shards):
    with ldb.open(tmp_path / "db", shards=shards, **SMALL) as db:
        value = b"zero-copy-" + b"x" * 90
        db.put(b"k", value)
        db.flush()                                      # pipelined writes answered, memtable flushed
        view = db.get(b"k", copy=False)
        assert isinstance(view, memoryview) and view == value
        db.put(b"m2", b"live memtable")
        if shards:
            db._pipe.barrier()                          # answered: now in the shard's live segment
        in_mem = db.get(b"m2", copy=False)
        assert isinstance(in_mem, memoryview) and in_mem == b"live memtable"
        for r in range(4):                              # overwrite, flush, compact: old files go
            for i in range(600):
                db.put(b"f%04d" % i, b"%d" % r * 50)
            db.put(b"k", b"newer")
            db.flush()
        db.compact()
        gc.collect()
        assert view == value and in_mem == b"live memtable"    # still the bytes read then
        assert db.get(b"k") == b"newer" and db.get(b"absent", copy=False) is None
        assert db.get(b"absent", b"dflt", copy=False) == b"dflt"
        del view, in_mem
