"""The list-append checker on planted histories, on histories of sequential
and snapshot-isolation models, and the workload runner against in-memory
fake databases."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightning_db.check import CheckResult, Txn, check, check_run, run_append_workload
from lightning_db.errors import InvalidArgument, IOFault, TransactionConflict

# --- helpers -------------------------------------------------------------------


def T(index: int, ops: list, type: str = "ok", process: int = 0,
      start: float | None = None, end: float | None = None) -> dict[str, Any]:
    return {"index": index, "process": process, "type": type, "ops": ops,
            "start": float(index) if start is None else start,
            "end": index + 0.5 if end is None else end}


def r(k: Any, v: list | None) -> list:
    return ["r", k, v]


def a(k: Any, v: int) -> list:
    return ["append", k, v]


def names(result: CheckResult) -> set[str]:
    return set(result.anomalies)


def serial_history(rng: random.Random, n: int, keys: int = 5, max_ops: int = 4,
                   p_fail: float = 0.1, p_info: float = 0.1) -> list[dict[str, Any]]:
    """Transactions run one at a time against a dict of lists (so the history
    is serializable), then one reader of every key."""
    state: dict[int, list[int]] = {k: [] for k in range(keys)}
    counter = dict.fromkeys(range(keys), 0)
    hist = []
    for i in range(n):
        roll = rng.random()
        kind = "fail" if roll < p_fail else "info" if roll < p_fail + p_info else "ok"
        local = {k: list(v) for k, v in state.items()}
        ops: list[list] = []
        for _ in range(rng.randint(1, max_ops)):
            k = rng.randrange(keys)
            if rng.random() < 0.5:
                ops.append(r(k, list(local[k]) if kind == "ok" else None))
            else:
                counter[k] += 1
                local[k].append(counter[k])
                ops.append(a(k, counter[k]))
        if kind == "ok" or (kind == "info" and rng.random() < 0.5):
            state = local
        hist.append(T(i, ops, kind, process=rng.randrange(6), start=2.0 * i, end=2.0 * i + 1))
    hist.append(T(n, [r(k, list(state[k])) for k in range(keys)], start=2.0 * n, end=2.0 * n + 1))
    return hist


def si_history(rng: random.Random, n: int, keys: int = 4, lag: int = 6) -> list[dict[str, Any]]:
    """Snapshot isolation with first-committer-wins: each transaction reads a
    snapshot up to `lag` commits old and aborts if a key it appends to was
    written after its snapshot."""
    states = [{k: () for k in range(keys)}]
    last_write = dict.fromkeys(range(keys), 0)  # commit number of the last write
    counter = dict.fromkeys(range(keys), 0)
    hist = []
    for i in range(n):
        snap_no = max(0, len(states) - 1 - rng.randrange(lag))
        local = {k: list(v) for k, v in states[snap_no].items()}
        ops: list[list] = []
        written = set()
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(keys)
            if rng.random() < 0.5:
                ops.append(r(k, list(local[k])))
            else:
                counter[k] += 1
                local[k].append(counter[k])
                written.add(k)
                ops.append(a(k, counter[k]))
        if any(last_write[k] > snap_no for k in written):
            hist.append(T(i, [op if op[0] == "append" else r(op[1], None) for op in ops], "fail"))
            continue
        cur = dict(states[-1])
        for k in written:
            cur[k] = tuple(local[k])
            last_write[k] = len(states)
        states.append(cur)
        hist.append(T(i, ops))
    hist.append(T(n, [r(k, list(states[-1][k])) for k in range(keys)]))
    return hist


# --- planted anomalies ---------------------------------------------------------

WRITE_SKEW = [T(1, [r("x", []), r("y", []), a("x", 1)]),
              T(2, [r("x", []), r("y", []), a("y", 1)]),
              T(3, [r("x", [1]), r("y", [1])])]


def test_clean_history_is_valid() -> None:
    h = [T(1, [a("x", 1), r("x", [1])]), T(2, [r("x", [1]), a("x", 2), a("y", 1)]),
         T(3, [r("x", [1, 2]), r("y", [1])]), T(4, [a("x", 3)], "fail"), T(5, [a("y", 2)], "info")]
    for level in ("serializable", "snapshot-isolation", "read-committed"):
        res = check(h, level, realtime=True, process=True)
        assert res.valid and not res.anomalies, res
        assert "valid" in str(res)


def test_write_skew_is_g2_forbidden_by_serializable_only() -> None:
    ser = check(WRITE_SKEW, "serializable")
    assert not ser.valid and names(ser) == {"G2"}
    assert sorted(step[1] for step in ser.anomalies["G2"][0]["cycle"]) == ["rw", "rw"]
    si = check(WRITE_SKEW, "snapshot-isolation")
    assert si.valid and "G2" in si.anomalies and "G2" not in si.forbidden


def test_lost_update_is_g_single() -> None:
    h = [T(1, [r("x", []), a("x", 1)]), T(2, [r("x", []), a("x", 2)]), T(3, [r("x", [1, 2])])]
    for level in ("serializable", "snapshot-isolation"):
        res = check(h, level)
        assert not res.valid
        assert {"G-single", "lost-update"} <= names(res)
        assert "G-nonadjacent" not in res.anomalies  # the walk twice round is not a cycle
    cyc = check(h).anomalies["G-single"][0]["cycle"]
    assert sorted(t for _, t, _ in cyc) == ["rw", "ww"]
    # The overwritten append never seen: still a lost update.
    h2 = [T(1, [r("x", []), a("x", 1)]), T(2, [r("x", []), a("x", 2)]), T(3, [r("x", [2])])]
    assert "lost-update" in check(h2).anomalies and not check(h2).valid


def test_aborted_read_g1a() -> None:
    h = [T(1, [a("x", 1)], "fail"), T(2, [r("x", [1])])]
    res = check(h, "read-committed")
    assert not res.valid and names(res) == {"G1a"}
    assert res.anomalies["G1a"][0]["writer"] == 1


def test_intermediate_read_g1b() -> None:
    h = [T(1, [a("x", 1), a("x", 2)]), T(2, [r("x", [1])]), T(3, [r("x", [1, 2])])]
    res = check(h, "read-committed")
    assert not res.valid and "G1b" in res.anomalies
    # T2 read between T1's two appends: T1 -wr-> T2 -rw-> T1 as well.
    assert names(res) <= {"G1b", "G-single"}
    # Reading one's own intermediate append is fine.
    assert check([T(1, [a("x", 1), r("x", [1]), a("x", 2)])]).valid


def test_circular_information_flow_g1c() -> None:
    h = [T(1, [a("x", 1), r("y", [2])]), T(2, [a("y", 2), r("x", [1])])]
    res = check(h, "read-committed")
    assert not res.valid and "G1c" in res.anomalies
    assert {t for _, t, _ in res.anomalies["G1c"][0]["cycle"]} == {"wr"}


def test_write_cycle_g0() -> None:
    h = [T(1, [a("x", 1), a("y", 2)]), T(2, [a("x", 3), a("y", 4)]),
         T(3, [r("x", [1, 3]), r("y", [4, 2])])]
    res = check(h, "read-uncommitted")
    assert not res.valid and "G0" in res.anomalies
    assert {t for _, t, _ in res.anomalies["G0"][0]["cycle"]} == {"ww"}


def test_g_nonadjacent() -> None:
    h = [T(1, [r("x", []), r("w", [1])]), T(2, [a("x", 1), a("y", 1)]),
         T(3, [r("y", [1]), r("z", [])]), T(4, [a("z", 1), a("w", 1)]),
         T(5, [r("x", [1]), r("z", [1])])]
    res = check(h, "snapshot-isolation")
    assert not res.valid and names(res) == {"G-nonadjacent"}
    assert [t for _, t, _ in res.anomalies["G-nonadjacent"][0]["cycle"]].count("rw") == 2


def test_incompatible_order() -> None:
    h = [T(1, [a("x", 1)]), T(2, [a("x", 2)]), T(3, [r("x", [1, 2])]), T(4, [r("x", [2])])]
    res = check(h, "read-uncommitted")
    assert not res.valid and "incompatible-order" in res.anomalies


def test_internal_inconsistency() -> None:
    for ops in ([r("x", []), a("x", 1), r("x", [])],
                [a("x", 1), r("x", [])],
                [r("x", [5]), r("x", [])]):
        res = check([T(0, [a("x", 5)]), T(1, ops)], "read-uncommitted")
        assert not res.valid and "internal" in res.anomalies, ops


def test_garbage_read_and_duplicates() -> None:
    res = check([T(1, [r("x", [99])])], "read-uncommitted")
    assert not res.valid and names(res) == {"garbage-read"}
    res = check([T(1, [a("x", 1)]), T(2, [r("x", [1, 1])])], "read-uncommitted")
    assert not res.valid and "duplicate-elements" in res.anomalies


def test_info_transactions_may_or_may_not_commit() -> None:
    seen = [T(1, [a("x", 1)], "info"), T(2, [r("x", [1])])]
    unseen = [T(1, [a("x", 1)], "info"), T(2, [r("x", [])])]
    assert check(seen).valid and check(unseen).valid
    # An info transaction whose effects are observed takes part in cycles.
    h = [T(1, [a("x", 1), a("y", 2)], "info"), T(2, [a("x", 3), a("y", 4)]),
         T(3, [r("x", [1, 3]), r("y", [4, 2])])]
    assert "G0" in check(h).anomalies


def test_realtime_edges_are_opt_in() -> None:
    # T2 starts after T1 ended but misses its append: serializable (T2 first),
    # not strictly serializable.
    h = [T(1, [a("x", 1)], start=0, end=1), T(2, [r("x", [])], start=2, end=3),
         T(3, [r("x", [1])], start=4, end=5)]
    assert check(h).valid
    res = check(h, realtime=True)
    assert not res.valid and "G-single-realtime" in res.anomalies
    assert "G-single-realtime" in res.forbidden
    # The same two transactions on one process: process order catches it.
    hp = [dict(t, process=7) for t in h]
    res = check(hp, process=True)
    assert not res.valid and "G-single-process" in res.anomalies


def test_input_forms_and_errors() -> None:
    txn = Txn(1, 0, "ok", (("append", "x", 1), ("r", "x", (1,))))
    assert check([txn]).valid
    with pytest.raises(ValueError):
        check([T(1, [a("x", 1)]), T(2, [a("x", 1)])])  # value appended twice
    with pytest.raises(ValueError):
        check([T(1, [a("x", 1)], "committed")])
    with pytest.raises(ValueError):
        check([], "linearizable")


# --- model histories -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_serial_histories_are_valid(seed: int) -> None:
    h = serial_history(random.Random(seed), 800)
    res = check(h, realtime=True, process=True)
    assert res.valid and not res.anomalies, res


def test_checker_scales_to_thousands_of_transactions() -> None:
    rng = random.Random(7)
    for hist in (serial_history(rng, 3000, keys=20), si_history(rng, 3000, keys=10)):
        t0 = time.perf_counter()
        check(hist)
        elapsed = time.perf_counter() - t0
        assert elapsed < 3.0, elapsed


def test_snapshot_isolation_histories() -> None:
    g2 = 0
    for seed in range(5):
        h = si_history(random.Random(seed), 600)
        si = check(h, "snapshot-isolation")
        assert si.valid, si
        assert "lost-update" not in si.anomalies
        g2 += "G2" in check(h, "serializable").anomalies
    assert g2 > 0  # write skew shows up under snapshot isolation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 120), keys=st.integers(1, 6),
       mutation=st.sampled_from(["drop", "swap", "stale"]))
def test_planted_version_shuffles_are_flagged(seed: int, n: int, keys: int, mutation: str) -> None:
    rng = random.Random(seed)
    h = serial_history(rng, n, keys=keys)
    assert check(h).valid
    final = n  # the last entry reads every key
    if mutation in ("drop", "swap"):
        # A read with two or more values loses or reorders one: no longer a
        # prefix of the final read.
        cands = [(i, j) for i, t in enumerate(h[:final]) if t["type"] == "ok"
                 for j, op in enumerate(t["ops"]) if op[0] == "r" and len(op[2]) >= 2]
        assume(cands)
        i, j = rng.choice(cands)
        vals = list(h[i]["ops"][j][2])
        if mutation == "drop":
            del vals[rng.randrange(len(vals) - 1)]
        else:
            x = rng.randrange(len(vals) - 1)
            vals[x], vals[x + 1] = vals[x + 1], vals[x]
        h[i]["ops"][j] = r(h[i]["ops"][j][1], vals)
        res = check(h)
        assert not res.valid and "incompatible-order" in res.anomalies, res
    else:
        # A read-modify-write is made to read the version before the last
        # one it saw: it now overwrites the append it missed (G-single).
        cands = []
        for i, t in enumerate(h[:final]):
            if t["type"] != "ok":
                continue
            first: dict[Any, int] = {}
            for j, op in enumerate(t["ops"]):
                first.setdefault(op[1], j)
            for k, j in first.items():
                op = t["ops"][j]
                appends_later = any(o[0] == "append" and o[1] == k for o in t["ops"][j:])
                if op[0] == "r" and op[2] and appends_later:
                    cands.append((i, j))
        assume(cands)
        i, j = rng.choice(cands)
        k, vals = h[i]["ops"][j][1], h[i]["ops"][j][2]
        h[i]["ops"][j] = r(k, vals[:-1])
        res = check(h)
        assert not res.valid and "G-single" in res.anomalies, res


# --- the workload runner against fake databases ----------------------------------


class SerialDB:
    """Every transaction runs under one lock: serializable. ``fault(n)`` picks
    the outcome of the n-th commit: "ok", "conflict" (nothing written),
    "info-applied" or "info-lost" (an I/O fault after or before writing)."""

    def __init__(self, fault: Any = None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.fault = fault
        self.commits = 0

    def transaction(self, isolation: str = "serializable") -> _SerialTx:
        return _SerialTx(self)


class _SerialTx:
    def __init__(self, db: SerialDB) -> None:
        self.db = db
        self.writes: dict[bytes, bytes] = {}

    def __enter__(self) -> _SerialTx:
        self.db.lock.acquire()
        return self

    def get(self, key: bytes) -> bytes | None:
        return self.writes.get(key, self.db.data.get(key))

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def __exit__(self, et: Any, exc: Any, tb: Any) -> bool:
        try:
            if et is None:
                n, self.db.commits = self.db.commits, self.db.commits + 1
                outcome = self.db.fault(n) if self.db.fault else "ok"
                if outcome == "conflict":
                    raise TransactionConflict("planted conflict")
                if outcome in ("ok", "info-applied"):
                    self.db.data.update(self.writes)
                if outcome != "ok":
                    raise IOFault("planted fault")
        finally:
            self.db.lock.release()
        return False


class LostUpdateDB:
    """Reads a snapshot taken at begin and writes blindly at commit, with no
    validation. Two threads run in lockstep (barriers at begin and after
    commit), so paired transactions always read the same versions."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.begun = threading.Barrier(2, timeout=10)
        self.committed = threading.Barrier(2, timeout=10)

    def transaction(self, isolation: str = "serializable") -> _BlindTx:
        return _BlindTx(self)


