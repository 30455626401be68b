"""Operation mixes and key distributions of the stress clients."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lightning_db.stress.workload import (
    SCAN_MAX,
    WORKLOADS,
    KeyChooser,
    OpSource,
    Zipfian,
    key_name,
    parse_mix,
    workload_mix,
)

pytestmark = pytest.mark.stress
N = 20000


def test_key_names_sort_like_their_indexes():
    names = [key_name(i) for i in range(1500)]
    assert names == sorted(names)
    assert key_name(7) == "k000007"


def test_ycsb_mixes():
    assert workload_mix("ycsb-a").as_dict() == {"read": 0.5, "write": 0.5}
    assert workload_mix("ycsb-b").as_dict() == pytest.approx({"read": 0.95, "write": 0.05})
    assert workload_mix("ycsb-c").as_dict() == {"read": 1.0}
    assert workload_mix("ycsb-d").as_dict() == pytest.approx({"read": 0.95, "insert": 0.05})
    assert workload_mix("ycsb-e").as_dict() == pytest.approx({"insert": 0.05, "scan": 0.95})
    assert workload_mix("ycsb-f").as_dict() == {"read": 0.5, "rmw": 0.5}
    assert set(WORKLOADS) == {f"ycsb-{c}" for c in "abcdef"}
    assert workload_mix("txn") is None and workload_mix("list-append") is None
    assert workload_mix("YCSB-A") == workload_mix("ycsb-a")


def test_custom_mix():
    m = parse_mix("read=50,write=45,delete=5")
    assert m.as_dict() == pytest.approx({"read": 0.5, "write": 0.45, "delete": 0.05})
    assert parse_mix("update=1, read=3").as_dict() == pytest.approx({"read": 0.75, "write": 0.25})
    assert parse_mix("read=1,read=1,scan=2").as_dict() == pytest.approx({"read": 0.5, "scan": 0.5})
    assert workload_mix("read=1,delete=1") == parse_mix("read=1,delete=1")
    assert m.describe() == "read=50,write=45,delete=5"


@pytest.mark.parametrize("bad", ["read", "read=x", "fly=3", "read=-1", "read=0,write=0", "", "read=inf"])
def test_bad_mixes(bad):
    with pytest.raises(ValueError):
        parse_mix(bad)


def test_unknown_workload():
    with pytest.raises(ValueError, match="unknown workload"):
        workload_mix("ycsb-g")


def test_zipfian_is_skewed_toward_item_zero():
    rng = random.Random(1)
    z = Zipfian(200)
    counts = Counter(z.next(rng) for _ in range(N))
    assert set(counts) <= set(range(200))
    assert counts.most_common(1)[0][0] == 0
    assert counts[0] > counts[1] > counts[10] > 0
    # theta 0.99 over 200 items: item 0 takes about 1/zeta(200) ~ 17%
    assert 0.12 < counts[0] / N < 0.23
    assert len(counts) > 150                         # the tail is still reached


@pytest.mark.parametrize("n", [1, 2, 3])
def test_zipfian_tiny_ranges(n):
    rng = random.Random(2)
    z = Zipfian(n)
    assert {z.next(rng) for _ in range(2000)} == set(range(n))


def test_uniform_keys():
    rng = random.Random(3)
    ch = KeyChooser(50, "uniform", rng)
    counts = Counter(ch.next() for _ in range(N))
    assert set(counts) == set(range(50))
    assert max(counts.values()) < 2 * min(counts.values())


def test_latest_follows_the_insert_cursor():
    rng = random.Random(4)
    ch = KeyChooser(100, "latest", rng, cursor=40)
    picks = Counter(ch.next() for _ in range(N))
    assert picks.most_common(1)[0][0] == 39              # the key inserted last
    assert ch.insert_key() == 40 and ch.cursor == 41
    picks = Counter(ch.next() for _ in range(N))
    assert picks.most_common(1)[0][0] == 40
    ch.cursor = 0
    assert Counter(ch.next() for _ in range(N)).most_common(1)[0][0] == 99   # wraps around


def test_bad_chooser_arguments():
    with pytest.raises(ValueError):
        KeyChooser(0, "uniform", random.Random())
    with pytest.raises(ValueError):
        KeyChooser(10, "gaussian", random.Random())


def test_op_source_follows_the_mix():
    src = OpSource(parse_mix("read=50,write=30,delete=10,rmw=10"), 100, "uniform", random.Random(5))
    ops = Counter(src.next()[0] for _ in range(N))
    for op, share in {"read": 0.5, "write": 0.3, "delete": 0.1, "rmw": 0.1}.items():
        assert abs(ops[op] / N - share) < 0.02, (op, ops)


def test_inserts_are_writes_at_the_cursor_and_scans_stay_in_range():
    src = OpSource(workload_mix("ycsb-e"), 30, "zipfian", random.Random(6), cursor=28)
    inserted = []
    for _ in range(5000):
        op = src.next()
        assert op[0] in ("scan", "write")
        if op[0] == "write":
            inserted.append(op[1])
        else:
            _, first, count = op
            assert 1 <= count <= SCAN_MAX and 0 <= first and first + count <= 30
    assert inserted[:4] == [28, 29, 0, 1]               # the cursor wraps at the keyspace's end


def test_same_seed_same_operations():
    def ops(seed: int) -> list[tuple]:
        src = OpSource(workload_mix("ycsb-a"), 200, "zipfian", random.Random(seed))
        return [src.next() for _ in range(100)]

    assert ops(9) == ops(9) != ops(10)
