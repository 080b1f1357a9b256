"""Human views of the timing report: a text table and a self-contained HTML page.

``format_report`` is what `maiac report` prints; ``render_html`` what `--html` writes
(inline SVG timeline and roofline, no external assets).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np


def _report_json(rep: Any) -> dict[str, Any]:
    return rep.to_json() if hasattr(rep, "to_json") else dict(rep)


def _time(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3f} {unit}"
    return f"{s / 1e-9:.1f} ns"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _count(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_report(r: dict[str, Any], top: int = 30) -> str:
    """The report JSON as a human-readable table."""
    t = r.get("modeled_time_s") or 0.0
    frac = r.get("roofline_fraction")
    sram = r.get("sram_peak_bytes") or {}
    lines = [
        f"target             {r.get('target')}",
        f"modeled time       {_time(r.get('modeled_time_s'))}",
        f"roofline time      {_time(r.get('roofline_time_s'))}",
        f"roofline fraction  {'-' if frac is None else f'{frac:.3f}'}",
        f"flops              {_count(r.get('flops'))}",
        f"hbm traffic        {_bytes(r.get('hbm_bytes'))}",
        f"weights            {_bytes(r.get('weight_bytes'))}",
        f"sram peak          csram {_bytes(sram.get('csram'))}, tsram {_bytes(sram.get('tsram'))}",
    ]
    if r.get("tokens_per_s") is not None:
        lines.append(f"tokens/s           {r['tokens_per_s']:.4g} ({r.get('mode')}, "
                     f"{r.get('tokens')} tokens per call)")
    resident = r.get("resident_weights") or []
    if resident:
        names = ", ".join(str(n).split(":", 1)[-1] for n in resident[:6])
        more = f" and {len(resident) - 6} more" if len(resident) > 6 else ""
        lines.append(f"resident weights   {len(resident)} in SRAM across calls "
                     f"({_bytes(r.get('resident_weight_bytes'))}): {names}{more}")
    lines += [
        "",
        f"{'engine':<20} {'busy':>12} {'util':>7}",
    ]
    for e in r.get("engines", []):
        util = (e.get("busy_s") or 0.0) / t if t else 0.0
        lines.append(f"{str(e.get('name')):<20} {_time(e.get('busy_s')):>12} {util:>7.1%}")
    ops = sorted(r.get("ops", []), key=lambda o: -(o.get("time_s") or 0.0))
    shown = ops if top <= 0 else ops[:top]
    lines += ["", f"{'op':<32} {'kind':<14} {'time':>12} {'share':>7} {'flops':>9} "
                  f"{'hbm':>11} {'bound':<8}"]
    for o in shown:
        share = (o.get("time_s") or 0.0) / t if t else 0.0
        lines.append(f"{str(o.get('name'))[:32]:<32} {str(o.get('kind'))[:14]:<14} "
                     f"{_time(o.get('time_s')):>12} {share:>7.1%} {_count(o.get('flops')):>9} "
                     f"{_bytes(o.get('hbm_bytes')):>11} {str(o.get('bound')):<8}")
    if len(shown) < len(ops):
        lines.append(f"... {len(ops) - len(shown)} more ops (--top 0 shows all)")
    return "\n".join(lines)


def _timeline(rep: Any, r: dict[str, Any]) -> list[dict[str, Any]]:
    """Timeline events ``{engine, name, start_s, dur_s}`` from whatever the report offers."""
    events = r.get("timeline") or getattr(rep, "events", None) or []
    out = []
    for ev in events:
        get = ev.get if isinstance(ev, dict) else (lambda k, d=None, ev=ev: getattr(ev, k, d))
        start = get("start_s", get("start", None))
        dur = get("dur_s", get("dur", None))
        if dur is None and get("end_s", None) is not None and start is not None:
            dur = get("end_s") - start
        if start is None or dur is None:
            continue
        out.append({"engine": str(get("engine", get("track", "?"))),
                    "name": str(get("name", get("op", ""))),
                    "start_s": float(start), "dur_s": float(dur)})
    if out:
        return out
    # No event list: lay the ops end to end on one track, in program order.
    t = 0.0
    for o in r.get("ops", []):
        d = float(o.get("time_s") or 0.0)
        start = float(o["start_s"]) if o.get("start_s") is not None else t
        out.append({"engine": "ops", "name": str(o.get("name")), "start_s": start, "dur_s": d})
        t = start + d
    return out


_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac")


def _merge_events(events: list[dict[str, Any]], min_gap: float) -> list[dict[str, Any]]:
    """Per engine, merge events closer than ``min_gap`` (sub-pixel) into one bar."""
    out: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for ev in sorted(events, key=lambda e: (e["engine"], e["start_s"])):
        prev = last.get(ev["engine"])
        if prev is not None and ev["start_s"] - (prev["start_s"] + prev["dur_s"]) < min_gap:
            prev["dur_s"] = max(prev["dur_s"], ev["start_s"] + ev["dur_s"] - prev["start_s"])
            prev["n"] += 1
            if prev["name"] != ev["name"] and not prev["name"].startswith("("):
                prev["name"] = "(several ops)"
            continue
        new = dict(ev, n=1)
        out.append(new)
        last[ev["engine"]] = new
    return out


def _svg_timeline(events: list[dict[str, Any]], width: int = 1100,
                  max_events: int = 4000) -> str:
    """Inline SVG: one row per engine, one bar per busy interval, tooltips with names."""
    if not events:
        return "<p>No timeline events.</p>"
    if len(events) > max_events:
        span = max(ev["start_s"] + ev["dur_s"] for ev in events) or 1.0
        events = _merge_events(events, span / width)
    engines: list[str] = []
    for ev in events:
        if ev["engine"] not in engines:
            engines.append(ev["engine"])
    end = max(ev["start_s"] + ev["dur_s"] for ev in events) or 1.0
    label_w, row_h, top = 140, 22, 24
    plot_w = width - label_w - 10
    height = top + row_h * len(engines) + 10
    names = sorted({ev["name"] for ev in events})
    color = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">']
    for i in range(5):
        x = label_w + plot_w * i / 4
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 10}" '
                     f'stroke="#ddd"/><text x="{x:.1f}" y="{top - 8}" text-anchor="middle">'
                     f'{html.escape(_time(end * i / 4))}</text>')
    for row, eng in enumerate(engines):
        y = top + row * row_h
        parts.append(f'<text x="4" y="{y + 15}">{html.escape(eng)}</text>')
    for ev in events:
        row = engines.index(ev["engine"])
        x = label_w + plot_w * ev["start_s"] / end
        w = max(plot_w * ev["dur_s"] / end, 0.5)
        y = top + row * row_h + 2
        tip = f"{ev['name']} ({ev['engine']}): {_time(ev['dur_s'])} at {_time(ev['start_s'])}"
        if ev.get("n", 1) > 1:
            tip += f", {ev['n']} intervals merged"
        parts.append(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row_h - 4}" '
                     f'fill="{color[ev["name"]]}"><title>{html.escape(tip)}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_roofline(r: dict[str, Any], target: dict[str, Any] | None = None, width: int = 560,
                  height: int = 360) -> str:
    """Achieved FLOP/s vs arithmetic intensity per op, under the target's roofs (one per
    TTU format)."""
    pts = [(o["flops"] / o["hbm_bytes"], o["flops"] / o["time_s"], o)
           for o in r.get("ops", [])
           if (o.get("flops") or 0) > 0 and (o.get("hbm_bytes") or 0) > 0
           and (o.get("time_s") or 0) > 0]
    if not pts:
        return "<p>No ops with both FLOPs and HBM traffic to plot.</p>"
    target = target or {}
    bw = target.get("hbm_bw")
    roofs = {k: float(v) for k, v in (target.get("ttu_flops") or {}).items()
             if isinstance(v, (int, float)) and v > 0} if bw else {}
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + list(roofs.values())
    x0, x1 = np.log10(min(xs)) - 0.5, np.log10(max(xs)) + 0.5
    y0, y1 = np.log10(min(ys)) - 0.5, np.log10(max(ys)) + 0.5
    m = 50

    def sx(v: float) -> float:
        return m + (np.log10(v) - x0) / (x1 - x0) * (width - m - 10)

    def sy(v: float) -> float:
        return height - m - (np.log10(v) - y0) / (y1 - y0) * (height - m - 10)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{m}" y="10" width="{width - m - 10}" height="{height - m - 10}" '
             f'fill="none" stroke="#999"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">'
             f'arithmetic intensity (FLOP / HBM byte, log)</text>',
             f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" '
             f'text-anchor="middle">achieved FLOP/s (log)</text>']
    lo, hi = 10 ** x0, 10 ** x1
    for i, (fmt, peak) in enumerate(sorted(roofs.items(), key=lambda kv: -kv[1])):
        knee = peak / bw
        pts_line = [f"{sx(xi):.1f},{sy(max(min(peak, bw * xi), 10 ** y0)):.1f}"
                    for xi in (lo, min(max(knee, lo), hi), hi)]
        col = _PALETTE[(i + 2) % len(_PALETTE)]
        parts.append(f'<polyline points="{" ".join(pts_line)}" fill="none" stroke="{col}" '
                     f'stroke-width="1.5"><title>{html.escape(fmt)} roof: {_count(peak)}FLOP/s, '
                     f'HBM {_bytes(bw)}/s</title></polyline>'
                     f'<text x="{width - 14}" y="{sy(peak) - 3:.1f}" text-anchor="end" '
                     f'fill="{col}">{html.escape(fmt)}</text>')
    for x, y, o in pts:
        tip = f"{o.get('name')} ({o.get('kind')}): {_count(y)}FLOP/s, intensity {x:.3g}"
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#4e79a7" '
                     f'fill-opacity="0.7"><title>{html.escape(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(r: dict[str, Any], events: list[dict[str, Any]], title: str,
                target: dict[str, Any] | None = None) -> str:
    """A self-contained HTML page (inline CSS and SVG, no external assets) for a report."""
    esc = html.escape
    sram = r.get("sram_peak_bytes") or {}
    frac = r.get("roofline_fraction")
    summary = [
        ("target", str(r.get("target"))), ("modeled time", _time(r.get("modeled_time_s"))),
        ("roofline time", _time(r.get("roofline_time_s"))),
        ("roofline fraction", "-" if frac is None else f"{frac:.3f}"),
        ("FLOPs", _count(r.get("flops"))), ("HBM traffic", _bytes(r.get("hbm_bytes"))),
        ("weights", _bytes(r.get("weight_bytes"))),
        ("CSRAM peak", _bytes(sram.get("csram"))), ("TSRAM peak", _bytes(sram.get("tsram"))),
    ]
    t = r.get("modeled_time_s") or 0.0
    eng_rows = "".join(
        f"<tr><td>{esc(str(e.get('name')))}</td><td>{_time(e.get('busy_s'))}</td>"
        f"<td>{((e.get('busy_s') or 0) / t if t else 0):.1%}</td></tr>"
        for e in r.get("engines", []))
    op_rows = "".join(
        f"<tr><td>{esc(str(o.get('name')))}</td><td>{esc(str(o.get('kind')))}</td>"
        f"<td>{_time(o.get('time_s'))}</td>"
        f"<td>{((o.get('time_s') or 0) / t if t else 0):.1%}</td>"
        f"<td>{_count(o.get('flops'))}</td><td>{_bytes(o.get('hbm_bytes'))}</td>"
        f"<td>{esc(str(o.get('bound')))}</td></tr>"
        for o in r.get("ops", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 20px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }}
th {{ background: #f2f2f2; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Summary</h2>
<table>{"".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary)}</table>
<h2>Timeline</h2>
{_svg_timeline(events)}
<h2>Roofline</h2>
{_svg_roofline(r, target)}
<h2>Engines</h2>
<table><tr><th>engine</th><th>busy</th><th>utilization</th></tr>{eng_rows}</table>
<h2>Ops</h2>
<table><tr><th>op</th><th>kind</th><th>time</th><th>share</th><th>FLOPs</th><th>HBM</th>
<th>bound</th></tr>{op_rows}</table>
</body></html>
"""