class _BlindTx:
    def __init__(self, db: LostUpdateDB) -> None:
        self.db = db
        self.writes: dict[bytes, bytes] = {}

    def __enter__(self) -> _BlindTx:
        with self.db.lock:
            self.snapshot = dict(self.db.data)
        self.db.begun.wait()
        return self

    def get(self, key: bytes) -> bytes | None:
        return self.writes.get(key, self.snapshot.get(key))

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def __exit__(self, et: Any, exc: Any, tb: Any) -> bool:
        if et is None:
            with self.db.lock:
                self.db.data.update(self.writes)
        self.db.committed.wait()
        return False


def test_runner_history_format_and_validity() -> None:
    db = SerialDB()
    h = run_append_workload(db, threads=4, txns=200, keys=4, max_ops=4, seed=3)
    assert len(h) == 200 and [t["index"] for t in h] == list(range(200))
    assert {t["type"] for t in h} == {"ok"} and {t["process"] for t in h} == {0, 1, 2, 3}
    appended = [(op[1], op[2]) for t in h for op in t["ops"] if op[0] == "append"]
    assert appended and len(appended) == len(set(appended))
    for t in h:
        assert t["start"] <= t["end"] and 1 <= len(t["ops"]) <= 4
        for op in t["ops"]:
            assert op[0] in ("r", "append") and 0 <= op[1] < 4
    res = check(h, realtime=True, process=True)
    assert res.valid and not res.anomalies, res


