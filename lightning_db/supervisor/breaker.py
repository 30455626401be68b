"""A circuit breaker for recoverable faults (one per shard, DESIGN.md §5).

Which process runs what: a breaker lives in the process that makes the calls
(the caller's router, one per shard) and is shared by its threads (one lock,
held only for bookkeeping, never during the call). Time comes from ``clock``.

States (Nygard, "Release It!"):

    closed     calls go through; ``failure_threshold`` consecutive counted
               failures open the breaker
    open       calls fail fast with ``CircuitOpen``; after ``reset_timeout``
               seconds the breaker turns half-open
    half-open  up to ``half_open_max_calls`` probe calls go through (others
               fail fast); a probe success closes it, a probe failure opens
               it again for another ``reset_timeout``

Counted failures are ``RecoverableError`` (including ``DiskFull``, a shard
that keeps failing) and ``TimeoutError`` (a request with no answer in time).
Other exceptions are neutral: ``InvalidArgument`` is the caller's mistake and
says the shard answered; a ``TransientError`` is retried by ``retry()``; a
CriticalError or FatalError is the supervisor's business. A neutral outcome
frees a half-open probe slot and changes nothing else.

Results that arrive while the breaker is open (calls admitted before it
opened) are ignored: they say nothing about the shard after the failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import CircuitOpen, InvalidArgument, RecoverableError

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


def counts_as_failure(exc: BaseException) -> bool:
    """The default failure filter: RecoverableError and TimeoutError."""
    return isinstance(exc, (RecoverableError, TimeoutError))


@dataclass(frozen=True)
class BreakerStats:
    name: str
    state: str
    failures: int            # consecutive counted failures since the breaker last closed
    total_failures: int      # counted failures ever
    opened: int              # times the breaker opened
    rejected: int            # calls failed fast with CircuitOpen
    last_change: float       # clock time of the last state change
    probes_in_flight: int


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 1.0, half_open_max_calls: int = 1,
                 *, name: str = "breaker", clock: Callable[[], float] = time.monotonic,
                 is_failure: Callable[[BaseException], bool] = counts_as_failure) -> None:
        for what, v in (("failure_threshold", failure_threshold), ("half_open_max_calls", half_open_max_calls)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidArgument(f"breaker {what} must be an integer >= 1, got {v!r}")
        if not isinstance(reset_timeout, (int, float)) or reset_timeout < 0:
            raise InvalidArgument(f"breaker reset_timeout must be >= 0 seconds, got {reset_timeout!r}")
        self.name, self.failure_threshold = name, failure_threshold
        self.reset_timeout, self.half_open_max_calls = float(reset_timeout), half_open_max_calls
        self._clock, self._is_failure = clock, is_failure
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = self._total_failures = self._opened = self._rejected = self._probes = 0
        self._opened_at = 0.0
        self._last_change = clock()

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (turning half-open
        is noticed here, on the next look, not by a timer)."""
        with self._lock:
            return self._refresh()

    def before_call(self) -> None:
        """Admit one call or raise ``CircuitOpen``. Every admitted call must
        end in ``on_success()`` or ``on_failure(exc)``."""
        with self._lock:
            state = self._refresh()
            if state == CLOSED:
                return
            if state == HALF_OPEN and self._probes < self.half_open_max_calls:
                self._probes += 1
                return
            self._rejected += 1
            if state == OPEN:
                raise self._open_error()
            raise CircuitOpen(f"circuit breaker {self.name!r} is half-open and its {self.half_open_max_calls} "
                              f"probe call(s) are in flight", breaker=self.name, retry_after=0.0)

    def refuse_if_open(self) -> None:
        """``CircuitOpen`` while open; else nothing (no probe is taken: for
        calls that go around the breaker, such as a two-phase commit's
        steps, so that they too fail fast on a shard known to be down)."""
        with self._lock:
            if self._refresh() != OPEN:
                return
            self._rejected += 1
            raise self._open_error()

    def _open_error(self) -> CircuitOpen:
        """REQUIRES: the lock, the breaker open."""
        wait = max(0.0, self._opened_at + self.reset_timeout - self._clock())
        return CircuitOpen(f"circuit breaker {self.name!r} is open after {self.failure_threshold} consecutive "
                           f"failure(s); it turns half-open in {wait:.3f} s", breaker=self.name, retry_after=wait)

    def on_success(self) -> None:
        with self._lock:
            state = self._refresh()
            if state == HALF_OPEN:
                self._set(CLOSED)
            if state != OPEN:
                self._failures = 0

    def on_failure(self, exc: BaseException) -> None:
        with self._lock:
            state = self._refresh()
            if not self._is_failure(exc):
                if state == HALF_OPEN and self._probes:
                    self._probes -= 1
                return
            self._total_failures += 1
            if state == HALF_OPEN:
                self._open()
            elif state == CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` through the breaker: CircuitOpen without calling it while
        open; otherwise its result or its exception, after recording it."""
        self.before_call()
        try:
            result = fn()
        except BaseException as exc:
            self.on_failure(exc)
            raise
        self.on_success()
        return result

    def reset(self) -> None:
        """Close the breaker by hand (after a shard was restored)."""
        with self._lock:
            self._set(CLOSED)
            self._failures = 0

    def stats(self) -> BreakerStats:
        with self._lock:
            state = self._refresh()
            return BreakerStats(self.name, state, self._failures, self._total_failures, self._opened,
                                self._rejected, self._last_change, self._probes)

    # --- internals (lock held) ---

    def _refresh(self) -> str:
        if self._state == OPEN and self._clock() >= self._opened_at + self.reset_timeout:
            self._set(HALF_OPEN)
        return self._state

    def _open(self) -> None:
        self._set(OPEN)
        self._opened_at = self._last_change
        self._opened += 1

    def _set(self, state: str) -> None:
        self._state, self._probes, self._last_change = state, 0, self._clock()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"
