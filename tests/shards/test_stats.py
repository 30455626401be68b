"""``db.stats()`` of a sharded database while a shard does not answer.

Stats are for watching a shard that is being restarted too: a shard whose
worker keeps failing with a transient error gets ``{"shard_id", "error"}``
with its worker (from the node) and breaker, the totals cover the shards
that answered; a fatal error still ends the call.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

import lightning_db as ldb
from lightning_db.errors import DatabaseShutdown, PeerLost
from lightning_db.shards import router as router_mod


def _failing(exc: Exception):
    def ask(*args, **kwargs) -> Future:
        f: Future = Future()
        f.set_exception(exc)
        return f
    return ask


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setattr(router_mod, "RETRY_ATTEMPTS", 2)       # the backoff, kept short
    d = ldb.open(tmp_path / "db", shards=2)
    d.put_many({b"k%03d" % i: b"v" for i in range(100)})
    yield d
    d.close()


def test_a_shard_that_does_not_answer_is_reported_with_its_error(db, monkeypatch):
    whole = db.stats()
    assert all("error" not in s for s in whole["shards"])
    for name in ("ask", "ask_here"):
        monkeypatch.setattr(db.refs[1], name, _failing(PeerLost("the connection dropped (test)")))
    s = db.stats()
    down, up = s["shards"][1], s["shards"][0]
    assert down["shard_id"] == 1 and down["error"].startswith("PeerLost: the connection dropped (test)")
    assert set(down) == {"shard_id", "error", "worker", "placement", "breaker"} and down["placement"] is None
    assert down["worker"]["pid"] == whole["shards"][1]["worker"]["pid"]     # the node still answers for it
    assert down["breaker"]["state"]
    assert up["shard_id"] == 0 and "error" not in up
    for name in ("snapshots", "flushes"):                   # totals over the shards that answered
        assert s[name] == up[name]


def test_a_fatal_error_of_a_shard_still_ends_the_call(db, monkeypatch):
    for name in ("ask", "ask_here"):
        monkeypatch.setattr(db.refs[0], name, _failing(DatabaseShutdown("the node is gone (test)")))
    with pytest.raises(DatabaseShutdown):
        db.stats()
