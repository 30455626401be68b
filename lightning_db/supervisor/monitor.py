"""A thread that drives a supervision tree.

Which process runs what: the supervisor process, beside its main loop, for
owners that have no loop of their own to call ``Supervisor.poll()`` from.
"""

from __future__ import annotations

import logging
import threading

from ..errors import InvalidArgument
from .tree import Supervisor

log = logging.getLogger("lightning_db.supervisor")


class Monitor:
    """A daemon thread that calls ``supervisor.poll()`` every *interval*
    seconds (real time) until ``stop()``. An exception from ``poll()`` (the
    root's RestartIntensityExceeded without on_escalate) ends the thread
    and is kept in ``error``."""

    def __init__(self, supervisor: Supervisor, interval: float = 0.05) -> None:
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise InvalidArgument(f"monitor interval must be > 0 seconds, got {interval!r}")
        self.supervisor, self.interval = supervisor, float(interval)
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervisor-monitor-{supervisor.id}", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.supervisor.poll()
            except BaseException as exc:  # the thread's only job is to report it
                self.error = exc
                log.error("supervisor monitor %r stopped: %r", self.supervisor.id, exc)
                return
