"""The per-key linearizability and durability checkers on planted bad
histories, on histories simulated from a linearizable register (valid, and
with one read made provably impossible), and against brute-force checkers on
small random histories."""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_db.check import (
    check_durability,
    check_linearizable,
    load_history,
    shrink,
)

# --- building histories ----------------------------------------------------------


class H:
    """A history builder: inv() and done() append events in real-time order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.open: dict[int, dict[str, Any]] = {}

    def _ev(self, p: int, type: str, f: str, key: str, value: Any) -> None:
        n = len(self.events)
        self.events.append({"index": n, "process": p, "type": type, "f": f,
                            "key": key, "value": value, "time": n * 0.001})

    def inv(self, p: int, f: str, key: str = "x", value: Any = None) -> H:
        self.open[p] = {"f": f, "key": key, "value": value}
        self._ev(p, "invoke", f, key, value)
        return self

    def done(self, p: int, type: str = "ok", value: Any = None) -> H:
        op = self.open.pop(p)
        v = value if op["f"] == "read" else op["value"]
        self._ev(p, type, op["f"], op["key"], v if type == "ok" or op["f"] != "read" else None)
        return self

    def w(self, v: str, key: str = "x", p: int = 0, type: str = "ok") -> H:
        return self.inv(p, "write", key, v).done(p, type)

    def d(self, key: str = "x", p: int = 0, type: str = "ok") -> H:
        return self.inv(p, "delete", key).done(p, type)

    def r(self, v: Any, key: str = "x", p: int = 0) -> H:
        return self.inv(p, "read", key).done(p, "ok", v)


def lin(h: H | list, **kw: Any) -> Any:
    return check_linearizable(h.events if isinstance(h, H) else h, **kw)


def simulate(rng: random.Random, n_ops: int, keys: int = 3, procs: int = 5,
             p_fail: float = 0.05, p_info: float = 0.1,
             tail: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Processes running random reads, writes and deletes against a
    linearizable in-memory register per key: each operation takes effect at a
    random moment between its invoke and completion. "fail" ones never take
    effect; "info" ones take effect before the info, later (after other
    operations), or never. Returns the history and the final state."""
    names = [f"k{i}" for i in range(keys)]
    state: dict[str, Any] = dict.fromkeys(names)
    h = H()
    pending: dict[int, list[Any]] = {}  # process -> [f, key, value, applied, result]
    limbo: list[list[Any]] = []  # info writes and deletes not yet applied
    counter = itertools.count()
    issued = 0

    def apply(op: list[Any]) -> None:
        if op[0] == "read":
            op[4] = state[op[1]]
        else:
            state[op[1]] = op[2]
        op[3] = True

    while issued < n_ops or pending:
        if tail and issued >= n_ops and rng.random() < 0.05:
            break  # leave the rest in flight
        idle = [p for p in range(procs) if p not in pending]
        roll = rng.random()
        if idle and issued < n_ops and roll < 0.35:
            p, key = rng.choice(idle), rng.choice(names)
            f = rng.choice(("read", "read", "write", "write", "delete"))
            value = f"{key}-{next(counter)}" if f == "write" else None
            h.inv(p, f, key, value)
            pending[p] = [f, key, value, False, None]
            issued += 1
        elif pending and roll < 0.65:
            op = pending[rng.choice(list(pending))]
            if not op[3]:
                apply(op)
        elif limbo and roll < 0.7:
            apply(limbo.pop(rng.randrange(len(limbo))))
        elif pending:
            p = rng.choice(list(pending))
            op = pending[p]
            if op[3]:
                h.done(p, "info" if rng.random() < p_info else "ok", op[4])
            else:
                x = rng.random()
                if x < p_fail:
                    h.done(p, "fail")
                elif x < p_fail + p_info:
                    h.done(p, "info")
                    if op[0] != "read" and rng.random() < 0.6:
                        limbo.append(op)
                else:
                    continue
            del pending[p]
    for op in list(pending.values()) + limbo:
        if op[0] != "read" and not op[3] and rng.random() < 0.5:
            apply(op)  # in flight at the end, landed before the final read
    return h.events, state


