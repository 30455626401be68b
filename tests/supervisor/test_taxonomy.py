"""action_for dispatches on the class alone; AlertSink logs, counts and
calls hooks, and a failing hook never stops an alert."""

from __future__ import annotations

import logging

import pytest

from lightning_db import errors
from lightning_db.supervisor import AlertSink, CircuitOpen, RestartIntensityExceeded, action_for
from lightning_db.supervisor.taxonomy import Alert

CASES = [
    (errors.TransientError("x"), "retry"),
    (errors.WriteStalled("x"), "retry"),
    (errors.TransactionConflict("x"), "retry"),
    (errors.RecoverableError("x"), "break"),
    (errors.DatabaseLocked("x"), "break"),
    (errors.IOFault("x"), "break"),
    (errors.DiskFull("x"), "break"),
    (CircuitOpen("x", breaker="b", retry_after=0.0), "break"),
    (errors.CriticalError("x"), "restore"),
    (errors.CorruptionError("x", path="000001.ldb"), "restore"),
    (errors.BackgroundError("x"), "restore"),
    (errors.FatalError("x"), "shutdown"),
    (errors.DatabaseClosed("x"), "shutdown"),
    (errors.DatabaseShutdown("x"), "shutdown"),
    (RestartIntensityExceeded("x", supervisor="root", child="a", reason="boom"), "shutdown"),
    (errors.InvalidArgument("x"), "reject"),
    (KeyError("a bug"), "restore"),
    (OSError(5, "EIO"), "restore"),
    (KeyboardInterrupt(), "shutdown"),
    (SystemExit(1), "shutdown"),
]


@pytest.mark.parametrize(("exc", "action"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_action_for(exc, action):
    assert action_for(exc) == action


def test_every_error_class_of_the_package_has_an_action():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.LightningError) and c is not errors.LightningError]
    assert len(classes) >= 14
    for cls in classes:
        assert action_for(cls.__new__(cls)) in ("retry", "break", "restore", "shutdown", "reject")


def test_the_message_is_never_consulted():
    assert action_for(errors.FatalError("transient: please retry")) == "shutdown"
    assert action_for(errors.TransientError("FATAL corruption, shut down")) == "retry"


def test_alert_sink_logs_counts_and_calls_hooks(caplog):
    seen: list[Alert] = []
    sink = AlertSink([seen.append], clock=lambda: 1234.5)
    with caplog.at_level(logging.INFO, logger="lightning_db.alerts"):
        sink.alert(errors.DiskFull("disk full on shard 2"), source="shard 2")
        sink.alert(errors.CorruptionError("bad block"), source="shard 3")
        sink.alert(RestartIntensityExceeded("gave up", supervisor="root", child="s1", reason="x"))
        sink(errors.DiskFull("again"), source="shard 2")
    assert sink.counts() == {"RecoverableError": 2, "CriticalError": 1, "FatalError": 1}
    assert [a.source for a in seen] == ["shard 2", "shard 3", "supervisor root", "shard 2"]
    assert seen[2] == Alert(1234.5, "supervisor root", "FatalError", "RestartIntensityExceeded", "gave up",
                            "shutdown")
    records = [r for r in caplog.records if r.name == "lightning_db.alerts"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR, logging.CRITICAL, logging.WARNING]
    assert "disk full on shard 2" in records[0].getMessage() and "-> break" in records[0].getMessage()
    s = sink.stats()
    assert s["total"] == 4 and s["by_type"]["DiskFull"] == 2 and s["last"] is seen[-1]
    assert sink.recent() == seen


def test_a_failing_hook_is_logged_and_the_others_still_run(caplog):
    seen = []

    def broken(alert):
        raise RuntimeError("pager down")

    sink = AlertSink([broken, seen.append])
    with caplog.at_level(logging.ERROR, logger="lightning_db.alerts"):
        sink.alert(errors.FatalError("manifest unreadable"), action="shutdown")
    assert len(seen) == 1 and sink.stats()["hook_failures"] == 1
    assert any("pager down" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_recent_keeps_the_last_alerts_only():
    sink = AlertSink(keep=3)
    for i in range(5):
        sink.alert(errors.TransientError(str(i)))
    assert [a.message for a in sink.recent()] == ["2", "3", "4"]
    assert sink.counts() == {"TransientError": 5}
