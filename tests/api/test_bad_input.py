"""The public contract: bad input gets a clear error naming the limit, and nothing is written."""

from __future__ import annotations

import pytest

from lightning_db import Config, InvalidArgument

from tests.api.support import KiB, MiB, SMALL_VALUE_LIMIT, Pairs, Unchanged, open_db


# --- bad input: nothing is written ---------------------------------------------------------------------

BAD_KEY_TYPES = ["str-key", 1, None, 1.5, [b"a"], (b"a",)]
BAD_VALUE_TYPES = ["str-value", 1, None, 1.5, [b"a"], object()]
MAX_KEY = 64 * KiB


def _type_ids(values):
    return [type(v).__name__ for v in values]


def _batch_put(db, k, v):
    with db.batch() as b:
        b.put(b"new1", b"v")
        b.delete(b"a")
        b.put(k, v)


def _batch_delete(db, k):
    with db.batch() as b:
        b.put(b"new1", b"v")
        b.delete(k)


def _snapshot(fn):
    def call(db, k):
        with db.snapshot() as s:
            return fn(s, k)
    return call


KEY_CALLS = {
    "put": lambda db, k: db.put(k, b"v"),
    "get": lambda db, k: db.get(k),
    "get_default": lambda db, k: db.get(k, b"dflt"),
    "delete": lambda db, k: db.delete(k),
    "getitem": lambda db, k: db[k],
    "setitem": lambda db, k: db.__setitem__(k, b"v"),
    "delitem": lambda db, k: db.__delitem__(k),
    "contains": lambda db, k: k in db,
    "get_many": lambda db, k: db.get_many([b"a", k]),
    "put_many_mapping": lambda db, k: db.put_many(Pairs([(b"new1", b"v"), (b"new2", b"v"), (k, b"v")])),
    "put_many_pairs": lambda db, k: db.put_many([(b"new1", b"v"), (b"new2", b"v"), (k, b"v")]),
    "batch_put": lambda db, k: _batch_put(db, k, b"v"),
    "batch_delete": _batch_delete,
    "snapshot_get": _snapshot(lambda s, k: s.get(k)),
    "snapshot_getitem": _snapshot(lambda s, k: s[k]),
    "snapshot_contains": _snapshot(lambda s, k: k in s),
    "snapshot_get_many": _snapshot(lambda s, k: s.get_many([b"a", k])),
}

VALUE_CALLS = {
    "put": lambda db, v: db.put(b"new1", v),
    "setitem": lambda db, v: db.__setitem__(b"new1", v),
    "put_many_mapping": lambda db, v: db.put_many(Pairs([(b"new1", b"v"), (b"new2", b"v"), (b"new3", v)])),
    "put_many_dict": lambda db, v: db.put_many({b"new1": b"v", b"new2": b"v", b"new3": v}),
    "put_many_pairs": lambda db, v: db.put_many([(b"new1", b"v"), (b"new2", b"v"), (b"new3", v)]),
    "batch_put": lambda db, v: _batch_put(db, b"new3", v),
}


def _rejected(db, call, arg, *fragments):
    u = Unchanged(db)
    with pytest.raises(InvalidArgument) as info:
        call(db, arg)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    u.check(b"new1", b"new2", b"new3")
    assert db.get(b"a") == b"1"  # the batch's delete did not happen
    return msg


@pytest.mark.parametrize("call", sorted(KEY_CALLS))
@pytest.mark.parametrize("key", BAD_KEY_TYPES, ids=_type_ids(BAD_KEY_TYPES))
def test_key_of_wrong_type(filled, call, key):
    _rejected(filled, KEY_CALLS[call], key, "key", type(key).__name__)


@pytest.mark.parametrize("call", sorted(KEY_CALLS))
def test_empty_key(filled, call):
    msg = _rejected(filled, KEY_CALLS[call], b"", "key", "max_key_size")
    assert "0 bytes" in msg or "empty" in msg


@pytest.mark.parametrize("call", sorted(KEY_CALLS))
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_key_over_max_key_size(filled, call, kind):
    _rejected(filled, KEY_CALLS[call], kind(b"k" * (MAX_KEY + 1)), "key", "max_key_size", "65536", "65537")


@pytest.mark.parametrize("call", sorted(VALUE_CALLS))
@pytest.mark.parametrize("value", BAD_VALUE_TYPES, ids=_type_ids(BAD_VALUE_TYPES))
def test_value_of_wrong_type(filled, call, value):
    _rejected(filled, VALUE_CALLS[call], value, "value", type(value).__name__)


@pytest.mark.parametrize("call", sorted(VALUE_CALLS))
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_value_over_max_value_size(filled, call, kind):
    _rejected(filled, VALUE_CALLS[call], kind(b"v" * (SMALL_VALUE_LIMIT + 1)),
              "value", "max_value_size", str(SMALL_VALUE_LIMIT), str(SMALL_VALUE_LIMIT + 1))


@pytest.mark.parametrize("bad", [b"k", "ab", 5, None, [(b"k", b"v", b"extra")], [b"k"], [(b"k",)]],
                         ids=["bytes", "str", "int", "None", "triple", "bare-key", "single"])
