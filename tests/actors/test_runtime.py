"""The actor runtime end to end: spawned workers, refs, the actor loop,
failures and poison messages, stop/kill, start failures, fork safety.

Blocking ops wait on files the test creates; nothing sleeps against a clock.
"""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import sys

import msgpack
import pytest
import zmq

from lightning_db import errors
from lightning_db.actors import (
    ActorDead,
    ActorRef,
    ActorStartError,
    PoisonMessage,
    spawn,
)
from lightning_db.actors.actor import EXIT_CRASHED
from lightning_db.actors.runtime import GC_THRESHOLDS
from lightning_db.mailbox import (
    PROTOCOL_VERSION,
    Envelope,
    MailboxError,
    MailboxServer,
    MalformedFrame,
    MsgKind,
    RemoteError,
    Timeout,
    decode,
)

from .sample_actors import (
    BadConstructor,
    BuggyOnStart,
    EchoActor,
    ExitOnStart,
    LetItCrash,
    LockedOnStart,
    QuickSwitch,
    StopRecorder,
)
from .util import gone, wait_until

_n = itertools.count()


@pytest.fixture(scope="module")
def echo(runtime_dir):
    ref = spawn(EchoActor, "module", name="echo", runtime_dir=runtime_dir)
    try:
        yield ref
    finally:
        ref.stop()


def counters(ref: ActorRef) -> dict[str, int]:
    return ref.stats(timeout=30).result(30)["counters"]


# --- asking and telling ----------------------------------------------------------------------


def test_ask_and_tell(echo):
    assert echo.ask("echo", [b"k", {"v": 1}]).result(30) == [b"k", {"v": 1}]
    assert echo.ask("tag").result(30) == ["module", True, "echo"]   # args, on_start, name
    before = echo.ask("calls").result(30)
    echo.tell("echo", "told")
    wait_until(lambda: echo.ask("calls").result(30) >= before + 2, what="the tell")
    assert echo.ask("pid").result(30) == echo.pid != os.getpid()


def test_a_worker_tunes_its_garbage_collector(echo):
    """What start-up allocated is frozen, and young collections run every
    GC_THRESHOLDS[0] allocations, not every 700 (the caller's own settings
    are left alone)."""
    thresholds, frozen = echo.ask("gc").result(30)
    assert thresholds == list(GC_THRESHOLDS) and thresholds[0] > 700
    assert frozen > 0
    assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700


def test_an_actor_sets_its_process_switch_interval(echo, runtime_dir):
    ref = spawn(QuickSwitch, "module", name="quick", runtime_dir=runtime_dir)
    try:
        assert ref.ask("switch").result(30) == 0.002
    finally:
        ref.stop()
    assert echo.ask("switch").result(30) == 0.005            # Python's default, kept
    assert sys.getswitchinterval() == 0.005                  # the caller's own untouched


def test_pipelining_1000_asks_in_flight(echo):
    futures = [echo.ask("add", [i, 1]) for i in range(1000)]
    assert [f.result(60) for f in futures] == [i + 1 for i in range(1000)]


def test_ask_many_is_one_message_of_many_operations(echo):
    before = echo.stats().result(30)["mailbox"]
    futures = echo.ask_many([("echo", i) for i in range(50)])
    assert [f.result(30) for f in futures] == list(range(50))
    after = echo.stats().result(30)["mailbox"]
    assert after["received"] - before["received"] == 51      # 50 + the second _stats
    assert after["messages"] - before["messages"] == 2


def test_a_timeout_is_transient_and_expired_requests_are_not_run(echo, tmp_path):
    before = counters(echo)
    release = str(tmp_path / "release")
    blocked = echo.ask("wait_file", release, timeout=60)
    late = echo.ask("calls", timeout=0.3)             # queued behind the blocked op
    exc = late.exception(60)
    assert isinstance(exc, Timeout) and isinstance(exc, errors.TransientError)
    open(release, "w").close()
    assert blocked.result(60) is True
    after = counters(echo)
    assert after["expired"] == before["expired"] + 1   # "calls" was past its deadline: answered, not run
    assert after["handled"] == before["handled"] + 1   # only wait_file ran
    assert echo.ask("echo", "free").result(30) == "free"


@pytest.mark.parametrize("name", ["WriteStalled", "DatabaseLocked", "DiskFull", "CorruptionError",
                                  "DatabaseShutdown", "InvalidArgument", "TransientError", "FatalError"])
def test_remote_errors_keep_their_taxonomy_class(echo, name):
    exc = echo.ask("raise", [name, f"{name} happened"]).exception(30)
    assert type(exc) is getattr(errors, name)
    assert errors.classify(exc) is errors.classify(getattr(errors, name)("x"))
    assert str(exc) == f"{name} happened"


