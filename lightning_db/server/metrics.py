"""Metrics and health over HTTP: ``/metrics`` (Prometheus text) and ``/health``.

Two sides, two kinds of process:

- **Front ends** count what they serve in plain counters of their own
  (``FrontendMetrics``: commands by name, errors, a latency histogram per
  command, bytes in and out, open connections), a few integer additions a
  command, and write them as a snapshot file (JSON, replaced whole) into a
  private directory that ``serve`` names in ``METRICS_DIR_ENV``: every
  WATCH_INTERVAL (0.5 s) while they change, and when the front end stops.
  Counting each command into prometheus_client's multiprocess files (a
  locked write to a mapped file per counter and bucket) cost more than the
  command itself when clients pipeline: SET and GET with ``-P 16`` ran at
  0.38x and 0.42x the rate they reach without metrics (bench/RESULTS.md,
  fifteenth session).
- **The serve process** answers HTTP on ``--http-port`` (a thread running
  the standard library's ``ThreadingHTTPServer``, 127.0.0.1 by default):
  ``/metrics`` sums the front ends' snapshots (``FrontendCollector``:
  counters keep what front ends that exited had counted; open connections
  only of those that run) and adds what the database reports at the moment
  of the request (per shard: bytes written, flushes, compactions, write
  stalls, worker restarts and missed heartbeats, whether the worker runs,
  the breaker state of this process's handle; totals of transactions'
  conflicts and expired values), with prometheus_client's metric families
  and text format; ``/health`` says 200 ``{"status": "ok", ...}`` while
  every shard worker runs and the database answers, 503 with the reason
  otherwise (for load balancers); ``/`` (or ``/dashboard``) is a live
  page over those two (dashboard.py). Other paths are 404, other methods
  than GET and HEAD 405.

Neither waits on a shard for long: the database's ``stats()`` asks every
shard, and one that is hung (SIGSTOP) or busy would hold the request until
the node restarts it. Both take it through ``BoundedStats``: at most
STATS_WAIT_S, one call at a time on a thread of its own (a request that
finds one running waits for that one). Past the bound they answer from the
node's view of its workers (``workers``: fast, the node answers for them):
a worker not running or missing heartbeats is down, 503 ``degraded``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil

from .dashboard import DASHBOARD_HTML

__all__ = ["BoundedStats", "FrontendCollector", "FrontendMetrics", "MetricsServer", "METRICS_DIR_ENV",
           "STATS_WAIT_S"]

METRICS_DIR_ENV = "LIGHTNING_DB_METRICS_DIR"
SNAPSHOT_PREFIX = "frontend-"
log = logging.getLogger("lightning_db.server")
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BREAKER = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
STATS_WAIT_S = 1.0          # longest /health and /metrics wait for the database's stats()


class BoundedStats:
    """``stats()`` waited for at most *wait* seconds (see the module
    docstring); past it, ``None``, or the node's view where *workers*
    (the node's per-worker dicts, in shard order) is given: a stats-shaped
    dict whose shards that are not running or miss heartbeats carry an
    ``error``. Other failures of ``stats()`` are raised."""

    def __init__(self, stats: Callable[[], dict[str, Any]],
                 workers: Callable[[], list[dict[str, Any]]] | None = None, wait: float = STATS_WAIT_S) -> None:
        self._stats, self._workers, self.wait = stats, workers, wait
        self._lock = threading.Lock()
        self._running: Future[dict[str, Any]] | None = None

    def _run(self, fut: Future[dict[str, Any]]) -> None:
        try:
            fut.set_result(self._stats())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            fut.set_exception(exc)

    def __call__(self) -> dict[str, Any] | None:
        with self._lock:
            fut = self._running
            if fut is None or fut.done():
                fut = self._running = Future()
                threading.Thread(target=self._run, args=(fut,), name="ldb-http-stats", daemon=True).start()
        try:
            return fut.result(self.wait)
        except FutureTimeout:
            pass
        if self._workers is None:
            return None
        why = f"no answer to stats() within {self.wait} s"
        return {"shards": [{"shard_id": i, "worker": w,
                            **({"error": why} if w.get("state") != "running" or w.get("missed_heartbeats") else {})}
                           for i, w in enumerate(self._workers())],
                "partial": why}


class FrontendMetrics:
    """A front end's counters (event loop thread), written to its snapshot
    file in *directory* by ``flush``. Per command name: [count, errors,
    seconds in all, then one count per LATENCY_BUCKETS bound and one past
    the last]."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"{SNAPSHOT_PREFIX}{os.getpid()}.json")
        self.rows: dict[str, list[float]] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0
        self._counted = 0               # commands counted, for flush to see a change
        self._flushed: tuple[int, int, int, int] | None = None
        self._failing = False           # the last write failed (logged once until one succeeds)

    def command(self, name: str, seconds: float, error: bool) -> None:
        """Count one command that took *seconds*."""
        self.commands(name, 1, seconds, 1 if error else 0)

    def commands(self, name: str, n: int, seconds: float, errors: int) -> None:
        """Count *n* commands of one name that took *seconds* each, *errors*
        of them answered with an error."""
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = [0, 0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        row[0] += n
        row[1] += errors
        row[2] += seconds * n
        row[3 + bisect_left(LATENCY_BUCKETS, seconds)] += n     # the first bound >= seconds ("le")
        self._counted += n

    def flush(self) -> None:
        """Write the snapshot file (whole, by rename) if anything changed. A
        write that fails (the directory gone, a full disk) is logged once
        and tried again at the next flush: metrics never stop a front end."""
        now = (self._counted, self.bytes_in, self.bytes_out, self.connections)
        if now == self._flushed:
            return
        doc = {"pid": os.getpid(), "commands": self.rows, "bytes_in": self.bytes_in,
               "bytes_out": self.bytes_out, "connections": self.connections}
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the front end's metrics to %s: %s", self.path, exc)
            self._failing = True
            return
        self._failing = False
        self._flushed = now


class FrontendCollector:
    """The front ends' snapshots in *directory*, summed, as Prometheus
    metric families (serve process)."""

    def __init__(self, directory: str) -> None:
        self._dir = directory

    def _snapshots(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self._dir))
        except OSError:
            return out
        for name in names:
            if name.startswith(SNAPSHOT_PREFIX) and name.endswith(".json"):
                try:
                    with open(os.path.join(self._dir, name)) as f:
                        out.append(json.load(f))
                except (OSError, ValueError):
                    continue            # gone meanwhile (never half-written: renamed whole)
        return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        rows: dict[str, list[float]] = {}
        bytes_in = bytes_out = connections = 0
        for snap in self._snapshots():
            for name, row in snap.get("commands", {}).items():
                total = rows.get(name)
                rows[name] = list(row) if total is None else [a + b for a, b in zip(total, row)]
            bytes_in += snap.get("bytes_in", 0)
            bytes_out += snap.get("bytes_out", 0)
            if psutil.pid_exists(snap.get("pid", 0)):       # a front end that exited holds no connection
                connections += snap.get("connections", 0)
        commands = CounterMetricFamily("ldb_commands", "Commands served, by name", labels=["command"])
        errors = CounterMetricFamily("ldb_command_errors", "Commands answered with an error, by name",
                                     labels=["command"])
        latency = HistogramMetricFamily("ldb_command_seconds", "Time to run a command, by name",
                                        labels=["command"])
        bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for name, row in sorted(rows.items()):
            commands.add_metric([name], row[0])
            errors.add_metric([name], row[1])
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, row[3:]):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([name], buckets, row[2])
        received = CounterMetricFamily("ldb_bytes_received", "Request bytes read from clients")
        received.add_metric([], bytes_in)
        sent = CounterMetricFamily("ldb_bytes_sent", "Reply bytes written to clients")
        sent.add_metric([], bytes_out)
        conns = GaugeMetricFamily("ldb_connections", "Open client connections")
        conns.add_metric([], connections)
        yield from (commands, errors, latency, received, sent, conns)


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
    def __init__(self, stats: BoundedStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        ok = GaugeMetricFamily("ldb_database_up", "1 while the database answers stats()")
        try:
            stats = self._stats()
        except Exception:       # reported as down; /health says why
            stats = None
        ok.add_metric([], 0 if stats is None or "partial" in stats else 1)
        yield ok
        if stats is not None:
            yield from _shard_families(stats)


class MetricsServer:
    """``/metrics`` and ``/health`` on *host*:*port*, in a thread."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str, port: int,
                 frontends_dir: str | None, workers: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        from prometheus_client import CollectorRegistry
        self._stats = BoundedStats(stats, workers)
        self.registry = CollectorRegistry()
        if frontends_dir is not None:
            self.registry.register(FrontendCollector(frontends_dir))
        self.registry.register(_DatabaseCollector(self._stats))
        self._lock = threading.Lock()           # one /metrics collection at a time
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
                elif path in ("/", "/dashboard"):
                    self._send(200, "text/html; charset=utf-8", DASHBOARD_HTML.encode())
                else:
                    self._send(404, "text/plain; charset=utf-8",
                               b"not found: try /metrics, /health or / (the dashboard)\n")

            def do_HEAD(self) -> None:     # noqa: N802
                self._head = True
                self.do_GET()

            def _not_allowed(self) -> None:
                self._send(405, "text/plain; charset=utf-8", b"method not allowed: GET or HEAD\n",
                           {"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed   # noqa: N815

            def _send(self, code: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    if not getattr(self, "_head", False):
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass                      # the client went before its answer: nothing to tell

            def log_message(self, fmt: str, *args: Any) -> None:
                pass                          # no access log on stderr

        return Handler

    def health(self) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        try:
            stats = self._stats()
        except Exception as exc:
            return 503, {"status": "down", "reason": f"{type(exc).__name__}: {exc}"}
        if stats is None:
            return 503, {"status": "down", "reason": f"no answer to stats() within {self._stats.wait} s"}
        down = [i for i, s in enumerate(stats.get("shards", []))
                if "error" in s or (s.get("worker") or {}).get("state") not in (None, "running")]
        doc = {"shards": len(stats.get("shards", [])), "workers_down": down,
               "answered_in_ms": round(1000 * (time.monotonic() - started), 1)}
        if "partial" in stats:
            doc["reason"] = stats["partial"]
        if down or "partial" in stats:
            return 503, {"status": "degraded", **doc}
        return 200, {"status": "ok", **doc}

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
