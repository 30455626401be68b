"""``/metrics`` (Prometheus text, front ends' counters merged with the
database's per-shard figures) and ``/health`` of ``lightning-db serve``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until


def _get(server, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _samples(server) -> dict[tuple[str, tuple], float]:
    code, ctype, body = _get(server, "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_commands_latencies_bytes_and_shards(server, r):
    for i in range(20):
        r.set(f"m{i}", "v")
    r.get("m1")
    try:
        r.execute_command("NOSUCHCOMMAND")
    except Exception:
        pass

    def counted() -> bool:
        s = _samples(server)
        return s.get(("ldb_commands_total", (("command", "set"),)), 0) >= 20
    wait_until(counted, timeout=60, what="the SETs to show in /metrics")
    s = _samples(server)
    assert s[("ldb_commands_total", (("command", "get"),))] >= 1
    assert s[("ldb_command_errors_total", (("command", "unknown"),))] >= 1
    assert s[("ldb_command_seconds_count", (("command", "set"),))] >= 20
    assert ("ldb_command_seconds_bucket", (("command", "set"), ("le", "0.001"))) in s
    assert s[("ldb_bytes_received_total", ())] > 0 and s[("ldb_bytes_sent_total", ())] > 0
    assert s[("ldb_connections", ())] >= 1
    assert s[("ldb_database_up", ())] == 1
    for shard in ("0", "1"):
        assert s[("ldb_shard_up", (("shard", shard),))] == 1
        assert s[("ldb_shard_breaker_state", (("shard", shard),))] == 0
        assert ("ldb_shard_compactions_total", (("shard", shard),)) in s
    assert sum(v for (n, _), v in s.items() if n == "ldb_shard_user_bytes_written_total") > 0


def test_health_and_unknown_paths(server):
    code, ctype, body = _get(server, "/health")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "ok" and doc["shards"] == 2 and doc["workers_down"] == []
    code, _, body = _get(server, "/nope")
    assert code == 404 and b"/metrics" in body
    for path in ("/", "/dashboard"):                  # the live page reads /health and /metrics
        code, ctype, body = _get(server, path)
        assert code == 200 and ctype.startswith("text/html")
        assert b"Lightning DB" in body and b'fetch("/metrics")' in body and b'fetch("/health")' in body
    head = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/health", method="HEAD")
    with urllib.request.urlopen(head, timeout=60) as resp:
        assert resp.status == 200 and resp.read() == b""
    post = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(post, timeout=60)
    assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"


def test_the_nodes_view_is_asked_with_the_same_bound():
    """Past STATS_WAIT_S, /health asks the node for its workers' view, with
    the same bound: a node that is stopped too makes /health say down after
    about two bounds, not the node request's own timeout."""
    from lightning_db.server.metrics import STATS_WAIT_S
    from lightning_db.server.serve import _workers_of

    asked = []

    class FakeDb:
        def _workers(self, node=None, timeout=None):
            asked.append(timeout)
            return []

    _workers_of(FakeDb())()
    assert asked == [STATS_WAIT_S]
    assert _workers_of(object()) is None


def test_a_shard_that_does_not_answer_shows_as_down_and_degraded():

    from lightning_db.server.metrics import MetricsServer

    running = {"state": "running", "restarts": 1, "missed_heartbeats": 0}
    stats = {"shards": [{"shard_id": 0, "flushes": 3, "worker": running, "breaker": {"state": "closed"}},
                        {"shard_id": 1, "error": "PeerLost: the connection dropped", "worker": running,
                         "breaker": {"state": "open"}}]}
    m = MetricsServer(lambda: stats, "127.0.0.1", 0, None).start()
    try:
        code, doc = m.health()
        assert code == 503 and doc["status"] == "degraded" and doc["workers_down"] == [1]
        samples = _registry_samples(m.registry)
        assert samples[("ldb_database_up", ())] == 1
        assert samples[("ldb_shard_up", (("shard", "0"),))] == 1
        assert samples[("ldb_shard_up", (("shard", "1"),))] == 0
        assert samples[("ldb_shard_breaker_state", (("shard", "1"),))] == 2
    finally:
        m.stop()