def test_unknown_op_is_invalid_argument_and_unencodable_reply_is_malformed(echo):
    assert type(echo.ask("no-such-op").exception(30)) is errors.InvalidArgument
    assert type(echo.ask("unencodable").exception(30)) is MalformedFrame
    assert echo.ask("echo", 1).result(30) == 1


def test_malformed_frames_get_an_error_and_the_actor_keeps_serving(echo):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    try:
        sock.connect(echo.address)
        before = echo.stats().result(30)["mailbox"]["malformed"]
        sock.send(b"\x00not an envelope")
        sock.send(bytes([PROTOCOL_VERSION]) + msgpack.packb([5, 1, "echo", "not a deadline", None, None]))
        sock.send(Envelope(6, MsgKind.REPLY, "stray", 0.0, None, None).encode())   # not for an actor
        sock.send(Envelope(7, MsgKind.REQUEST, "echo", 0.0, None, "alive").encode())
        answers = [decode(sock.recv()) for _ in range(3)]
        assert [(a.id, a.kind) for a in answers] == [(0, MsgKind.ERROR), (5, MsgKind.ERROR), (7, MsgKind.REPLY)]
        assert answers[0].payload[0] == answers[1].payload[0] == "MalformedFrame"
        assert answers[2].payload == "alive"
        stats = echo.stats().result(30)
        assert stats["mailbox"]["malformed"] == before + 2 and stats["counters"]["unexpected"] >= 1
    finally:
        sock.close(0)
    assert echo.ping().result(30)["pid"] == echo.pid


def test_other_control_ops_go_to_on_control(echo):
    assert echo.control("_checkpoint", "dir").result(30) == ["checkpointed", "dir"]
    assert type(echo.control("_nope").exception(30)) is errors.InvalidArgument


def test_ping_is_a_heartbeat_and_stats_report_placement(echo):
    first, second = echo.ping().result(30), echo.ping().result(30)
    assert first["pid"] == echo.pid and second["beat"] == first["beat"] + 1
    stats = echo.stats().result(30)
    assert stats["name"] == "echo" and stats["address"] == echo.address
    assert stats["placement"]["cpus"] == sorted(os.sched_getaffinity(0))   # not pinned: inherited
    assert stats["actor"]["calls"] >= 1


# --- failures and poison messages ------------------------------------------------------------


def test_a_message_that_keeps_crashing_becomes_poison(echo):
    payload = f"poison-{next(_n)}"
    calls = echo.ask("calls").result(30)
    for _ in range(3):
        exc = echo.ask("crash", payload).exception(30)
        assert type(exc) is RemoteError and exc.remote_name == "RuntimeError"
    exc = echo.ask("crash", payload).exception(30)
    assert type(exc) is PoisonMessage and isinstance(exc, errors.RecoverableError)
    assert echo.ask("calls").result(30) == calls + 3 + 1          # on_receive was not called a 4th time
    # another payload of the same op is another message; the actor is healthy
    assert type(echo.ask("crash", payload + "-other").exception(30)) is RemoteError
    assert echo.ask("echo", "ok").result(30) == "ok"


def test_a_success_resets_the_crash_count(echo):
    key = f"flaky-{next(_n)}"
    for _ in range(2):      # two rounds of (2 crashes, then success): 4 crashes, never 3 in a row
        for _ in range(2):
            assert type(echo.ask("flaky", [key, 2]).exception(30)) is RemoteError
        assert echo.ask("flaky", [key, 2]).result(30) == "ok"


def test_deliberate_lightning_errors_are_answers_not_crashes(echo):
    for _ in range(5):
        assert type(echo.ask("raise", ["DiskFull", "full"]).exception(30)) is errors.DiskFull


def test_on_failure_that_raises_lets_the_actor_crash(runtime_dir):
    ref = spawn(LetItCrash, name=f"crash{next(_n)}", runtime_dir=runtime_dir)
    try:
        assert ref.ask("x").result(30) == "x"
        exc = ref.ask("boom").exception(30)
        assert type(exc) is errors.CorruptionError
        wait_until(lambda: not ref.is_alive(), what="the crashed actor to exit")
    finally:
        code = ref.stop()
    assert code == EXIT_CRASHED


# --- stopping --------------------------------------------------------------------------------


def test_stop_runs_on_stop_and_reaps(runtime_dir, tmp_path):
    marker = tmp_path / "stopped"
    ref = spawn(StopRecorder, str(marker), name=f"rec{next(_n)}", runtime_dir=runtime_dir)
    pid = ref.pid
    assert ref.ask("hello").result(30) == "hello"
    assert ref.stop() == 0
    assert marker.read_text() == "stopped"
    assert gone(pid) and not ref.is_alive()
    with pytest.raises(ActorDead):
        ref.ask("hello")
    assert ref.stop() == 0      # idempotent


