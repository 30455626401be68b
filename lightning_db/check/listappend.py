"""A list-append anomaly checker after Elle (Kingsbury & Alvaro, "Elle:
Inferring Isolation Anomalies from Experimental Observations", VLDB 2020).

History format
--------------
A history is a list of completed transactions. Each is a mapping (or any
object with the same attributes, e.g. :class:`Txn`)::

    {"index": int,            # unique id of the transaction in the history
     "process": int,          # the client (thread) that ran it
     "type": "ok" | "fail" | "info",
     "ops": [op, ...],
     "start": float,          # time.monotonic() before it began
     "end": float}            # time.monotonic() after it finished

Each op is a 3-item list or tuple:

* ``["append", key, value]``: append ``value`` to the list stored at ``key``.
  Keys are str or int; values are ints (any hashable works), and a value is
  appended at most once per key in the whole history.
* ``["r", key, values]``: read the list at ``key``. In an "ok" transaction
  ``values`` is the list observed (``[]`` for a missing key); in "fail" and
  "info" transactions it is ``None``.

"ok" means committed (reads carry what was observed), "fail" means definitely
aborted (none of its appends may ever be visible), "info" means indeterminate
(it may or may not have committed). A read sees the transaction's own earlier
appends to that key.

Method
------
The version order of each key is its longest committed read; every other read
must be a prefix of it ("incompatible-order" otherwise). Values that no
committed read saw are not ordered. Over the "ok" and "info" transactions the
checker infers a dependency graph:

* ww  T1 -> T2: T1 appended v_i and T2 appended v_{i+1} (the next version);
* wr  T1 -> T2: T2 read a list whose last element (after dropping T2's own
  appends) T1 appended;
* rw  T1 -> T2: T1 read a list ending at v_i (or empty) and T2 appended
  v_{i+1}.

Opt-in ``realtime`` edges (T1 ended before T2 started) and ``process`` edges
(consecutive transactions of one process) can be added; cycles that need them
get a ``-realtime`` / ``-process`` suffix. Cycles are found per strongly
connected component with shortest-path searches restricted to edge types:

* G0             a cycle of ww edges only;
* G1c            a cycle of ww and wr edges with at least one wr;
* G-single       a cycle with exactly one rw edge;
* G-nonadjacent  a cycle with two or more rw edges, no two of them adjacent;
* G2             a cycle with rw edges, two of them adjacent (the cycles
                 snapshot isolation allows, such as write skew).

A cycle with one rw edge, or with non-adjacent ones, is reported under the
more specific name, so every level that forbids G2 forbids those too: under
"serializable" any cycle through an rw edge is a violation. One example cycle
is reported per class and component, as (txn index, edge type, txn index)
steps. Realtime edges start only from "ok" transactions (an "info" one may
commit at any later time), and so do process edges.

Per-transaction anomalies: G1a (an ok transaction read a value appended by a
failed one), G1b (it read another transaction's non-final append to a key),
internal (a read disagrees with the transaction's own earlier reads and
appends), duplicate-elements, garbage-read (a value nobody appended) and
lost-update (two committed transactions read the same version of a key and
both appended to it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._cycles import NAMES, PR, RT, RW, WR, WW, find_cycles, successors, tarjan

__all__ = ["Txn", "CheckResult", "check", "LEVELS", "ALWAYS_FORBIDDEN", "CYCLE_ANOMALIES"]

CYCLE_ANOMALIES = ("G0", "G1c", "G-single", "G-nonadjacent", "G2")

ALWAYS_FORBIDDEN = frozenset(
    {"internal", "duplicate-elements", "incompatible-order", "garbage-read"}
)

LEVELS: dict[str, frozenset[str]] = {
    "read-uncommitted": frozenset({"G0"}),
    "read-committed": frozenset({"G0", "G1a", "G1b", "G1c"}),
    "snapshot-isolation": frozenset(
        {"G0", "G1a", "G1b", "G1c", "G-single", "G-nonadjacent", "lost-update"}
    ),
    "serializable": frozenset(
        {"G0", "G1a", "G1b", "G1c", "G-single", "G-nonadjacent", "G2", "lost-update"}
    ),
}


@dataclass(frozen=True)
class Txn:
    """One completed transaction of a history (see the module docstring)."""

    index: int
    process: int
    type: str
    ops: tuple[tuple[str, Hashable, Any], ...]
    start: float = 0.0
    end: float = 0.0


@dataclass
class CheckResult:
    """The verdict of :func:`check`.

    ``anomalies`` maps each anomaly name found to a list of explanations
    (dicts with a human-readable ``"message"`` and structured fields; cycle
    anomalies carry ``"cycle"``, a list of ``(txn index, edge type, txn
    index)`` steps). ``valid`` is False when any name in ``forbidden`` was
    found.
    """

    valid: bool
    level: str
    anomalies: dict[str, list[dict[str, Any]]]
    forbidden: set[str]
    txn_count: int = 0
    history: list[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def violations(self) -> list[str]:
        """The anomaly names found that the level forbids, sorted."""
        return sorted(n for n in self.anomalies if n in self.forbidden)

    def summary(self) -> str:
        head = "valid" if self.valid else "INVALID"
        lines = [f"{head} under {self.level}: {self.txn_count} transactions"]
        for name in sorted(self.anomalies):
            cases = self.anomalies[name]
            tag = "forbidden" if name in self.forbidden else "allowed"
            lines.append(f"  {name} ({len(cases)}, {tag})")
            for case in cases[:3]:
                lines.append(f"    {case['message']}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --- normalising the input ---------------------------------------------------


def _get(entry: Any, name: str, default: Any = None) -> Any:
    if isinstance(entry, Mapping):
        return entry.get(name, default)
    return getattr(entry, name, default)


def _normalize(history: Iterable[Any]) -> list[Txn]:
    txns: list[Txn] = []
    seen: set[int] = set()
    for pos, entry in enumerate(history):
        idx = _get(entry, "index", pos)
        if idx in seen:
            raise ValueError(f"transaction index {idx} appears twice")
        seen.add(idx)
        kind = _get(entry, "type")
        if kind not in ("ok", "fail", "info"):
            raise ValueError(f"transaction {idx}: type {kind!r} is not ok/fail/info")
        ops = []
        for op in _get(entry, "ops", ()) or ():
            if len(op) != 3 or op[0] not in ("append", "r"):
                raise ValueError(f"transaction {idx}: bad op {op!r}")
            f, k, v = op
            if f == "r":
                v = None if v is None or kind != "ok" else tuple(v)
            ops.append((f, k, v))
        txns.append(Txn(idx, _get(entry, "process", 0), kind, tuple(ops),
                        float(_get(entry, "start", 0.0) or 0.0),
                        float(_get(entry, "end", 0.0) or 0.0)))
    return txns


# --- the analysis ------------------------------------------------------------


class _Analysis:
    def __init__(self, txns: list[Txn], max_examples: int) -> None:
        self.txns = txns
        self.max_examples = max_examples
        self.anomalies: dict[str, list[dict[str, Any]]] = {}
        self.writer: dict[tuple[Hashable, Any], int] = {}
        self.final_append: dict[tuple[int, Hashable], Any] = {}
        # (position, key, full list, external prefix) of every ok read
        self.reads: list[tuple[int, Hashable, tuple, tuple]] = []
        self.scanned: dict[Hashable, tuple] = {}
        self.orders: dict[Hashable, tuple] = {}
        self.incompatible: set[Hashable] = set()
        self.adj: list[dict[int, int]] = [{} for _ in txns]
        self.why: dict[tuple[int, int, int], str] = {}

    def name(self, pos: int) -> str:
        return f"T{self.txns[pos].index}"

    def report(self, kind: str, message: str, **fields: Any) -> None:
        cases = self.anomalies.setdefault(kind, [])
        if len(cases) < self.max_examples:
            cases.append({"message": message, **fields})

    # appends, reads and per-transaction anomalies

    def index_appends(self) -> None:
        for pos, t in enumerate(self.txns):
            for f, k, v in t.ops:
                if f != "append":
                    continue
                if (k, v) in self.writer:
                    other = self.name(self.writer[(k, v)])
                    raise ValueError(f"value {v!r} appended to key {k!r} twice "
                                     f"({other} and {self.name(pos)})")
                self.writer[(k, v)] = pos
                self.final_append[(pos, k)] = v

    def scan_reads(self) -> None:
        for pos, t in enumerate(self.txns):
            if t.type != "ok":
                continue
            state: dict[Hashable, tuple[tuple | None, list]] = {}
            for i, (f, k, v) in enumerate(t.ops):
                if f == "append":
                    state.setdefault(k, (None, []))[1].append(v)
                    continue
                if v is None:
                    continue
                self._internal(pos, i, k, v, state.get(k))
                state[k] = (v, [])
                ext = v
                while ext and self.writer.get((k, ext[-1])) == pos:
                    ext = ext[:-1]
                self.reads.append((pos, k, v, ext))
                self._read_values(pos, k, v, ext)

    def _internal(self, pos: int, i: int, k: Hashable, got: tuple,
                  st: tuple[tuple | None, list] | None) -> None:
        if st is None:
            return
        prev, mine = st
        if prev is not None:
            if got != prev + tuple(mine):
                self.report("internal", f"{self.name(pos)} op {i} read {k!r} = "
                            f"{list(got)}, expected {list(prev) + mine}",
                            txn=self.txns[pos].index, op=i, key=k, read=list(got),
                            expected=list(prev) + mine)
        elif mine and got[-len(mine):] != tuple(mine):
            self.report("internal", f"{self.name(pos)} op {i} read {k!r} = "
                        f"{list(got)}, expected it to end with its own appends {mine}",
                        txn=self.txns[pos].index, op=i, key=k, read=list(got),
                        expected_suffix=list(mine))

    def _read_values(self, pos: int, k: Hashable, got: tuple, ext: tuple) -> None:
        me = self.name(pos)
        if len(set(got)) != len(got):
            self.report("duplicate-elements", f"{me} read {k!r} = {list(got)}",
                        txn=self.txns[pos].index, key=k, read=list(got))
        # Values already classified in an earlier read of k are skipped: the
        # lists are mostly prefixes of each other, so this keeps it linear.
        prev = self.scanned.get(k, ())
        if got[:len(prev)] == prev:
            fresh = got[len(prev):]
            if fresh:
                self.scanned[k] = got
        else:
            fresh = () if prev[:len(got)] == got else got
        for v in fresh:
            w = self.writer.get((k, v))
            if w is None:
                self.report("garbage-read", f"{me} read {v!r} in {k!r}, which "
                            "no transaction appended", txn=self.txns[pos].index,
                            key=k, value=v, read=list(got))
            elif self.txns[w].type == "fail":
                self.report("G1a", f"{me} read {v!r} in {k!r}, appended by "
                            f"aborted {self.name(w)}", reader=self.txns[pos].index,
                            writer=self.txns[w].index, key=k, value=v)
        if ext:
            w = self.writer.get((k, ext[-1]))
            if w is not None and w != pos and self.final_append[(w, k)] != ext[-1]:
                self.report("G1b", f"{me} read {k!r} ending at {ext[-1]!r}, an "
                            f"intermediate append of {self.name(w)} (its last is "
                            f"{self.final_append[(w, k)]!r})",
                            reader=self.txns[pos].index, writer=self.txns[w].index,
                            key=k, value=ext[-1])

    def version_orders(self) -> None:
        longest: dict[Hashable, tuple[int, tuple]] = {}
        for pos, k, got, _ in self.reads:
            if k not in longest or len(got) > len(longest[k][1]):
                longest[k] = (pos, got)
        for pos, k, got, _ in self.reads:
            lpos, order = longest[k]
            if order[:len(got)] != got:
                self.incompatible.add(k)
                self.report("incompatible-order", f"{self.name(pos)} read {k!r} = "
                            f"{list(got)}, not a prefix of {self.name(lpos)}'s "
                            f"{list(order)}", key=k, reads={
                                self.txns[pos].index: list(got),
                                self.txns[lpos].index: list(order)})
        self.orders = {k: o for k, (_, o) in longest.items()
                       if k not in self.incompatible}

    def lost_updates(self) -> None:
        base: dict[tuple[int, Hashable], Any] = {}
        for pos, k, _, ext in self.reads:
            if (pos, k) in self.final_append:
                base.setdefault((pos, k), ext[-1] if ext else None)
        groups: dict[tuple[Hashable, Any], list[int]] = {}
        for (pos, k), v in base.items():
            groups.setdefault((k, v), []).append(pos)
        for (k, v), group in groups.items():
            if len(group) > 1:
                names = [self.txns[p].index for p in group]
                what = "the empty version" if v is None else f"the version ending {v!r}"
                self.report("lost-update", f"T{', T'.join(map(str, names))} all read "
                            f"{what} of {k!r} and appended to it",
                            key=k, version=v, txns=names)

    # the dependency graph

    def _edge(self, a: int, b: int, kind: int, why: str) -> None:
        if a == b or self.txns[a].type == "fail" or self.txns[b].type == "fail":
            return
        self.adj[a][b] = self.adj[a].get(b, 0) | kind
        self.why.setdefault((a, b, kind), why)

    def build_graph(self, realtime: bool, process: bool) -> None:
        for k, order in self.orders.items():
            for v1, v2 in zip(order, order[1:]):
                a, b = self.writer.get((k, v1)), self.writer.get((k, v2))
                if a is not None and b is not None:
                    self._edge(a, b, WW, f"appended {v1!r} then {v2!r} to {k!r}")
        for pos, k, _, ext in self.reads:
            if ext:
                w = self.writer.get((k, ext[-1]))
                if w is not None:
                    self._edge(w, pos, WR, f"{k!r} ends at {ext[-1]!r}, read")
            order = self.orders.get(k)
            if order is not None and len(ext) < len(order):
                w = self.writer.get((k, order[len(ext)]))
                if w is not None:
                    last = repr(ext[-1]) if ext else "empty"
                    self._edge(pos, w, RW, f"read {k!r} at {last}, next append "
                               f"{order[len(ext)]!r}")
        if realtime:
            self._realtime_edges()
        if process:
            self._process_edges()

    def _realtime_edges(self) -> None:
        # Elle's frontier sweep: link each start only to the most recent
        # completions, so the edge count stays linear-ish (a transitive
        # reduction of the realtime order). Info transactions never complete.
        events = []
        for pos, t in enumerate(self.txns):
            if t.type == "fail":
                continue
            events.append((t.start, 0, pos))
            if t.type == "ok":
                events.append((t.end, 1, pos))
        events.sort()
        frontier: set[int] = set()
        before: dict[int, frozenset[int]] = {}
        for _, kind, pos in events:
            if kind == 0:
                before[pos] = frozenset(frontier)
                for q in frontier:
                    self._edge(q, pos, RT, "ended before the other started")
            else:
                frontier -= before.get(pos, frozenset())
                frontier.add(pos)

    def _process_edges(self) -> None:
        by_proc: dict[Any, list[int]] = {}
        for pos, t in enumerate(self.txns):
            if t.type != "fail":
                by_proc.setdefault(t.process, []).append(pos)
        for group in by_proc.values():
            group.sort(key=lambda p: (self.txns[p].start, self.txns[p].index))
            for a, b in zip(group, group[1:]):
                if self.txns[a].type == "ok":
                    self._edge(a, b, PR, "next transaction of the same process")

    # cycles

    def cycles(self, realtime: bool, process: bool) -> None:
        extra = (RT if realtime else 0) | (PR if process else 0)
        nodes = [p for p, t in enumerate(self.txns) if t.type != "fail"]
        succ = successors(self.adj, WW | WR | RW | extra)
        for scc in tarjan(nodes, succ):
            if len(scc) < 2:
                continue
            found = find_cycles(self.adj, sorted(scc), WW | WR)
            for kind, cycle in found.items():
                self._report_cycle(kind, cycle)
            if extra:
                more = find_cycles(self.adj, sorted(scc), WW | WR | extra)
                for kind, cycle in more.items():
                    kinds = sum({t for _, t, _ in cycle})
                    if kind in found or not kinds & extra:
                        continue
                    suffix = "-realtime" if kinds & RT else "-process"
                    self._report_cycle(kind + suffix, cycle)

    def _report_cycle(self, kind: str, cycle: list[tuple[int, int, int]]) -> None:
        steps = [(self.txns[a].index, NAMES[t], self.txns[b].index)
                 for a, t, b in cycle]
        lines = [f"{self.name(a)} -{NAMES[t]}-> {self.name(b)}: "
                 f"{self.why.get((a, b, t), '')}" for a, t, b in cycle]
        path = " ".join(f"T{a} -{t}->" for a, t, _ in steps) + f" T{steps[0][0]}"
        self.report(kind, path, cycle=steps, steps=lines)


def check(history: Sequence[Any], level: str = "serializable", *,
          realtime: bool = False, process: bool = False,
          max_examples: int = 10) -> CheckResult:
    """Check a list-append history (format in the module docstring) against
    an isolation level: one of :data:`LEVELS` ("serializable",
    "snapshot-isolation", "read-committed", "read-uncommitted").

    ``realtime`` and ``process`` add ordering edges (see the module
    docstring); the level then also forbids the suffixed cycle names.
    ``max_examples`` caps the explanations kept per anomaly name.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {sorted(LEVELS)}")
    txns = _normalize(history)
    an = _Analysis(txns, max_examples)
    an.index_appends()
    an.scan_reads()
    an.version_orders()
    an.lost_updates()
    an.build_graph(realtime, process)
    an.cycles(realtime, process)
    forbidden = set(LEVELS[level] | ALWAYS_FORBIDDEN)
    for suffix, on in (("-realtime", realtime), ("-process", process)):
        if on:
            forbidden |= {n + suffix for n in CYCLE_ANOMALIES if n in LEVELS[level]}
    valid = not any(name in forbidden for name in an.anomalies)
    return CheckResult(valid, level, an.anomalies, forbidden, len(txns))

