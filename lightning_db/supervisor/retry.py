"""Retry for transient faults: exponential backoff with full jitter.

Which process runs what: anywhere a call can meet a ``TransientError`` (the
caller's process around a shard request, the supervisor around a restart);
nothing here starts threads or processes. ``sleep``, ``clock`` and ``rng``
are injected so tests are deterministic.

Only ``TransientError`` is retried. Every other class passes through at once:
a RecoverableError belongs to the circuit breaker (retrying at once hammers a
failing shard), a CriticalError needs a restore, a FatalError a shutdown,
and ``InvalidArgument`` fails the same way every time.

Delay *n* (counting from 0) is ``uniform(0, min(cap, base * 2**n))``: "full
jitter" (AWS architecture blog, "Exponential Backoff and Jitter"). It was
chosen over equal or decorrelated jitter because it spreads the callers of a
recovering shard the most for the same expected wait. The ``deadline`` is an
absolute time on ``clock`` (the call's deadline, as in the envelope); a delay
that would end at or after it is not slept: the last error is raised at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import InvalidArgument, TransientError

T = TypeVar("T")

_RNG = random.Random()
_MAX_EXPONENT = 64        # base * 2**64 exceeds any sensible cap; avoids float overflow


class Backoff:
    """An iterator of delays (seconds) for a retry loop: at most
    ``attempts - 1`` of them, and none that would end at or after the
    deadline; StopIteration means give up. ``reset()`` after a success.

        backoff = Backoff(attempts=5, deadline=deadline)
        while True:
            try:
                return op()
            except TransientError:
                delay = next(backoff, None)
                if delay is None:
                    raise
                time.sleep(delay)
    """

    def __init__(self, *, attempts: int | None = None, base: float = 0.01, cap: float = 1.0,
                 deadline: float | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if attempts is not None and (not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1):
            raise InvalidArgument(f"attempts must be an integer >= 1 (or None), got {attempts!r}")
        if not isinstance(base, (int, float)) or base <= 0:
            raise InvalidArgument(f"backoff base must be > 0 seconds, got {base!r}")
        if not isinstance(cap, (int, float)) or cap < 0:
            raise InvalidArgument(f"backoff cap must be >= 0 seconds, got {cap!r}")
        self.attempts, self.base, self.cap, self.deadline = attempts, float(base), float(cap), deadline
        self._rng, self._clock = rng or _RNG, clock
        self.retries = 0          # delays handed out since the last reset

    def bound(self, n: int) -> float:
        """The upper bound of delay *n*: ``min(cap, base * 2**n)``."""
        return min(self.cap, self.base * 2.0 ** min(n, _MAX_EXPONENT))

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        if self.attempts is not None and self.retries + 1 >= self.attempts:
            raise StopIteration
        delay = self._rng.uniform(0.0, self.bound(self.retries))
        if self.deadline is not None and self._clock() + delay >= self.deadline:
            raise StopIteration
        self.retries += 1
        return delay

    def reset(self) -> None:
        self.retries = 0


def retry(fn: Callable[[], T], *, attempts: int, base: float = 0.01, cap: float = 1.0,
          deadline: float | None = None, rng: random.Random | None = None,
          sleep: Callable[[float], object] = time.sleep,
          clock: Callable[[], float] = time.monotonic,
          on_retry: Callable[[int, TransientError, float], object] | None = None) -> T:
    """Call *fn* up to *attempts* times while it raises ``TransientError``;
    return its first result. The first call is always made. When attempts
    run out, or the next delay would reach *deadline*, the last
    TransientError is re-raised (with a note saying how many calls were
    made). Any other exception propagates from the call that raised it.
    ``on_retry(n, exc, delay)`` is called before each sleep (for metrics).
    """
    backoff = Backoff(attempts=attempts, base=base, cap=cap, deadline=deadline, rng=rng, clock=clock)
    calls = 0
    while True:
        calls += 1
        try:
            return fn()
        except TransientError as exc:
            delay = next(backoff, None)
            if delay is None:
                why = "deadline" if calls < attempts else "attempts"
                exc.add_note(f"retry: gave up after {calls} call(s) ({why} exhausted)")
                raise
            if on_retry is not None:
                on_retry(calls, exc, delay)
            sleep(delay)
