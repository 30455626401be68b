"""Per-key linearizability and durability checkers for histories of
single-key reads, writes and deletes (the stress harness records them).

History format
--------------
A history is a list of operation events (mappings), in the order they were
recorded; that list order is the real-time order::

    {"index": int,                    # id of the event, for reports
     "process": int,                  # the client that ran the operation
     "type": "invoke" | "ok" | "fail" | "info",
     "f": "read" | "write" | "delete",
     "key": str,
     "value": str | None,
     "time": float}                   # monotonic seconds, for reports only

* Each operation is an "invoke" followed later by exactly one completion
  ("ok", "fail" or "info") with the same process, ``f`` and ``key``; a
  process has at most one operation outstanding. An invoke with no completion
  by the end of the history counts as "info".
* "read": invoke value None; its "ok" carries the value read (None: absent).
  A read that ends "fail" or "info" is ignored. "write": ``value`` is the
  value written, unique per key. "delete": value None.
* "ok": took effect once, between its invoke and its completion. "fail":
  definitely took no effect. "info": unknown; it may take effect at any point
  after its invoke (even after its "info" event), or never.
* Keys start absent unless ``initial`` (a dict key -> value) says otherwise.

Linearizability (:func:`check_linearizable`)
--------------------------------------------
The history is split per key (P-compositionality). Some reads are refuted
without a search: of a value never written (or only by a failed write), first
written after the read returned, or stale (its only write was followed by an
acknowledged write or delete that completed before the read began). Else the
key gets Wing & Gong's search with Lowe's improvements, as in Porcupine:
just-in-time linearization (only calls before the first pending return are
candidates) and a cache of (linearized-set bitmask, value) pairs. An info
operation may be linearized anywhere after its invoke, or left out. Exact
reductions:

* an info write or delete whose value no "ok" read returned is dropped, and
  the values of other writes no read returned are all alike to the search;
* a write of a unique value (not the initial one) that was read takes effect
  before the first read of it returns, and is not overwritten while reads of
  it remain to be linearized;
* info operations storing the same value are used in invoke order, and not
  where they would not change the value;
* once a read that could be linearized has been tried at a step, the other
  choices of that step are not (a read leaves the value alone).

A sub-history that keeps, for each of its reads, every write or delete the
read may have read from is closed: if it fails, so does the key (dropping
operations no kept read may have read from never makes a linearizable
history fail). A key whose search runs past half its ``time_limit`` is
searched in closed windows for the other half, else reported unknown. A
violation is explained by a small failing closed sub-history: windows ending
where the search got stuck, then delta debugging (bounded effort).

Durability (:func:`check_durability`)
-------------------------------------
Given what a read of every key returned after the run, each key must hold a
value some write or delete could have left last: one that no "ok" write or
delete was invoked after the completion of ("info" ones never complete), or
the initial value if none was acknowledged. Otherwise it is a lost write, a
resurrected delete (an acknowledged delete could be last, yet the key holds
an old value) or a garbage value (one no write, or only a failed one, stored).
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DurabilityResult", "LinearResult", "check_durability", "check_linearizable",
           "format_event", "load_history", "shrink"]

_INF = float("inf")
_UNREAD = object()  # the register value after a write that no read returned
_SHOWN_KEYS = 10  # violations printed by summary()
_SHOWN_EVENTS = 40  # events printed per violation

Event = Mapping[str, Any]


@dataclass(slots=True, eq=False)
class _Op:
    f: str
    key: Hashable
    value: Any  # the value written (write), read (ok read) or None
    status: str  # "ok" | "fail" | "info"
    call: int  # position of the invoke in the history
    ret: int | None  # position of the completion (None: in flight at the end)
    events: list[Event]


def _operations(history: Sequence[Event]) -> list[_Op]:
    """Pair invokes with completions; operations in invoke order."""
    ops: list[_Op] = []
    outstanding: dict[Any, _Op] = {}
    for pos, ev in enumerate(history):
        kind, f, proc = ev.get("type"), ev.get("f"), ev.get("process")
        op = outstanding.pop(proc, None)
        if kind == "invoke" and op is None and f in ("read", "write", "delete"):
            op = _Op(f, ev.get("key"), ev.get("value") if f == "write" else None,
                     "info", pos, None, [ev])
            outstanding[proc] = op
            ops.append(op)
        elif kind in ("ok", "fail", "info") and op is not None and (
                ev.get("f", op.f), ev.get("key", op.key)) == (op.f, op.key):
            op.status, op.ret = kind, pos
            op.events.append(ev)
            if op.f == "read" and kind == "ok":
                op.value = ev.get("value")
        else:
            raise ValueError(
                f"event {ev.get('index', pos)}: {kind!r} {f!r} of process {proc!r} does not "
                "fit: an invoke (of read, write or delete) needs the process idle, a "
                "completion (ok, fail or info) its open invoke of the same f and key")
    return ops


def _group(ops: list[_Op], by: Callable[[_Op], Any]) -> dict[Any, list[_Op]]:
    out: dict[Any, list[_Op]] = {}
    for op in ops:
        out.setdefault(by(op), []).append(op)
    return out


def _stored(op: _Op) -> Any:
    return op.value if op.f == "write" else None


def _events_of(ops: list[_Op]) -> list[Event]:
    pairs = [(op.call, op.events[0]) for op in ops]
    pairs += [(op.ret, op.events[1]) for op in ops if op.ret is not None]
    return [ev for _, ev in sorted(pairs, key=lambda p: p[0])]


def _describe(op: _Op) -> str:
    ids = ", ".join(f"#{ev.get('index', '?')}" for ev in op.events)
    what = "delete" if op.f == "delete" else f"{op.f} of {op.value!r}"
    return f"{op.status} {what} by process {op.events[0].get('process')} ({ids})"


def format_event(ev: Event) -> str:
    """One line for an event: index, time, process, type, f and value."""
    t, f = ev.get("time"), ev.get("f")
    stamp = f" t={t:.6f}" if isinstance(t, (int, float)) else ""
    val = f" {ev.get('value')!r}" if f == "write" or f == "read" and ev.get("type") == "ok" else ""
    return f"#{ev.get('index', '?')}{stamp} p{ev.get('process')} {ev.get('type')} {f}{val}"


# --- the search ----------------------------------------------------------------

# A model operation: (is read, value, call position, return position, op).
_MOp = tuple[bool, Any, float, float, _Op]


def _model_ops(ops: list[_Op], init: Any) -> list[_MOp]:
    """The operations the search linearizes (see the module docstring),
    writes and deletes first, each group in call order."""
    read_rets: dict[Any, list[int]] = {}
    reads: list[_MOp] = []
    for op in ops:
        if op.f == "read" and op.status == "ok":
            read_rets.setdefault(op.value, []).append(op.ret)  # type: ignore[arg-type]
            reads.append((True, op.value, op.call, op.ret, op))  # type: ignore[arg-type]
    muts = [op for op in ops if op.f != "read" and op.status != "fail"]
    writers = Counter(_stored(op) for op in muts)
    out: list[_MOp] = []
    for op in muts:
        v = _stored(op)
        ret: float = op.ret if op.status == "ok" else _INF  # type: ignore[assignment]
        rets = read_rets.get(v)
        if rets is None:
            if op.status == "info":
                continue
            v = _UNREAD  # all such values are alike to the search
        elif v is not None and v != init and writers[v] == 1:
            ret = min([ret] + [r - 0.5 for r in rets if r > op.call])
        out.append((False, v, op.call, ret, op))
    return out + reads


def _search(mops: list[_MOp], init: Any,
            deadline: float | None) -> tuple[bool | None, float, _Op | None]:
    """Wing & Gong / Lowe search over one register: (linearizable, or None on
    timeout; the furthest return position a branch got stuck at, a pruned
    branch counting as stuck where it surely would be; that return's op)."""
    n, tail = len(mops), 2 * len(mops) + 1
    # entries 1..n are calls, n+1..2n returns; 0 is the head sentinel
    order = sorted(range(1, 2 * n + 1), key=lambda e: (
        mops[e - 1][2] if e <= n else mops[e - n - 1][3], e))
    nxt, prv, last = [0] * (2 * n + 2), [0] * (2 * n + 2), 0
    for e in order:
        nxt[last], prv[e] = e, last
        last = e
    nxt[last], prv[tail] = tail, last
    is_read, vals = [m[0] for m in mops], [m[1] for m in mops]
    optional = [not m[0] and m[3] == _INF for m in mops]
    # Reads still to linearize per value that one write alone stores: that
    # write must not be overwritten while some remain (they never could be).
    writes = Counter(v for r, v in zip(is_read, vals) if not r)
    tracked = [r and v is not None and v != init and writes[v] == 1
               for r, v in zip(is_read, vals)]
    pending = Counter(v for t, v in zip(tracked, vals) if t)
    reads_of: dict[Any, list[int]] = {}
    for i in sorted(range(n), key=lambda i: mops[i][3]):
        if tracked[i]:
            reads_of.setdefault(vals[i], []).append(i)
    # Optional operations storing the same value are interchangeable: each
    # is used only after the one invoked before it (mops are in call order).
    before, latest = [-1] * n, {}
    for i in range(n):
        if optional[i]:
            before[i], latest[vals[i]] = latest.get(vals[i], -1), i
    done, cache, calls = [False] * n, set(), []  # calls: (entry, state before)
    linearized, state, entry, steps, furthest, blocker = 0, init, nxt[0], 0, -1.0, -1
    while nxt[0] != tail:
        steps += 1
        if deadline is not None and not steps & 1023 and time.monotonic() > deadline:
            return None, furthest, None
        if entry <= n:  # a call
            op = entry - 1
            new = vals[op]
            if is_read[op]:
                ok = new == state
            elif pending.get(state):
                # Overwriting now dooms the first pending read of the value:
                # that branch would get stuck at its return at the latest.
                i = next(i for i in reads_of[state] if not done[i])
                if mops[i][3] > furthest:
                    furthest, blocker = mops[i][3], i
                ok = False
            else:  # (an optional operation that changes nothing is left out)
                ok = not (before[op] >= 0 and not done[before[op]]
                          or optional[op] and new == state)
            if ok:
                lin = linearized | (1 << op)
                ok = (lin, new) not in cache
            if not ok:
                entry = nxt[entry]
                continue
            cache.add((lin, new))
            calls.append((entry, state))
            state, linearized = new, lin
            done[op] = True
            if tracked[op]:
                pending[new] -= 1
            # lift the call and its return out of the list
            r = entry + n
            nxt[prv[entry]], prv[nxt[entry]] = nxt[entry], prv[entry]
            nxt[prv[r]], prv[nxt[r]] = nxt[r], prv[r]
            entry = nxt[0]
        else:  # a return whose call is not linearized: backtrack
            pos = mops[entry - n - 1][3]
            if pos == _INF:  # only optional operations are left
                return True, furthest, None
            if pos > furthest:
                furthest, blocker = pos, entry - n - 1
            while True:
                if not calls:
                    return False, furthest, mops[blocker][4]
                entry, state = calls.pop()
                linearized ^= 1 << (entry - 1)
                done[entry - 1] = False
                if tracked[entry - 1]:
                    pending[state] += 1
                r = entry + n
                nxt[prv[r]] = prv[nxt[r]] = r
                nxt[prv[entry]] = prv[nxt[entry]] = entry
                # A read that could be linearized here is never worse
                # linearized at once (it leaves the value alone), so the
                # other choices of this step need no trying.
                if not is_read[entry - 1]:
                    break
            entry = nxt[entry]
    return True, furthest, None


# --- shrinking -----------------------------------------------------------------


def _ddmin(items: list[Any], fails: Callable[[list[Any]], bool],
           max_tests: int, deadline: float | None) -> list[Any]:
    """Delta debugging: drop chunks of items while fails() holds, until
    1-minimal or out of tests or time."""
    chunks, tests = 2, 0
    while len(items) >= 2:
        size = -(-len(items) // chunks)
        for start in range(0, len(items), size):
            if tests >= max_tests or (deadline is not None and time.monotonic() > deadline):
                return items
            tests += 1
            cand = items[:start] + items[start + size:]
            if fails(cand):
                items, chunks = cand, max(chunks - 1, 2)
                break
        else:
            if size == 1:
                break
            chunks = min(len(items), 2 * chunks)
    return items


def shrink(history: Sequence[Event], predicate: Callable[[list[Event]], bool], *,
           max_tests: int = 500, time_limit: float | None = 5.0) -> list[Event]:
    """A smaller sub-history on which ``predicate`` (true for ``history``)
    still holds, found by removing whole operations (an invoke with its
    completion) ddmin-style, with at most ``max_tests`` predicate calls and
    ``time_limit`` seconds. Events keep their order."""
    groups = [[op.call] + ([] if op.ret is None else [op.ret]) for op in _operations(history)]

    def events(gs: list[list[int]]) -> list[Event]:
        return [history[p] for p in sorted(p for g in gs for p in g)]

    deadline = None if time_limit is None else time.monotonic() + time_limit
    return events(_ddmin(groups, lambda gs: predicate(events(gs)), max_tests, deadline))


def _sources(ops: list[_Op]) -> tuple[dict[Any, list[_Op]], dict[Any, list[_Op]]]:
    """Writes and deletes by the value they store: (not failed, failed)."""
    muts = [op for op in ops if op.f != "read"]
    return (_group([op for op in muts if op.status != "fail"], _stored),
            _group([op for op in muts if op.status == "fail"], _stored))


def _overwrites(ops: list[_Op]) -> Callable[[int, int], _Op | None]:
    """between(a, b): an acknowledged write or delete invoked after position
    a that completed before position b (the earliest completing), or None."""
    best = sorted((o for o in ops if o.f != "read" and o.status == "ok"), key=lambda o: o.call)
    calls = [o.call for o in best]
    for i in range(len(best) - 2, -1, -1):  # best[i]: the earliest to complete of i:
        if best[i + 1].ret < best[i].ret:  # type: ignore[operator]
            best[i] = best[i + 1]

    def between(after: int, before: int) -> _Op | None:
        i = bisect_right(calls, after)
        return best[i] if i < len(best) and best[i].ret < before else None  # type: ignore[operator]
    return between


def _quick(ops: list[_Op], init: Any) -> tuple[str, str, list[_Op], _Op] | None:
    """A read refuted without a search: (kind, why, sub-history, the read)."""
    live, dead = _sources(ops)
    between = _overwrites(ops)
    for r in ops:
        if r.f != "read" or r.status != "ok":
            continue
        v, srcs = r.value, live.get(r.value, [])
        if v != init and v is not None and not srcs:
            if v in dead:
                why = f", a value only the failed {_describe(dead[v][0])} stored"
                return "failed-write-read", why, [r, *dead[v]], r
            return "garbage-read", ", a value never written", [r], r
        if v != init and srcs and all(w.call > r.ret for w in srcs):  # type: ignore[operator]
            why = f", a value first stored by the later {_describe(srcs[0])}"
            return "future-read", why, [r, *srcs], r
        # stale: the value's only source was surely replaced before r began
        if len(srcs) + (v == init) == 1 and (not srcs or srcs[0].status == "ok"):
            m = between(srcs[0].ret if srcs else -1, r.call)  # type: ignore[arg-type]
            if m is not None:
                why = f", but the {_describe(m)} replaced it before the read began"
                return "stale-read", why, [*srcs, m, r], r
    return None


# --- linearizability -------------------------------------------------------------


@dataclass
class LinearResult:
    """The verdict of :func:`check_linearizable`: ``valid`` is False when a
    key has a violation, else None when some key ran out of time (listed in
    ``unknown``), else True. ``violations`` maps each violating key to a dict:
    ``kind`` ("stale-read", "garbage-read", "failed-write-read", "future-read"
    or "nonlinearizable"), ``message``, ``key``, ``op`` (the events of the
    read blamed), ``sub_history`` (the events of a small failing sub-history,
    in history order) and ``ops`` (the key's operation count)."""

    valid: bool | None
    keys_checked: int
    violations: dict[Hashable, dict[str, Any]]
    unknown: list[Hashable] = field(default_factory=list)
    ops_checked: int = 0

    def summary(self) -> str:
        head = {True: "linearizable", False: "NOT linearizable", None: "UNKNOWN"}[self.valid]
        lines = _render(f"{head}: {self.keys_checked} keys, {self.ops_checked} operations, "
                        f"{len(self.violations)} violating, {len(self.unknown)} unknown",
                        list(self.violations.values()), "sub_history")
        if self.unknown:
            lines.append(f"  unknown (time limit): {self.unknown[:_SHOWN_KEYS]!r}")
        return "\n".join(lines)

    __str__ = summary


def _explain(key: Hashable, kind: str, why: str, sub: list[_Op], blamed: _Op,
             n_ops: int) -> dict[str, Any]:
    return {"kind": kind, "message": f"{key!r}: {_describe(blamed)}{why}", "key": key,
            "op": list(blamed.events), "sub_history": _events_of(sub), "ops": n_ops}


def _render(head: str, cases: list[dict[str, Any]], events: str) -> list[str]:
    lines = [head]
    for case in cases[:_SHOWN_KEYS]:
        lines.append(f"  [{case['kind']}] {case['message']}")
        lines += [f"    {format_event(ev)}" for ev in case[events][:_SHOWN_EVENTS]]
        if len(case[events]) > _SHOWN_EVENTS:
            lines.append(f"    ... {len(case[events]) - _SHOWN_EVENTS} more events")
    if len(cases) > _SHOWN_KEYS:
        lines.append(f"  ... {len(cases) - _SHOWN_KEYS} more keys")
    return lines


class _Closed:
    """Closed sub-histories of one key (see the module docstring)."""

    def __init__(self, ops: list[_Op], init: Any) -> None:
        self.ops, self.init = ops, init
        self.live = _sources(ops)[0]
        self.between = _overwrites(ops)
        self.memo: dict[int, list[_Op]] = {}

    def sources(self, r: _Op) -> list[_Op]:
        # A delete invoked after the read returned, or surely overwritten
        # before it began, cannot be what it read; values are unique.
        if id(r) not in self.memo:
            self.memo[id(r)] = [d for d in self.live.get(r.value, []) if r.value is not None
                                or d.call < r.ret and (  # type: ignore[operator]
                                    d.status != "ok" or self.between(d.ret, r.call) is None)]
        return self.memo[id(r)]

    def close(self, cand: list[_Op]) -> list[_Op]:
        more = [w for r in cand if r.f == "read" and r.status == "ok" for w in self.sources(r)]
        return sorted({id(op): op for op in cand + more}.values(), key=lambda op: op.call)

    def search(self, cand: list[_Op], deadline: float) -> tuple[bool | None, float, _Op | None]:
        return _search(_model_ops(cand, self.init), self.init, deadline)

    def fails(self, cand: list[_Op], deadline: float) -> bool:
        closed = len(self.close(cand)) == len(cand)
        return closed and self.search(cand, deadline)[0] is False

    def near(self, furthest: float, deadline: float) -> list[_Op]:
        """The shortest failing window ending where the search got stuck."""
        span = 16
        while span < 2 * furthest and time.monotonic() < deadline:
            win = self.close([op for op in self.ops if op.call < furthest
                              and (op.ret is None or op.ret >= furthest - span)])
            if len(win) >= len(self.ops):
                break
            if self.fails(win, deadline):
                return win
            span *= 2
        return self.ops

    def local(self, deadline: float) -> list[_Op] | None:
        """A failing window anywhere, for a key whose search ran out of time."""
        for size in (16, 64, 256):
            for start in range(0, len(self.ops), size // 2):
                if time.monotonic() > deadline:
                    return None
                win = self.close(self.ops[start:start + size])
                if self.search(win, min(deadline, time.monotonic() + 0.25))[0] is False:
                    return win
        return None

    def smallest(self, sub: list[_Op], deadline: float,
                 blamed: _Op | None) -> tuple[list[_Op], _Op]:
        """Shrink a failing sub-history; blame the read whose completion the
        search could not get past, else the last to complete."""
        sub = _ddmin(sub, lambda cand: self.fails(cand, deadline), 2000, deadline)
        ok, _, last = self.search(sub, deadline)
        blamed = last if ok is False and last is not None else blamed
        if blamed is None or blamed.f != "read" or blamed not in sub:  # (a failing
            # history has a read: writes and deletes alone always linearize)
            blamed = max((op for op in sub if op.f == "read" and op.status == "ok"),
                         key=lambda op: op.ret)  # type: ignore[arg-type,return-value]
        return sub, blamed  # type: ignore[return-value]


def check_linearizable(history: Sequence[Event], initial: Mapping[Hashable, Any] | None = None,
                       *, time_limit: float | None = None,
                       shrink_time: float = 2.0) -> LinearResult:
    """Check that every key of ``history`` (format in the module docstring)
    behaves as a linearizable register. ``initial`` gives keys' starting
    values (absent otherwise). ``time_limit`` bounds the search per key in
    seconds (None: unbounded; see the module docstring); a key found neither
    linearizable nor violating in that time is reported unknown.
    ``shrink_time`` bounds, in all, the seconds spent shrinking the failing
    sub-histories of violating keys (a quarter of it at most per key)."""
    init_of = dict(initial or {})
    ops = _operations(history)
    keyed = _group(ops, lambda op: op.key)
    violations: dict[Hashable, dict[str, Any]] = {}
    unknown: list[Hashable] = []
    shrink_until = None
    for key, kops in keyed.items():
        init = init_of.get(key)
        quick = _quick(kops, init)
        if quick is not None:
            violations[key] = _explain(key, *quick, len(kops))
            continue
        half = None if time_limit is None else time_limit / 2
        deadline = None if half is None else time.monotonic() + half
        ok, furthest, blamed = _search(_model_ops(kops, init), init, deadline)
        if ok:
            continue
        closed = _Closed(kops, init)
        if ok is None:  # look for a violation in windows of the key instead
            sub = closed.local(time.monotonic() + half)  # type: ignore[operator]
            if sub is None:
                unknown.append(key)
                continue
        now = time.monotonic()
        shrink_until = shrink_until or now + shrink_time
        budget = min(shrink_until, now + max(shrink_time / 4, 0.05))
        if ok is False:
            sub = closed.near(furthest, budget)
        sub, read = closed.smallest(sub, budget, blamed)
        why = f"; no order of the {len(sub)} operations below allows it"
        violations[key] = _explain(key, "nonlinearizable", why, sub, read, len(kops))
    valid = False if violations else None if unknown else True
    return LinearResult(valid, len(keyed), violations, unknown, len(ops))


# --- durability --------------------------------------------------------------------


@dataclass
class DurabilityResult:
    """The verdict of :func:`check_durability`. ``violations`` maps each
    failing key to a dict: ``kind`` ("lost-write", "resurrected-delete" or
    "garbage-value"), ``message``, ``key``, ``final`` (the value found),
    ``allowed`` (the values it could have held) and ``events`` (those of the
    acknowledged operations that could be last, of the writes of the value
    found and of up to 10 in-flight candidates, in history order)."""

    valid: bool
    keys_checked: int
    violations: dict[Hashable, dict[str, Any]]

    def of_kind(self, kind: str) -> dict[Hashable, dict[str, Any]]:
        return {k: v for k, v in self.violations.items() if v["kind"] == kind}

    lost_writes = property(lambda self: self.of_kind("lost-write"))
    resurrected_deletes = property(lambda self: self.of_kind("resurrected-delete"))
    garbage_values = property(lambda self: self.of_kind("garbage-value"))

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of_kind(k))} {k}" for k in (
            "lost-write", "resurrected-delete", "garbage-value"))
        head = f"{'durable' if self.valid else 'NOT durable'}: {self.keys_checked} keys; {counts}"
        return "\n".join(_render(head, list(self.violations.values()), "events"))

    __str__ = summary


