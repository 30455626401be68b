"""From an exception to an action, and the alerts raised on the way.

Which process runs what: ``action_for`` is pure and runs anywhere (the
caller's router decides retry/break, the supervisor decides restore or
shutdown). An ``AlertSink`` lives in the supervisor process; the tree's
``on_escalate`` and the shutdown path report to it.

The dispatch is on the exception's class alone (``errors.classify``), never
on its message (DESIGN.md §5):

    TransientError    "retry"     retry() with backoff and full jitter
    RecoverableError  "break"     the shard's circuit breaker counts it
    CriticalError     "restore"   restart the shard from its checkpoint
    FatalError        "shutdown"  stop the tree; callers get DatabaseShutdown
    InvalidArgument   "reject"    the caller's mistake, returned as is

An exception that is not ours is a bug in the code that raised it (OS and
zmq errors are wrapped at the boundaries): the component's state cannot be
trusted, so it is "restore", the same as a crash. KeyboardInterrupt and
SystemExit (not Exceptions) ask the process to end: "shutdown".
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import CriticalError, FatalError, InvalidArgument, RecoverableError, TransientError, classify

Action = Literal["retry", "break", "restore", "shutdown", "reject"]

ACTIONS: dict[type[BaseException], Action] = {
    TransientError: "retry",
    RecoverableError: "break",
    CriticalError: "restore",
    FatalError: "shutdown",
    InvalidArgument: "reject",
}

# Log level of an alert by action.
LEVELS: dict[str, int] = {
    "retry": logging.INFO,
    "reject": logging.INFO,
    "break": logging.WARNING,
    "restore": logging.ERROR,
    "shutdown": logging.CRITICAL,
}

ALERT_LOGGER = "lightning_db.alerts"


def action_for(exc: BaseException) -> Action:
    """What to do about *exc*, decided by its class only."""
    cls = classify(exc)
    if cls is not None:
        return ACTIONS[cls]
    return "restore" if isinstance(exc, Exception) else "shutdown"


def class_name(exc: BaseException) -> str:
    """The taxonomy class name of *exc* (``"TransientError"``, …), or
    ``"foreign"`` for an exception that is not ours."""
    cls = classify(exc)
    return cls.__name__ if cls is not None else "foreign"


@dataclass(frozen=True)
class Alert:
    time: float             # wall-clock (time.time) seconds
    source: str             # who raised it ("supervisor root", "shard 3", …)
    taxonomy: str           # class_name(exc)
    type: str               # the concrete exception type
    message: str
    action: str


class AlertSink:
    """Logs each alert on the ``lightning_db.alerts`` logger (level by
    action), counts alerts by taxonomy class and by type, keeps the last
    ``keep`` of them, and calls each hook with the ``Alert``. A hook that
    raises is logged and counted, never allowed to stop the alert path (it
    runs while the tree shuts down). Thread-safe; hooks run outside the lock.

    Usable directly as a tree's ``on_escalate``: ``Supervisor(...,
    on_escalate=sink.alert)``.
    """

    def __init__(self, hooks: Iterable[Callable[[Alert], object]] = (), *, keep: int = 100,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.time) -> None:
        self._hooks = list(hooks)
        self._log = logger or logging.getLogger(ALERT_LOGGER)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_class: collections.Counter[str] = collections.Counter()
        self._by_type: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[Alert] = collections.deque(maxlen=keep)
        self._hook_failures = 0

    def add_hook(self, hook: Callable[[Alert], object]) -> None:
        with self._lock:
            self._hooks.append(hook)

    def alert(self, exc: BaseException, *, source: str = "", action: str | None = None) -> Alert:
        """Record one alert about *exc*; *action* defaults to action_for(exc)."""
        act = action or action_for(exc)
        source = source or _source_of(exc)
        record = Alert(self._clock(), source, class_name(exc), type(exc).__name__, str(exc), act)
        with self._lock:
            self._by_class[record.taxonomy] += 1
            self._by_type[record.type] += 1
            self._recent.append(record)
            hooks = list(self._hooks)
        self._log.log(LEVELS.get(act, logging.ERROR), "alert from %s: %s %s: %s -> %s", record.source,
                      record.taxonomy, record.type, record.message, act)
        for hook in hooks:
            try:
                hook(record)
            except Exception:
                with self._lock:
                    self._hook_failures += 1
                self._log.exception("alert hook %r raised", hook)
        return record

    __call__ = alert

    def counts(self) -> dict[str, int]:
        """Alerts by taxonomy class name."""
        with self._lock:
            return dict(self._by_class)

    def recent(self) -> list[Alert]:
        with self._lock:
            return list(self._recent)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"total": sum(self._by_class.values()), "by_class": dict(self._by_class),
                    "by_type": dict(self._by_type), "hook_failures": self._hook_failures,
                    "last": self._recent[-1] if self._recent else None}


def _source_of(exc: BaseException) -> str:
    sup = getattr(exc, "supervisor", None)     # RestartIntensityExceeded names its supervisor
    return f"supervisor {sup}" if isinstance(sup, str) else "unknown"
