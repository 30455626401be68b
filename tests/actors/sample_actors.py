"""Actors used by the tests (importable by spawned children, so not in a
test module). Every blocking op waits on a file the test creates, never on
the clock."""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

from lightning_db import errors
from lightning_db.actors import Actor


def wait_for_file(path: str, limit: float = 120.0) -> bool:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class EchoActor(Actor):
    """echo, add, calls, raise [class name, message], crash (RuntimeError),
    flaky [key, failures], wait_file path, unencodable, pid, gc."""

    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag
        self.calls = 0
        self.started = False
        self.flaky: dict[str, int] = {}

    def on_start(self) -> None:
        self.started = True

    def on_receive(self, op: str, payload: Any) -> Any:
        self.calls += 1
        if op == "echo":
            return payload
        if op == "add":
            return payload[0] + payload[1]
        if op == "calls":
            return self.calls
        if op == "tag":
            return [self.tag, self.started, self.name]
        if op == "raise":
            raise getattr(errors, payload[0])(payload[1])
        if op == "crash":
            raise RuntimeError(f"crash on {payload!r}")
        if op == "flaky":
            key, failures = payload
            done = self.flaky.get(key, 0)
            self.flaky[key] = done + 1
            if done < failures:
                raise RuntimeError(f"flaky {key} attempt {done}")
            self.flaky[key] = 0
            return "ok"
        if op == "wait_file":
            return wait_for_file(payload)
        if op == "unencodable":
            return object()
        if op == "pid":
            return os.getpid()
        if op == "gc":
            return [list(gc.get_threshold()), gc.get_freeze_count()]
        if op == "switch":
            return sys.getswitchinterval()
        return super().on_receive(op, payload)

    def on_control(self, op: str, payload: Any) -> Any:
        if op == "_checkpoint":
            return ["checkpointed", payload]
        return super().on_control(op, payload)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}


class StopRecorder(Actor):
    """Writes a file from on_stop."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_receive(self, op: str, payload: Any) -> Any:
        return op

    def on_stop(self) -> None:
        with open(self.path, "w") as f:
            f.write("stopped")


class QuickSwitch(EchoActor):
    """An echo whose process hands the GIL over every 2 ms."""

    switch_interval = 0.002


class LockedOnStart(Actor):
    def on_start(self) -> None:
        raise errors.DatabaseLocked("the directory is locked by pid 1")


class BuggyOnStart(Actor):
    def on_start(self) -> None:
        raise RuntimeError("bug in on_start")


class ExitOnStart(Actor):
    def on_start(self) -> None:
        os._exit(7)


class BadConstructor(Actor):
    def __init__(self) -> None:
        raise ZeroDivisionError("bad constructor")


class LetItCrash(Actor):
    """on_failure raises: the process exits after answering."""

    def on_receive(self, op: str, payload: Any) -> Any:
        if op == "boom":
            raise RuntimeError("boom")
        return op

    def on_failure(self, exc: Exception, op: str, payload: Any) -> BaseException:
        raise errors.CorruptionError(f"giving up after {exc}")
