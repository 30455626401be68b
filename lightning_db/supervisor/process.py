"""``Child`` adapters for real processes.

Which process runs what: these objects live in the supervisor process. A
``ProcessChild`` wraps a ``multiprocessing`` process that the supervisor
started itself (any start method; ``spawn_child`` uses ``spawn`` so that a
caller that later forks is not disturbed). A ``PidChild`` wraps a process
known only by its pid (started by someone else, so it cannot be joined):
psutil tells whether it still runs, and checks the creation time so that a
reused pid is never taken for the child.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from ..errors import InvalidArgument
from .spec import NORMAL

log = logging.getLogger("lightning_db.supervisor")

# How long kill() waits for SIGKILL to take effect. Only a process stuck in
# uninterruptible sleep (a dead NFS mount) takes longer; that is logged.
KILL_WAIT_S = 30.0


def describe_exitcode(code: int | None) -> str | None:
    """``"normal"`` for 0, ``"killed by SIGKILL"`` for -9, ``"exit code 3"``;
    None while the process runs."""
    if code is None:
        return None
    if code == 0:
        return NORMAL
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessChild:
    """A ``multiprocessing`` process as a supervised child."""

    def __init__(self, process: BaseProcess) -> None:
        if process.pid is None:
            raise InvalidArgument("ProcessChild needs a started process")
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def exit_reason(self) -> str | None:
        return describe_exitcode(self.process.exitcode)

    def is_alive(self) -> bool:
        return self.process.is_alive()   # also reaps a zombie

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to *timeout* seconds, then SIGKILL."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.kill()

    def kill(self) -> None:
        """SIGKILL (works on a SIGSTOPped process too) and reap."""
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(KILL_WAIT_S)
            if self.process.exitcode is None:
                log.error("process %d survived SIGKILL for %.0f s", self.process.pid, KILL_WAIT_S)

    def __repr__(self) -> str:
        return f"ProcessChild(pid={self.pid}, exitcode={self.exitcode})"


def spawn_child(target: Callable[..., object], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                *, name: str | None = None, context: str = "spawn", daemon: bool = True) -> ProcessChild:
    """Start *target* in a new process and return it as a child. *target*
    must be importable by the new process (a module-level function)."""
    ctx = multiprocessing.get_context(context)
    process = ctx.Process(target=target, args=args, kwargs=kwargs or {}, name=name, daemon=daemon)
    process.start()
    return ProcessChild(process)


class PidChild:
    """A process known only by pid. ``exit_reason`` is known only when the
    process was this process's child (psutil then reaps it)."""

    def __init__(self, pid: int) -> None:
        try:
            self._proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise InvalidArgument(f"no process with pid {pid}") from None
        self._code: int | None = None
        self._gone = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exit_reason(self) -> str | None:
        return describe_exitcode(self._code) if self._gone else None

    def is_alive(self) -> bool:
        if self._gone:
            return False
        try:
            if self._proc.is_running() and self._proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            pass
        self._reap(0)
        return False

    def stop(self, timeout: float) -> None:
        if self.is_alive():
            _ignore_gone(self._proc.terminate)
            self._reap(timeout)
        if self.is_alive():
            self.kill()

    def kill(self) -> None:
        if self.is_alive():
            _ignore_gone(self._proc.kill)
            self._reap(KILL_WAIT_S)

    def _reap(self, timeout: float) -> None:
        try:
            self._code = self._proc.wait(timeout)
            self._gone = True
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            self._gone = True

    def __repr__(self) -> str:
        return f"PidChild(pid={self.pid})"


def _ignore_gone(action: Callable[[], object]) -> None:
    try:
        action()
    except psutil.NoSuchProcess:
        pass
