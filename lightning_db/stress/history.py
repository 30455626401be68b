"""The history: what each client recorded, merged into one, and the numbers
drawn from it.

Runs in the harness process (the clients only append lines; client.py).

Each client appends JSON lines to its own file. Operation events have the
format of :mod:`lightning_db.check.linear`::

    {"process": int, "type": "invoke" | "ok" | "fail" | "info",
     "f": "read" | "write" | "delete", "key": str, "value": str | None,
     "time": float}                  # time.monotonic(): one clock for every process on Linux

plus, on "fail" and "info", ``"error"`` (the exception's class name),
``"class"`` (its taxonomy class, outcomes.py) and ``"message"`` (the start
of its text). Transactions of the
list-append workload are ``"f": "txn"`` events with ``"ops"`` (the
format of :mod:`lightning_db.check.listappend`: the invoke carries the
planned appends with reads as None, the completion what was observed).
Lines with ``"type": "meta"`` are the client's own notes (ready, reopen,
done) and not part of the history.

``stream`` orders every client's events by time (files are each in time
order already, so it is a lazy k-way merge; ties keep file order), numbers
them ("index"), gives every invoke left without completion (a client killed
mid-operation) an "info" completion at the end of that client's file, and
turns transaction pairs into list-append entries. It holds one event per
client at a time, so an hour-long history is never all in memory;
``merge`` collects a stream into lists (tests, short runs).

Keys carry a generation (``g<N>:k<index>``, client.py): the clients move to
fresh keys every rotation period, so that the checkers can take the history
one generation at a time (checkers.py). ``Stats`` accumulates what the
report shows without keeping the events: counts, a latency histogram, and
per-second throughput and p99 latency.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OP_FUNCTIONS",
    "LatencyHistogram",
    "Merged",
    "Series",
    "Stats",
    "final_reads",
    "generation_of",
    "latency_summary",
    "merge",
    "percentile",
    "read_events",
    "series",
    "stream",
    "type_counts",
    "write_jsonl",
]

OP_FUNCTIONS = ("read", "write", "delete")


def read_events(path: str) -> Iterator[dict[str, Any]]:
    """The events of one client file in order; a torn last line (the client
    was killed while writing it) and blank lines are skipped."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.endswith("\n"):
                return                        # torn: the writer died mid-line
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and isinstance(ev.get("time"), (int, float)):
                yield ev


def generation_of(key: Any) -> int:
    """The generation of a key named ``g<N>:...`` (0 for other names)."""
    if isinstance(key, str) and key.startswith("g"):
        head, sep, _ = key.partition(":")
        if sep and head[1:].isdigit():
            return int(head[1:])
    return 0


def _stream(no: int, path: str, meta: list[dict[str, Any]],
            unfinished: list[int]) -> Iterator[tuple[float, int, int, dict[str, Any]]]:
    pending: dict[Any, dict[str, Any]] = {}
    last = 0.0
    line = 0
    for ev in read_events(path):
        if ev.get("type") == "meta":
            meta.append(ev)
            continue
        t = float(ev["time"])
        if t < last:
            t = ev["time"] = last             # never backwards within one client
        last = t
        if ev.get("type") == "invoke":
            pending[ev.get("process")] = ev
        else:
            pending.pop(ev.get("process"), None)
        line += 1
        yield t, no, line, ev
    for inv in pending.values():
        line += 1
        done = {k: v for k, v in inv.items() if k not in ("time", "type")}
        done.update(type="info", time=last, error="no completion (the client ended mid-operation)")
        if done.get("f") == "txn":
            done["ops"] = [list(op) if op[0] == "append" else [op[0], op[1], None] for op in inv.get("ops", [])]
        unfinished[0] += 1
        yield last, no, line, done


