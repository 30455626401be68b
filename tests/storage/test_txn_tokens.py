"""Registrations named by a caller's token (storage/txn.py ``ConflictTracker``):
a transaction's registration and its release may travel on different
connections, so either may arrive first, and a second thread may register
the same snapshot again before its checks. Time is a fake clock here."""

from __future__ import annotations

import types

import pytest

from lightning_db.storage import txn
from lightning_db.storage.txn import ConflictTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(txn, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def _registered(t: ConflictTracker) -> int:
    return t.stats()["tx_registered"]


def test_a_token_registered_twice_is_one_registration(clock):
    t = ConflictTracker(max_age=60, max_keys=10_000)
    t.begin(5, 5, token=11)
    t.begin(5, 7, token=11)                 # sent again by the committing thread
    assert _registered(t) == 1 and t.floor == 5
    assert t.end(5, 11) is True
    assert _registered(t) == 0 and t.end(5, 11) is True      # ended twice: nothing left to hold


def test_a_registration_that_arrives_after_its_release_holds_nothing(clock):
    t = ConflictTracker(max_age=60, max_keys=10_000, lag=10)
    t.begin(3, 3, token=1)                  # another transaction keeps the shard tracking
    assert t.end(4, 22) is True             # the release overtook the registration
    t.begin(4, 9, token=22)                 # the registration, late: nothing held
    t.begin(4, 9, token=22)
    assert _registered(t) == 1 and t.floor == 3
    # Registered again by the committing thread, released, then the first
    # registration (from the thread that took the snapshot) comes late.
    t.begin(5, 9, token=33)
    assert t.end(5, 33) is True
    t.begin(5, 9, token=33)
    assert _registered(t) == 1
    assert t.end(3, 1) is True and _registered(t) == 0


def test_an_expired_tokens_release_answers_false_and_a_late_register_stays_out(clock):
    t = ConflictTracker(max_age=0.2, max_keys=10_000)
    t.begin(1, 1, token=7)
    clock.now += 0.3
    t.begin(2, 2, token=8)                  # any later registration expires the stale one
    assert _registered(t) == 1 and t.stats()["tx_expired"] == 1
    t.begin(1, 2, token=7)                  # registered again after it expired: refused
    assert _registered(t) == 1
    assert t.end(1, 7) is False and t.end(2, 8) is True and _registered(t) == 0


def test_tokens_are_forgotten_once_nothing_of_theirs_can_still_come(clock):
    """A released token is kept for the lag (how late a registration may
    be), an expired one for max_age (by then its caller has ended it)."""
    t = ConflictTracker(max_age=0.4, max_keys=10_000, lag=0.1)
    t.begin(1, 1, token=5)
    t.end(9, 99)                            # a release whose registration was lost
    clock.now += 0.5
    t.begin(2, 2, token=6)                  # expires 5; the release of 99 is too old to keep
    assert 99 not in t._ended and 5 in t._gone
    clock.now += 0.3
    assert t.end(2, 6) is True              # 6 was registered 0.3 s ago: still live
    assert 5 in t._gone and t._ended == {6}
    clock.now += 0.2
    t.expire()
    assert not t._gone and not t._ended and not t._ended_at


def test_registrations_without_a_token_are_counted_per_seq_as_before(clock):
    t = ConflictTracker(max_age=60, max_keys=10_000)
    t.begin(4, 4)
    t.begin(4, 4)
    assert _registered(t) == 2
    assert t.end(4) is True and t.end(4) is True and t.end(4) is False
    assert _registered(t) == 0
