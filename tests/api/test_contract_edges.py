"""Edges of the public contract, in-process and with worker processes:
the with-block of a batch after an explicit commit or discard, the mapping
delete of a transaction, what get_many, put_many and run_transaction take,
``sync`` arguments, the options of a caller that joins a running node, the
totals of a sharded ``stats()``, and bad ``open`` arguments."""

from __future__ import annotations

import pytest

import lightning_db as ldb
from lightning_db import InvalidArgument, LightningError


@pytest.fixture(scope="module", params=[0, 2], ids=["in-process", "two-shards"])
def db(request, tmp_path_factory):
    d = ldb.open(tmp_path_factory.mktemp("edges") / "db", shards=request.param)
    yield d
    d.close()


def test_a_batch_committed_inside_its_block_ends_cleanly(db):
    with db.batch() as b:
        b.put(b"edge-c1", b"1")
        b.commit()
    assert db.get(b"edge-c1") == b"1"
    with db.batch() as b:
        b.put(b"edge-d1", b"1")
        b.discard()
    assert db.get(b"edge-d1") is None
    with pytest.raises(InvalidArgument, match="already committed"):
        with db.batch() as b:
            b.commit()
            b.put(b"edge-late", b"1")         # after the commit: the caller's mistake
    assert db.get(b"edge-late") is None


def test_a_batch_checks_its_sync_when_made(db):
    with pytest.raises(InvalidArgument, match="sync must be None or a bool"):
        db.batch(sync="always")
    with pytest.raises(InvalidArgument, match="sync must be None or a bool"):
        db.put(b"edge-s", b"1", sync="always")
    with pytest.raises(InvalidArgument, match="sync must be None or a bool"):
        db.transaction(sync=1)
    assert db.get(b"edge-s") is None


def test_del_of_an_absent_key_in_a_transaction_is_a_key_error(db):
    db.put(b"edge-t1", b"1")
    with db.transaction() as tx:
        with pytest.raises(KeyError):
            del tx[b"edge-absent"]
        del tx[b"edge-t1"]
        tx[b"edge-t2"] = b"2"
        del tx[b"edge-t2"]                     # its own write counts as present
    assert db.get(b"edge-t1") is None and db.get(b"edge-t2") is None


@pytest.mark.parametrize("keys, says", [(None, "got NoneType"), (5, "got int"),
                                        (b"ab", "got one bytes"), ("ab", "got one str")])
def test_get_many_takes_an_iterable_of_keys(db, keys, says):
    for get_many in (db.get_many, lambda k: db.snapshot().get_many(k), lambda k: db.transaction().get_many(k)):
        with pytest.raises(InvalidArgument, match=f"get_many takes an iterable of keys, {says}"):
            get_many(keys)


def _seqs(db):
    s = db.stats()
    return [sh["sequence"] for sh in s["shards"]] if s["shards"] else [s["sequence"]]


def test_a_put_many_item_that_is_not_a_pair_writes_nothing(db):
    seqs = _seqs(db)
    with pytest.raises(InvalidArgument, match=r"put_many takes \(key, value\) pairs"):
        db.put_many([(b"edge-p1", b"1"), b"ab"])
    assert db.get(b"edge-p1") is None and _seqs(db) == seqs


@pytest.mark.parametrize("args, says", [((5,), "takes a callable"), ((lambda tx: None, -1), "retries"),
                                        ((lambda tx: None, 1, "snapshot", "x"), "sync")])
def test_run_transaction_checks_its_arguments_first(db, args, says):
    with pytest.raises(InvalidArgument, match=says):
        db.run_transaction(*args)


def test_a_caller_joining_a_node_shares_its_settings(tmp_path):
    path = tmp_path / "db"
    with ldb.open(path, shards=2, max_value_size=1024) as first:
        with ldb.open(path, max_value_size=100, sync="always") as joined:
            assert joined.config.max_value_size == 1024 and joined.config.sync == "interval"
            joined.put(b"k", b"x" * 500)         # under the node's limit, over the one passed
            with pytest.raises(InvalidArgument, match="at most 1024 bytes"):
                joined.put(b"k2", b"x" * 1025)
        assert first.get(b"k") == b"x" * 500 and first.get(b"k2") is None


def test_sharded_stats_total_levels_cache_and_amplification(tmp_path):
    with ldb.open(tmp_path / "db", shards=2) as db:
        db.put_many([(b"k%05d" % i, b"v" * 100) for i in range(4000)])
        db.flush()
        for i in range(0, 4000, 7):
            db.get(b"k%05d" % i)
        s = db.stats()
        shards = s["shards"]
        for n, level in enumerate(s["levels"]):
            assert level == {"level": n, "files": sum(sh["levels"][n]["files"] for sh in shards),
                             "bytes": sum(sh["levels"][n]["bytes"] for sh in shards)}
        assert s["levels"][0]["files"] >= 2
        for field in ("hits", "misses", "capacity", "entries"):
            assert s["block_cache"][field] == sum(sh["block_cache"][field] for sh in shards)
        assert s["block_cache"]["policy"] == shards[0]["block_cache"]["policy"]
        written = sum(s[f] for f in ("bytes_written_wal", "bytes_written_flush", "bytes_written_compaction"))
        assert s["write_amplification"] == round(written / s["bytes_written_user"], 3) > 1.0
        assert s["space_amplification"] >= 1.0
        assert s["read_amplification"] == max(sh["read_amplification"] for sh in shards)
        assert s["sync_policy"] == "interval" and s["keys_estimate"] == 4000


