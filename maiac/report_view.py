"""The timing report for people: the text table, and what every view shares.

``annotate`` adds to the report dict what the timing model does not know (the model,
the quant spec, each op's number format); ``format_report`` is what `maiac report`
prints; ``render_html`` (maiac/report_html.py) what `--html` writes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _report_json(rep: Any) -> dict[str, Any]:
    return rep.to_json() if hasattr(rep, "to_json") else dict(rep)


def op_formats(events: list[Any]) -> dict[str, str]:
    """Each op's number format, from the timing events: the TTU format(s) of its matmuls
    (by busy time, e.g. ``fp4`` or ``bf16``), else the format its compute engine writes
    (``f32``, ``bf16``, ...), else what its DMAs move."""
    busy: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(
        lambda: defaultdict(float)))
    for ev in events:
        engine = ev.engine if hasattr(ev, "engine") else ev.get("engine", "")
        args = ev.args if hasattr(ev, "args") else ev.get("args", {})
        fmt = args.get("format") if isinstance(args, dict) else None
        if not fmt:
            continue
        engine = str(engine).rsplit("/", 1)[-1]  # chipN/ttu -> ttu
        rank = 0 if engine == "ttu" else 1 if engine in ("tvp", "net") else 2
        name = ev.name if hasattr(ev, "name") else ev.get("name", "")
        dur = ev.dur if hasattr(ev, "dur") else ev.get("dur_s", 0.0)
        busy[str(name)][rank][str(fmt)] += float(dur)
    out = {}
    for name, ranks in busy.items():
        fmts = ranks[min(ranks)]
        out[name] = "+".join(sorted(fmts, key=lambda f: -fmts[f]))
    return out


def annotate(r: dict[str, Any], meta: dict[str, Any] | None, events: list[Any],
             tokens_per_run: int | None = None) -> dict[str, Any]:
    """``r`` with ``model`` and ``quant`` (from the program's meta), a ``format`` per op
    row (from the events), and for a decoder (its meta's ``mode``/``tokens``: maiac.models
    metadata or maiac/decoder_props.py; or ``tokens_per_run`` given) ``tokens_per_s`` and
    the run's time as ``ttft_s`` (prefill) or ``tpot_s`` (decode step)."""
    meta = meta if isinstance(meta, dict) else {}
    out = dict(r)
    out.setdefault("model", meta.get("model"))
    out.setdefault("quant", meta.get("quant"))
    t = float(out.get("modeled_time_s") or 0.0)
    if tokens_per_run is not None:
        out["tokens"] = tokens_per_run
        out["mode"] = meta.get("mode") or "given"
        out["tokens_source"] = "--tokens-per-run"
    elif meta.get("mode") in ("prefill", "decode") and isinstance(meta.get("tokens"), int):
        out.setdefault("mode", meta["mode"])
        out.setdefault("tokens", meta["tokens"])
        out["tokens_source"] = meta.get("tokens_source", "metadata")
    if isinstance(out.get("tokens"), int) and t > 0:
        out["tokens_per_s"] = out["tokens"] / t
        if out.get("mode") == "prefill":
            out["ttft_s"] = t
        elif out.get("mode") == "decode":
            out["tpot_s"] = t
    fmts = op_formats(events)
    out["ops"] = [dict(o, format=o.get("format") or fmts.get(str(o.get("name")), ""))
                  for o in r.get("ops", [])]
    return out


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
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_report(r: dict[str, Any], top: int = 30) -> str:
    """The report JSON as a human-readable table."""
    t = r.get("modeled_time_s") or 0.0
    frac = r.get("roofline_fraction")
    sram = r.get("sram_peak_bytes") or {}
    lines = [
        f"model              {r.get('model') or '?'}",
        f"quant spec         {r.get('quant') or '?'}",
        f"target             {r.get('target')}",
        f"fit                {r.get('fit') or '?'}",
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
                     f"{r.get('tokens')} token{'' if r.get('tokens') == 1 else 's'} per call, from {r.get('tokens_source')})")
    if r.get("ttft_s") is not None:
        lines.append(f"TTFT               {_time(r['ttft_s'])} (this prefill)")
    if r.get("tpot_s") is not None:
        lines.append(f"TPOT               {_time(r['tpot_s'])} (this decode step)")
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
    # full op names: the column is as wide as the longest shown (no cut)
    w = max([2] + [len(str(o.get("name"))) for o in shown])
    lines += ["", f"{'op':<{w}} {'kind':<14} {'format':<9} {'time':>12} {'share':>7} "
                  f"{'flops':>9} {'hbm':>11} {'bound':<8}"]
    for o in shown:
        share = (o.get("time_s") or 0.0) / t if t else 0.0
        lines.append(f"{str(o.get('name')):<{w}} {str(o.get('kind'))[:14]:<14} "
                     f"{str(o.get('format') or '-'):<9} "
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
                    "name": str(get("name", get("op", ""))), "kind": str(get("kind", "")),
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


def render_html(r: dict[str, Any], events: list[dict[str, Any]], title: str,
                target: dict[str, Any] | None = None,
                memory: dict[str, Any] | None = None) -> str:
    """The self-contained HTML page (maiac/report_html.py; plotly imported only here)."""
    from maiac.report_html import render_html as render

    return render(r, events, title, target, memory)
