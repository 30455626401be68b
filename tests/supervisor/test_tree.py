"""The supervision tree with fake children and a fake clock: start and stop
order, the three strategies, the three restart types, intensity and period,
escalation through two levels, heartbeats, reports and validation."""

from __future__ import annotations

import logging

import pytest

from lightning_db.errors import CorruptionError, FatalError, InvalidArgument, TransientError
from lightning_db.supervisor import (
    AlertSink,
    ChildInfo,
    ChildSpec,
    Exit,
    Monitor,
    RestartIntensityExceeded,
    Supervisor,
    SupervisorSpec,
)

from .conftest import World, wait_until


def tree(world: World, ids: str = "abc", strategy: str = "one_for_one", **kw) -> Supervisor:
    kw.setdefault("clock", world.clock)
    kw.setdefault("on_escalate", lambda exc: world.log.append(("escalate", exc.supervisor)))
    sup = Supervisor([world.spec(i) for i in ids], strategy, **kw).start()
    world.take_log()
    return sup


# --- start and stop order --------------------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse_including_nested(world):
    specs = [world.spec("a"), SupervisorSpec("sub", [world.spec("b"), world.spec("c")]), world.spec("d")]
    sup = Supervisor(specs, clock=world.clock).start()
    assert world.take_log() == [("start", "a"), ("start", "b"), ("start", "c"), ("start", "d")]
    sup.stop()
    assert world.take_log() == [("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a")]
    sup.stop()                                   # idempotent
    assert world.log == []
    assert [c.state for c in sup.which_children()] == ["stopped"] * 3


def test_a_child_that_does_not_stop_in_time_is_killed(world):
    sup = Supervisor([world.spec("a", stubborn=True), world.spec("b")], clock=world.clock).start()
    world.take_log()
    sup.stop()
    assert world.take_log() == [("stop", "b"), ("stop", "a"), ("kill", "a")]


def test_a_failed_start_stops_the_started_children_in_reverse_and_propagates(world):
    world.fail_starts["c"] = [CorruptionError("bad table")]
    sup = Supervisor([world.spec(i) for i in "abcd"], clock=world.clock)
    with pytest.raises(CorruptionError):
        sup.start()
    assert world.take_log() == [("start", "a"), ("start", "b"), ("start-failed", "c"),
                                ("stop", "b"), ("stop", "a")]
    assert not sup.is_alive()
    with pytest.raises(InvalidArgument, match="already started"):
        sup.start()


# --- strategies ------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_exited_child(world):
    sup = tree(world, "abc", "one_for_one")
    a, c = world.current("a"), world.current("c")
    world.current("b").crash()
    assert sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("start", "b")]
    assert world.current("a") is a and world.current("c") is c and a.alive and c.alive
    assert len(world.instances["b"]) == 2


def test_one_for_all_stops_the_others_in_reverse_then_starts_all_in_order(world):
    sup = tree(world, "abcd", "one_for_all")
    world.current("b").crash()
    sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("stop", "d"), ("stop", "c"), ("stop", "a"),
                                ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d")]
    assert all(len(world.instances[i]) == 2 for i in "abcd")
    assert sup.stats()["restarts"] == 1      # one restart event, however many children


def test_rest_for_one_restarts_the_exited_child_and_those_started_after_it(world):
    sup = tree(world, "abcd", "rest_for_one")
    a = world.current("a")
    world.current("b").crash()
    sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("stop", "d"), ("stop", "c"), ("start", "b"), ("start", "c"), ("start", "d")]
    assert world.current("a") is a and len(world.instances["a"]) == 1


def test_rest_for_one_on_the_last_child_is_one_for_one(world):
    sup = tree(world, "abc", "rest_for_one")
    sup.child_exited("c", "exit code 1")
    assert world.take_log() == [("kill", "c"), ("start", "c")]   # it was still alive: killed first


# --- restart types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("restart", "reason", "restarted"), [
    ("permanent", "normal", True),
    ("permanent", "exit code 1", True),
    ("transient", "normal", False),
    ("transient", "shutdown", False),
    ("transient", "exit code 1", True),
    ("transient", CorruptionError("checksum mismatch"), True),
    ("transient", "hung", True),
    ("temporary", "exit code 1", False),
    ("temporary", "normal", False),
])
def test_restart_types(world, restart, reason, restarted):
    sup = Supervisor([world.spec("a"), world.spec("b", restart)], clock=world.clock).start()
    world.take_log()
    world.current("b").crash(reason)
    assert sup.child_exited("b", reason)
    assert (world.take_log() == [("start", "b")]) is restarted
    ids = [c.id for c in sup.which_children()]
    assert ids == (["a"] if restart == "temporary" else ["a", "b"])   # temporary children are forgotten
    if not restarted and restart == "transient":
        assert sup.which_children()[1].state == "stopped"
    assert sup.stats()["restarts"] == int(restarted)