def test_open_rejects_a_shard_count_past_the_limit_and_a_file_path(tmp_path):
    with pytest.raises(InvalidArgument, match=r"0 \(in process\) or 1\.\.1024"):
        ldb.open(tmp_path / "db", shards=1025)
    assert not (tmp_path / "db").exists()
    f = tmp_path / "file"
    f.write_bytes(b"not a database")
    for shards in (0, 2, None):
        with pytest.raises(InvalidArgument, match="is not a directory"):
            ldb.open(f, shards=shards)
    assert f.read_bytes() == b"not a database"
    assert issubclass(InvalidArgument, LightningError)


def test_a_scan_limit_past_a_64_bit_count_is_refused(db):
    db.put(b"edge-l1", b"1")
    for limit in (2**63, 2**64 - 1, 2**70):
        with pytest.raises(InvalidArgument, match=r"limit must be None or an integer from 0 to 2\*\*63-1"):
            db.scan(prefix=b"edge-l", limit=limit)
    assert list(db.scan(prefix=b"edge-l", limit=2**63 - 1)) == [(b"edge-l1", b"1")]
    with db.snapshot() as s:
        with pytest.raises(InvalidArgument, match="limit"):
            s.scan(limit=2**64)
    with db.transaction() as tx:
        with pytest.raises(InvalidArgument, match="limit"):
            tx.scan(limit=2**64)


def test_a_transaction_scan_shows_its_writes_as_they_were_when_called(db):
    db.put(b"edge-ts0", b"old")
    with db.transaction() as tx:
        tx.put(b"edge-ts1", b"mine")
        it = tx.scan(prefix=b"edge-ts")
        tx.put(b"edge-ts2", b"later")               # after the call: not in that scan
        tx.delete(b"edge-ts0")
        assert list(it) == [(b"edge-ts0", b"old"), (b"edge-ts1", b"mine")]
        assert list(tx.scan(prefix=b"edge-ts")) == [(b"edge-ts1", b"mine"), (b"edge-ts2", b"later")]


@pytest.mark.parametrize("shards", [0, 2], ids=["in-process", "two-shards"])
def test_a_transaction_after_close_is_database_closed_and_rolled_back(tmp_path, shards):
    d = ldb.open(tmp_path / "db", shards=shards)
    d.put(b"k", b"1")
    tx = d.transaction()
    assert tx.get(b"k") == b"1"
    tx.put(b"k", b"2")
    d.close()
    for call in (lambda: tx.get(b"k"), lambda: tx.put(b"k", b"3"), tx.commit):
        with pytest.raises(ldb.DatabaseClosed):
            call()
    assert tx.state == "rolled back"
    tx.rollback()                                   # a no-op now
    with ldb.open(tmp_path / "db", shards=shards) as again:
        assert again.get(b"k") == b"1"


def test_a_shards_part_over_the_message_limit_writes_nothing(tmp_path, monkeypatch):
    """With worker processes, one shard's part of a put_many or batch is one
    message: past the frame limit (512 MiB; 1 MiB here) it is MalformedFrame,
    an InvalidArgument naming the limit, and no part is written."""
    from lightning_db.mailbox import envelope
    monkeypatch.setattr(envelope, "MAX_FRAME_SIZE", 1 << 20)
    with ldb.open(tmp_path / "db", shards=2) as d:
        pairs = {b"big%04d" % i: b"x" * 10_000 for i in range(400)}      # about 2 MB a shard
        with pytest.raises(InvalidArgument, match="exceeds the limit of 1048576 bytes"):
            d.put_many(pairs)
        with pytest.raises(InvalidArgument, match="exceeds the limit"):
            with d.batch() as b:
                for k, v in pairs.items():
                    b.put(k, v)
        assert list(d.scan(prefix=b"big")) == []
        d.put_many(dict(list(pairs.items())[:20]))                   # under it: written
        assert len(list(d.scan(prefix=b"big"))) == 20


@pytest.mark.parametrize("shards", [0, 2], ids=["in-process", "two-shards"])
def test_a_batch_of_more_keys_than_a_memtable_indexes_is_written_whole(tmp_path, shards):
    """A memtable's key index holds one key per 85 arena bytes: a batch of
    small pairs can bring more keys than an empty memtable_size memtable
    takes. It goes into one memtable made large enough, whole."""
    n = 5000                                       # a 64 KiB memtable indexes 768 keys
    with ldb.open(tmp_path / "db", shards=shards, memtable_size=65536) as d:
        d.put_many({b"k%05d" % i: b"v" for i in range(n)})
        assert d.get_many([b"k%05d" % i for i in range(n)]) == [b"v"] * n
        d.put(b"k00001", b"z", sync=True)          # nothing held, nothing refused
        with d.batch() as b:
            for i in range(n):
                b.put(b"b%05d" % i, b"w")
        assert len(list(d.scan(prefix=b"b"))) == n
    with ldb.open(tmp_path / "db", shards=shards) as d:
        assert len(list(d.scan())) == 2 * n and d.get(b"k00001") == b"z"


@pytest.mark.parametrize("shards", [0, 2], ids=["in-process", "two-shards"])
def test_a_with_block_on_a_closed_handle_says_database_closed_at_once(tmp_path, shards):
    d = ldb.open(tmp_path / "db", shards=shards)
    d.close()
    entered = False
    with pytest.raises(ldb.DatabaseClosed):
        with d:
            entered = True
    assert not entered