def test_a_stats_call_that_hangs_bounds_health_and_metrics():
    """A shard stopped with SIGSTOP holds stats() until the node restarts
    it: /health and /metrics answer after STATS_WAIT_S all the same, from
    the node's view of its workers, and a second request waits for the
    same call instead of starting another."""
    import threading


    from lightning_db.server.metrics import MetricsServer

    release, calls = threading.Event(), []

    def stats():
        calls.append(1)
        release.wait(120)
        return {"shards": []}
    workers = [{"state": "running", "restarts": 0, "missed_heartbeats": 0},
               {"state": "running", "restarts": 0, "missed_heartbeats": 2}]     # the stopped one
    m = MetricsServer(stats, "127.0.0.1", 0, None, lambda: workers).start()
    m._stats.wait = 0.2
    try:
        code, doc = m.health()
        assert code == 503 and doc["status"] == "degraded" and doc["workers_down"] == [1], doc
        assert "within 0.2 s" in doc["reason"] and not release.is_set()
        samples = _registry_samples(m.registry)
        assert samples[("ldb_database_up", ())] == 0
        assert samples[("ldb_shard_up", (("shard", "0"),))] == 1
        assert samples[("ldb_shard_up", (("shard", "1"),))] == 0
        assert samples[("ldb_shard_missed_heartbeats", (("shard", "1"),))] == 2
        assert len(calls) == 1                  # one stats() in flight, not one per request
        release.set()
        wait_until(lambda: m.health()[0] == 200, timeout=60, what="health once stats() answers")
    finally:
        release.set()
        m.stop()
    hold = threading.Event()
    bare = MetricsServer(lambda: hold.wait(120), "127.0.0.1", 0, None).start()
    bare._stats.wait = 0.2
    try:
        code, doc = bare.health()            # no node to ask: the database counts as down
        assert code == 503 and doc["status"] == "down" and "within 0.2 s" in doc["reason"]
    finally:
        hold.set()
        bare.stop()


def _collected(directory) -> dict[tuple[str, tuple], float]:
    from prometheus_client import CollectorRegistry

    from lightning_db.server.metrics import FrontendCollector
    registry = CollectorRegistry()
    registry.register(FrontendCollector(str(directory)))
    return _registry_samples(registry)


def _registry_samples(registry) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples}


def test_front_end_counters_are_summed_across_snapshots(tmp_path):
    """Each front end counts in its own process and writes a snapshot; the
    serve process sums them: counters of front ends that exited stay, their
    connections do not."""
    import psutil

    from lightning_db.server.metrics import FrontendMetrics

    m = FrontendMetrics(str(tmp_path))
    m.command("get", 0.0002, False)
    m.commands("set", 10, 0.003, 2)
    m.command("set", 7.0, True)
    m.bytes_in, m.bytes_out, m.connections = 100, 50, 3
    m.flush()
    first = (tmp_path / os.path.basename(m.path)).stat().st_mtime_ns
    m.flush()                                          # nothing changed: not written again
    assert (tmp_path / os.path.basename(m.path)).stat().st_mtime_ns == first
    gone = psutil.Process().pid
    while psutil.pid_exists(gone):
        gone += 7919
    (tmp_path / f"frontend-{gone}.json").write_text(json.dumps({
        "pid": gone, "commands": {"set": [5, 0, 0.005] + [0, 0, 0, 0, 5] + [0] * 10},
        "bytes_in": 1, "bytes_out": 2, "connections": 9}))
    (tmp_path / "frontend-1.json.tmp").write_text("{")           # a snapshot being written: not read
    s = _collected(tmp_path)
    assert s[("ldb_commands_total", (("command", "set"),))] == 16
    assert s[("ldb_commands_total", (("command", "get"),))] == 1
    assert s[("ldb_command_errors_total", (("command", "set"),))] == 3
    assert s[("ldb_command_seconds_count", (("command", "set"),))] == 16
    assert s[("ldb_command_seconds_sum", (("command", "set"),))] == pytest.approx(7.035)
    bucket = {le: s[("ldb_command_seconds_bucket", (("command", "set"), ("le", le)))]
              for le in ("0.001", "0.0025", "0.005", "5.0", "+Inf")}
    assert bucket == {"0.001": 5, "0.0025": 5, "0.005": 15, "5.0": 15, "+Inf": 16}
    assert s[("ldb_command_seconds_bucket", (("command", "get"), ("le", "0.00025")))] == 1
    assert s[("ldb_command_seconds_bucket", (("command", "get"), ("le", "0.0001")))] == 0
    assert s[("ldb_bytes_received_total", ())] == 101 and s[("ldb_bytes_sent_total", ())] == 52
    assert s[("ldb_connections", ())] == 3


def test_a_snapshot_that_cannot_be_written_never_stops_the_front_end(tmp_path, caplog):
    from lightning_db.server.metrics import FrontendMetrics

    m = FrontendMetrics(str(tmp_path / "gone"))
    m.command("set", 0.001, False)
    m.flush()
    m.flush()
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "cannot write" in r.message)) == 1
    (tmp_path / "gone").mkdir()
    m.flush()
    assert json.loads((tmp_path / "gone" / os.path.basename(m.path)).read_text())["commands"]["set"][0] == 1