def test_group_restart_forgets_temporary_siblings_and_leaves_finished_transients(world):
    sup = Supervisor([world.spec("a"), world.spec("t", "temporary"), world.spec("done", "transient"),
                      world.spec("b")], "one_for_all", clock=world.clock).start()
    world.current("done").crash("normal")
    sup.child_exited("done", "normal")
    world.take_log()
    world.current("b").crash()
    sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("stop", "t"), ("stop", "a"), ("start", "a"), ("start", "b")]
    assert [(c.id, c.state) for c in sup.which_children()] == [("a", "running"), ("done", "stopped"),
                                                                 ("b", "running")]


def test_a_replacement_that_fails_to_start_is_retried_as_a_new_exit(world):
    sup = tree(world, "abc", "one_for_all", intensity=5)
    world.fail_starts["b"] = [TransientError("port busy")]
    sup.child_exited("a", "exit code 1")
    assert world.take_log() == [
        ("kill", "a"), ("stop", "c"), ("stop", "b"), ("start", "a"), ("start-failed", "b"),  # first attempt
        ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c"),                       # second
    ]
    assert [c.state for c in sup.which_children()] == ["running"] * 3
    assert sup.stats()["restarts"] == 2
    assert "port busy" in sup.stats()["children"]["b"]["last_exit"]


# --- intensity, period and escalation ----------------------------------------------------------


def test_more_than_intensity_restarts_within_period_stops_all_and_escalates(world):
    got = []
    sup = tree(world, "abc", intensity=3, period=5.0, on_escalate=got.append)
    for _ in range(3):
        world.clock.advance(1.0)
        assert sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("kill", "b"), ("start", "b")] * 3 and got == []
    world.clock.advance(1.0)                     # the 4th restart within 5 s
    sup.child_exited("b", "exit code 1")
    assert world.take_log() == [("kill", "b"), ("stop", "c"), ("stop", "a")]
    [exc] = got
    assert isinstance(exc, RestartIntensityExceeded) and isinstance(exc, FatalError)
    assert exc.supervisor == "root" and exc.child == "b" and "more than 3 restart(s) within 5 s" in str(exc)
    assert not sup.is_alive() and sup.stats()["state"] == "failed"
    assert sup.count_children()["active"] == 0
    assert sup.child_exited("a", "exit code 1") is False    # nothing happens after giving up
    assert sup.poll() == [] and world.log == []


def test_restarts_spread_wider_than_the_period_never_escalate(world):
    got = []
    sup = tree(world, "ab", intensity=2, period=5.0, on_escalate=got.append)
    for _ in range(20):                          # at most 2 restarts in any 5 s
        world.clock.advance(3.0)
        sup.child_exited("a", "exit code 1")
    assert got == [] and sup.is_alive() and sup.stats()["restarts"] == 20
    world.clock.advance(0.1)                     # now 3 restarts within the last 5 s
    sup.child_exited("a", "exit code 1")
    assert len(got) == 1


def test_intensity_zero_gives_up_on_the_first_restart_but_not_on_a_clean_transient_exit(world):
    got = []
    sup = Supervisor([world.spec("a", "transient"), world.spec("b")], intensity=0, clock=world.clock,
                     on_escalate=got.append).start()
    sup.child_exited("a", "normal")
    assert got == [] and sup.is_alive()
    sup.child_exited("b", "exit code 1")
    assert len(got) == 1 and not sup.is_alive()


def test_root_without_on_escalate_raises_after_stopping_everything(world):
    sup = Supervisor([world.spec("a"), world.spec("b")], intensity=0, clock=world.clock).start()
    world.take_log()
    with pytest.raises(RestartIntensityExceeded, match="child 'a'"):
        sup.child_exited("a", CorruptionError("bad block"))
    assert world.take_log() == [("kill", "a"), ("stop", "b")]
    assert sup.stats()["exit_reason"].startswith("RestartIntensityExceeded(")