def test_stop_escalates_to_sigterm_when_the_actor_hangs(runtime_dir, tmp_path):
    ref = spawn(EchoActor, name=f"hung{next(_n)}", runtime_dir=runtime_dir)
    stuck = ref.ask("wait_file", str(tmp_path / "never"), timeout=None)
    code = ref.stop(timeout=0.5)   # the _stop queues behind the hung op: SIGTERM follows
    assert code == -15
    # The connection drops as the process dies: whichever the client sees
    # first, the lost peer (transient) or the stop's own verdict, fails the ask.
    assert type(stuck.exception(30)) in (ActorDead, errors.PeerLost)


def test_kill_and_restart_at_the_same_address(runtime_dir):
    name = f"kill{next(_n)}"
    ref = spawn(EchoActor, name=name, runtime_dir=runtime_dir)
    pid = ref.pid
    ref.kill()
    assert gone(pid) and not ref.is_alive()
    with pytest.raises(ActorDead):
        ref.ask("echo", 1)
    again = spawn(EchoActor, name=name, runtime_dir=runtime_dir)    # over the stale socket file
    try:
        assert again.address == ref.address and again.ask("echo", 2).result(30) == 2
    finally:
        again.stop()


def test_a_live_actor_keeps_its_address(echo, runtime_dir):
    with pytest.raises(MailboxError, match="failed to start"):
        spawn(EchoActor, name=echo.name, runtime_dir=runtime_dir)
    assert echo.ask("echo", "mine").result(30) == "mine"


# --- starting --------------------------------------------------------------------------------


def test_an_on_start_error_with_a_taxonomy_class_is_raised_as_itself(runtime_dir):
    with pytest.raises(errors.DatabaseLocked, match="failed to start") as info:
        spawn(LockedOnStart, name=f"locked{next(_n)}", runtime_dir=runtime_dir)
    assert "locked by pid 1" in str(info.value)


@pytest.mark.parametrize("cls, code", [(BuggyOnStart, 3), (BadConstructor, 3), (ExitOnStart, 7)])
def test_a_child_that_fails_or_dies_during_start_is_a_clear_error(runtime_dir, cls, code):
    with pytest.raises(ActorStartError) as info:
        spawn(cls, name=f"bad{next(_n)}", runtime_dir=runtime_dir)
    assert info.value.exitcode == code
    assert f"exit code {code}" in str(info.value)


def test_a_second_actor_on_the_same_address_fails_to_start(runtime_dir):
    holder = MailboxServer("tcp://127.0.0.1:*")
    try:
        with pytest.raises(MailboxError, match="failed to start") as info:
            spawn(EchoActor, name=f"dup{next(_n)}", address=holder.address)
        assert isinstance(info.value, errors.RecoverableError)
    finally:
        holder.close()


@pytest.mark.parametrize("kwargs", [
    {"name": "bad name"}, {"name": ""}, {"name": "ok", "start_method": "fork"},
    {"name": "ok", "cpu": 10_000}, {"name": "ok"},                       # no address nor runtime_dir
    {"name": "ok", "address": "ipc:///" + "x" * 200},
])
def test_bad_spawn_options_are_invalid_arguments(kwargs):
    with pytest.raises(errors.InvalidArgument):
        spawn(EchoActor, **kwargs)


def test_non_actors_and_unpicklable_arguments_are_invalid(runtime_dir):
    with pytest.raises(errors.InvalidArgument):
        spawn(dict, name="x", runtime_dir=runtime_dir)            # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="picklable"):
        spawn(EchoActor, lambda: 1, name=f"pk{next(_n)}", runtime_dir=runtime_dir)


# --- refs and fork safety --------------------------------------------------------------------


def test_a_pickled_ref_reaches_the_same_actor(echo):
    copy = pickle.loads(pickle.dumps(echo))
    assert (copy.address, copy.pid, copy.name) == (echo.address, echo.pid, echo.name)
    assert copy.ask("echo", "via copy").result(30) == "via copy" and copy.is_alive()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_from_a_process_with_an_open_client(echo, runtime_dir, method):
    in_flight = [echo.ask("echo", i) for i in range(200)]
    ref = spawn(EchoActor, method, name=f"{method}{next(_n)}", runtime_dir=runtime_dir, start_method=method)
    try:
        assert ref.ask("tag").result(30) == [method, True, ref.name]
        assert [f.result(60) for f in in_flight] == list(range(200))
        assert echo.ask("echo", "still").result(30) == "still"
    finally:
        assert ref.stop() == 0


def test_a_fork_of_the_owner_breaks_neither_process(echo):
    assert echo.ask("echo", "before").result(30) == "before"      # the ref has a live client
    pid = os.fork()
    if pid == 0:   # child: never return into pytest
        code = 1
        try:
            if echo.ask("echo", "child").result(30) == "child" and echo.is_alive():
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert echo.ask("echo", "parent").result(30) == "parent"
