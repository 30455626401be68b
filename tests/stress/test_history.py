"""Merging the clients' files into one history, and the numbers drawn from it."""

from __future__ import annotations

import json
import math

import pytest

from lightning_db.stress.history import (
    final_reads,
    latency_summary,
    merge,
    percentile,
    read_events,
    series,
    type_counts,
)

pytestmark = pytest.mark.stress


def _write(path, rows, torn: str | None = None) -> str:
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        if torn is not None:
            fh.write(torn)                      # no newline: the writer died mid-line
    return str(path)


def ev(p, kind, f, key, value, t, **extra):
    return {"process": p, "type": kind, "f": f, "key": key, "value": value, "time": t, **extra}


def test_merge_orders_by_time_and_numbers_the_events(tmp_path):
    a = _write(tmp_path / "a.jsonl", [
        {"type": "meta", "event": "ready", "client": 0, "time": 0.5},
        ev(0, "invoke", "write", "k1", "0-1", 1.0), ev(0, "ok", "write", "k1", "0-1", 1.4),
        ev(0, "invoke", "read", "k1", None, 2.0), ev(0, "ok", "read", "k1", "1-1", 2.2),
    ])
    b = _write(tmp_path / "b.jsonl", [
        ev(1, "invoke", "write", "k1", "1-1", 1.2), ev(1, "info", "write", "k1", "1-1", 1.9,
                                                        error="PeerLost", **{"class": "TransientError"}),
        ev(3, "invoke", "read", "k2", None, 2.1), ev(3, "fail", "read", "k2", None, 2.3),
    ])
    m = merge([a, b])
    assert [e["time"] for e in m.events] == sorted(e["time"] for e in m.events)
    assert [e["index"] for e in m.events] == list(range(8))
    assert [(e["process"], e["type"]) for e in m.events[:4]] == [(0, "invoke"), (1, "invoke"), (0, "ok"), (1, "info")]
    assert [x["event"] for x in m.meta] == ["ready"]
    assert m.unfinished == 0
    assert m.end_time == 2.3
    counts = type_counts(m)
    assert counts["write"] == {"ok": 1, "fail": 0, "info": 1}
    assert counts["read"] == {"ok": 1, "fail": 1, "info": 0}
    assert counts["errors_by_class"] == {"TransientError": 1, "other": 1}


def test_an_invoke_without_completion_ends_as_info(tmp_path):
    a = _write(tmp_path / "a.jsonl", [
        ev(0, "invoke", "write", "k1", "0-1", 1.0), ev(0, "ok", "write", "k1", "0-1", 1.1),
        ev(0, "invoke", "write", "k1", "0-2", 1.5),
    ], torn='{"process": 0, "type": "ok", "f": "wr')
    m = merge([a])
    assert m.unfinished == 1
    last = m.events[-1]
    assert last["type"] == "info" and last["value"] == "0-2" and last["time"] == 1.5
    assert "unfinished" not in last and "client ended" in last["error"]
    assert len(list(read_events(a))) == 3               # the torn line is not read


def test_time_never_goes_backwards_within_a_client(tmp_path):
    a = _write(tmp_path / "a.jsonl", [ev(0, "invoke", "read", "k", None, 5.0), ev(0, "ok", "read", "k", None, 4.9)])
    m = merge([a])
    assert [e["time"] for e in m.events] == [5.0, 5.0]


def test_transactions_become_list_append_entries(tmp_path):
    plan = [["r", "k:0", None], ["append", "k:0", 4]]
    a = _write(tmp_path / "a.jsonl", [
        {"process": 0, "type": "invoke", "f": "txn", "ops": plan, "time": 1.0},
        {"process": 0, "type": "ok", "f": "txn", "ops": [["r", "k:0", [1]], ["append", "k:0", 4]], "time": 1.5},
        {"process": 0, "type": "invoke", "f": "txn", "ops": [["append", "k:0", 7], ["r", "k:1", None]], "time": 2.0},
    ])
    m = merge([a])
    assert m.events == []
    assert m.txns[0] == {"index": 0, "process": 0, "type": "ok", "ops": [["r", "k:0", [1]], ["append", "k:0", 4]],
                         "start": 1.0, "end": 1.5}
    assert m.txns[1]["type"] == "info" and m.txns[1]["ops"] == [["append", "k:0", 7], ["r", "k:1", None]]
    assert m.unfinished == 1
    assert type_counts(m)["txn"] == {"ok": 1, "fail": 0, "info": 1}


def test_missing_files_are_empty(tmp_path):
    assert merge([str(tmp_path / "nothing.jsonl")]).events == []


def test_final_reads_come_after_everything():
    reads = final_reads({"b": None, "a": "0-1"}, 9, 10.0, 11.0, 100)
    assert [(r["index"], r["type"], r["key"], r["value"]) for r in reads] == [
        (100, "invoke", "a", None), (101, "ok", "a", "0-1"), (102, "invoke", "b", None), (103, "ok", "b", None)]
    assert all(r["process"] == 9 and 10.0 <= r["time"] <= 11.0 for r in reads)
    assert [r["time"] for r in reads] == sorted(r["time"] for r in reads)


def test_percentiles():
    assert percentile([1, 2, 3, 4], 0.5) == 2
    assert percentile([1, 2, 3, 4], 0.99) == 4
    assert percentile([5], 0.01) == 5
    assert math.isnan(percentile([], 0.5))


def test_series_and_latency(tmp_path):
    rows = []
    for i in range(30):                                   # 10 ops per second for 3 seconds, 10 ms each
        t = 100.0 + i / 10
        rows += [ev(0, "invoke", "read", "k", None, t), ev(0, "ok", "read", "k", None, t + 0.01)]
    rows += [ev(0, "invoke", "write", "k", "x", 103.5), ev(0, "info", "write", "k", "x", 103.6)]
    m = merge([_write(tmp_path / "a.jsonl", rows)])
    s = series(m, 100.0, 104.0)
    assert s.ok == [10, 10, 10, 0] and s.errors == [0, 0, 0, 1]
    assert s.p99_ms[0] == pytest.approx(10, abs=0.5) and math.isnan(s.p99_ms[3])
    lat = latency_summary(m)
    assert lat["p50"] == pytest.approx(10, abs=0.5) and set(lat) == {"p50", "p90", "p99", "max"}
