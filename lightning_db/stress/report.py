"""The report of a run: ``summary.json`` and a self-contained ``report.html``.

Runs in the harness process. The HTML page needs nothing but itself: the
charts are inline SVG (throughput and p99 latency per second, a vertical
marker at every fault, coloured by fault type), then the verdict table and
the failing sub-histories, then the fault log.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .history import Series

__all__ = ["FAULT_COLOURS", "format_event", "line_chart", "write_html", "write_summary"]

FAULT_COLOURS = {"kill-worker": "#d62728", "kill-server": "#9467bd", "pause": "#ff7f0e",
                 "disk-full": "#8c564b", "corrupt": "#e377c2", "drop-connection": "#17becf"}
_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 860, 220, 64, 16, 24, 34


def _nice_max(v: float) -> float:
    if not v > 0 or math.isnan(v):
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def line_chart(title: str, values: Sequence[float], unit: str, faults: Sequence[Mapping[str, Any]],
               start: float, css_class: str) -> str:
    """An SVG line chart of one value per second, with fault markers at
    their times (seconds after *start*)."""
    n = max(1, len(values))
    finite = [v for v in values if v is not None and not math.isnan(v)]
    top = _nice_max(max(finite, default=0.0))
    pw, ph = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def x(t: float) -> float:
        return _PAD_L + pw * min(max(t, 0.0), n) / n

    def y(v: float) -> float:
        return _PAD_T + ph * (1 - min(v, top) / top)

    parts = [f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{_PAD_L}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for i in range(5):
        v = top * i / 4
        parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{v:g}</text>')
    step = max(1, round(n / 10))
    for s in range(0, n + 1, step):
        parts.append(f'<text x="{x(s):.1f}" y="{_H - _PAD_B + 14}" font-size="10" text-anchor="middle">{s}s</text>')
    parts.append(f'<text x="{_PAD_L - 44}" y="{_PAD_T + ph / 2:.0f}" font-size="10" '
                 f'transform="rotate(-90 {_PAD_L - 44} {_PAD_T + ph / 2:.0f})" text-anchor="middle">'
                 f'{html.escape(unit)}</text>')
    for f in faults:
        fx = x(float(f["time"]) - start)
        colour = FAULT_COLOURS.get(f["fault"], "#555")
        tip = html.escape(f"{f['fault']} at {float(f['time']) - start:.2f}s: {f.get('target', '')} "
                          f"{f.get('detail', '')}")
        parts.append(f'<line class="fault-marker" x1="{fx:.1f}" x2="{fx:.1f}" y1="{_PAD_T}" y2="{_PAD_T + ph}" '
                     f'stroke="{colour}" stroke-width="1" stroke-opacity="0.7"><title>{tip}</title></line>')
    path: list[str] = []
    pen_up = True
    for i, v in enumerate(values):
        if v is None or math.isnan(v):
            pen_up = True
            continue
        path.append(f"{'M' if pen_up else 'L'}{x(i + 0.5):.1f},{y(v):.1f}")
        pen_up = False
    if path:
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="#1f77b4" stroke-width="1.6"/>')
    parts.append("</svg>")
    return "".join(parts)


def format_event(ev: Mapping[str, Any]) -> str:
    """One line for an event of either history (operations or transactions)."""
    if "ops" in ev:
        ops = " ".join(f"[{f} {k} {v!r}]" for f, k, v in ev["ops"])
        return (f"T{ev.get('index')} p{ev.get('process')} {ev.get('type')} "
                f"{ev.get('start', 0):.6f}..{ev.get('end', 0):.6f} {ops}")
    from ..check.linear import format_event as fmt
    extra = f" ({ev['error']})" if ev.get("error") else ""
    return f"{fmt(ev)} {ev.get('key')}{extra}"


def write_summary(path: str, summary: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
font-size:13px;vertical-align:top}
.valid{color:#2ca02c;font-weight:bold}.invalid{color:#d62728;font-weight:bold}.unknown{color:#ff7f0e;font-weight:bold}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:14px;height:3px;margin-right:4px;vertical-align:middle}
"""


def _verdict_cell(valid: bool | None) -> str:
    if valid is True:
        return '<td class="valid">valid</td>'
    if valid is False:
        return '<td class="invalid">INVALID</td>'
    return '<td class="unknown">unknown</td>'


def write_html(path: str, summary: Mapping[str, Any], series: Series, faults: Sequence[Mapping[str, Any]],
               verdicts: Sequence[Mapping[str, Any]]) -> None:
    """The report page (see the module docstring)."""
    esc = html.escape
    cfg = summary.get("config", {})
    ok = all(v.get("valid") is not False for v in verdicts)
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Lightning DB stress report</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Lightning DB stress run: <span class='{'valid' if ok else 'invalid'}'>"
           f"{'PASSED' if ok else 'FAILED'}</span></h1>",
           "<table>"]
    rows = [("target", summary.get("target")), ("workload", cfg.get("workload")),
            ("clients", cfg.get("clients")), ("keys / distribution", f"{cfg.get('keys')} / {cfg.get('distribution')}"),
            ("duration", f"{summary.get('elapsed_s', 0):.1f}s of load"), ("seed", cfg.get("seed")),
            ("throughput", f"{summary.get('throughput_ops_s', 0):,.0f} ops/s"),
            ("latency (ms)", ", ".join(f"{k} {v}" for k, v in (summary.get("latency_ms") or {}).items())),
            ("faults", ", ".join(f"{k} {v}" for k, v in (summary.get("faults") or {}).items()) or "none")]
    out += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    legend = "".join(f"<span><i style='background:{c}'></i>{esc(name)}</span>" for name, c in FAULT_COLOURS.items()
                     if any(f["fault"] == name for f in faults))
    out.append("<h2>Throughput and latency</h2>")
    if legend:
        out.append(f"<div class='legend'>fault markers: {legend}</div>")
    out.append(line_chart("Throughput (operations completed ok per second)", series.ok, "ops/s", faults,
                          series.start, "chart-throughput"))
    out.append(line_chart("p99 latency per second", series.p99_ms, "ms", faults, series.start, "chart-latency"))
    out.append("<h2>Verdicts</h2><table><tr><th>checker</th><th>verdict</th><th>summary</th></tr>")
    for v in verdicts:
        first = esc(str(v.get("summary", "")).splitlines()[0] if v.get("summary") else "")
        out.append(f"<tr><td>{esc(v['name'])}</td>{_verdict_cell(v.get('valid'))}<td>{first}</td></tr>")
    out.append("</table>")
    for v in verdicts:
        if v.get("valid") is False:
            out.append(f"<h2>{esc(v['name'])}: the smallest failing sub-history</h2>")
            out.append(f"<pre>{esc(str(v.get('summary', '')))}</pre>")
            if v.get("failing"):
                out.append("<pre>" + esc("\n".join(format_event(e) for e in v["failing"])) + "</pre>")
    out.append(f"<h2>Faults ({len(faults)})</h2>")
    if faults:
        out.append("<table><tr><th>at</th><th>fault</th><th>target</th><th>detail</th><th>healed after</th></tr>")
        for f in faults:
            healed = "not healed" if f.get("heal_s") is None else f"{f['heal_s']:.3f}s"
            out.append(f"<tr><td>{float(f['time']) - series.start:.2f}s</td><td>{esc(f['fault'])}</td>"
                       f"<td>{esc(str(f.get('target', '')))}</td><td>{esc(str(f.get('detail', '')))}</td>"
                       f"<td>{healed}</td></tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out))
