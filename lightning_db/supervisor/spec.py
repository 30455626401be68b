"""Child specs and the vocabulary of the supervision tree (OTP's words).

Which process runs what: plain data, built by whoever assembles the tree
(the shard layer, in the supervisor process) and read by ``tree.Supervisor``.
A ``Child`` is anything with a pid that can be asked whether it is alive,
stopped gracefully and killed: the shard layer's actor processes, or the
adapters in ``process.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from ..errors import InvalidArgument

PERMANENT, TRANSIENT, TEMPORARY = "permanent", "transient", "temporary"
RESTART_TYPES = (PERMANENT, TRANSIENT, TEMPORARY)
ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = "one_for_one", "one_for_all", "rest_for_one"
STRATEGIES = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)

# Exit reasons the tree itself produces. Any other value (an exception, an
# exit code, a string) is an abnormal exit.
NORMAL, SHUTDOWN, HUNG = "normal", "shutdown", "hung"


def is_normal_exit(reason: object) -> bool:
    """True for the reasons after which a ``transient`` child stays down."""
    return isinstance(reason, str) and reason in (NORMAL, SHUTDOWN)


@runtime_checkable
class Child(Protocol):
    """What a supervisor needs of a child. ``stop`` is a graceful stop that
    may take up to *timeout* seconds; ``kill`` is SIGKILL (or its equivalent)
    and must not return before the child is gone. A child may also offer an
    ``exit_reason`` attribute (``"normal"`` for a clean exit)."""

    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def stop(self, timeout: float) -> None: ...

    def kill(self) -> None: ...


def _check_common(id: object, restart: str, what: str) -> None:
    if not isinstance(id, str) or not id:
        raise InvalidArgument(f"{what} id must be a non-empty string, got {id!r}")
    if restart not in RESTART_TYPES:
        raise InvalidArgument(f"{what} {id!r}: restart must be one of {RESTART_TYPES}, got {restart!r}")


@dataclass(frozen=True)
class ChildSpec:
    """How to start one worker child and when to bring it back."""

    id: str
    start: Callable[[], Child]
    restart: str = PERMANENT
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        _check_common(self.id, self.restart, "child")
        if not callable(self.start):
            raise InvalidArgument(f"child {self.id!r}: start must be callable, got {self.start!r}")
        if not isinstance(self.shutdown_timeout, (int, float)) or self.shutdown_timeout < 0:
            raise InvalidArgument(f"child {self.id!r}: shutdown_timeout must be >= 0, "
                                  f"got {self.shutdown_timeout!r}")


@dataclass(frozen=True)
class SupervisorSpec:
    """A nested supervisor as a child of another. It shares its parent's
    clock, lock and heartbeat settings."""

    id: str
    children: Sequence[ChildSpec | SupervisorSpec]
    strategy: str = ONE_FOR_ONE
    intensity: int = 3
    period: float = 5.0
    restart: str = PERMANENT

    def __post_init__(self) -> None:
        _check_common(self.id, self.restart, "supervisor")
        object.__setattr__(self, "children", tuple(self.children))
        check_limits(self.id, self.strategy, self.intensity, self.period)


def check_limits(id: str, strategy: str, intensity: int, period: float) -> None:
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"supervisor {id!r}: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(intensity, int) or isinstance(intensity, bool) or intensity < 0:
        raise InvalidArgument(f"supervisor {id!r}: intensity must be an integer >= 0, got {intensity!r}")
    if not isinstance(period, (int, float)) or period <= 0:
        raise InvalidArgument(f"supervisor {id!r}: period must be > 0 seconds, got {period!r}")


class ChildInfo(NamedTuple):
    """One row of ``which_children()``, in start order."""

    id: str
    child: Child | None          # None while not running
    type: str                    # "worker" | "supervisor"
    restart: str
    state: str                   # "running" | "pending" | "stopped"


class Exit(NamedTuple):
    """One exit that ``poll()`` detected and handled."""

    supervisor: str
    child: str
    reason: object
