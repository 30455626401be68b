"""Intents of prepared transactions (storage/txn.py ``ConflictTracker``)."""

from __future__ import annotations

import pytest

from lightning_db.errors import TransactionConflict
from lightning_db.storage.txn import ConflictTracker, TxCheck


def _tracker() -> ConflictTracker:
    t = ConflictTracker(max_age=60, max_keys=10_000)
    t.begin(0, 0)
    return t


def test_a_key_read_by_two_prepared_transactions_stays_read_until_both_end():
    """Two serializable transactions read k and are prepared; one of them
    ends. A write of k must still conflict with the other: its read intent
    is not dropped with the first one's (write skew otherwise: G2, found by
    the stress harness with 8 clients)."""
    t = _tracker()
    for txid in (b"t1", b"t2"):
        t.check(TxCheck(0, reads=[b"k"], serializable=True), txid)
        t.hold(txid, [], [b"k"])
    assert t.release(b"t2")
    with pytest.raises(TransactionConflict, match="read by prepared transaction 7431"):
        t.check(TxCheck(0, writes=[b"k"]), b"t3")
    t.check(TxCheck(0, writes=[b"k"]), b"t1")            # its own read is no conflict
    assert t.release(b"t1")
    t.check(TxCheck(0, writes=[b"k"]), b"t3")            # nobody reads k any more
    assert t.stats()["tx_intents"] == 0 and not t._read_intents


def test_holding_again_replaces_a_transactions_own_intents():
    t = _tracker()
    t.hold(b"t1", [b"a"], [b"r1"])
    t.hold(b"t2", [], [b"r1"])
    t.hold(b"t1", [b"b"], [b"r2"])                        # a new prepare of t1: its old intents go
    t.check(TxCheck(0, writes=[b"a"]), b"t3")
    with pytest.raises(TransactionConflict, match="read by prepared transaction 7432"):
        t.check(TxCheck(0, writes=[b"r1"]), b"t3")       # still read by t2
    with pytest.raises(TransactionConflict, match="held by prepared transaction 7431"):
        t.check(TxCheck(0, reads=[b"b"]), b"t3")