def test_runner_records_conflicts_and_indeterminate_commits() -> None:
    def fault(n: int) -> str:
        return ("conflict" if n % 7 == 3 else "info-applied" if n % 11 == 5
                else "info-lost" if n % 13 == 6 else "ok")

    res = check_run(SerialDB(fault), "serializable", threads=3, txns=150, keys=3,
                    retries=2, seed=1)
    assert res.valid, res
    types = [t["type"] for t in res.history or []]
    assert types.count("fail") > 0 and types.count("info") > 0
    assert types.count("ok") + types.count("info") == 150  # every conflict retried
    for t in res.history or []:
        if t["type"] != "ok":
            assert all(op[2] is None for op in t["ops"] if op[0] == "r")


def test_runner_catches_lost_updates() -> None:
    flagged = 0
    for seed in range(3):
        res = check_run(LostUpdateDB(), "snapshot-isolation", threads=2, txns=40,
                        keys=1, max_ops=4, seed=seed)
        assert not res.valid
        flagged += bool({"G-single", "lost-update"} & set(res.anomalies))
    assert flagged > 0


def test_runner_raises_bugs_in_the_database() -> None:
    class Broken(SerialDB):
        def transaction(self, isolation: str = "serializable") -> _SerialTx:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        run_append_workload(Broken(), threads=2, txns=4)

    class Picky(SerialDB):
        def transaction(self, isolation: str = "serializable") -> _SerialTx:
            if isolation not in ("snapshot", "serializable"):
                raise InvalidArgument(f"isolation {isolation!r}")
            return super().transaction(isolation)

    with pytest.raises(InvalidArgument):
        run_append_workload(Picky(), threads=2, txns=4, isolation="repeatable-read")
    assert check_run(Picky(), "snapshot-isolation", threads=2, txns=20).valid
