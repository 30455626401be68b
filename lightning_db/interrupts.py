"""Ctrl-C held back over a step that must not stop half way.

Python raises ``KeyboardInterrupt`` in the main thread between any two
bytecodes. A few steps of the caller's side leave shared state half done
if they stop in the middle: a cross-shard commit (some shards applied, the
others prepared, their intents held while the coordinator lives) and a
large in-process write (its WAL record written, its memtable records
partly added). Over those, ``held_interrupts`` swaps Python's default
SIGINT handler for one that only notes the signal, and raises
``KeyboardInterrupt`` once the step is done. It does nothing outside the
main thread (no interrupt is raised there), nor where the program
installed a SIGINT handler of its own (that one is left to run).

Swapping the handler costs about 6 µs, so single writes do without it:
the in-process engine refuses further writes after one interrupted between
its WAL record and its memtable instead (storage/engine.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["held_interrupts"]


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """A SIGINT arriving inside the block is raised as KeyboardInterrupt
    when the block ends (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    got: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if got:
            raise KeyboardInterrupt
