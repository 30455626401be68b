"""Helpers shared by the public-contract tests of this package."""

from __future__ import annotations

import collections.abc

import lightning_db as ldb

KiB = 1024
MiB = 1024 * KiB
SMALL_VALUE_LIMIT = 1024


def open_db(path, **options):
    return ldb.open(path, shards=0, **options)



def contents(db):
    return list(db.scan())


class Unchanged:
    """Asserts that nothing was written between construction and check()."""

    def __init__(self, db):
        self.db = db
        self.seq = db.stats()["sequence"]
        self.items = contents(db)

    def check(self, *absent):
        assert self.db.stats()["sequence"] == self.seq
        assert contents(self.db) == self.items
        for k in absent:
            assert self.db.get(k) is None


class Pairs(collections.abc.Mapping):
    """A mapping that may hold unhashable (bad) keys, in order."""

    def __init__(self, pairs):
        self._pairs = list(pairs)

    def items(self):
        return list(self._pairs)

    def __getitem__(self, key):
        for k, v in self._pairs:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._pairs)

    def __len__(self):
        return len(self._pairs)
