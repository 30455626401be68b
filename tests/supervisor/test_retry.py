"""retry() and Backoff: only TransientError is retried, delays are full
jitter within min(cap, base * 2**n), attempts and the deadline bound it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_db.errors import (
    CorruptionError,
    CriticalError,
    DatabaseShutdown,
    DiskFull,
    FatalError,
    InvalidArgument,
    RecoverableError,
    TransactionConflict,
    TransientError,
    WriteStalled,
)
from lightning_db.supervisor import Backoff, CircuitOpen, retry

from .conftest import FakeClock


class Flaky:
    """Raises the given exceptions in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class MaxRng:
    """uniform(a, b) returns b: the longest delay full jitter allows."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


def test_transient_errors_are_retried_until_success():
    clock = FakeClock()
    fn = Flaky(WriteStalled("stall"), TransactionConflict("lost"), TransientError("again"))
    assert retry(fn, attempts=5, sleep=clock.sleep, clock=clock, rng=random.Random(1)) == "ok"
    assert fn.calls == 4 and len(clock.slept) == 3


def test_when_attempts_run_out_the_last_transient_error_is_raised():
    clock = FakeClock()
    errors = [TransientError(f"try {i}") for i in range(5)]
    fn = Flaky(*errors)
    with pytest.raises(TransientError) as info:
        retry(fn, attempts=3, sleep=clock.sleep, clock=clock)
    assert info.value is errors[2]
    assert fn.calls == 3 and len(clock.slept) == 2
    assert "gave up after 3 call(s) (attempts exhausted)" in info.value.__notes__[-1]


def test_one_attempt_means_no_retry():
    clock = FakeClock()
    fn = Flaky(TransientError("once"))
    with pytest.raises(TransientError):
        retry(fn, attempts=1, sleep=clock.sleep, clock=clock)
    assert fn.calls == 1 and clock.slept == []


def test_delays_are_full_jitter_under_an_exponential_cap():
    clock, rng = FakeClock(), MaxRng()
    fn = Flaky(*[TransientError("x")] * 8)
    with pytest.raises(TransientError):
        retry(fn, attempts=8, base=0.01, cap=0.1, sleep=clock.sleep, clock=clock, rng=rng)
    assert rng.bounds == [(0.0, 0.01), (0.0, 0.02), (0.0, 0.04), (0.0, 0.08), (0.0, 0.1), (0.0, 0.1), (0.0, 0.1)]
    assert clock.slept == [b for _, b in rng.bounds]


def test_real_jitter_spreads_over_the_whole_range():
    backoff = Backoff(base=1.0, cap=1.0, rng=random.Random(7))
    delays = [next(backoff) for _ in range(2000)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert min(delays) < 0.01 and max(delays) > 0.99          # full jitter, not equal jitter
    assert 0.45 < sum(delays) / len(delays) < 0.55


@settings(max_examples=200, deadline=None)
@given(base=st.floats(1e-4, 1.0), cap=st.floats(0.0, 5.0), attempts=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_every_delay_lies_within_its_bound(base, cap, attempts, seed):
    clock = FakeClock()
    fn = Flaky(*[TransientError("x")] * attempts)
    with pytest.raises(TransientError):
        retry(fn, attempts=attempts, base=base, cap=cap, sleep=clock.sleep, clock=clock, rng=random.Random(seed))
    assert len(clock.slept) == attempts - 1
    for n, delay in enumerate(clock.slept):
        assert 0.0 <= delay <= min(cap, base * 2**n)


def test_the_deadline_is_never_slept_past():
    clock, rng = FakeClock(), MaxRng()
    deadline = clock.now + 0.1
    fn = Flaky(*[TransientError("x")] * 100)
    with pytest.raises(TransientError) as info:
        retry(fn, attempts=100, base=0.01, cap=1.0, deadline=deadline, sleep=clock.sleep, clock=clock, rng=rng)
    # delays 0.01 + 0.02 + 0.04 = 0.07; the next (0.08) would end past the deadline
    assert clock.slept == [0.01, 0.02, 0.04] and fn.calls == 4
    assert clock.now < deadline
    assert "deadline exhausted" in info.value.__notes__[-1]


@settings(max_examples=100, deadline=None)
@given(budget=st.floats(0.0, 2.0), seed=st.integers(0, 2**32))
def test_the_deadline_holds_for_any_jitter(budget, seed):
    clock = FakeClock()
    deadline = clock.now + budget
    fn = Flaky(*[TransientError("x")] * 1000)
    with pytest.raises(TransientError):
        retry(fn, attempts=1000, base=0.05, cap=0.5, deadline=deadline, sleep=clock.sleep, clock=clock,
              rng=random.Random(seed))
    assert clock.now < deadline or clock.slept == []
    assert fn.calls >= 1


def test_a_passed_deadline_still_makes_the_first_call():
    clock = FakeClock()
    fn = Flaky()
    assert retry(fn, attempts=3, deadline=clock.now - 1, sleep=clock.sleep, clock=clock) == "ok"


@pytest.mark.parametrize("exc", [
    InvalidArgument("empty key"),
    RecoverableError("shard failing"),
    DiskFull("ENOSPC"),
    CircuitOpen("open", breaker="b", retry_after=1.0),
    CriticalError("dead"),
    CorruptionError("checksum"),
    FatalError("manifest"),
    DatabaseShutdown("down"),
    ValueError("not ours"),
    KeyboardInterrupt(),
])
def test_other_exceptions_pass_through_at_once(exc):
    clock = FakeClock()
    fn = Flaky(exc)
    with pytest.raises(type(exc)) as info:
        retry(fn, attempts=10, sleep=clock.sleep, clock=clock)
    assert info.value is exc and fn.calls == 1 and clock.slept == []


def test_a_non_transient_error_after_transient_ones_stops_the_retries():
    clock = FakeClock()
    fn = Flaky(TransientError("busy"), InvalidArgument("bad"), TransientError("busy"))
    with pytest.raises(InvalidArgument):
        retry(fn, attempts=10, sleep=clock.sleep, clock=clock)
    assert fn.calls == 2 and len(clock.slept) == 1


def test_on_retry_sees_each_failure_before_its_sleep():
    clock, seen = FakeClock(), []
    fn = Flaky(TransientError("a"), TransientError("b"))
    retry(fn, attempts=5, sleep=clock.sleep, clock=clock, rng=MaxRng(),
          on_retry=lambda n, exc, delay: seen.append((n, str(exc), delay)))
    assert seen == [(1, "a", 0.01), (2, "b", 0.02)]


def test_backoff_iterator_for_loops():
    clock = FakeClock()
    backoff = Backoff(attempts=4, base=0.5, cap=10.0, rng=MaxRng(), clock=clock)
    assert list(backoff) == [0.5, 1.0, 2.0]        # attempts - 1 delays
    assert backoff.retries == 3 and next(backoff, None) is None
    backoff.reset()
    assert next(backoff) == 0.5
    assert Backoff(base=1.0, cap=3.0).bound(100_000) == 3.0       # no float overflow


@pytest.mark.parametrize("kw", [{"attempts": 0}, {"attempts": 1.5}, {"attempts": True}, {"base": 0},
                                {"cap": -1}])
def test_bad_parameters_are_invalid_arguments(kw):
    kw.setdefault("attempts", 3)
    with pytest.raises(InvalidArgument):
        retry(lambda: None, **kw)
