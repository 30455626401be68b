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


def test_a_release_drops_only_the_intents_that_are_still_its_own():
    """A write intent taken over by another transaction (a state a replay
    can leave) stays with that one when the first is released; a key
    written twice by one transaction is released once, without error."""
    t = _tracker()
    t.hold(b"t1", [b"a", b"b", b"a"])
    t.hold(b"t2", [b"b"])                                  # b's intent is t2's now
    assert t.release(b"t1")
    assert t._write_intents == {b"b": b"t2"}
    t.check_plain([b"a", b"c"])                           # nobody holds a any more
    with pytest.raises(TransactionConflict, match="key b'b' is held by prepared transaction 7432"):
        t.check_plain([b"a", b"b"])
    assert t.release(b"t2") and not t._write_intents
    t.hold(b"t3", [b"x", b"x"])
    assert t.release(b"t3") and not t._write_intents and not t.release(b"t3")


def test_a_check_names_the_key_that_was_written_after_the_snapshot():
    t = _tracker()
    t.record(1, [b"a", b"b", b"a"])                        # a at seq 3 (its later write), b at 2
    assert t._last == {b"a": 3, b"b": 2}
    t.check(TxCheck(3, writes=[b"a"], reads=[b"b"]), b"t1")
    with pytest.raises(TransactionConflict, match="key b'b' was written after"):
        t.check(TxCheck(1, writes=[b"c"], reads=[b"b"]), b"t1")
    with pytest.raises(TransactionConflict, match="key b'a' was written after"):
        t.check(TxCheck(2, writes=[b"a", b"b"]), b"t1")
    t.check(TxCheck(2, writes=[], reads=[]), b"t1")       # nothing to check


def test_a_transaction_may_check_keys_under_its_own_write_intents():
    t = _tracker()
    t.hold(b"t1", [b"a"])
    t.check(TxCheck(None, writes=[b"a", b"z"]), b"t1")
    t.check(TxCheck(None, writes=[b"z"]), b"t2")           # disjoint from every intent
    with pytest.raises(TransactionConflict, match="key b'a' is held by prepared transaction 7431"):
        t.check(TxCheck(None, writes=[b"z"], reads=[b"a"]), b"t2")