def test_put_many_of_something_that_is_not_pairs(filled, bad):
    u = Unchanged(filled)
    with pytest.raises(InvalidArgument):
        filled.put_many(bad)
    u.check()


@pytest.mark.parametrize("sync", ["yes", 1, 0.0, b""])
def test_bad_sync_argument(filled, sync):
    u = Unchanged(filled)
    for call in (lambda: filled.put(b"new1", b"v", sync=sync),
                 lambda: filled.delete(b"a", sync=sync),
                 lambda: filled.put_many({b"new1": b"v"}, sync=sync),
                 lambda: _commit_with_sync(filled, sync)):
        with pytest.raises(InvalidArgument, match="sync"):
            call()
    u.check(b"new1")
    assert filled.get(b"a") == b"1"


def _commit_with_sync(db, sync):
    with db.batch(sync=sync) as b:
        b.put(b"new1", b"v")


SCAN_CALLS = {
    "db": lambda db, kw: list(db.scan(**kw)),
    "snapshot": lambda db, kw: _scan_snapshot(db, kw),
}


def _scan_snapshot(db, kw):
    with db.snapshot() as s:
        return list(s.scan(**kw))


BAD_SCAN_ARGS = (
    [(name, bad) for name in ("start", "end", "prefix") for bad in ("a", 1, 1.5, True, [b"a"])]
    + [("limit", bad) for bad in (-1, 1.5, True, False, "3", b"3")]
    + [("reverse", bad) for bad in (None, 0, 1, "yes", b"")]
)


@pytest.mark.parametrize("where", sorted(SCAN_CALLS))
@pytest.mark.parametrize("name, bad", BAD_SCAN_ARGS, ids=[f"{n}={b!r}" for n, b in BAD_SCAN_ARGS])
def test_scan_argument_of_wrong_type(filled, where, name, bad):
    with pytest.raises(InvalidArgument) as info:
        SCAN_CALLS[where](filled, {name: bad})
    assert name in str(info.value)


def test_scan_rejects_bad_arguments_when_called(filled):
    """A bad argument is reported by scan() itself, not at the first next()."""
    with pytest.raises(InvalidArgument):
        filled.scan(limit=-1)
    with pytest.raises(InvalidArgument):
        filled.scan(start="a")


def test_key_of_exactly_max_key_size_works(tmp_path):
    key = b"k" * MAX_KEY
    other = b"k" * (MAX_KEY - 1) + b"l"
    with open_db(tmp_path / "db", block_size=512) as db:
        db.put(key, b"v")
        db[other] = b"w"
        assert db.get(key) == b"v"
        assert key in db
        assert db.get_many([key, other]) == [b"v", b"w"]
        db.flush()  # through a table as well
        assert list(db.scan(prefix=key)) == [(key, b"v")]
        assert list(db.scan(start=key, end=other)) == [(key, b"v")]
        with db.batch() as b:
            b.put(key, b"v2")
        with db.snapshot() as s:
            db.delete(key)
            assert s[key] == b"v2"
        assert key not in db
        db.put(key, b"v3")
        db.compact()
        assert db.verify()["tables"] >= 1
    with open_db(tmp_path / "db") as db:
        assert db[key] == b"v3"
        assert db[other] == b"w"


def test_value_of_exactly_max_value_size_works(tmp_path):
    value = bytes(range(256)) * (SMALL_VALUE_LIMIT // 256)
    assert len(value) == SMALL_VALUE_LIMIT
    with open_db(tmp_path / "db", max_value_size=SMALL_VALUE_LIMIT) as db:
        db.put(b"k", value)
        db.put_many([(b"m", bytearray(value))])
        with db.batch() as b:
            b.put(b"b", memoryview(value))
        db.flush()
        assert db.get_many([b"k", b"m", b"b"]) == [value] * 3
    with open_db(tmp_path / "db", max_value_size=SMALL_VALUE_LIMIT) as db:
        assert db[b"k"] == value


@pytest.fixture(scope="module")
def huge_value():
    """64 MiB + 1 bytes, allocated once for the module."""
    return bytes(range(256)) * (64 * MiB // 256) + b"!"


def test_default_max_value_size(tmp_path, huge_value):
    assert Config().max_value_size == 64 * MiB
    with open_db(tmp_path / "db") as db:
        db.put(b"a", b"1")
        u = Unchanged(db)
        for call in (lambda: db.put(b"k", huge_value),
                     lambda: db.put_many([(b"new1", b"v"), (b"k", huge_value)])):
            with pytest.raises(InvalidArgument) as info:
                call()
            msg = str(info.value)
            assert "max_value_size" in msg and str(64 * MiB) in msg, msg
        u.check(b"k", b"new1")
        exact = memoryview(huge_value)[:-1]
        db.put(b"k", exact)
        got = db.get(b"k")
        assert len(got) == 64 * MiB and got == exact
        del got
        db.flush()
    with open_db(tmp_path / "db") as db:
        assert db.get(b"k") == memoryview(huge_value)[:-1]
