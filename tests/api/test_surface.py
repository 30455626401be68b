"""Example tests pinning the public contract (DESIGN.md §5 and §6).

Everything here goes through ``lightning_db`` only, in-process (``shards=0``).
The model test (test_model.py) covers ordinary behaviour broadly; these pin
the edges: the exported names, snapshots, checkpoints, locking, the closed
state and the error taxonomy (configuration and bad input: test_config.py,
test_bad_input.py).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

import lightning_db as ldb
from lightning_db import (
    CriticalError,
    DatabaseClosed,
    DatabaseLocked,
    FatalError,
    InvalidArgument,
    RecoverableError,
    TransientError,
    errors,
)

from tests.api.support import KiB, Unchanged, contents, open_db


# --- the public surface ----------------------------------------------------------------

EXPECTED_ALL = [
    "open",
    "connect",
    "connect_async",
    "Database",
    "Batch",
    "Snapshot",
    "Config",
    "LightningError",
    "TransientError",
    "RecoverableError",
    "CriticalError",
    "FatalError",
    "InvalidArgument",
    "DatabaseLocked",
    "DatabaseClosed",
    "DatabaseShutdown",
    "IOFault",
    "DiskFull",
    "WriteStalled",
    "CorruptionError",
    "BackgroundError",
    "TransactionConflict",
    "TransactionExpired",
]


def test_all_is_pinned():
    assert ldb.__all__ == EXPECTED_ALL
    for name in EXPECTED_ALL:
        assert getattr(ldb, name) is not None
    namespace: dict = {}
    exec("from lightning_db import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED_ALL)


def test_exported_errors_are_the_ones_in_errors_module():
    for name in EXPECTED_ALL:
        obj = getattr(ldb, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert getattr(errors, name) is obj


# --- mapping sugar and single keys -------------------------------------------------------


def test_mapping_sugar(db):
    db[b"k"] = b"v"
    assert db[b"k"] == b"v"
    assert b"k" in db
    assert b"nope" not in db
    with pytest.raises(KeyError):
        db[b"nope"]
    del db[b"k"]
    assert b"k" not in db
    with pytest.raises(KeyError):
        del db[b"k"]
    with pytest.raises(KeyError):
        db[b"k"]
    db[b"x"] = b"1"
    db[b"y"] = b""
    assert list(db) == [b"x", b"y"]
    assert b"y" in db  # an empty value is present, not absent
    assert db[b"y"] == b""


def test_get_default(db):
    assert db.get(b"k") is None
    assert db.get(b"k", b"dflt") == b"dflt"
    sentinel = object()
    assert db.get(b"k", sentinel) is sentinel
    db.put(b"k", b"")
    assert db.get(b"k", b"dflt") == b""
    db.delete(b"k")
    assert db.get(b"k", b"dflt") == b"dflt"


def test_delete_absent_key_is_not_an_error(db):
    db.delete(b"never-there")
    assert db.get(b"never-there") is None


def test_values_are_returned_as_bytes(db):
    db.put(b"k", bytearray(b"v"))
    assert type(db.get(b"k")) is bytes
    assert type(db[b"k"]) is bytes
    assert all(type(k) is bytes and type(v) is bytes for k, v in db.scan())


def test_bytearray_and_memoryview_keys_and_values(db):
    key = bytearray(b"key")
    value = bytearray(b"value")
    db.put(key, value)
    key[0:1] = b"X"  # the database keeps its own copy
    value[0:1] = b"X"
    assert db.get(b"key") == b"value"
    assert db.get(bytearray(b"key")) == b"value"
    assert db.get(memoryview(b"key")) == b"value"
    db.put(memoryview(b"mv-key"), memoryview(b"__mv-value__")[2:-2])
    assert db[bytearray(b"mv-key")] == b"mv-value"
    assert memoryview(b"mv-key") in db
    assert db.get_many([bytearray(b"key"), memoryview(b"mv-key")]) == [b"value", b"mv-value"]
    assert list(db.scan(start=bytearray(b"k"), end=memoryview(b"l"))) == [(b"key", b"value")]
    assert list(db.scan(prefix=memoryview(b"mv"))) == [(b"mv-key", b"mv-value")]
    with db.batch() as b:
        b.put(bytearray(b"bk"), memoryview(b"bv"))
        b.delete(memoryview(b"key"))
    assert db.get(b"bk") == b"bv"
    assert db.get(b"key") is None
    del db[bytearray(b"bk")]
    assert b"bk" not in db


# --- many keys ---------------------------------------------------------------------------------


def test_put_many_accepts_dict_and_pairs(db):
    db.put_many({b"a": b"1", b"b": b"2"})
    db.put_many([(b"c", b"3"), (b"d", b"4")])
    db.put_many((kv for kv in [(b"e", b"5")]))  # any iterable, a generator too
    db.put_many({})
    db.put_many([])
    assert contents(db) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4"), (b"e", b"5")]
    db.put_many([(b"a", b"x"), (b"a", b"y")])  # in order: the last one wins
    assert db[b"a"] == b"y"


def test_put_many_is_one_atomic_write(db):
    before = db.stats()["sequence"]
    db.put_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    assert db.stats()["sequence"] - before == 3
    with db.snapshot() as s:
        db.put_many({b"a": b"x", b"b": b"y"})
        assert s.get_many([b"a", b"b"]) == [b"1", b"2"]
    assert db.get_many([b"a", b"b"]) == [b"x", b"y"]


def test_empty_put_many_and_batch_write_nothing(db):
    u = Unchanged(db)
    db.put_many({})
    with db.batch():
        pass
    u.check()


def test_get_many_order_and_missing(filled):
    db = filled
    keys = [b"e", b"zz", b"a", b"b", b"d", b"a"]
    assert db.get_many(keys) == [b"", None, b"1", None, b"4", b"1"]
    assert db.get_many([]) == []
    assert db.get_many(iter([b"c"])) == [b"3"]


# --- scans -------------------------------------------------------------------------------------


def test_scan_basics(filled):
    db = filled
    everything = [(b"a", b"1"), (b"c", b"3"), (b"d", b"4"), (b"e", b"")]
    assert contents(db) == everything
    assert list(db.scan(reverse=True)) == everything[::-1]
    assert list(db.scan(start=b"c")) == everything[1:]
    assert list(db.scan(end=b"d")) == everything[:2]  # end is exclusive
    assert list(db.scan(start=b"c", end=b"e", reverse=True)) == [(b"d", b"4"), (b"c", b"3")]
    assert list(db.scan(limit=2)) == everything[:2]
    assert list(db.scan(limit=2, reverse=True)) == everything[:1:-1]
    assert list(db.scan(limit=100)) == everything


def test_scan_empty_ranges_and_limit_zero(filled):
    db = filled
    assert list(db.scan(start=b"c", end=b"c")) == []
    assert list(db.scan(start=b"d", end=b"b")) == []
    assert list(db.scan(start=b"d", end=b"b", reverse=True)) == []
    assert list(db.scan(start=b"zz")) == []
    assert list(db.scan(end=b"a")) == []
    assert list(db.scan(prefix=b"q")) == []
    assert list(db.scan(limit=0)) == []
    assert list(db.scan(limit=0, reverse=True)) == []
    assert list(db.scan(prefix=b"a", start=b"b")) == []  # prefix and bounds intersect


def test_scan_of_empty_database(db):
    assert list(db.scan()) == []
    assert list(db.scan(reverse=True, limit=3)) == []
    assert list(db) == []


def test_scan_prefix_with_ff_bytes(db):
    keys = [b"a", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\xff", b"b", b"\xff", b"\xff\xff", b"\xff\x01"]
    db.put_many({k: k for k in keys})
    db.put(b"\xfe\xff", b"x")
    assert [k for k, _ in db.scan(prefix=b"a\xff")] == [b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\xff"]
    assert [k for k, _ in db.scan(prefix=b"a\xff\xff")] == [b"a\xff\xff", b"a\xff\xff\xff"]
    assert [k for k, _ in db.scan(prefix=b"\xff")] == [b"\xff", b"\xff\x01", b"\xff\xff"]
    assert [k for k, _ in db.scan(prefix=b"\xff", reverse=True)] == [b"\xff\xff", b"\xff\x01", b"\xff"]
    assert [k for k, _ in db.scan(prefix=b"\xfe")] == [b"\xfe\xff"]
    assert [k for k, _ in db.scan(prefix=b"\xff", start=b"\xff\x00", end=b"\xff\x02")] == [b"\xff\x01"]


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshot_isolation(filled):
    db = filled
    before = contents(db)
    s = db.snapshot()
    assert db.stats()["snapshots"] == 1
    db.put(b"a", b"changed")
    db.put(b"new", b"n")
    db.delete(b"c")
    db.flush()
    db.compact()  # old versions pinned by the snapshot must survive compaction
    assert s.get(b"a") == b"1"
    assert s[b"a"] == b"1"
    assert s.get(b"new") is None
    assert s.get(b"new", b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        s[b"new"]
    assert b"c" in s
    assert b"new" not in s
    assert s.get_many([b"a", b"c", b"new"]) == [b"1", b"3", None]
    assert list(s.scan()) == before
    assert list(s.scan(start=b"b", end=b"e", reverse=True, limit=1)) == [(b"d", b"4")]
    # the database itself sees the new writes
    assert db.get(b"a") == b"changed"
    assert db.get(b"c") is None
    assert db.get(b"new") == b"n"
    s.close()
    assert db.stats()["snapshots"] == 0
    with pytest.raises(InvalidArgument):
        s.get(b"a")
    with pytest.raises(InvalidArgument):
        s.get_many([b"a"])
    with pytest.raises(InvalidArgument):
        list(s.scan())
    s.close()  # twice is fine


def test_snapshot_context_manager_releases(db):
    db.put(b"k", b"v1")
    with db.snapshot() as s:
        db.put(b"k", b"v2")
        assert s.get(b"k") == b"v1"
        assert db.stats()["snapshots"] == 1
    assert db.stats()["snapshots"] == 0
    with pytest.raises(InvalidArgument):
        s.get(b"k")


def test_snapshot_scan_iterator_is_consistent(db):
    db.put_many({bytes([c]): b"old" for c in b"abcdef"})
    it = db.scan()
    first = next(it)
    db.put_many({bytes([c]): b"new" for c in b"abcdef"})
    db.put(b"g", b"new")
    rest = list(it)
    assert [first] + rest == [(bytes([c]), b"old") for c in b"abcdef"]


# --- batches ---------------------------------------------------------------------------------------


def test_batch_is_applied_atomically_and_survives_reopen(tmp_path):
    path = tmp_path / "db"
    with open_db(path) as db:
        db.put(b"gone", b"x")
        with db.batch() as b:
            b.put(b"a", b"1")
            b[b"b"] = b"2"
            b.delete(b"gone")
            b.put(b"a", b"3")  # ops apply in order
            del b[b"never"]
            assert len(b) == 5
        assert db.get(b"a") == b"3"
        with pytest.raises(RuntimeError):
            with db.batch() as b:
                b.put(b"c", b"not written")
                b.delete(b"a")
                raise RuntimeError("abort")
        assert db.get(b"c") is None
        assert db.get(b"a") == b"3"
    with open_db(path) as db:
        assert contents(db) == [(b"a", b"3"), (b"b", b"2")]


def test_batch_cannot_be_reused(db):
    b = db.batch()
    b.put(b"a", b"1")
    b.commit()
    assert db.get(b"a") == b"1"
    with pytest.raises(InvalidArgument):
        b.put(b"b", b"2")
    with pytest.raises(InvalidArgument):
        b.commit()
    d = db.batch()
    d.put(b"c", b"3")
    d.discard()
    with pytest.raises(InvalidArgument):
        d.commit()
    assert db.get(b"c") is None


# --- checkpoint, stats, verify -----------------------------------------------------------------


def test_checkpoint_opens_with_same_data_and_is_independent(tmp_path):
    src = tmp_path / "db"
    dst = tmp_path / "backup"
    with open_db(src, memtable_size=64 * KiB) as db:
        db.put_many({b"k%03d" % i: b"v%d" % i for i in range(200)})
        db.flush()
        db.put_many({b"k%03d" % i: b"w%d" % i for i in range(0, 200, 3)})  # in the memtable only
        db.delete(b"k001")
        expected = contents(db)
        info = db.checkpoint(dst)
        assert info["sequence"] == db.stats()["sequence"]
        # the source goes on; the checkpoint must not see this
        db.put(b"after", b"x")
        db.delete(b"k000")
        db.compact()
        with open_db(dst) as cp:
            assert contents(cp) == expected
            cp.put(b"only-in-copy", b"y")
            assert cp.verify()["tables"] >= 1
        assert db.get(b"only-in-copy") is None
        assert db.get(b"after") == b"x"
        assert db.get(b"k000") is None
    with open_db(dst) as cp:
        assert cp.get(b"only-in-copy") == b"y"
        assert cp.get(b"after") is None
        assert cp.get(b"k000") == b"w0"


def test_checkpoint_rejects_non_empty_target_and_own_path(filled, tmp_path):
    target = tmp_path / "full"
    target.mkdir()
    (target / "something").write_bytes(b"x")
    with pytest.raises(InvalidArgument):
        filled.checkpoint(target)
    with pytest.raises(InvalidArgument):
        filled.checkpoint(filled.path)
    with pytest.raises(InvalidArgument):
        filled.checkpoint(123)


def test_stats_shape(filled):
    s = filled.stats()
    for key in ("levels", "sequence", "block_cache", "write_amplification", "flushes", "compactions",
                "snapshots", "memtable_entries"):
        assert key in s, key
    assert isinstance(s["levels"], list) and s["levels"]
    assert all({"level", "files", "bytes"} <= set(lv) for lv in s["levels"])
    assert s["levels"][0]["files"] >= 1
    assert isinstance(s["sequence"], int) and s["sequence"] >= 6
    assert isinstance(s["write_amplification"], float)
    assert isinstance(s["block_cache"], dict)


def test_sequence_counts_each_written_key(db):
    s0 = db.stats()["sequence"]
    db.put(b"a", b"1")
    db.delete(b"a")
    db.put_many([(b"b", b"1"), (b"c", b"2")])
    assert db.stats()["sequence"] == s0 + 4


def test_verify_returns_counts(db):
    assert db.verify() == {"tables": 0, "blocks": 0}
    db.put_many({b"k%04d" % i: b"v" * 100 for i in range(500)})
    db.flush()
    counts = db.verify()
    assert set(counts) >= {"tables", "blocks"}
    assert counts["tables"] >= 1
    assert counts["blocks"] >= 1
    assert all(isinstance(v, int) for v in counts.values())


# --- closing and locking ----------------------------------------------------------------------------

CLOSED_CALLS = {
    "get": lambda db: db.get(b"a"),
    "put": lambda db: db.put(b"a", b"1"),
    "delete": lambda db: db.delete(b"a"),
    "getitem": lambda db: db[b"a"],
    "setitem": lambda db: db.__setitem__(b"a", b"1"),
    "delitem": lambda db: db.__delitem__(b"a"),
    "contains": lambda db: b"a" in db,
    "iter": lambda db: list(db),
    "get_many": lambda db: db.get_many([b"a"]),
    "put_many": lambda db: db.put_many({b"a": b"1"}),
    "scan": lambda db: list(db.scan()),
    "batch": lambda db: _commit(db),
    "snapshot": lambda db: db.snapshot(),
    "flush": lambda db: db.flush(),
    "compact": lambda db: db.compact(),
    "checkpoint": lambda db: db.checkpoint(db.path + "-cp"),
    "stats": lambda db: db.stats(),
    "verify": lambda db: db.verify(),
}


def _commit(db):
    with db.batch() as b:
        b.put(b"a", b"1")


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_database_raises_database_closed(tmp_path, call):
    db = open_db(tmp_path / "db")
    db.put(b"a", b"1")
    db.close()
    assert db.closed
    with pytest.raises(DatabaseClosed) as info:
        CLOSED_CALLS[call](db)
    assert isinstance(info.value, FatalError)
    assert errors.classify(info.value) is FatalError
    db.close()  # closing twice is fine


def test_snapshot_of_closed_database_raises_database_closed(tmp_path):
    db = open_db(tmp_path / "db")
    db.put(b"a", b"1")
    s = db.snapshot()
    db.close()
    with pytest.raises(DatabaseClosed):
        s.get(b"a")
    with pytest.raises(DatabaseClosed):
        list(s.scan())


def test_context_manager_closes(tmp_path):
    path = tmp_path / "db"
    with open_db(path) as db:
        db.put(b"k", b"v")
        assert not db.closed
    assert db.closed
    with pytest.raises(DatabaseClosed):
        db.get(b"k")
    with pytest.raises(RuntimeError):
        with open_db(path) as db2:
            raise RuntimeError("boom")
    assert db2.closed
    with open_db(path) as db3:
        assert db3.get(b"k") == b"v"


def test_second_open_in_same_process_is_locked(tmp_path):
    path = tmp_path / "db"
    db = open_db(path)
    db.put(b"k", b"v")
    with pytest.raises(DatabaseLocked) as info:
        open_db(path)
    assert isinstance(info.value, RecoverableError)
    assert str(path) in str(info.value)
    # the failed open did not disturb the first handle or its lock
    db.put(b"k2", b"v2")
    assert db.get(b"k") == b"v"
    with pytest.raises(DatabaseLocked):
        open_db(path)
    db.close()
    with open_db(path) as again:
        assert again.get(b"k2") == b"v2"


_CHILD = textwrap.dedent(
    """
    import sys
    import lightning_db
    try:
        db = lightning_db.open(sys.argv[1], shards=0)
    except lightning_db.DatabaseLocked as exc:
        print("LOCKED", exc)
        sys.exit(3)
    db.put(b"from-child", b"yes")
    db.close()
    print("OPENED")
    """
)


def _run_child(path):
    return subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=120)


def test_open_from_another_process_is_locked(tmp_path):
    path = tmp_path / "db"
    db = open_db(path)
    db.put(b"k", b"v")
    child = _run_child(path)
    assert child.returncode == 3, child.stdout + child.stderr
    assert child.stdout.startswith("LOCKED")
    assert db.get(b"from-child") is None
    db.put(b"k2", b"v2")  # still ours
    db.close()
    child = _run_child(path)
    assert child.returncode == 0, child.stdout + child.stderr
    assert "OPENED" in child.stdout
    with open_db(path) as db:
        assert db.get(b"from-child") == b"yes"
        assert db.get(b"k2") == b"v2"


def test_open_accepts_str_and_pathlike(tmp_path):
    with open_db(str(tmp_path / "a")) as db:
        db.put(b"k", b"v")
    with open_db(tmp_path / "a") as db:
        assert db.get(b"k") == b"v"


@pytest.mark.parametrize("shards", [-1, "2", 1.5, True])
def test_open_rejects_bad_shards(tmp_path, shards):
    with pytest.raises(InvalidArgument, match="shards"):
        ldb.open(tmp_path / "db", shards=shards)


@pytest.mark.parametrize("path", [None, 1, 1.5, ["db"]])
def test_open_rejects_bad_path(path):
    with pytest.raises(InvalidArgument, match="path"):
        ldb.open(path, shards=0)


# --- error taxonomy -----------------------------------------------------------------------------------

TAXONOMY = (TransientError, RecoverableError, CriticalError, FatalError, InvalidArgument)


def _error_classes():
    return [obj for _, obj in sorted(vars(errors).items())
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__]


def test_error_module_has_the_documented_classes():
    names = {c.__name__ for c in _error_classes()}
    assert {"LightningError", "DatabaseLocked", "DatabaseClosed", "DatabaseShutdown", "IOFault", "DiskFull",
            "WriteStalled", "CorruptionError", "TransactionConflict"} <= names
    assert set(errors.__all__) - {"classify"} == names


@pytest.mark.parametrize("cls", [c for c in _error_classes() if c is not errors.LightningError],
                         ids=lambda c: c.__name__)
def test_every_error_is_in_exactly_one_taxonomy_class(cls):
    assert issubclass(cls, errors.LightningError)
    homes = [t for t in TAXONOMY if issubclass(cls, t)]
    assert len(homes) == 1, homes
    exc = cls("message")
    assert errors.classify(exc) is homes[0]


def test_classify_of_foreign_exceptions_is_none():
    assert errors.classify(ValueError("x")) is None
    assert errors.classify(OSError(5, "EIO")) is None
    assert errors.classify(errors.LightningError("x")) is None


def test_invalid_argument_is_value_and_type_error():
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(InvalidArgument, TypeError)
    assert issubclass(errors.DatabaseClosed, FatalError)
    assert issubclass(errors.DatabaseLocked, RecoverableError)
    assert issubclass(errors.CorruptionError, CriticalError)
