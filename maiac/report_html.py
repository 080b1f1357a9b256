"""The HTML page of ``maiac report --html``: plotly figures with plotly.js inlined.

Why plotly: the page is for exploring a schedule — zoom into a microsecond of a
millisecond timeline, hide an engine or a format from the legend, hover an op for its
numbers — which plotly.js does out of the box in a static file, with no server and no
network once its ~4.6 MB script is inlined. matplotlib SVG (what `maiac perf --html`
uses for its small sweep plots) gives a fixed picture: no zoom, no legend toggling, and
one SVG element per bar makes a 10k-event timeline heavy without any way in.

Sections: a header (model, quant spec, target and its fit, headline numbers), the
roofline (every op: size by time, colour by number format, one line per format roof),
the timeline (one row per engine, per chip when there are several; colour by event
kind), memory in use over time per level (HBM, CSRAM, TSRAM per tile, with capacity),
the engines and a sortable, filterable ops table with full op names and formats.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any

from maiac.report_view import _bytes, _count, _time

_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac")
# a fixed colour per number format so pages compare at a glance
_FORMAT_COLOURS = {"fp4": "#e15759", "fp6": "#f28e2b", "fp8": "#edc948", "bf16": "#59a14f",
                   "f32": "#4e79a7", "fp32": "#4e79a7", "tvp": "#b07aa1"}
# and per event kind, so one chip's page and a group's look alike
_KIND_COLOURS = {"dma": "#4e79a7", "gather": "#f28e2b", "matmul": "#e15759", "vec": "#59a14f",
                 "loop": "#b07aa1", "collective": "#76b7b2", "sync": "#9c755f",
                 "scatter": "#edc948"}
# kinds without a colour of their own take one no listed kind has (no two alike)
_SPARE_COLOURS = tuple(c for c in _PALETTE if c not in _KIND_COLOURS.values())
MAX_TIMELINE_BARS = 20000
"""Bars drawn per page; past that, neighbouring intervals of an engine closer than the
page's time resolution are merged (the hover says how many)."""


def _fig_html(fig: Any, div_id: str, height: int) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           default_height=f"{height}px", default_width="100%",
                           config={"displaylogo": False, "responsive": True}))


def _colour(fmt: str, i: int) -> str:
    return _FORMAT_COLOURS.get(fmt.split("+")[0], _PALETTE[i % len(_PALETTE)])