def stream(paths: Sequence[str], meta: list[dict[str, Any]] | None = None,
           unfinished: list[int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("op", event)``, ``("txn-invoke", event)`` (a transaction began) and
    ``("txn", entry)`` (it ended) in time order (see the module docstring).
    Client notes go to *meta*; ``unfinished[0]`` counts the completions made
    up for invokes left open."""
    meta = [] if meta is None else meta
    unfinished = [0] if unfinished is None else unfinished
    streams = [_stream(no, p, meta, unfinished) for no, p in enumerate(paths)]
    txn_open: dict[Any, dict[str, Any]] = {}
    n_ops = n_txns = 0
    for _, _, _, ev in heapq.merge(*streams, key=lambda item: item[:3]):
        if ev.get("f") == "txn":
            proc = ev.get("process")
            if ev["type"] == "invoke":
                txn_open[proc] = ev
                yield "txn-invoke", ev
                continue
            inv = txn_open.pop(proc, None)
            if inv is None:
                continue
            entry = {"index": n_txns, "process": proc, "type": ev["type"],
                     "ops": ev.get("ops") or inv.get("ops") or [], "start": inv["time"], "end": ev["time"]}
            for extra in ("error", "class", "message"):
                if extra in ev:
                    entry[extra] = ev[extra]
            n_txns += 1
            yield "txn", entry
            continue
        ev["index"] = n_ops
        n_ops += 1
        yield "op", ev


@dataclass
class Merged:
    """A merged run in memory: ``events`` (single-key operations, indexed,
    in time order), ``txns`` (list-append entries), ``meta`` (client notes)
    and ``unfinished`` (invokes completed here as "info": their client died)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    txns: list[dict[str, Any]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    unfinished: int = 0

    @property
    def end_time(self) -> float:
        times = [self.events[-1]["time"]] if self.events else []
        times += [t["end"] for t in self.txns]
        return max(times, default=0.0)


def merge(paths: Sequence[str]) -> Merged:
    """The whole stream of *paths* in memory."""
    out = Merged()
    unfinished = [0]
    for kind, ev in stream(paths, out.meta, unfinished):
        if kind != "txn-invoke":
            (out.events if kind == "op" else out.txns).append(ev)
    out.unfinished = unfinished[0]
    out.meta.sort(key=lambda m: m["time"])
    return out


def final_reads(values: dict[str, str | None], process: int, start: float, end: float,
                first_index: int) -> list[dict[str, Any]]:
    """The reads of every key after the run, as one last process's operations
    (invoke at *start*, ok at *end*, one key after another)."""
    out: list[dict[str, Any]] = []
    n = max(1, len(values))
    for i, (key, value) in enumerate(sorted(values.items())):
        t0 = start + (end - start) * i / n
        t1 = start + (end - start) * (i + 0.5) / n
        out.append({"index": first_index + 2 * i, "process": process, "type": "invoke", "f": "read",
                    "key": key, "value": None, "time": t0})
        out.append({"index": first_index + 2 * i + 1, "process": process, "type": "ok", "f": "read",
                    "key": key, "value": value, "time": t1})
    return out


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
    return n


# --- numbers ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank; nan when empty."""
    if not sorted_values:
        return math.nan
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


class LatencyHistogram:
    """Latencies in buckets 4% wide from 1 us (fixed memory, any run length);
    a quantile comes back as its bucket's upper bound, within 4%."""

    BASE, RATIO = 1e-6, 1.04

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        b = 0 if seconds <= self.BASE else int(math.log(seconds / self.BASE) / math.log(self.RATIO)) + 1
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """Seconds; nan when empty."""
        if not self.n:
            return math.nan
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(self.max, self.BASE * self.RATIO ** b)
        return self.max


@dataclass
class Series:
    """Per-second numbers from ``start``: ops completed ok, p99 latency (ms,
    nan for a second without ops) and failed/unknown completions."""

    start: float
    ok: list[int]
    p99_ms: list[float]
    errors: list[int]


class Stats:
    """What the report shows, accumulated event by event (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self._invoked: dict[Any, float] = {}
        self._ok: dict[int, int] = {}
        self._err: dict[int, int] = {}
        self._lat: dict[int, LatencyHistogram] = {}

    def _done(self, f: str, kind: str, t: float, lat: float | None, cls: str | None) -> None:
        c = self.counts.setdefault(f, {"ok": 0, "fail": 0, "info": 0})
        c[kind] = c.get(kind, 0) + 1
        second = int(t)
        if kind == "ok":
            self._ok[second] = self._ok.get(second, 0) + 1
            if lat is not None:
                self.latency.add(lat)
                self._lat.setdefault(second, LatencyHistogram()).add(lat)
        else:
            self._err[second] = self._err.get(second, 0) + 1
            self.errors[cls or "other"] = self.errors.get(cls or "other", 0) + 1

    def add(self, ev: dict[str, Any]) -> None:
        """An operation event."""
        kind, proc = ev.get("type"), ev.get("process")
        if kind == "invoke":
            self._invoked[proc] = ev["time"]
            return
        t0 = self._invoked.pop(proc, None)
        self._done(ev.get("f", "?"), kind, ev["time"], None if t0 is None else max(0.0, ev["time"] - t0),  # type: ignore[arg-type]
                   ev.get("class"))

    def add_txn(self, t: dict[str, Any]) -> None:
        self._done("txn", t["type"], t["end"], max(0.0, t["end"] - t["start"]), t.get("class"))

    def type_counts(self) -> dict[str, Any]:
        """{f: {ok, fail, info}}, and errors by taxonomy class under "errors_by_class"."""
        out: dict[str, Any] = {f: dict(c) for f, c in self.counts.items()}
        out["errors_by_class"] = dict(self.errors)
        return out

    def ok_between(self, start: float, end: float) -> int:
        return sum(n for s, n in self._ok.items() if start <= s < end)

    def latency_ms(self) -> dict[str, float | None]:
        """Latency percentiles (milliseconds) of the operations that completed ok."""
        if not self.latency.n:
            return {k: None for k in ("p50", "p90", "p99", "max")}
        out = {name: round(self.latency.quantile(q) * 1000, 3) for name, q in (("p50", 0.5), ("p90", 0.9),
                                                                                ("p99", 0.99))}
        out["max"] = round(self.latency.max * 1000, 3)
        return out

    def series(self, start: float, end: float) -> Series:
        """Seconds [start, end); a second is counted where it begins."""
        n = max(1, math.ceil(end - start))
        ok, errs, p99 = [0] * n, [0] * n, [math.nan] * n
        for table, out in ((self._ok, ok), (self._err, errs)):
            for s, v in table.items():
                b = s - int(start)
                if 0 <= b < n:
                    out[b] += v
        for s, h in self._lat.items():
            b = s - int(start)
            if 0 <= b < n:
                p99[b] = h.quantile(0.99) * 1000
        return Series(float(int(start)), ok, p99, errs)


def _stats(merged: Merged) -> Stats:
    st = Stats()
    for ev in merged.events:
        st.add(ev)
    for t in merged.txns:
        st.add_txn(t)
    return st


def type_counts(merged: Merged) -> dict[str, Any]:
    """{f: {ok, fail, info}} over operations and transactions, errors by taxonomy class."""
    return _stats(merged).type_counts()


def latency_summary(merged: Merged) -> dict[str, float | None]:
    return _stats(merged).latency_ms()


def series(merged: Merged, start: float, end: float) -> Series:
    return _stats(merged).series(start, end)
