"""The verdicts of a run: the checkers over the merged history and the final reads.

Runs in the harness process after the clients stopped. The checkers are
imported when used:

- single-key workloads: per-key linearizability
  (:func:`lightning_db.check.linear.check_linearizable`) over the history
  plus the final reads, recorded as one last process reading every key once
  everything else ended; durability
  (:func:`lightning_db.check.linear.check_durability`) of the final values.
- the transactional workload: the list-append checker
  (:func:`lightning_db.check.check`, serializable) over the transactions
  plus a last one reading every list, and list durability: every append of
  a committed transaction must be in the final list of its key (the
  list-append checker orders only the values some read saw, so a committed
  append that vanished is caught here).

Each verdict carries the smallest failing sub-history the checker found
(events or transactions), which the harness prints and the report shows.

Generations (history.py): keys of different generations are independent
registers, and so are lists, so ``StreamChecker`` checks each generation
once the stream has passed its period and none of its operations is still
open, then forgets it: memory stays bounded by a few generations however
long the run was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Merged, generation_of

__all__ = ["StreamChecker", "Verdict", "check_lists_durable", "run_checkers", "txn_indexes"]

SEARCH_TIME_LIMIT_S = 60.0      # per key; past it a key's verdict is unknown
FINAL_PROCESS = -1              # the process of the final reads
CLOSE_SLACK_S = 1.0             # a generation is checked this long after its period ended (and nothing is open)


@dataclass
class Verdict:
    """One checker's verdict: ``valid`` True, False, or None (unknown: the
    search ran out of time); ``summary`` (text); ``failing`` (the smallest
    failing sub-history found: events or transactions); ``details``
    (counts: lost writes, violating keys, anomalies)."""

    name: str
    valid: bool | None
    summary: str
    failing: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "valid": self.valid, "summary": self.summary, "failing": self.failing,
                "details": self.details}


def _smallest(cases: Mapping[Any, Mapping[str, Any]], field_name: str) -> list[dict[str, Any]]:
    subs = [list(c.get(field_name) or []) for c in cases.values()]
    subs = [s for s in subs if s]
    return min(subs, key=len) if subs else []


def txn_indexes(case: Mapping[str, Any]) -> list[int]:
    """The transactions an anomaly of the list-append checker names."""
    out: list[int] = []
    for name in ("txn", "reader", "writer"):
        if isinstance(case.get(name), int):
            out.append(case[name])
    out += [i for i in case.get("txns") or [] if isinstance(i, int)]
    out += [i for i in (case.get("reads") or {}) if isinstance(i, int)]
    for step in case.get("cycle") or []:
        out += [step[0], step[2]]
    return sorted(set(out))


def check_lists_durable(txns: Sequence[Mapping[str, Any]], final: Mapping[str, Sequence[Any]]) -> Verdict:
    """Every append of an "ok" transaction is in the final list of its key."""
    lost: dict[str, list[Any]] = {}
    culprits: list[dict[str, Any]] = []
    for t in txns:
        if t["type"] != "ok":
            continue
        missing = [(k, v) for f, k, v in t["ops"] if f == "append" and v not in set(final.get(k) or ())]
        for k, v in missing:
            lost.setdefault(k, []).append(v)
        if missing:
            culprits.append(dict(t))
    n = sum(len(v) for v in lost.values())
    if not lost:
        summary = f"durable: {len(final)} lists, every committed append present"
    else:
        shown = "; ".join(f"{k!r} lost {v[:5]}" for k, v in list(lost.items())[:5])
        summary = f"NOT durable: {n} committed appends missing from {len(lost)} lists: {shown}"
    return Verdict("list durability", not lost, summary, culprits[:1],
                   {"lost_appends": n, "keys": len(final)})


class _Generation:
    __slots__ = ("events", "last", "pending", "txns")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.txns: list[dict[str, Any]] = []
        self.pending: set[Any] = set()
        self.last = 0.0


class StreamChecker:
    """The checkers fed one event (or transaction) at a time, in history
    order, one generation at a time; ``finish()`` returns the verdicts.
    *final* and *lists* are what the final reads returned, for every key.
    A generation is checked once the stream is past its period and nothing
    of it is open (an operation invoked, or a transaction begun, that has
    not ended); an event for a generation already checked is a bug of the
    harness and raises RuntimeError."""

    def __init__(self, final: Mapping[str, str | None], lists: Mapping[str, Sequence[Any]], *,
                 transactional: bool, start: float = 0.0, rotate: float = 0.0,
                 time_limit: float = SEARCH_TIME_LIMIT_S) -> None:
        self.transactional, self.start, self.rotate, self.time_limit = transactional, start, rotate, time_limit
        self.gens: dict[int, _Generation] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        for key, value in (lists if transactional else final).items():
            self.finals.setdefault(generation_of(key), {})[key] = value
        self._final_n = 0
        self._next_look = 0.0
        self.closed: set[int] = set()                # generations checked and forgotten
        # linearizability and durability, or list-append and list durability
        self.lin: dict[str, Any] = {"keys": 0, "ops": 0, "violations": {}, "unknown": []}
        self.dur: dict[str, Any] = {"keys": 0, "violations": {}}
        self.la: dict[str, Any] = {"txns": 0, "invalid": [], "anomalies": {}, "failing": []}
        self.lists: dict[str, Any] = {"keys": 0, "lost": 0, "summaries": [], "failing": []}

    # -- feeding --

    def add(self, ev: dict[str, Any]) -> None:
        gen = generation_of(ev.get("key"))
        if gen in self.closed:
            raise RuntimeError(f"event {ev.get('index')} of generation {gen} came after its check")
        g = self.gens.setdefault(gen, _Generation())
        g.events.append(ev)
        if ev.get("type") == "invoke":
            g.pending.add(ev.get("process"))
        else:
            g.pending.discard(ev.get("process"))
        g.last = ev["time"]
        self._close_ready(ev["time"])

    def _txn_generation(self, t: dict[str, Any]) -> _Generation:
        ops = t.get("ops") or []
        gen = generation_of(ops[0][1]) if ops else 0      # a transaction keeps to one generation
        if gen in self.closed:
            raise RuntimeError(f"transaction {t.get('index')} of generation {gen} came after its check")
        return self.gens.setdefault(gen, _Generation())

    def invoke_txn(self, inv: dict[str, Any]) -> None:
        """A transaction began: its generation stays open until it ends."""
        self._txn_generation(inv).pending.add(inv.get("process"))

    def add_txn(self, t: dict[str, Any]) -> None:
        g = self._txn_generation(t)
        g.txns.append(t)
        g.pending.discard(t.get("process"))
        g.last = max(g.last, t["end"])
        self._close_ready(t["end"])

    def _close_ready(self, now: float) -> None:
        if self.rotate <= 0 or now < self._next_look:
            return
        self._next_look = now + 0.5
        for gen in sorted(self.gens):
            g = self.gens[gen]
            if not g.pending and now > self.start + (gen + 1) * self.rotate + CLOSE_SLACK_S:
                self.closed.add(gen)
                self._check(gen, self.gens.pop(gen))

    # -- checking one generation --

    def _check(self, gen: int, g: _Generation) -> None:
        final = self.finals.pop(gen, {})
        if self.transactional:
            self._check_txns(g, final)
        else:
            self._check_ops(g, final)

    def _check_ops(self, g: _Generation, final: dict[str, Any]) -> None:
        from ..check.linear import check_durability, check_linearizable
        reads = []
        t = g.last
        for key, value in sorted(final.items()):
            n = self._final_n
            self._final_n += 1
            reads.append({"index": f"final-{n}", "process": FINAL_PROCESS, "type": "invoke", "f": "read",
                          "key": key, "value": None, "time": t + 1e-6})
            reads.append({"index": f"final-{n}", "process": FINAL_PROCESS, "type": "ok", "f": "read",
                          "key": key, "value": value, "time": t + 2e-6})
            t += 2e-6
        lin = check_linearizable(g.events + reads, time_limit=self.time_limit)
        self.lin["keys"] += lin.keys_checked
        self.lin["ops"] += lin.ops_checked
        self.lin["violations"].update(lin.violations)
        self.lin["unknown"] += lin.unknown
        dur = check_durability(g.events, final)
        self.dur["keys"] += dur.keys_checked
        self.dur["violations"].update(dur.violations)

    def _check_txns(self, g: _Generation, lists: dict[str, Any]) -> None:
        from ..check import check
        last = {"index": f"final-{self._final_n}", "process": FINAL_PROCESS, "type": "ok",
                "ops": [["r", k, list(v)] for k, v in sorted(lists.items())],
                "start": g.last + 1e-6, "end": g.last + 2e-6}
        self._final_n += 1
        txns = g.txns + [last]
        res = check(txns, "serializable")
        self.la["txns"] += res.txn_count
        by_index = {t["index"]: t for t in txns}
        if not res.valid:
            self.la["invalid"].append(res.summary())
            for name in res.violations:
                cand = [by_index[i] for i in txn_indexes(res.anomalies[name][0]) if i in by_index]
                if cand and (not self.la["failing"] or len(cand) < len(self.la["failing"])):
                    self.la["failing"] = cand
        for name, cases in res.anomalies.items():
            self.la["anomalies"][name] = self.la["anomalies"].get(name, 0) + len(cases)
        ld = check_lists_durable(g.txns, lists)
        self.lists["keys"] += len(lists)
        self.lists["lost"] += ld.details["lost_appends"]
        if not ld.valid:
            self.lists["summaries"].append(ld.summary)
            self.lists["failing"] = self.lists["failing"] or ld.failing

    # -- the verdicts --

    def finish(self) -> list[Verdict]:
        for gen in sorted(self.gens):
            self._check(gen, self.gens.pop(gen))
        for gen in sorted(self.finals):            # keys no operation touched: still read back
            self._check(gen, _Generation())
        if self.transactional:
            return self._txn_verdicts()
        from ..check.linear import DurabilityResult, LinearResult
        lv = self.lin["violations"]
        lin = LinearResult(False if lv else None if self.lin["unknown"] else True, self.lin["keys"], lv,
                           self.lin["unknown"], self.lin["ops"])
        dur = DurabilityResult(not self.dur["violations"], self.dur["keys"], self.dur["violations"])
        lost_acked = sum(1 for c in dur.violations.values() if c["kind"] in ("lost-write", "resurrected-delete"))
        return [
            Verdict("linearizability", lin.valid, lin.summary(), _smallest(lin.violations, "sub_history"),
                    {"keys": lin.keys_checked, "operations": lin.ops_checked, "violating_keys": len(lv),
                     "unknown_keys": len(lin.unknown)}),
            Verdict("durability", dur.valid, dur.summary(), _smallest(dur.violations, "events"),
                    {"keys": dur.keys_checked, "lost_writes": len(dur.lost_writes),
                     "resurrected_deletes": len(dur.resurrected_deletes), "garbage_values": len(dur.garbage_values),
                     "acknowledged_lost": lost_acked}),
        ]

    def _txn_verdicts(self) -> list[Verdict]:
        la, ls = self.la, self.lists
        valid = not la["invalid"]
        head = (f"{'valid' if valid else 'INVALID'} under serializable: {la['txns']} transactions"
                + (f"; anomalies {la['anomalies']}" if la["anomalies"] else ""))
        lsum = (f"durable: {ls['keys']} lists, every committed append present" if not ls["summaries"]
                else "\n".join(ls["summaries"]))
        return [Verdict("list-append", valid, "\n".join([head] + la["invalid"]), la["failing"],
                        {"transactions": la["txns"], "anomalies": la["anomalies"]}),
                Verdict("list durability", not ls["summaries"], lsum, ls["failing"],
                        {"lost_appends": ls["lost"], "keys": ls["keys"]})]


def run_checkers(merged: Merged, final: dict[str, str | None], lists: dict[str, list[Any]], *,
                 transactional: bool, time_limit: float = SEARCH_TIME_LIMIT_S) -> list[Verdict]:
    """Every verdict of a run held in memory (see the module docstring)."""
    checker = StreamChecker(final, lists, transactional=transactional, time_limit=time_limit)
    for ev in merged.events:
        checker.add(ev)
    for t in merged.txns:
        checker.add_txn(t)
    return checker.finish()