def _durable(key: Hashable, muts: list[_Op], got: Any, init: Any) -> dict[str, Any] | None:
    live = [m for m in muts if m.status != "fail"]
    acked = [m for m in live if m.status == "ok"]
    last_call = max((m.call for m in acked), default=-1)
    cands = [m for m in live if m.status == "info" or m.ret > last_call]  # type: ignore[operator]
    allowed = {_stored(m) for m in cands} | (set() if acked else {init})
    if got in allowed:
        return None
    writers = [m for m in muts if m.f == "write" and m.value == got]
    latest = [m for m in cands if m.status == "ok"]
    found = "absent" if got is None else f"as {got!r}"
    if writers:
        found += f" (stored by the {'; '.join(_describe(w) for w in writers[:3])})"
    elif got is not None and got == init:
        found += " (its initial value)"
    if got is not None and got != init and all(w.status == "fail" for w in writers):
        kind = "garbage-value"
        message = f"{key!r} ended {found}, a value " + (
            "only a failed write stored" if writers else "never written")
    else:
        resurrected = got is not None and any(m.f == "delete" for m in latest)
        kind = "resurrected-delete" if resurrected else "lost-write"
        last = "; ".join(_describe(m) for m in latest)
        message = f"{key!r} ended {found}, " + (
            f"but the last acknowledged operation was the {last}" if latest
            else f"but held {init!r} and no write or delete was acknowledged")
        if resurrected:
            message += ", and no write that came later was in flight"
    message += f"; allowed: {', '.join(sorted(map(repr, allowed)))}"
    shown = {id(m): m for m in latest + writers + [m for m in cands if m.status == "info"][:10]}
    return {"kind": kind, "message": message, "key": key, "final": got,
            "allowed": sorted(allowed, key=repr),
            "events": _events_of(sorted(shown.values(), key=lambda m: m.call))}


def check_durability(history: Sequence[Event], final: Mapping[Hashable, Any],
                     initial: Mapping[Hashable, Any] | None = None) -> DurabilityResult:
    """Check that ``final`` (what a read of every key returned after the run)
    holds, for each key, a value some write or delete of ``history`` could
    have left last (see the module docstring). A key of the history or of
    ``initial`` missing from ``final`` counts as absent."""
    init_of, ops = dict(initial or {}), _operations(history)
    by_key = _group([op for op in ops if op.f != "read"], lambda op: op.key)
    keys = set(by_key) | set(final) | set(init_of) | {op.key for op in ops}
    cases = {key: _durable(key, by_key.get(key, []), final.get(key), init_of.get(key))
             for key in sorted(keys, key=repr)}
    violations = {key: case for key, case in cases.items() if case is not None}
    return DurabilityResult(not violations, len(keys), violations)


def load_history(path: str) -> list[dict[str, Any]]:
    """Read a history written as JSON lines (one event per line)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
