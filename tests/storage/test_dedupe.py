"""Write tokens (storage/dedupe.py): a retried write is applied once, also
after the shard is reopened, its memtable rotated, and reopened again."""

from __future__ import annotations

import os

import pytest

from lightning_db.config import Config
from lightning_db.errors import InvalidArgument, OutOfOrder
from lightning_db.shards.actor import _token
from lightning_db.shards.pipeline import TokenSource
from lightning_db.storage.dedupe import MAX_WRITERS, WriteTokens, new_writer_id, writer_pid
from lightning_db.storage.engine import Engine
from lightning_db.storage.format import Kind

V = int(Kind.VALUE)
SMALL = dict(memtable_size=64 * 1024, block_size=1024, target_file_size=16 * 1024)


def test_writer_ids_name_the_process_and_differ():
    a, b = new_writer_id(), new_writer_id()
    assert a != b and len(a) == 12
    assert writer_pid(a) == os.getpid()


def test_tokens_seen_once_and_forgotten_below_lo():
    t = WriteTokens(alive=lambda pid: True)
    w = new_writer_id()
    assert not t.seen(w, 1, 1)
    t.add(w, 1, 1)
    assert t.seen(w, 1, 1)                  # the retry
    assert not t.seen(w, 2, 1)
    t.add(w, 2, 1)
    assert not t.seen(w, 3, 3)              # lo 3: 1 and 2 are finished
    assert t.seen(w, 2, 3)                  # a stale copy of a finished write is not applied
    t.add(w, 3, 3)
    assert t._writers[w].applied == {3}
    assert t.duplicates == 2


def test_tokens_dump_load_and_prune():
    dead_pid = 2**31 - 7
    alive = {os.getpid()}
    t = WriteTokens(alive=lambda pid: pid in alive)
    mine = new_writer_id()
    gone = dead_pid.to_bytes(4, "big") + b"\x01" * 8
    t.add(mine, 5, 4)
    t.add(mine, 4, 4)
    t.add(gone, 1, 1)
    t.prune()
    assert len(t) == 1
    again = WriteTokens(alive=lambda pid: True)
    again.load(t.dump())
    assert again.seen(mine, 4, 4) and again.seen(mine, 5, 4) and not again.seen(mine, 6, 4)


def test_the_writer_table_is_bounded(monkeypatch):
    monkeypatch.setattr("lightning_db.storage.dedupe.MAX_WRITERS", 16)
    t = WriteTokens(alive=lambda pid: True)
    first = new_writer_id()
    t.add(first, 1, 1)
    for _ in range(40):
        t.add(new_writer_id(), 1, 1)
    assert len(t) <= 16
    assert first not in t._writers          # the writer not heard from for longest went first
    assert MAX_WRITERS >= 1024


def test_a_retry_after_a_newer_write_does_not_overwrite_it(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    try:
        w = new_writer_id()
        eng.write([(V, b"k", b"old")], token=(w, 1, 1))
        eng.write([(V, b"k", b"newer")])                       # another writer, acknowledged
        seq = eng.last_sequence
        assert eng.write([(V, b"k", b"old")], token=(w, 1, 1)) == seq   # the retry: nothing written
        assert eng.get(b"k") == b"newer"
        assert eng.stats()["duplicate_writes"] == 1
    finally:
        eng.close()


def test_a_write_named_after_an_unsettled_one_is_refused_and_writes_nothing(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    try:
        w = new_writer_id()
        seq = eng.last_sequence
        with pytest.raises(OutOfOrder):
            eng.write([(V, b"k", b"2")], token=(w, 2, 1), after=1)   # write 1 never arrived
        assert eng.last_sequence == seq and eng.get(b"k") is None
        eng.write([(V, b"k", b"1")], token=(w, 1, 1))
        eng.write([(V, b"k", b"2")], token=(w, 2, 1), after=1)         # now in order
        assert eng.get(b"k") == b"2"
        eng.write([(V, b"j", b"4")], token=(w, 4, 4), after=3)         # 3 is below lo: given up, settled
        assert eng.get(b"j") == b"4"
    finally:
        eng.close()


def test_tokens_survive_reopen_rotation_and_a_second_reopen(tmp_path):
    path = str(tmp_path)
    w = new_writer_id()
    eng = Engine(path, Config(**SMALL))
    eng.write([(V, b"k", b"first")], token=(w, 1, 1))
    eng.close()

    eng = Engine(path, Config(**SMALL))                       # tokens from the replayed WAL
    try:
        eng.write([(V, b"k", b"second")])
        eng.write([(V, b"k", b"first")], token=(w, 1, 1))
        assert eng.get(b"k") == b"second"
        for i in range(2000):                                 # several memtable rotations
            eng.write([(V, b"fill%05d" % i, b"x" * 100)])
        eng.flush()
        eng.write([(V, b"k", b"first")], token=(w, 1, 1))
        assert eng.get(b"k") == b"second"
    finally:
        eng.close()

    eng = Engine(path, Config(**SMALL))                       # carried by the TOKENS records
    try:
        eng.write([(V, b"k", b"first")], token=(w, 1, 1))
        assert eng.get(b"k") == b"second"
        eng.write([(V, b"k", b"third")], token=(w, 2, 2))     # a new write of the same writer
        assert eng.get(b"k") == b"third"
        assert eng.stats()["duplicate_writes"] == 1
    finally:
        eng.close()


def test_a_duplicate_with_sync_still_syncs(tmp_path):
    eng = Engine(str(tmp_path), Config(sync="never"))
    try:
        w = new_writer_id()
        eng.write([(V, b"k", b"v")], token=(w, 1, 1))
        eng.write([(V, b"k", b"v")], sync=True, token=(w, 1, 1))
        assert eng._sv.wal.synced_size == eng._sv.wal.size
    finally:
        eng.close()


@pytest.mark.parametrize("bad", [
    None, [], [b"x" * 12, 1], [b"short", 1, 1], [b"x" * 12, 0, 0], [b"x" * 12, 2, 3],
    [b"x" * 12, True, 1], ["x" * 12, 1, 1],
])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(InvalidArgument, match="write token"):
        _token(bad)


def test_token_source_tracks_the_lowest_write_in_flight():
    src = TokenSource(2)
    a = src.take(0)
    b = src.take(0)
    assert (a[1], a[2], b[1], b[2]) == (1, 1, 2, 1)
    src.done(0, a)
    c = src.take(0)
    assert (c[1], c[2]) == (3, 2)
    assert src.take(1)[1:] == [1, 1]          # per shard
