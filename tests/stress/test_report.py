"""The verdicts (checkers over a merged history) and what a person sees:
the report page and the live view."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from lightning_db.stress.checkers import check_lists_durable, run_checkers, txn_indexes
from lightning_db.stress.history import Merged, Series
from lightning_db.stress.live import LiveView, Tailer
from lightning_db.stress.report import line_chart, write_html, write_summary

pytestmark = pytest.mark.stress


def _ops(*ops) -> Merged:
    """Operations (process, f, key, value, type, start, end) as a merged history."""
    events = []
    for p, f, key, value, kind, t0, t1 in ops:
        events.append({"process": p, "type": "invoke", "f": f, "key": key,
                       "value": value if f == "write" else None, "time": t0})
        events.append({"process": p, "type": kind, "f": f, "key": key, "value": value, "time": t1})
    events.sort(key=lambda e: e["time"])
    for i, e in enumerate(events):
        e["index"] = i
    return Merged(events=events)


def test_a_clean_history_is_valid():
    m = _ops((0, "write", "k", "0-1", "ok", 1, 2), (1, "read", "k", "0-1", "ok", 3, 4),
             (0, "write", "k", "0-2", "info", 5, 6))
    lin, dur = run_checkers(m, {"k": "0-2"}, {}, transactional=False)
    assert (lin.name, lin.valid, dur.name, dur.valid) == ("linearizability", True, "durability", True)
    assert dur.details["acknowledged_lost"] == 0
    # the unknown write may also never have happened
    assert run_checkers(m, {"k": "0-1"}, {}, transactional=False)[1].valid


def test_a_lost_acknowledged_write_fails_both_checkers():
    m = _ops((0, "write", "k", "0-1", "ok", 1, 2), (0, "write", "k", "0-2", "ok", 3, 4),
             (1, "read", "k", "0-1", "ok", 5, 6))
    lin, dur = run_checkers(m, {"k": "0-1"}, {}, transactional=False)
    assert lin.valid is False and dur.valid is False
    assert dur.details["lost_writes"] == 1 and dur.details["acknowledged_lost"] == 1
    assert any(e.get("value") == "0-2" for e in lin.failing) and lin.failing
    assert any(e.get("value") == "0-2" for e in dur.failing)


def test_the_final_reads_take_part_in_linearizability():
    """A history that is fine by itself, but the final read sees the first
    of two acknowledged writes: the last read of the run is stale."""
    m = _ops((0, "write", "k", "0-1", "ok", 1, 2), (0, "write", "k", "0-2", "ok", 3, 4))
    lin, _ = run_checkers(m, {"k": "0-1"}, {}, transactional=False)
    assert lin.valid is False


def test_list_append_verdicts():
    txns = [{"index": 0, "process": 0, "type": "ok", "ops": [["append", "a", 1]], "start": 1, "end": 2},
            {"index": 1, "process": 1, "type": "ok", "ops": [["r", "a", [1]], ["append", "a", 2]], "start": 3, "end": 4}]
    la, dur = run_checkers(Merged(txns=txns), {}, {"a": [1, 2]}, transactional=True)
    assert la.name == "list-append" and la.valid and dur.valid
    la, dur = run_checkers(Merged(txns=txns), {}, {"a": [1]}, transactional=True)
    assert dur.valid is False and dur.details["lost_appends"] == 1 and dur.failing[0]["index"] == 1
    la, _ = run_checkers(Merged(txns=txns), {}, {"a": [2, 1]}, transactional=True)
    assert la.valid is False and la.failing                   # incompatible orders


def test_list_durability_ignores_what_did_not_commit():
    txns = [{"index": 0, "process": 0, "type": "info", "ops": [["append", "a", 1]], "start": 1, "end": 2},
            {"index": 1, "process": 1, "type": "fail", "ops": [["append", "a", 2]], "start": 3, "end": 4}]
    assert check_lists_durable(txns, {"a": []}).valid


def test_txn_indexes_of_anomalies():
    assert txn_indexes({"cycle": [(3, "ww", 5), (5, "rw", 3)]}) == [3, 5]
    assert txn_indexes({"reader": 2, "writer": 9, "txns": [4]}) == [2, 4, 9]
    assert txn_indexes({"reads": {7: [1], 8: [2]}}) == [7, 8]


def _series() -> Series:
    return Series(start=100.0, ok=[50, 60, 0, 45], p99_ms=[1.5, 2.0, float("nan"), 30.0], errors=[0, 0, 3, 0])


FAULTS = [{"time": 101.2, "fault": "kill-worker", "target": "shard-000", "detail": "SIGKILL pid 1", "healed": 101.9,
           "heal_s": 0.7},
          {"time": 102.5, "fault": "pause", "target": "shard-001", "detail": "SIGSTOP <pid>", "healed": 103.0,
           "heal_s": 0.5}]


def test_line_chart_is_svg_with_fault_markers():
    svg = line_chart("Throughput", [1, 2, float("nan"), 4], "ops/s", FAULTS, 100.0, "chart-throughput")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    markers = [el for el in root.iter() if el.get("class") == "fault-marker"]
    assert len(markers) == 2 and markers[0].get("stroke") != markers[1].get("stroke")
    assert "kill-worker at 1.20s" in svg and "&lt;pid&gt;" in svg      # escaped
    assert svg.count("M") >= 2                                         # the gap at nan lifts the pen


def test_report_page(tmp_path):
    verdicts = [{"name": "linearizability", "valid": True, "summary": "linearizable: 3 keys", "failing": []},
                {"name": "durability", "valid": False, "summary": "NOT durable: 1 keys; 1 lost-write",
                 "failing": [{"index": 4, "process": 0, "type": "invoke", "f": "write", "key": "k000001",
                              "value": "0-17", "time": 1.0},
                             {"index": 5, "process": 0, "type": "ok", "f": "write", "key": "k000001",
                              "value": "0-17", "time": 1.1}]}]
    summary = {"config": {"workload": "ycsb-a", "clients": 3, "keys": 200, "distribution": "zipfian", "seed": 7},
               "target": "embedded /tmp/x", "elapsed_s": 4.0, "throughput_ops_s": 38.7,
               "latency_ms": {"p50": 0.2, "p99": 3.0}, "faults": {"kill-worker": 1, "pause": 1}}
    path = tmp_path / "out" / "report.html"
    write_html(str(path), summary, _series(), FAULTS, verdicts)
    page = path.read_text()
    assert page.count("<svg") == 2 and "chart-throughput" in page and "chart-latency" in page
    assert page.count('class="fault-marker"') == 4
    assert "FAILED" in page and "INVALID" in page and "linearizability" in page and "durability" in page
    assert "the smallest failing sub-history" in page and "k000001" in page and "&#x27;0-17&#x27;" in page
    assert "SIGKILL pid 1" in page and "0.700s" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    write_summary(str(tmp_path / "summary.json"), summary)
    assert json.loads((tmp_path / "summary.json").read_text())["faults"] == {"kill-worker": 1, "pause": 1}


def test_live_view_renders_from_the_files(tmp_path):
    from rich.console import Console
    f = tmp_path / "h.jsonl"
    import time
    now = time.monotonic()
    rows = [{"type": "meta", "event": "ready", "client": 0, "time": now},
            {"process": 0, "type": "invoke", "f": "read", "key": "k", "value": None, "time": now},
            {"process": 0, "type": "ok", "f": "read", "key": "k", "value": None, "time": now + 0.002},
            {"process": 0, "type": "invoke", "f": "write", "key": "k", "value": "v", "time": now},
            {"process": 0, "type": "info", "f": "write", "key": "k", "value": "v", "time": now + 0.01,
             "class": "TransientError"},
            {"type": "meta", "event": "reopen", "client": 0, "time": now}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"partial')
    tailer = Tailer([str(f)])
    assert tailer.completed() == 1 and tailer.info == 1 and tailer.ready == {0} and tailer.reopens == 1
    view = LiveView(tailer, lambda: {"kill-worker": 3}, lambda: {"server": 1}, "stress", 60)
    console = Console(record=True, width=120)
    console.print(view.render())
    text = console.export_text()
    for want in ("ops/s", "p50", "TransientError 1", "kill-worker 3", "server 1", "client reopens 1"):
        assert want in text, (want, text)


def test_generations_are_checked_once_nothing_of_theirs_is_open():
    """Keys rotate every second here: a generation is checked (and
    forgotten) once the stream is past it and its last operation ended,
    even when that operation ran long into later generations."""
    from lightning_db.stress.checkers import StreamChecker
    final = {"g0:k1": "0-2", "g1:k1": "0-3", "g2:k1": None, "g3:k1": "0-9"}
    ch = StreamChecker(final, {}, transactional=False, start=0.0, rotate=1.0)
    i = 0

    def feed(p, kind, f, key, value, t):
        nonlocal i
        ch.add({"index": i, "process": p, "type": kind, "f": f, "key": key, "value": value, "time": t})
        i += 1

    feed(0, "invoke", "write", "g0:k1", "0-1", 0.1)
    feed(0, "ok", "write", "g0:k1", "0-1", 0.2)
    feed(1, "invoke", "write", "g0:k1", "0-2", 0.9)       # ends only at 4.5
    feed(0, "invoke", "write", "g1:k1", "0-3", 1.1)
    feed(0, "ok", "write", "g1:k1", "0-3", 1.2)
    feed(0, "invoke", "read", "g2:k1", None, 2.5)
    feed(0, "ok", "read", "g2:k1", None, 2.6)
    assert ch.closed == set()                             # a generation is given a second (CLOSE_SLACK_S)
    feed(0, "invoke", "write", "g3:k1", "0-8", 3.2)
    feed(0, "ok", "write", "g3:k1", "0-8", 3.3)
    assert ch.closed == {1}                               # generation 0 still has a write open
    feed(1, "ok", "write", "g0:k1", "0-2", 4.5)
    feed(0, "invoke", "write", "g3:k1", "0-9", 4.6)
    feed(0, "ok", "write", "g3:k1", "0-9", 4.7)
    assert ch.closed == {0, 1, 2} and set(ch.gens) == {3}
    with pytest.raises(RuntimeError, match="after its check"):
        feed(2, "invoke", "read", "g0:k1", None, 4.8)
    lin, dur = ch.finish()
    assert lin.valid and dur.valid and lin.details["keys"] == 4


def test_a_long_transaction_keeps_its_generation_open():
    from lightning_db.stress.checkers import StreamChecker
    ch = StreamChecker({}, {"g0:a": [1, 2], "g1:b": [3]}, transactional=True, start=0.0, rotate=1.0)
    ch.invoke_txn({"process": 0, "ops": [["append", "g0:a", 2]], "time": 0.5})
    ch.add_txn({"index": 0, "process": 1, "type": "ok", "ops": [["append", "g0:a", 1]], "start": 0.1, "end": 0.2})
    ch.add_txn({"index": 1, "process": 1, "type": "ok", "ops": [["append", "g1:b", 3]], "start": 1.1, "end": 3.0})
    assert ch.closed == set()                             # g0 waits for the transaction begun at 0.5
    ch.add_txn({"index": 2, "process": 0, "type": "ok", "ops": [["append", "g0:a", 2]], "start": 0.5, "end": 3.5})
    la, dur = ch.finish()
    assert la.valid and dur.valid, (la.summary, dur.summary)
