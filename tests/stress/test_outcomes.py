"""What an exception means for the history: "fail" only when the operation
certainly had no effect, else "info"; and its taxonomy class."""

from __future__ import annotations

import pytest
from redis import exceptions as rx

from lightning_db import errors as e
from lightning_db.stress.outcomes import outcome, reopen_needed, taxonomy

pytestmark = pytest.mark.stress

NOTHING_WRITTEN = [e.TransactionConflict("lost"), e.TransactionExpired("old"), e.InvalidArgument("bad key"),
                   rx.WatchError("watched key changed"), rx.ExecAbortError("Transaction discarded"), rx.ResponseError("ERR wrong number of arguments for 'set'"),
                   rx.ResponseError("ERR key must be 1 to 65536 bytes"), rx.ResponseError("WRONGTYPE no")]
MAYBE_WRITTEN = [e.Timeout("deadline"), e.PeerLost("dropped"), e.DatabaseShutdown("gone"), e.CircuitOpen("open"),
                 e.DiskFull("ENOSPC"), e.ActorDead("dead"), e.MailboxClosed("closed"), ConnectionResetError(),
                 rx.ConnectionError("Connection closed by server."), rx.TimeoutError("Timeout reading"),
                 rx.ResponseError("TRYAGAIN PeerLost: the connection dropped"),
                 rx.TryAgainError("PeerLost: the connection dropped"),
                 rx.WatchError("A ConnectionError occurred while watching one or more keys"),
                 rx.ResponseError("ERR CircuitOpen: shard 1"), rx.ResponseError("ERR BackgroundError: flush"),
                 RuntimeError("not ours")]


@pytest.mark.parametrize("exc", NOTHING_WRITTEN, ids=repr)
@pytest.mark.parametrize("f", ["write", "delete", "txn"])
def test_writes_that_certainly_wrote_nothing_fail(f, exc):
    assert outcome(f, exc) == "fail"


@pytest.mark.parametrize("exc", MAYBE_WRITTEN, ids=repr)
@pytest.mark.parametrize("f", ["write", "delete", "txn"])
def test_writes_that_may_have_landed_are_unknown(f, exc):
    assert outcome(f, exc) == "info"


@pytest.mark.parametrize("exc", NOTHING_WRITTEN + MAYBE_WRITTEN, ids=repr)
def test_reads_that_raised_fail(exc):
    assert outcome("read", exc) == "fail"


@pytest.mark.parametrize("exc, name", [
    (e.PeerLost("x"), "TransientError"), (e.TransactionConflict("x"), "TransientError"),
    (e.CircuitOpen("x"), "RecoverableError"), (e.DiskFull("x"), "RecoverableError"),
    (e.CorruptionError("x"), "CriticalError"), (e.ActorDead("x"), "CriticalError"),
    (e.DatabaseShutdown("x"), "FatalError"), (e.InvalidArgument("x"), "InvalidArgument"),
    (rx.ResponseError("TRYAGAIN Timeout: slow"), "TransientError"),
    (rx.ResponseError("TRYAGAIN something"), "TransientError"),
    (rx.TryAgainError("PeerLost: the connection dropped"), "TransientError"),
    (rx.TryAgainError("busy"), "TransientError"),
    (rx.ResponseError("ERR CircuitOpen: shard 0"), "RecoverableError"),
    (rx.ResponseError("ERR DatabaseShutdown: gone"), "FatalError"),
    (rx.ResponseError("ERR syntax error"), "InvalidArgument"),
    (rx.WatchError("x"), "TransientError"),
    (rx.ConnectionError("x"), "connection"), (ConnectionResetError(), "connection"),
    (RuntimeError("x"), "other"),
])
def test_taxonomy(exc, name):
    assert taxonomy(exc) == name


def test_reopen_after_fatal_errors_and_broken_connections_only():
    assert reopen_needed(e.DatabaseShutdown("x")) and reopen_needed(e.DatabaseClosed("x"))
    assert reopen_needed(rx.ConnectionError("x")) and reopen_needed(OSError("x"))
    assert not reopen_needed(e.PeerLost("x")) and not reopen_needed(e.CircuitOpen("x"))
    assert not reopen_needed(rx.ResponseError("TRYAGAIN x")) and not reopen_needed(rx.WatchError("x"))
    assert reopen_needed(rx.WatchError("A ConnectionError occurred while watching one or more keys"))
