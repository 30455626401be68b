"""Consistency checking: an Elle-style list-append anomaly checker
(:mod:`.listappend`) and a multi-threaded workload that records histories
for it against any database with the transaction API (:mod:`.appendload`)."""

from .appendload import check_run, run_append_workload
from .linear import DurabilityResult
from .linear import LinearResult
from .linear import check_durability
from .linear import check_linearizable
from .linear import load_history
from .linear import shrink
from .listappend import (
    ALWAYS_FORBIDDEN,
    CYCLE_ANOMALIES,
    LEVELS,
    CheckResult,
    Txn,
    check,
)

__all__ = [
    "check",
    "CheckResult",
    "Txn",
    "LEVELS",
    "ALWAYS_FORBIDDEN",
    "CYCLE_ANOMALIES",
    "run_append_workload",
    "check_run",
    "check_linearizable",
    "check_durability",
    "LinearResult",
    "DurabilityResult",
    "shrink",
    "load_history",
]
