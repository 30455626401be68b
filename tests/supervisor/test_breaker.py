"""The circuit breaker's state machine on a fake clock: closed -> open after
consecutive counted failures, fail fast while open, half-open probes after
reset_timeout, probe success closes and probe failure re-opens."""

from __future__ import annotations

import pytest

from lightning_db.errors import (
    CorruptionError,
    DiskFull,
    InvalidArgument,
    IOFault,
    RecoverableError,
    TransientError,
)
from lightning_db.supervisor import CircuitBreaker, CircuitOpen
from lightning_db.supervisor.breaker import BreakerStats

from .conftest import FakeClock


def fail(exc: BaseException):
    def fn():
        raise exc
    return fn


def ok():
    return "ok"


def make(clock: FakeClock, **kw) -> CircuitBreaker:
    kw.setdefault("failure_threshold", 3)
    kw.setdefault("reset_timeout", 2.0)
    return CircuitBreaker(name="shard-1", clock=clock, **kw)


def trip(breaker: CircuitBreaker, n: int, exc: BaseException | None = None) -> None:
    for _ in range(n):
        with pytest.raises(type(exc) if exc else IOFault):
            breaker.call(fail(exc or IOFault("EIO")))


def test_consecutive_failures_open_the_breaker_and_calls_then_fail_fast():
    clock = FakeClock()
    b = make(clock)
    trip(b, 2)
    assert b.state == "closed"
    trip(b, 1)
    assert b.state == "open"
    calls = []
    clock.advance(0.5)
    with pytest.raises(CircuitOpen) as info:
        b.call(lambda: calls.append(1))
    assert calls == []                                  # fn never ran
    exc = info.value
    assert isinstance(exc, RecoverableError) and exc.breaker == "shard-1"
    assert exc.retry_after == pytest.approx(1.5)
    assert "'shard-1' is open" in str(exc) and "half-open in 1.500 s" in str(exc)


def test_a_success_resets_the_consecutive_count():
    b = make(FakeClock())
    for _ in range(5):
        trip(b, 2)
        assert b.call(ok) == "ok"
    assert b.state == "closed" and b.stats().total_failures == 10 and b.stats().failures == 0


@pytest.mark.parametrize(("exc", "counts"), [
    (RecoverableError("failing"), True),
    (DiskFull("ENOSPC"), True),
    (TimeoutError("no answer"), True),
    (CircuitOpen("inner", breaker="x", retry_after=0.0), True),
    (InvalidArgument("empty key"), False),
    (TransientError("busy"), False),
    (CorruptionError("checksum"), False),
    (KeyError("bug"), False),
])
def test_which_failures_count(exc, counts):
    b = make(FakeClock(), failure_threshold=1)
    with pytest.raises(type(exc)):
        b.call(fail(exc))
    assert (b.state == "open") is counts


def test_invalid_arguments_between_failures_neither_count_nor_reset():
    b = make(FakeClock())
    trip(b, 2)
    trip(b, 3, InvalidArgument("bad"))
    assert b.state == "closed" and b.stats().failures == 2
    trip(b, 1)
    assert b.state == "open"


def test_half_open_after_reset_timeout_then_a_probe_success_closes():
    clock = FakeClock()
    b = make(clock)
    trip(b, 3)
    clock.advance(1.999)
    assert b.state == "open"
    clock.advance(0.001)
    assert b.state == "half-open"
    b.before_call()                                      # the one probe
    with pytest.raises(CircuitOpen, match="half-open and its 1 probe call"):
        b.before_call()
    b.on_success()
    assert b.state == "closed"
    trip(b, 2)
    assert b.state == "closed"                          # counting starts afresh


def test_a_probe_failure_reopens_for_another_reset_timeout():
    clock = FakeClock()
    b = make(clock)
    trip(b, 3)
    clock.advance(2.0)
    trip(b, 1)
    s = b.stats()
    assert (s.state, s.opened, s.last_change) == ("open", 2, clock.now)
    clock.advance(1.0)
    with pytest.raises(CircuitOpen):
        b.call(ok)
    clock.advance(1.0)
    assert b.call(ok) == "ok" and b.state == "closed"


def test_half_open_lets_max_calls_probes_through_and_a_neutral_outcome_frees_a_slot():
    clock = FakeClock()
    b = make(clock, half_open_max_calls=2)
    trip(b, 3)
    clock.advance(2.0)
    b.before_call()
    b.before_call()
    with pytest.raises(CircuitOpen):
        b.before_call()
    b.on_failure(InvalidArgument("bad key"))            # answered: frees its slot, changes nothing
    assert b.state == "half-open"
    b.before_call()
    b.on_failure(TimeoutError())
    assert b.state == "open"


def test_results_of_calls_admitted_before_opening_are_ignored_while_open():
    clock = FakeClock()
    b = make(clock)
    b.before_call()                                      # a slow call, admitted while closed
    trip(b, 3)
    b.on_success()                                       # it ends now: says nothing of the shard
    assert b.state == "open"
    b.on_failure(IOFault("late"))
    assert b.stats().opened == 1


def test_stats_and_reset():
    clock = FakeClock()
    b = make(clock)
    assert b.stats() == BreakerStats("shard-1", "closed", 0, 0, 0, 0, clock.now, 0)
    trip(b, 3)
    clock.advance(0.5)
    with pytest.raises(CircuitOpen):
        b.call(ok)
    s = b.stats()
    assert (s.state, s.failures, s.total_failures, s.opened, s.rejected, s.last_change) == \
        ("open", 3, 3, 1, 1, clock.now - 0.5)
    b.reset()
    assert b.state == "closed" and b.stats().failures == 0


@pytest.mark.parametrize("kw", [{"failure_threshold": 0}, {"reset_timeout": -1}, {"half_open_max_calls": 0}])
def test_bad_parameters_are_invalid_arguments(kw):
    with pytest.raises(InvalidArgument):
        CircuitBreaker(**kw)