def test_restarts_that_keep_failing_to_start_escalate(world):
    got = []
    sup = tree(world, "ab", intensity=2, on_escalate=got.append)
    world.fail_starts["a"] = [TransientError("no port")] * 10
    sup.child_exited("a", "exit code 1")
    assert [e for e in world.log if e[0] == "start-failed"] == [("start-failed", "a")] * 2
    [exc] = got
    assert isinstance(exc.reason, TransientError) and exc.__cause__ is exc.reason


def test_escalation_goes_through_two_levels_to_the_roots_fatal_handler(world, caplog):
    """leaf crashes twice -> mid gives up -> root restarts mid (a fresh leaf);
    again -> root gives up too -> on_escalate: the alert sink."""
    sink = AlertSink()
    mid = SupervisorSpec("mid", [world.spec("leaf")], intensity=1, period=10.0)
    root = Supervisor([world.spec("x"), mid, world.spec("y")], intensity=1, period=10.0, clock=world.clock,
                      on_escalate=sink.alert).start()
    world.take_log()

    def crash_leaf():
        world.clock.advance(0.5)
        world.current("leaf").crash("exit code 2")
        return root.poll()

    assert crash_leaf() == [Exit("mid", "leaf", "exit code 2")]
    assert world.take_log() == [("start", "leaf")]          # mid restarts it (1 of 1)
    crash_leaf()                                           # mid: 2 > 1 -> gives up -> root restarts mid
    assert world.take_log() == [("start", "leaf")]
    stats = root.stats()
    assert stats["children"]["mid"]["restarts"] == 1 and stats["state"] == "running"
    assert isinstance(root.which_children()[1].child, Supervisor)
    assert "RestartIntensityExceeded" in stats["children"]["mid"]["last_exit"]
    assert len(world.instances["x"]) == 1                  # one_for_one: x untouched

    with caplog.at_level(logging.CRITICAL, logger="lightning_db.alerts"):
        crash_leaf()
        crash_leaf()                                       # mid gives up again -> root: 2 > 1
    assert world.take_log() == [("start", "leaf"), ("stop", "y"), ("stop", "x")]
    assert not root.is_alive() and root.count_children()["active"] == 0
    assert sink.counts() == {"FatalError": 1}
    [alert] = sink.recent()
    assert alert.source == "supervisor root" and alert.action == "shutdown"
    assert isinstance(root.exit_reason, RestartIntensityExceeded)
    assert isinstance(root.exit_reason.__cause__, RestartIntensityExceeded)
    assert root.exit_reason.__cause__.supervisor == "mid"
    assert [r.levelno for r in caplog.records if r.name == "lightning_db.alerts"] == [logging.CRITICAL]


def test_a_nested_supervisor_in_a_one_for_all_group_is_rebuilt(world):
    sup = Supervisor([world.spec("a"), SupervisorSpec("sub", [world.spec("b"), world.spec("c")])],
                     "one_for_all", clock=world.clock).start()
    world.take_log()
    sup.child_exited("a", "exit code 1")
    assert world.take_log() == [("kill", "a"), ("stop", "c"), ("stop", "b"),   # a still ran: killed first
                                ("start", "a"), ("start", "b"), ("start", "c")]


# --- detection: poll and heartbeats ----------------------------------------------------------------


def test_poll_finds_dead_children_and_reports_their_reason(world):
    sup = tree(world, "abc")
    assert sup.poll() == []
    world.current("c").crash("killed by SIGKILL")
    assert sup.poll() == [Exit("root", "c", "killed by SIGKILL")]
    assert world.take_log() == [("start", "c")]
    assert sup.stats()["children"]["c"]["last_exit"] == "killed by SIGKILL"


