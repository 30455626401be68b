"""Waiting on conditions in tests: poll a state with a generous deadline,
never sleep a fixed time that races the clock."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll *cond* until it holds; fail after a generous *timeout*."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def answers(ref) -> bool:
    """Whether the actor behind *ref* answers a ping (within 10 s)."""
    from lightning_db.errors import LightningError
    try:
        ref.ping(timeout=5).result(10)
        return True
    except LightningError:
        return False


def node_workers(db) -> list[dict]:
    """The node's view of each shard worker of *db* (pid, state, restarts,
    ...), in shard order. Asked of the node alone: it answers while a worker
    restarts, where ``db.stats()`` (which asks every shard) may meet the
    restart and raise a transient error."""
    return sorted(db._session.request("stats")["shards"], key=lambda w: w["id"])
