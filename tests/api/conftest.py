"""Fixtures of the public-contract tests: an in-process database, empty or with a few keys."""

from __future__ import annotations

import pytest

from tests.api.support import SMALL_VALUE_LIMIT, open_db


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "db", max_value_size=SMALL_VALUE_LIMIT)
    yield d
    d.close()


@pytest.fixture
def filled(db):
    """A database holding a few keys, some in a table and some in the memtable."""
    db.put_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    db.flush()
    db.put_many({b"d": b"4", b"e": b""})
    db.delete(b"b")
    return db
