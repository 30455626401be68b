"""Targets for the real child processes of the supervisor tests (spawned, so
they live in an importable module). Each counts heartbeats into a shared
counter every few milliseconds until it is stopped or killed."""

from __future__ import annotations

import signal
import time
from typing import Any


def beat(counter: Any) -> None:
    while True:
        counter.value += 1
        time.sleep(0.005)


def beat_ignoring_sigterm(counter: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    beat(counter)
