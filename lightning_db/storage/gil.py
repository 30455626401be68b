"""Sharing the GIL between a shard's message loop and its background thread.

A shard worker answers messages on one thread and flushes and compacts on
another (background.py). Two things let the background thread keep the
GIL from the message loop far longer than Python's switch interval:

- one long call in C holds it throughout (``sorted`` of 250,000 keys: 75
  ms; a ``map`` over them: tens of ms). Such work goes in steps of
  ``CHUNK`` keys, with Python code between the steps;
- a thread that keeps releasing the GIL for an instant (numpy does, around
  many of its operations) and taking it back starves a waiting thread: the
  waiter asks for the GIL only after a whole switch interval without any
  hand-over, and each of those instants counts as one. Measured: 24 to 65
  ms waits behind a loop of 4096-key numpy copies. So the background
  thread also steps aside on purpose (``pause``: a 50 µs sleep at most
  every ``PAUSE_EVERY_S`` of its work), which a waiting thread always wins.

``pause`` does nothing on any other thread: a caller's scan sorting a
memtable's keys does not sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["CHUNK", "PAUSE_EVERY_S", "background", "pause", "per_item", "take"]

CHUNK = 4096              # per-key work in C on a long list goes in steps of this many keys
PAUSE_EVERY_S = 0.001     # a background thread steps aside at most this often
_PAUSE_S = 0.00005
_sleep = time.sleep

_local = threading.local()


def background() -> None:
    """Mark the calling thread as a background thread (``pause`` steps aside on it)."""
    _local.last = time.perf_counter()


def pause() -> None:
    """On a background thread, at most every PAUSE_EVERY_S: sleep briefly,
    so a thread waiting for the GIL gets it."""
    last = getattr(_local, "last", None)
    if last is None:
        return
    now = time.perf_counter()
    if now - last >= PAUSE_EVERY_S:
        _sleep(_PAUSE_S)
        _local.last = time.perf_counter()


def per_item(each: Callable[[list[Any]], Iterator[Any]], items: list[Any], dtype: Any) -> np.ndarray:
    """``each(chunk)`` (one value per item, computed in C) for every item,
    as an array of *dtype*: a CHUNK of items per call, pausing between."""
    parts = []
    for i in range(0, len(items), CHUNK):
        part = items[i:i + CHUNK]
        parts.append(np.fromiter(each(part), dtype=dtype, count=len(part)))
        pause()
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def take(items: list[Any], order: np.ndarray) -> list[Any]:
    """``[items[i] for i in order]``, a CHUNK of items per step, pausing between."""
    out: list[Any] = []
    for i in range(0, len(order), CHUNK):
        out += map(items.__getitem__, order[i:i + CHUNK].tolist())
        pause()
    return out
