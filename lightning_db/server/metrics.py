"""Metrics and health over HTTP: ``/metrics`` (Prometheus text) and ``/health``.

Two sides, two kinds of process:

- **Front ends** count what they serve with prometheus_client in its
  multiprocess mode: ``serve`` gives every front end the same
  ``PROMETHEUS_MULTIPROC_DIR`` (a private directory of its own), and each
  front end records commands (by name), errors, latency histograms, bytes
  in and out and open connections (``FrontendMetrics``).
- **The serve process** answers HTTP on ``--http-port`` (a thread running
  the standard library's ``ThreadingHTTPServer``, 127.0.0.1 by default):
  ``/metrics`` merges the front ends' files (``MultiProcessCollector``)
  with what the database reports at the moment of the request (per shard:
  bytes written, flushes, compactions, write stalls, worker restarts and
  missed heartbeats, whether the worker runs, the breaker state of this
  process's handle; totals of transactions' conflicts and expired values);
  ``/health`` says 200 ``{"status": "ok", ...}`` while every shard worker
  runs and the database answers, 503 with the reason otherwise (for load
  balancers). Anything else is 404.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FrontendMetrics", "MetricsServer", "MULTIPROC_ENV"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BREAKER = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


class FrontendMetrics:
    """A front end's counters (multiprocess mode when serve set it up; a
    private registry otherwise, e.g. a front end run alone in a test)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        registry = None if os.environ.get(MULTIPROC_ENV) else CollectorRegistry()
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.commands = Counter("ldb_commands", "Commands served, by name", ["command"], **kw)
        self.errors = Counter("ldb_command_errors", "Commands answered with an error, by name", ["command"], **kw)
        self.latency = Histogram("ldb_command_seconds", "Time to run a command, by name", ["command"],
                                 buckets=LATENCY_BUCKETS, **kw)
        self.bytes_in = Counter("ldb_bytes_received", "Request bytes read from clients", **kw)
        self.bytes_out = Counter("ldb_bytes_sent", "Reply bytes written to clients", **kw)
        self.connections = Gauge("ldb_connections", "Open client connections", multiprocess_mode="livesum", **kw)

    def command(self, name: str, seconds: float, error: bool) -> None:
        self.commands.labels(name).inc()
        self.latency.labels(name).observe(seconds)
        if error:
            self.errors.labels(name).inc()


def _shard_families(stats: dict[str, Any]) -> Iterator[Any]:
    """Gauges and counters from the database's stats(), per shard."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    counters = {
        "bytes_written_user": ("ldb_shard_user_bytes_written", "User bytes written to the shard"),
        "bytes_written_wal": ("ldb_shard_wal_bytes_written", "Bytes appended to the shard's WAL"),
        "bytes_written_compaction": ("ldb_shard_compaction_bytes_written", "Bytes written by compactions"),
        "flushes": ("ldb_shard_flushes", "Memtables flushed to tables"),
        "compactions": ("ldb_shard_compactions", "Compactions run"),
        "write_stalls": ("ldb_shard_write_stalls", "Writes that waited for background work"),
        "tx_conflicts": ("ldb_shard_transaction_conflicts", "Transaction commits refused by a conflict"),
        "tx_expired": ("ldb_shard_transactions_expired", "Transaction registrations dropped by age or size"),
        "records_expired": ("ldb_shard_values_expired", "Expired values turned into tombstones"),
        "restores": ("ldb_shard_restores", "Rebuilds from a restore point after damage"),
    }
    gauges = {
        "sequence": ("ldb_shard_sequence", "The shard's last sequence number"),
        "memtable_bytes": ("ldb_shard_memtable_bytes", "Bytes in the shard's memtable"),
        "immutable_memtables": ("ldb_shard_immutable_memtables", "Memtables waiting for flush"),
        "snapshots": ("ldb_shard_snapshots", "Snapshots registered on the shard"),
        "tx_registered": ("ldb_shard_transactions_open", "Transactions registered on the shard"),
    }
    shards = stats.get("shards", [])
    for key, (name, doc) in counters.items():
        fam = CounterMetricFamily(name, doc, labels=["shard"])
        for i, s in enumerate(shards):
            if isinstance(s.get(key), (int, float)):
                fam.add_metric([str(i)], s[key])
        yield fam
    for key, (name, doc) in gauges.items():
        fam = GaugeMetricFamily(name, doc, labels=["shard"])
        for i, s in enumerate(shards):
            if isinstance(s.get(key), (int, float)):
                fam.add_metric([str(i)], s[key])
        yield fam
    up = GaugeMetricFamily("ldb_shard_up", "1 while the shard's worker runs and answers", labels=["shard"])
    restarts = CounterMetricFamily("ldb_shard_worker_restarts", "Worker restarts by the node", labels=["shard"])
    missed = GaugeMetricFamily("ldb_shard_missed_heartbeats", "Heartbeats missed in a row", labels=["shard"])
    breaker = GaugeMetricFamily("ldb_shard_breaker_state", "Circuit breaker of the server's handle: "
                                "0 closed, 1 half-open, 2 open", labels=["shard"])
    for i, s in enumerate(shards):
        w = s.get("worker") or {}
        up.add_metric([str(i)], 1 if w.get("state") == "running" and "error" not in s else 0)
        restarts.add_metric([str(i)], w.get("restarts") or 0)
        missed.add_metric([str(i)], w.get("missed_heartbeats") or 0)
        state = (s.get("breaker") or {}).get("state")
        breaker.add_metric([str(i)], _BREAKER.get(str(state).lower(), 0))
    yield from (up, restarts, missed, breaker)


class _DatabaseCollector:
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        ok = GaugeMetricFamily("ldb_database_up", "1 while the database answers stats()")
        try:
            stats = self._stats()
        except Exception:       # reported as down; /health says why
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        yield from _shard_families(stats)


class MetricsServer:
    """``/metrics`` and ``/health`` on *host*:*port*, in a thread."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str, port: int,
                 multiproc_dir: str | None) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        self._stats = stats
        self.registry = CollectorRegistry()
        if multiproc_dir is not None:
            MultiProcessCollector(self.registry, path=multiproc_dir)
        self.registry.register(_DatabaseCollector(stats))
        self._lock = threading.Lock()           # one stats() at a time
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ldb-http", daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:      # noqa: N802 - the http.server interface
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
                    with server._lock:
                        body = generate_latest(server.registry)
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif path == "/health":
                    code, doc = server.health()
                    self._send(code, "application/json", json.dumps(doc).encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass                          # no access log on stderr

        return Handler

    def health(self) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        try:
            with self._lock:
                stats = self._stats()
        except Exception as exc:
            return 503, {"status": "down", "reason": f"{type(exc).__name__}: {exc}"}
        down = [i for i, s in enumerate(stats.get("shards", []))
                if "error" in s or (s.get("worker") or {}).get("state") not in (None, "running")]
        doc = {"shards": len(stats.get("shards", [])), "workers_down": down,
               "answered_in_ms": round(1000 * (time.monotonic() - started), 1)}
        if down:
            return 503, {"status": "degraded", **doc}
        return 200, {"status": "ok", **doc}

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