def test_missed_heartbeats_get_a_hung_child_killed_and_restarted(world):
    sup = tree(world, "abc", "rest_for_one", heartbeat=lambda child: child.responsive,
               heartbeat_interval=1.0, max_missed_heartbeats=3)
    hung = world.current("b")
    hung.responsive = False
    for _ in range(2):
        world.clock.advance(0.5)
        assert sup.poll() == []                    # not due yet: no beat asked
        world.clock.advance(0.5)
        assert sup.poll() == []                    # a miss
    assert sup.stats()["children"]["b"]["missed_heartbeats"] == 2 and hung.alive
    world.clock.advance(1.0)
    assert sup.poll() == [Exit("root", "b", "hung")]
    assert world.take_log() == [("kill", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]
    assert not hung.alive and world.current("b").alive
    assert sup.stats()["children"]["b"]["hang_kills"] == 1
    assert len(world.instances["a"]) == 1


def test_an_answered_heartbeat_resets_the_misses_and_a_raising_one_is_a_miss(world):
    def beat(child):
        if child.responsive is None:
            raise TransientError("no answer")
        return child.responsive

    sup = tree(world, "ab", heartbeat=beat, heartbeat_interval=1.0, max_missed_heartbeats=2)
    child = world.current("a")
    for answer in (False, True, None, True, False, True):
        child.responsive = answer
        world.clock.advance(1.0)
        assert sup.poll() == []
    child.responsive = None
    world.clock.advance(1.0)
    sup.poll()
    world.clock.advance(1.0)
    assert sup.poll() == [Exit("root", "a", "hung")]


def test_stale_and_unknown_reports(world):
    sup = tree(world, "ab")
    old_pid = world.current("a").pid
    sup.child_exited("a", "exit code 1")
    assert sup.child_exited("a", "exit code 1", pid=old_pid) is False      # earlier incarnation
    assert sup.child_exited("a", "exit code 1", pid=world.current("a").pid) is True
    with pytest.raises(InvalidArgument, match="no child 'zz'"):
        sup.child_exited("zz", "exit code 1")
    sup.stop()
    assert sup.child_exited("a", "exit code 1") is False


# --- reports and validation ------------------------------------------------------------------------


def test_which_children_count_children_and_stats(world):
    sup = Supervisor([world.spec("a"), SupervisorSpec("sub", [world.spec("b")]), world.spec("t", "temporary")],
                     "rest_for_one", 4, 9.0, clock=world.clock).start()
    rows = sup.which_children()
    assert [r[:1] + r[2:] for r in rows] == [("a", "worker", "permanent", "running"),
                                             ("sub", "supervisor", "permanent", "running"),
                                             ("t", "worker", "temporary", "running")]
    assert all(isinstance(r, ChildInfo) for r in rows) and rows[0].child is world.current("a")
    assert sup.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
    sup.child_exited("t", "exit code 1")
    sup.child_exited("a", "exit code 7")
    s = sup.stats()
    assert (s["id"], s["strategy"], s["intensity"], s["period"], s["restarts"]) == \
        ("root", "rest_for_one", 4, 9.0, 1)
    assert s["children"]["a"]["restarts"] == 1 and s["children"]["a"]["last_exit"] == "exit code 7"
    assert s["children"]["a"]["pid"] == world.current("a").pid
    assert s["children"]["sub"]["supervisor"]["children"]["b"]["state"] == "running"
    assert "t" not in s["children"]
    assert sup.count_children() == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}


@pytest.mark.parametrize(("make", "match"), [
    (lambda w: Supervisor([w.spec("a")], "one_for_some"), "strategy"),
    (lambda w: Supervisor([w.spec("a")], intensity=-1), "intensity"),
    (lambda w: Supervisor([w.spec("a")], period=0), "period"),
    (lambda w: Supervisor([w.spec("a"), w.spec("a")]), "duplicate child id 'a'"),
    (lambda w: Supervisor(["a"]), "ChildSpec"),
    (lambda w: Supervisor([w.spec("a")], heartbeat_interval=0), "heartbeat_interval"),
    (lambda w: w.spec("a", "sometimes"), "restart"),
    (lambda w: w.spec(""), "id"),
    (lambda w: SupervisorSpec("s", [], strategy="none"), "strategy"),
    (lambda w: Supervisor([ChildSpec("a", lambda: 42)]).start(), "not a Child"),
])
def test_bad_specs_are_invalid_arguments(world, make, match):
    with pytest.raises(InvalidArgument, match=match):
        make(world)


# --- the monitor thread ----------------------------------------------------------------------------


def test_monitor_thread_polls_until_stopped(world):
    sup = Supervisor([world.spec("a"), world.spec("b")])
    with sup, Monitor(sup, interval=0.005):
        world.current("a").crash()
        wait_until(lambda: len(world.instances["a"]) == 2, what="a restarted by the monitor")
    assert not world.current("a").alive and not world.current("b").alive


def test_monitor_keeps_the_roots_escalation_as_its_error(world):
    sup = Supervisor([world.spec("a")], intensity=0).start()
    monitor = Monitor(sup, interval=0.005).start()
    try:
        world.current("a").crash()
        wait_until(lambda: monitor.error is not None, what="the monitor to stop")
        assert isinstance(monitor.error, RestartIntensityExceeded)
    finally:
        monitor.stop()
        sup.stop()
