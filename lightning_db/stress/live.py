"""Progress while a run goes: the clients' files read as they grow, and the
live view (rich) drawn from them.

Runs in the harness process: ``Tailer.poll`` from any thread (a lock guards
it; the fault injector polls for progress, the view for numbers).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .history import percentile
from .outcomes import TAXONOMY

__all__ = ["LiveView", "Tailer"]

WINDOW_S = 1.0


class _File:
    __slots__ = ("offset", "partial", "path", "pending")

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.pending: dict[Any, float] = {}


class Tailer:
    """Running totals over the clients' history files."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._files = [_File(p) for p in paths]
        self._lock = threading.Lock()
        self.ok = 0
        self.fail = 0
        self.info = 0
        self.errors: dict[str, int] = {}
        self.reopens = 0
        self.ready: set[int] = set()
        self.done: set[int] = set()
        self._recent: deque[tuple[float, float]] = deque()     # (completion time, latency) of ok ops

    def poll(self) -> None:
        with self._lock:
            for f in self._files:
                try:
                    with open(f.path, "rb") as fh:
                        fh.seek(f.offset)
                        data = fh.read()
                except FileNotFoundError:
                    continue
                if not data:
                    continue
                f.offset += len(data)
                data = f.partial + data
                lines = data.split(b"\n")
                f.partial = lines.pop()
                for line in lines:
                    if line:
                        try:
                            self._event(f, json.loads(line))
                        except ValueError:
                            pass
            horizon = time.monotonic() - WINDOW_S
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()

    def _event(self, f: _File, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "meta":
            event = ev.get("event")
            if event == "ready":
                self.ready.add(ev.get("client", -1))
            elif event == "reopen":
                self.reopens += 1
            elif event == "done":
                self.done.add(ev.get("client", -1))
            return
        proc = ev.get("process")
        if kind == "invoke":
            f.pending[proc] = ev.get("time", 0.0)
            return
        t0 = f.pending.pop(proc, None)
        if kind == "ok":
            self.ok += 1
            if t0 is not None:
                self._recent.append((ev["time"], ev["time"] - t0))
        else:
            if kind == "fail":
                self.fail += 1
            else:
                self.info += 1
            cls = ev.get("class") or "other"
            self.errors[cls] = self.errors.get(cls, 0) + 1

    def completed(self) -> int:
        """Operations completed ok so far (after polling the files)."""
        self.poll()
        return self.ok

    def window(self) -> tuple[int, float, float]:
        """(ok ops, p50 ms, p99 ms) over the last second."""
        with self._lock:
            lat = sorted(l for _, l in self._recent)
        return len(lat), percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000


class LiveView:
    """A rich table redrawn about twice a second from a Tailer and the injector."""

    def __init__(self, tailer: Tailer, faults: Callable[[], dict[str, int]],
                 restarts: Callable[[], dict[str, int]], title: str, duration: float) -> None:
        self.tailer, self.faults, self.restarts = tailer, faults, restarts
        self.title, self.duration = title, duration
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def render(self) -> Any:
        from rich.table import Table
        self.tailer.poll()
        rate, p50, p99 = self.tailer.window()
        t = self.tailer
        elapsed = time.monotonic() - self.started
        table = Table(title=f"{self.title} — {elapsed:.0f}s of {self.duration:.0f}s", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        table.add_row("ops/s (last second)", f"{rate:,}")
        table.add_row("latency p50 / p99", f"{p50:.2f} ms / {p99:.2f} ms" if rate else "-")
        table.add_row("completed ok / fail / info", f"{t.ok:,} / {t.fail:,} / {t.info:,}")
        errors = ", ".join(f"{k} {t.errors[k]:,}" for k in TAXONOMY if t.errors.get(k)) or "none"
        table.add_row("errors by class", errors)
        faults = self.faults()
        table.add_row("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none")
        restarts = self.restarts()
        restarts["client reopens"] = t.reopens
        table.add_row("restarts", ", ".join(f"{k} {v}" for k, v in restarts.items()))
        return table

    def start(self) -> LiveView:
        self._thread = threading.Thread(target=self._loop, name="stress-live", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        from rich.live import Live
        with Live(self.render(), refresh_per_second=4, transient=False) as live:
            while not self._stop.wait(0.5):
                live.update(self.render())
            live.update(self.render())
        live.console.line()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