def ops_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Operations as dicts with call/ret positions (ret None: in flight)."""
    out, open_ = [], {}
    for pos, ev in enumerate(events):
        if ev["type"] == "invoke":
            open_[ev["process"]] = op = {"f": ev["f"], "key": ev["key"], "value": ev["value"],
                                         "type": "info", "call": pos, "ret": None, "done": None}
            out.append(op)
        else:
            op = open_.pop(ev["process"])
            op.update(type=ev["type"], ret=pos, done=ev)
            if op["f"] == "read":
                op["value"] = ev["value"]
    return out


# --- planted violations ----------------------------------------------------------


def test_stale_read_is_flagged_with_a_small_sub_history() -> None:
    h = H().w("a").w("b").r("b", p=1).w("c", p=2).r("a", p=1)
    res = lin(h)
    assert res.valid is False and list(res.violations) == ["x"]
    case = res.violations["x"]
    assert case["kind"] == "stale-read"
    assert [ev["index"] for ev in case["op"]] == [8, 9]
    # w(a), w(b), r(a): the other operations are shrunk away
    assert [ev["index"] for ev in case["sub_history"]] == [0, 1, 2, 3, 8, 9]
    text = res.summary()
    assert "NOT linearizable" in text and "stale-read" in text and "#9" in text


def test_stale_read_by_another_process_after_an_acknowledged_delete() -> None:
    h = H().w("a").d(p=1).r("a", p=2)
    res = lin(h)
    assert res.valid is False and res.violations["x"]["kind"] == "stale-read"


def test_read_of_a_never_written_value() -> None:
    res = lin(H().w("a").r("zz", p=1))
    assert res.valid is False
    case = res.violations["x"]
    assert case["kind"] == "garbage-read" and len(case["sub_history"]) == 2


def test_read_of_a_failed_writes_value() -> None:
    h = H().w("a").inv(1, "write", "x", "b").r("b", p=2).done(1, "fail")
    res = lin(h)
    assert res.valid is False
    case = res.violations["x"]
    assert case["kind"] == "failed-write-read"
    assert {ev["value"] for ev in case["sub_history"]} >= {"b"}


def test_sequential_reads_in_an_impossible_order() -> None:
    # Both writes complete, then two sequential reads disagree on the last.
    h = (H().inv(0, "write", "x", "a").inv(1, "write", "x", "b").done(0).done(1)
         .r("b", p=2).r("a", p=2))
    res = lin(h)
    assert res.valid is False
    assert len(res.violations["x"]["sub_history"]) == 8
    # Reads concurrent with the writes: a, b, a would need a to land twice.
    h = (H().inv(0, "write", "x", "a").inv(1, "write", "x", "b")
         .r("a", p=2).r("b", p=2).r("a", p=2).done(0).done(1))
    assert lin(h).valid is False


def test_read_from_the_future() -> None:
    h = H().r("a", p=1).w("a")
    res = lin(h)
    assert res.valid is False and res.violations["x"]["kind"] == "future-read"


def test_lost_write() -> None:
    h = H().w("a").w("b", p=1)
    for final in ({"x": "a"}, {"x": None}, {}):
        res = check_durability(h.events, final)
        assert not res.valid and list(res.lost_writes) == ["x"], final
        case = res.violations["x"]
        assert case["allowed"] == ["b"] and case["final"] == final.get("x")
        assert [ev["index"] for ev in case["events"]][-2:] == [2, 3]
        assert "lost-write" in res.summary()


def test_lost_initial_value() -> None:
    res = check_durability(H().r("a").events, {}, initial={"x": "a"})
    assert list(res.lost_writes) == ["x"]


def test_resurrected_delete() -> None:
    h = H().w("a").w("b").d(p=1)
    res = check_durability(h.events, {"x": "a"})
    assert not res.valid and list(res.resurrected_deletes) == ["x"]
    assert {ev["f"] for ev in res.violations["x"]["events"]} == {"write", "delete"}
    # an in-flight write after the delete may land: not a resurrection
    h.inv(2, "write", "x", "c")
    assert check_durability(h.events, {"x": "c"}).valid
    assert not check_durability(h.events, {"x": "a"}).valid
    assert check_durability(h.events, {"x": None}).valid


def test_garbage_final_values() -> None:
    h = H().w("a").w("b", p=1, type="fail")
    res = check_durability(h.events, {"x": "b", "y": "q"})
    assert set(res.garbage_values) == {"x", "y"}
    assert "failed write" in res.violations["x"]["message"]
    assert "never written" in res.violations["y"]["message"]


# --- valid histories ---------------------------------------------------------------


def test_concurrent_writes_may_be_seen_in_either_order() -> None:
    for first, second in (("a", "b"), ("b", "a")):
        h = (H().inv(0, "write", "x", "a").inv(1, "write", "x", "b")
             .r(first, p=2).r(second, p=2).done(0).done(1).r(second, p=3))
        res = lin(h)
        assert res.valid is True and not res.violations, res
        assert check_durability(h.events, {"x": second}).valid


def test_info_writes_that_did_or_did_not_take_effect() -> None:
    base = H().w("a").inv(1, "write", "x", "b").done(1, "info").w("c", p=2)
    for tail, final in (([], "c"), (["c"], "b"), (["b"], "b"), (["c", "b"], "b"),
                        (["c", "c"], "c")):
        h = H()
        h.events = list(base.events)
        for v in tail:
            h.r(v, p=3)
        assert lin(h).valid is True, tail
        assert check_durability(h.events, {"x": final}).valid, (tail, final)
    # once seen after c, it cannot vanish again
    h = H()
    h.events = list(base.events)
    h.r("b", p=3).r("c", p=3)
    assert lin(h).valid is False
    assert not check_durability(base.events, {"x": "a"}).valid


def test_info_write_read_before_its_invoke_is_flagged() -> None:
    h = H().r("b", p=3).inv(1, "write", "x", "b").done(1, "info")
    assert lin(h).valid is False


def test_in_flight_operations_and_deletes() -> None:
    h = H().w("a").d(p=1).r(None, p=2).w("b").r("b", p=2).inv(3, "delete", "x")
    h.r("b", p=2).r(None, p=2)
    assert lin(h).valid is True
    assert check_durability(h.events, {"x": None}).valid
    assert check_durability(h.events, {"x": "b"}).valid
    h.r("b", p=4)  # the in-flight delete already showed: b is gone for good
    assert lin(h).valid is False


def test_initial_values_and_ignored_operations() -> None:
    h = H().r("a").inv(1, "read", "x").done(1, "fail").w("b", type="fail").r("a", p=2)
    assert lin(h, initial={"x": "a"}).valid is True
    assert lin(h).valid is False
    assert check_durability(h.events, {"x": "a"}, initial={"x": "a"}).valid
    assert lin([]).valid is True and lin([]).keys_checked == 0


def test_keys_are_checked_independently() -> None:
    h = H().w("a", key="x").w("a", key="y").r("a", key="x", p=1).r(None, key="z", p=2)
    h.w("b", key="y").r("a", key="y", p=1)
    res = lin(h)
    assert res.keys_checked == 3 and set(res.violations) == {"y"}


@pytest.mark.parametrize("bad", [
    [{"index": 0, "process": 0, "type": "ok", "f": "read", "key": "x", "value": None}],
    [{"index": 0, "process": 0, "type": "invoke", "f": "cas", "key": "x", "value": None}],
    [{"index": 0, "process": 0, "type": "invoke", "f": "read", "key": "x", "value": None}] * 2,
    [{"index": 0, "process": 0, "type": "invoke", "f": "read", "key": "x", "value": None},
     {"index": 1, "process": 0, "type": "ok", "f": "read", "key": "y", "value": None}],
    [{"index": 0, "process": 0, "type": "done", "f": "read", "key": "x", "value": None}],
])
def test_malformed_histories_are_rejected(bad: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError):
        check_linearizable(bad)


# --- simulated histories ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(60))
def test_simulated_histories_are_valid(seed: int) -> None:
    rng = random.Random(seed)
    events, final = simulate(rng, rng.randint(20, 300), keys=rng.randint(1, 4),
                             procs=rng.randint(1, 8))
    res = check_linearizable(events, time_limit=10)
    assert res.valid is True, res.summary()
    dur = check_durability(events, final)
    assert dur.valid, dur.summary()


def _impossible(events: list[dict[str, Any]], rng: random.Random,
                kinds: tuple[str, ...] = ("stale", "overtaken", "future", "garbage",
                                          "failed")) -> str | None:
    """Make one ok read provably impossible; None if no read qualifies."""
    ops = ops_of(events)
    reads = [o for o in ops if o["f"] == "read" and o["type"] == "ok"]
    rng.shuffle(reads)
    for r in reads:
        same = [o for o in ops if o["key"] == r["key"] and o["f"] != "read"]
        oks = [o for o in same if o["type"] == "ok"]
        how = rng.choice(kinds)
        choices: list[Any] = []
        if how == "stale":  # w1 <rt w2 <rt r: w1's value is gone
            choices = [w1["value"] for w1 in oks for w2 in oks if w1["f"] == "write"
                       and w1["ret"] < w2["call"] and w2["ret"] < r["call"]]
        elif how == "overtaken":  # w1 <rt w2 and an earlier read saw w2; no
            # acknowledged write or delete surely between w1 and r
            seen = {o["value"] for o in ops if o["key"] == r["key"] and o["f"] == "read"
                    and o["type"] == "ok" and o["ret"] < r["call"]}
            last_seen = max((w["call"] for w in same if w["value"] in seen
                             and w["f"] == "write"), default=-1)
            choices = [w1["value"] for w1 in oks if w1["f"] == "write"
                       and w1["ret"] < last_seen and not any(
                           w1["ret"] < m["call"] and m["ret"] < r["call"] for m in oks)]
        elif how == "future":
            choices = [w["value"] for w in same if w["f"] == "write" and w["call"] > r["ret"]]
        elif how == "failed":
            choices = [w["value"] for w in same if w["f"] == "write" and w["type"] == "fail"]
        else:
            choices = ["never-written"]
        if choices:
            r["done"]["value"] = rng.choice(choices)
            return how
    return None


@pytest.mark.parametrize("seed", range(60))
def test_one_impossible_read_is_flagged(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(100):                 # a history with a read to mutate (almost always the first)
        events, _ = simulate(rng, rng.randint(40, 300), keys=rng.randint(1, 3),
                             procs=rng.randint(2, 6))
        events = [dict(ev) for ev in events]
        how = _impossible(events, rng)
        if how is not None:
            break
    assert how is not None, "no history with a read to mutate"
    res = check_linearizable(events, time_limit=10)
    assert res.valid is False, how
    assert len(res.violations) == 1
    case = next(iter(res.violations.values()))
    assert 2 <= len(case["sub_history"]) <= 12, case
    # the reported sub-history fails on its own
    assert check_linearizable(case["sub_history"]).valid is False


def test_all_mutation_kinds_are_exercised_and_flagged() -> None:
    seen, kinds = set(), set()
    for seed in range(150):
        rng = random.Random(seed)
        events, _ = simulate(rng, 150, keys=2, procs=4)
        events = [dict(ev) for ev in events]
        how = _impossible(events, rng)
        seen.add(how)
        if how is not None:
            res = check_linearizable(events, time_limit=10)
            assert res.valid is False, (seed, how)
            kinds |= {case["kind"] for case in res.violations.values()}
    assert seen >= {"stale", "overtaken", "future", "garbage", "failed"}
    assert kinds >= {"stale-read", "future-read", "garbage-read", "failed-write-read"}


def test_impossible_reads_that_only_the_search_refutes() -> None:
    kinds: dict[str, int] = {}
    for seed in range(80):
        rng = random.Random(5000 + seed)
        events, _ = simulate(rng, 150, keys=1, procs=6, p_info=0.05)
        events = [dict(ev) for ev in events]
        before = [dict(ev) for ev in events]
        if _impossible(events, rng, ("overtaken",)) is None:
            continue
        res = check_linearizable(events, time_limit=10)
        assert res.valid is False, seed
        case = res.violations["k0"]
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
        sub = case["sub_history"]
        assert check_linearizable(sub).valid is False
        assert len(sub) <= 40, case
        mutated = next(ev for ev, old in zip(events, before) if ev != old)
        assert mutated in sub
    assert kinds.get("nonlinearizable", 0) >= 20, kinds


# --- against brute force --------------------------------------------------------------


def brute_linearizable(events: list[dict[str, Any]]) -> bool:
    """Try every order of every choice of info writes/deletes, per key."""
    ops = ops_of(events)
    for key in {o["key"] for o in ops}:
        must = [o for o in ops if o["key"] == key and o["type"] == "ok"]
        maybe = [o for o in ops if o["key"] == key and o["type"] == "info" and o["f"] != "read"]
        if not any(_brute_order(must + list(extra))
                   for k in range(len(maybe) + 1)
                   for extra in itertools.combinations(maybe, k)):
            return False
    return True


def _brute_order(ops: list[dict[str, Any]]) -> bool:
    def ret(o: dict[str, Any]) -> float:
        return o["ret"] if o["type"] == "ok" else float("inf")

    for perm in itertools.permutations(ops):
        if any(ret(b) < a["call"] for i, a in enumerate(perm) for b in perm[i + 1:]):
            continue
        state = None
        for o in perm:
            if o["f"] == "read":
                if o["value"] != state:
                    break
            else:
                state = o["value"] if o["f"] == "write" else None
        else:
            return True
    return False


def random_small(rng: random.Random) -> list[dict[str, Any]]:
    """Up to 7 operations over 1-2 keys with random (often wrong) reads."""
    h = H()
    written: list[str] = []
    stuck: set[int] = set()  # processes whose operation stays in flight
    todo = rng.randint(1, 7)
    while True:
        idle = [p for p in range(3) if p not in h.open]
        movable = [p for p in h.open if p not in stuck]
        if not (todo and idle or movable):
            break
        if todo and idle and (not movable or rng.random() < 0.5):
            p, key = rng.choice(idle), rng.choice("xy")
            f = rng.choice(("read", "read", "write", "delete"))
            value = f"v{len(written)}" if f == "write" else None
            if value:
                written.append(value)
            h.inv(p, f, key, value)
            todo -= 1
        else:
            p = rng.choice(movable)
            if rng.random() < 0.1:
                stuck.add(p)  # in flight at the end
                continue
            kind = rng.choice(("ok", "ok", "ok", "ok", "fail", "info"))
            h.done(p, kind, rng.choice([None, "zz"] + written))
    return h.events


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_agrees_with_brute_force_on_small_histories(rng: random.Random) -> None:
    events = random_small(rng)
    res = check_linearizable(events)
    assert res.valid is brute_linearizable(events), res.summary()
    for case in res.violations.values():
        assert check_linearizable(case["sub_history"]).valid is False


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_durability_agrees_with_brute_force(rng: random.Random) -> None:
    events = random_small(rng)
    ops = [o for o in ops_of(events) if o["f"] != "read"]
    for key in "xy":
        must = [o for o in ops if o["key"] == key and o["type"] == "ok"]
        maybe = [o for o in ops if o["key"] == key and o["type"] == "info"]
        reachable: set[Any] = set()
        for k in range(len(maybe) + 1):
            for extra in itertools.combinations(maybe, k):
                chosen = must + list(extra)
                if not chosen:
                    reachable.add(None)
                for last in chosen:
                    # last can end an order iff nothing chosen must follow it
                    end = last["ret"] if last["type"] == "ok" else float("inf")
                    if all(o is last or end > o["call"] for o in chosen):
                        reachable.add(last["value"] if last["f"] == "write" else None)
        for got in {None, "zz", *(o["value"] for o in ops)}:
            res = check_durability(events, {key: got, "xy".replace(key, ""): None})
            assert (key not in res.violations) == (got in reachable), (key, got)


# --- shrinking, files and scale -------------------------------------------------------


def test_shrink_keeps_whole_operations() -> None:
    h = H().w("a").w("b", p=1).r("b", p=2).w("c").r("a", p=2)
    small = shrink(h.events, lambda evs: check_linearizable(evs).valid is False
                   and "a" in {ev["value"] for ev in evs if ev["f"] == "write"})
    assert len(small) == 6 and [ev["value"] for ev in small[:2]] == ["a", "a"]
    assert [(ev["f"], ev["value"]) for ev in small[-2:]] == [("read", None), ("read", "a")]
    assert check_linearizable(small).valid is False


def test_load_history_and_summaries(tmp_path: Any) -> None:
    h = H().w("a").w("b").r("a", p=1)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(ev) + "\n" for ev in h.events) + "\n")
    events = load_history(str(path))
    assert events == h.events
    text = check_linearizable(events).summary()
    assert text.splitlines()[0].startswith("NOT linearizable: 1 keys, 3 operations")
    assert "#4 t=0.004000 p1 invoke read" in text and "#5 t=0.005000 p1 ok read 'a'" in text
    assert str(check_linearizable(events[:4])).startswith("linearizable")
    dur = check_durability(events, {"x": "a", "y": "z"})
    text = str(dur)
    assert text.splitlines()[0] == ("NOT durable: 2 keys; 1 lost-write, "
                                    "0 resurrected-delete, 1 garbage-value")
    assert "'y' ended as 'z', a value never written; allowed: None" in text


def test_100k_events_over_1000_keys_is_fast() -> None:
    rng = random.Random(7)
    events, final = simulate(rng, 50_000, keys=1000, procs=16, tail=False)
    assert len(events) >= 99_000
    t0 = time.monotonic()
    res = check_linearizable(events, time_limit=5)
    dur = check_durability(events, final)
    elapsed = time.monotonic() - t0
    assert res.valid is True and dur.valid and res.keys_checked == 1000
    assert elapsed < 15, elapsed


def test_a_hot_key_with_many_concurrent_info_writes_stays_bounded() -> None:
    rng = random.Random(3)
    h = H()
    for p in range(50):  # 50 writes in flight for the whole run
        h.inv(100 + p, "write", "x", f"info-{p}")
    value = None
    landing = list(range(25))  # half of them land, once each, in random places
    rng.shuffle(landing)
    for i in range(2000):
        if rng.random() < 0.5:
            if rng.random() < 0.03 and landing:
                value = f"info-{landing.pop()}"
            else:
                value = f"w{i}"
                h.w(value, p=i % 3)
        h.r(value, p=i % 3)
    t0 = time.monotonic()
    res = lin(h, time_limit=2.0)
    assert time.monotonic() - t0 < 5
    assert res.valid is True, res.summary()
    first = next(ev["value"] for ev in h.events if ev["value"] and ev["value"][0] == "w")
    h.r(first, p=7)  # long overwritten
    res = lin(h, time_limit=2.0)
    assert res.valid is False and res.violations["x"]["kind"] == "stale-read"


def test_a_search_past_its_time_limit_falls_back_to_windows() -> None:
    h = H()
    for p in range(30):  # long writes nobody reads: any subset may have landed
        h.inv(100 + p, "write", "x", f"u{p}")
    for i in range(200):
        h.w(f"w{i}", p=0).r(f"w{i}", p=1)
    h.inv(2, "write", "x", "a").inv(3, "write", "x", "b")
    h.r("a", p=4).r("b", p=4).r("a", p=4).done(2).done(3)
    for p in range(30):
        h.done(100 + p)
    t0 = time.monotonic()
    res = lin(h, time_limit=1.0)
    assert time.monotonic() - t0 < 4
    assert res.valid is False
    case = res.violations["x"]
    assert case["kind"] == "nonlinearizable" and len(case["sub_history"]) == 10
    assert [ev["value"] for ev in case["op"]] == [None, "a"]


def test_time_limit_reports_unknown() -> None:
    events, _ = simulate(random.Random(11), 2000, keys=1, procs=6, tail=False)
    res = check_linearizable(events, time_limit=1e-6)
    assert res.valid is None and res.unknown == ["k0"] and not res.violations
    assert "UNKNOWN" in res.summary() and "unknown (time limit): ['k0']" in res.summary()
    assert check_linearizable(events, time_limit=10).valid is True
    # a violation on another key still makes the verdict False
    bad = H().w("a", key="y").w("b", key="y").r("a", key="y").events
    res = check_linearizable(events + bad, time_limit=1e-6)
    assert res.valid is False and res.unknown == ["k0"] and list(res.violations) == ["y"]
