"""Fixtures of the supervisor tests: a fake clock, fake children that log
what happens to them, and a guard against leftover child processes."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from lightning_db.supervisor import ChildSpec
from tests.waiting import wait_until  # noqa: F401  (re-exported)


class FakeClock:
    """A monotonic clock that moves only when told; ``sleep`` advances it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


_pids = itertools.count(10_000)


class FakeChild:
    """A Child that records start/stop/kill in a shared log."""

    def __init__(self, id: str, log: list[tuple[str, str]], *, stubborn: bool = False) -> None:
        self.id, self.log, self.stubborn = id, log, stubborn
        self.pid = next(_pids)
        self.alive = True
        self.responsive = True
        self.exit_reason: object = None
        log.append(("start", id))

    def is_alive(self) -> bool:
        return self.alive

    def stop(self, timeout: float) -> None:
        self.log.append(("stop", self.id))
        if not self.stubborn:
            self.alive, self.exit_reason = False, "shutdown"

    def kill(self) -> None:
        self.log.append(("kill", self.id))
        self.alive, self.exit_reason = False, "killed"

    def crash(self, reason: object = "exit code 1") -> None:
        """Die on its own (the supervisor finds out by poll or report)."""
        self.alive, self.exit_reason = False, reason


class World:
    """Child specs whose children are FakeChild, all logging to ``log``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.clock = FakeClock()
        self.instances: dict[str, list[FakeChild]] = {}
        self.fail_starts: dict[str, list[BaseException]] = {}

    def spec(self, id: str, restart: str = "permanent", **kw: object) -> ChildSpec:
        return ChildSpec(id, self._starter(id, **kw), restart=restart)

    def _starter(self, id: str, **kw: object) -> Callable[[], FakeChild]:
        def start() -> FakeChild:
            queued = self.fail_starts.get(id)
            if queued:
                self.log.append(("start-failed", id))
                raise queued.pop(0)
            child = FakeChild(id, self.log, **kw)  # type: ignore[arg-type]
            self.instances.setdefault(id, []).append(child)
            return child
        return start

    def current(self, id: str) -> FakeChild:
        return self.instances[id][-1]

    def take_log(self) -> list[tuple[str, str]]:
        out, self.log[:] = list(self.log), []
        return out


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def no_leftover_processes():
    """Real-process tests name this fixture to say they start processes; the
    check itself is the project-wide autouse ``no_stray_processes``."""
    yield
