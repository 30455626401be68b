"""The live dashboard page of ``serve``'s HTTP port (``/`` and ``/dashboard``).

One static page: its script reads ``/health`` and ``/metrics`` (the same
Prometheus text a scraper gets) once a second and shows the status, the
commands a second by name (the difference of two reads of
``ldb_commands_total``), connections, and a row per shard (up, restarts,
breaker, memtable and bytes written, flushes, compactions, write stalls).
Nothing is computed on the server for it.
"""

from __future__ import annotations

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lightning DB</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
#status { font-weight: bold; padding: .2em .6em; border-radius: .3em; }
.ok { background: #d4f4dd; } .degraded { background: #fdf1c7; } .down { background: #f8d0d0; }
table { border-collapse: collapse; margin: .8em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
</style></head>
<body>
<h1>Lightning DB <span id="status">…</span></h1>
<div id="summary"></div>
<h2>Commands a second</h2><table id="commands"></table>
<h2>Shards</h2><table id="shards"></table>
<script>
"use strict";
let last = null;
function parse(text) {
  const rows = [];
  for (const line of text.split("\\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{([^}]*)\\})?\\s+(\\S+)/);
    if (!m) continue;
    const labels = {};
    for (const p of (m[3] || "").matchAll(/(\\w+)="((?:[^"\\\\]|\\\\.)*)"/g)) labels[p[1]] = p[2];
    rows.push({name: m[1], labels, value: Number(m[4])});
  }
  return rows;
}
function pick(rows, name, label) {
  const out = {};
  for (const r of rows) if (r.name === name) out[label ? r.labels[label] : ""] = r.value;
  return out;
}
function table(el, head, body) {
  el.innerHTML = "<tr>" + head.map(h => "<th>" + h + "</th>").join("") + "</tr>" +
    body.map(r => "<tr>" + r.map(c => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
const BREAKER = ["closed", "half-open", "open"];
async function tick() {
  try {
    const health = await (await fetch("/health")).json();
    const st = document.getElementById("status");
    st.textContent = health.status; st.className = health.status;
    const rows = parse(await (await fetch("/metrics")).text());
    const now = Date.now() / 1000, counts = pick(rows, "ldb_commands_total", "command");
    const conns = Object.values(pick(rows, "ldb_connections")).reduce((a, b) => a + b, 0);
    document.getElementById("summary").textContent =
      `${health.shards ?? "?"} shard(s), ${conns} connection(s), workers down: ` +
      `${(health.workers_down || []).join(", ") || "none"}`;
    if (last) {
      const dt = Math.max(now - last.time, 0.001);
      const names = Object.keys(counts).sort();
      table(document.getElementById("commands"), ["command", "per second", "total"],
            names.map(n => [n, ((counts[n] - (last.counts[n] || 0)) / dt).toFixed(1), counts[n]]));
    }
    last = {time: now, counts};
    const cols = [["up", "ldb_shard_up"], ["restarts", "ldb_shard_worker_restarts_total"],
                  ["breaker", "ldb_shard_breaker_state"], ["memtable bytes", "ldb_shard_memtable_bytes"],
                  ["bytes written", "ldb_shard_user_bytes_written_total"],
                  ["flushes", "ldb_shard_flushes_total"], ["compactions", "ldb_shard_compactions_total"],
                  ["write stalls", "ldb_shard_write_stalls_total"]];
    const per = cols.map(([, n]) => pick(rows, n, "shard"));
    const shards = Object.keys(per[0]).sort((a, b) => a - b);
    table(document.getElementById("shards"), ["shard", ...cols.map(c => c[0])],
          shards.map(s => [s, ...per.map((p, i) => cols[i][0] === "breaker" ? BREAKER[p[s]] ?? "?"
                                                     : (p[s] ?? ""))]));
  } catch (e) {
    const st = document.getElementById("status");
    st.textContent = "no answer"; st.className = "down";
  }
}
tick(); setInterval(tick, 1000);
</script>
</body></html>
"""
