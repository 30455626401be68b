"""Supervision: the OTP tree that keeps shard workers alive, and the error
taxonomy applied (DESIGN.md §5): retry for transient faults, a circuit
breaker for recoverable ones, restore and quarantine for critical ones,
shutdown with an alert for fatal ones.

Which process runs what: the tree, its monitor and the alert sink live in
the supervisor process; ``retry`` and ``CircuitBreaker`` live wherever calls
are made (the caller's router). Children are abstract (``Child``), so this
package imports neither zmq nor ``storage``: the shard layer plugs its actor
processes in.
"""

from ..errors import CircuitOpen, RestartIntensityExceeded
from .breaker import CircuitBreaker
from .monitor import Monitor
from .process import PidChild, ProcessChild, spawn_child
from .quarantine import list_quarantined, quarantine
from .retry import Backoff, retry
from .spec import Child, ChildInfo, ChildSpec, Exit, SupervisorSpec
from .taxonomy import Alert, AlertSink, action_for
from .tree import Supervisor

__all__ = [
    "Alert",
    "AlertSink",
    "Backoff",
    "Child",
    "ChildInfo",
    "ChildSpec",
    "CircuitBreaker",
    "CircuitOpen",
    "Exit",
    "Monitor",
    "PidChild",
    "ProcessChild",
    "RestartIntensityExceeded",
    "Supervisor",
    "SupervisorSpec",
    "action_for",
    "list_quarantined",
    "quarantine",
    "retry",
    "spawn_child",
]