def roofline_points(r: dict[str, Any], target: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per op: intensity (FLOP per HBM byte) and achieved FLOP/s, with the
    place it is drawn at (ops without HBM traffic or without FLOPs sit on the plot's
    edge, marked as such, rather than being dropped)."""
    ops = [o for o in r.get("ops", []) if (o.get("time_s") or 0) > 0]
    finite_x = [o["flops"] / o["hbm_bytes"] for o in ops
                if (o.get("flops") or 0) > 0 and (o.get("hbm_bytes") or 0) > 0]
    rates = [o["flops"] / o["time_s"] for o in ops if (o.get("flops") or 0) > 0]
    bw = float(target.get("hbm_bw") or 0.0)
    peaks = [float(v) for v in (target.get("ttu_flops") or {}).values()]
    ridge = max(peaks) / bw if bw and peaks else 1.0
    x_edge = 10 ** math.ceil(math.log10(max(finite_x + [ridge]) * 10))
    x_left = 10 ** math.floor(math.log10(min(finite_x + [ridge]) / 10))
    y_floor = 10 ** math.floor(math.log10(min(rates) / 10)) if rates else 1e9
    out = []
    for o in ops:
        flops, hbm = float(o.get("flops") or 0.0), float(o.get("hbm_bytes") or 0.0)
        x = flops / hbm if hbm > 0 and flops > 0 else None
        y = flops / o["time_s"] if flops > 0 else None
        out.append({"op": o, "x": x, "y": y,
                    "plot_x": x if x is not None else x_edge if flops > 0 else x_left,
                    "plot_y": y if y is not None else y_floor,
                    "edge": "no HBM traffic" if hbm <= 0 and flops > 0 else
                            "no FLOPs" if flops <= 0 else ""})
    return out


def _roofline_figure(r: dict[str, Any], target: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    pts = roofline_points(r, target)
    fig = go.Figure()
    bw = float(target.get("hbm_bw") or 0.0)
    xs = [p["plot_x"] for p in pts] or [1.0]
    x_lo, x_hi = min(xs) / 3, max(xs) * 3
    # roofs: one line per distinct TTU peak (fp6 and fp8 share one), and the TVP's
    roofs: dict[float, list[str]] = defaultdict(list)
    for fmt, peak in (target.get("ttu_flops") or {}).items():
        roofs[float(peak)].append(str(fmt))
    if target.get("tvp_flops"):
        roofs[float(target["tvp_flops"])].append("tvp")
    if bw > 0:
        for i, (peak, fmts) in enumerate(sorted(roofs.items(), key=lambda kv: -kv[0])):
            knee = peak / bw
            line_x = [x_lo, min(max(knee, x_lo), x_hi), x_hi]
            name = "/".join(fmts)
            fig.add_trace(go.Scatter(
                x=line_x, y=[min(peak, bw * x) for x in line_x], mode="lines",
                name=f"{name} roof ({_count(peak)}FLOP/s)", legendgroup="roofs",
                line={"color": _colour(fmts[0], i), "dash": "dash", "width": 1.5},
                hovertemplate=f"{html.escape(name)} roof: {_count(peak)}FLOP/s, HBM "
                              f"{_bytes(bw)}/s<extra></extra>"))
    t_max = max((p["op"]["time_s"] for p in pts), default=1.0)
    by_fmt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pts:
        by_fmt[str(p["op"].get("format") or "?")].append(p)
    for i, (fmt, group) in enumerate(sorted(by_fmt.items())):
        fig.add_trace(go.Scatter(
            x=[p["plot_x"] for p in group], y=[p["plot_y"] for p in group], mode="markers",
            name=f"ops in {fmt}", legendgroup=fmt,
            marker={"size": [6 + 34 * math.sqrt(p["op"]["time_s"] / t_max) for p in group],
                    "color": _colour(fmt, i), "opacity": 0.75,
                    "symbol": ["triangle-right" if p["edge"] == "no HBM traffic" else
                               "triangle-down" if p["edge"] == "no FLOPs" else "circle"
                               for p in group],
                    "line": {"width": 0.5, "color": "#333"}},
            customdata=[[p["op"]["name"], p["op"].get("kind") or "", _time(p["op"]["time_s"]),
                         _count(p["op"].get("flops")), _bytes(p["op"].get("hbm_bytes")),
                         p["op"].get("bound") or "", p["edge"] or
                         f"{p['x']:.3g} FLOP/B, {_count(p['y'])}FLOP/s"] for p in group],
            hovertemplate="<b>%{customdata[0]}</b> (%{customdata[1]})<br>time %{customdata[2]}"
                          "<br>FLOPs %{customdata[3]}, HBM %{customdata[4]}<br>"
                          "%{customdata[6]}<br>bound: %{customdata[5]}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP per HBM byte)",
                     exponentformat="power", showgrid=True)
    fig.update_yaxes(type="log", title_text="achieved FLOP/s", exponentformat="power",
                     showgrid=True)
    fig.update_layout(template="plotly_white", margin={"l": 70, "r": 20, "t": 30, "b": 60},
                      legend={"title": {"text": "click to hide"}},
                      title_text="Roofline (marker size: op time; ▸ no HBM traffic, "
                                 "▾ no FLOPs)", title_font_size=13)
    return fig


def _merged(events: list[dict[str, Any]], min_gap: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for ev in sorted(events, key=lambda e: (e["engine"], e["start_s"])):
        prev = last.get(ev["engine"])
        if prev is not None and ev["start_s"] - (prev["start_s"] + prev["dur_s"]) < min_gap:
            prev["dur_s"] = max(prev["dur_s"], ev["start_s"] + ev["dur_s"] - prev["start_s"])
            prev["n"] += 1
            if prev["name"] != ev["name"]:
                prev["name"] = "(several ops)"
            continue
        new = dict(ev, n=1)
        out.append(new)
        last[ev["engine"]] = new
    return out


def _engine_order(engine: str) -> tuple[int, int, int, str]:
    """Rows as a reader scans them: chip by chip, the DMA queues in number order, then
    TTU, TVP, the network (not in the order engines first appear)."""
    chip, _, name = engine.rpartition("/")
    rank = int(chip[4:]) if chip.startswith("chip") and chip[4:].isdigit() else 0
    base = name.rstrip("0123456789")
    number = int(name[len(base):]) if name[len(base):] else 0
    group = {"dma": 0, "ttu": 1, "tvp": 2, "net": 3}.get(base, 4)
    return rank, group, number, name


def _timeline_figure(events: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go

    end = max((ev["start_s"] + ev["dur_s"] for ev in events), default=0.0) or 1.0
    if len(events) > MAX_TIMELINE_BARS:
        events = _merged(events, end / 4000)
    engines = sorted({ev["engine"] for ev in events}, key=_engine_order)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_kind[str(ev.get("kind") or "op")].append(ev)
    fig = go.Figure()
    for i, (kind, group) in enumerate(sorted(by_kind.items())):
        fig.add_trace(go.Bar(
            orientation="h", y=[ev["engine"] for ev in group],
            x=[ev["dur_s"] * 1e6 for ev in group], base=[ev["start_s"] * 1e6 for ev in group],
            name=kind, marker={"color": _KIND_COLOURS.get(
                kind, _SPARE_COLOURS[i % len(_SPARE_COLOURS)]),
                               "line": {"width": 0}},
            customdata=[[ev["name"], _time(ev["start_s"]), _time(ev["dur_s"]),
                         f", {ev['n']} intervals merged" if ev.get("n", 1) > 1 else ""]
                        for ev in group],
            hovertemplate="<b>%{customdata[0]}</b><br>%{y}: at %{customdata[1]} for "
                          "%{customdata[2]}%{customdata[3]}<extra>" + html.escape(kind) +
                          "</extra>"))
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(engines)),
                     title_text="engine")
    fig.update_xaxes(title_text="modeled time (µs)", range=[0, end * 1e6 * 1.02],
                     rangeslider={"visible": True, "thickness": 0.06})
    fig.update_layout(template="plotly_white", barmode="overlay", bargap=0.25,
                      margin={"l": 110, "r": 20, "t": 30, "b": 40},
                      legend={"title": {"text": "event kind"}},
                      title_text="Timeline (drag to zoom, double-click to reset)",
                      title_font_size=13)
    return fig, len(engines)


def _memory_figure(use: dict[str, Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = {"hbm": "HBM", "csram": "CSRAM (all clusters)", "tsram": "TSRAM (per tile)"}
    levels = [lv for lv in ("hbm", "csram", "tsram") if lv in use]
    fig = make_subplots(rows=len(levels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[titles[lv] for lv in levels])
    for row, lv in enumerate(levels, start=1):
        u = use[lv]
        fig.add_trace(go.Scatter(
            x=(u.times * 1e6).tolist(), y=u.bytes.tolist(), mode="lines", line_shape="hv",
            fill="tozeroy", name=f"{titles[lv]} in use (peak {_bytes(u.peak)})",
            line={"color": _PALETTE[row - 1]},
            hovertemplate="%{y:.4s}B at %{x:.4g} µs<extra>" + titles[lv] + "</extra>"),
            row=row, col=1)
        if u.capacity and u.peak > u.capacity / 50:  # the capacity line only where it is
            # in sight (216 GB of HBM would flatten a few MiB of use to nothing)
            fig.add_trace(go.Scatter(
                x=[0, float(u.times[-1]) * 1e6], y=[u.capacity, u.capacity], mode="lines",
                name=f"{titles[lv]} capacity ({_bytes(u.capacity)})",
                line={"color": "#999", "dash": "dot"}), row=row, col=1)
        fig.update_yaxes(title_text="bytes", row=row, col=1, rangemode="tozero")
    fig.update_xaxes(title_text="modeled time (µs)", row=len(levels), col=1)
    fig.update_layout(template="plotly_white", margin={"l": 70, "r": 20, "t": 40, "b": 40},
                      title_text="Memory in use over time", title_font_size=13)
    return fig


_TABLE_JS = """
function maiacSort(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.dir !== 'asc';
  th.parentNode.querySelectorAll('th').forEach(h => { h.dataset.dir = ''; });
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = td => td.dataset.v !== undefined ? parseFloat(td.dataset.v) : td.textContent;
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a.cells[col]), y = key(b.cells[col]);
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
function maiacFilter(input) {
  const q = input.value.toLowerCase();
  const rows = document.getElementById('ops').tBodies[0].rows;
  let shown = 0;
  for (const r of rows) {
    const hit = r.textContent.toLowerCase().includes(q);
    r.style.display = hit ? '' : 'none';
    shown += hit ? 1 : 0;
  }
  document.getElementById('ops-count').textContent = shown + ' of ' + rows.length + ' ops';
}
"""


def _cell(text: str, value: float | None = None) -> str:
    v = "" if value is None else f' data-v="{float(value)!r}"'
    return f"<td{v}>{html.escape(text)}</td>"


def _ops_table(r: dict[str, Any]) -> str:
    t = r.get("modeled_time_s") or 0.0
    head = ["op", "kind", "format", "time", "share", "start", "FLOPs", "HBM", "bound"]
    rows = []
    for o in r.get("ops", []):
        ts = float(o.get("time_s") or 0.0)
        rows.append("<tr>" + "".join([
            _cell(str(o.get("name"))), _cell(str(o.get("kind") or "")),
            _cell(str(o.get("format") or "")), _cell(_time(ts), ts),
            _cell(f"{ts / t if t else 0:.1%}", ts / t if t else 0.0),
            _cell(_time(o.get("start_s")), o.get("start_s") or 0.0),
            _cell(_count(o.get("flops")), o.get("flops") or 0.0),
            _cell(_bytes(o.get("hbm_bytes")), o.get("hbm_bytes") or 0.0),
            _cell(str(o.get("bound") or ""))]) + "</tr>")
    ths = "".join(f'<th onclick="maiacSort(this)" title="sort">{h}</th>' for h in head)
    n = len(rows)
    return (f'<p><input type="search" id="ops-filter" placeholder="filter ops (name, kind, '
            f'format, bound)" oninput="maiacFilter(this)" size="48"> '
            f'<span id="ops-count">{n} of {n} ops</span> (click a column to sort)</p>'
            f'<table id="ops"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"</table>")


def _fit_text(r: dict[str, Any], target: dict[str, Any]) -> str:
    """The report's own fit statement; for a report saved before it carried one, the
    statement of its target parameters."""
    if r.get("fit"):
        return str(r["fit"])
    if not target:
        return "?"
    from maiac.runtime.target import Target

    return Target.from_json(target).fit_statement()


def figures(r: dict[str, Any], events: list[dict[str, Any]], target: dict[str, Any],
            memory: dict[str, Any] | None = None) -> dict[str, tuple[Any, int]]:
    """The page's plotly figures by section, with their heights in pixels."""
    out: dict[str, tuple[Any, int]] = {}
    if r.get("ops"):
        out["roofline"] = (_roofline_figure(r, target), 480)
    if events:
        fig, rows = _timeline_figure(events)
        out["timeline"] = (fig, 160 + 26 * rows)
    if memory:
        out["memory"] = (_memory_figure(memory), 560)
    return out


def render_html(r: dict[str, Any], events: list[dict[str, Any]], title: str,
                target: dict[str, Any] | None = None,
                memory: dict[str, Any] | None = None) -> str:
    """The self-contained page (plotly.js inlined: it opens with no network)."""
    import plotly.offline

    esc = html.escape
    target = dict(target or {})
    sram = r.get("sram_peak_bytes") or {}
    frac = r.get("roofline_fraction")
    header = [
        ("model", str(r.get("model") or "?")), ("quant spec", str(r.get("quant") or "?")),
        ("target", str(r.get("target") or target.get("name"))), ("fit", _fit_text(r, target)),
        ("modeled time", _time(r.get("modeled_time_s"))),
        ("roofline time", _time(r.get("roofline_time_s"))),
        ("roofline fraction", "-" if frac is None else f"{frac:.3f}"),
        ("FLOPs", _count(r.get("flops"))), ("HBM traffic", _bytes(r.get("hbm_bytes"))),
        ("weights", _bytes(r.get("weight_bytes"))),
        ("SRAM peak", f"CSRAM {_bytes(sram.get('csram'))}, TSRAM {_bytes(sram.get('tsram'))}"),
    ]
    if r.get("chips"):
        header.insert(3, ("chips", str(r["chips"])))
    if r.get("tokens_per_s") is not None:
        header.append(("tokens/s", f"{r['tokens_per_s']:.4g} ({r.get('mode')}, "
                                   f"{r.get('tokens')} token{'' if r.get('tokens') == 1 else 's'} per call, from "
                                   f"{r.get('tokens_source')})"))
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        if r.get(key) is not None:
            header.append((label, _time(r[key])))
    t = r.get("modeled_time_s") or 0.0
    eng_rows = "".join(
        f"<tr><td>{esc(str(e.get('name')))}</td><td>{_time(e.get('busy_s'))}</td>"
        f"<td>{((e.get('busy_s') or 0) / t if t else 0):.1%}</td></tr>"
        for e in r.get("engines", []))
    sections = []
    for key, (fig, height) in figures(r, events, target, memory).items():
        sections += [f"<h2>{key.capitalize()}</h2>", _fig_html(fig, key, height)]
    if not events:
        sections.append("<p>No timeline events.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 20px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }}
th {{ background: #f2f2f2; }}
#ops th {{ cursor: pointer; user-select: none; }}
#ops th[data-dir="asc"]::after {{ content: " \\25B2"; }}
#ops th[data-dir="desc"]::after {{ content: " \\25BC"; }}
.header th {{ width: 150px; }}
</style>
<script>{plotly.offline.get_plotlyjs()}</script>
<script>{_TABLE_JS}</script>
</head><body>
<h1>{esc(title)}</h1>
<table class="header">{"".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in header)}
</table>
{"".join(sections)}
<h2>Engines</h2>
<table><tr><th>engine</th><th>busy</th><th>utilization</th></tr>{eng_rows}</table>
<h2>Ops</h2>
{_ops_table(r)}
</body></html>
"""
