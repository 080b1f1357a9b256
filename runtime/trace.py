"""Chrome / Perfetto trace of a timing report (the JSON trace-event format), times in µs.

Open the JSON in https://ui.perfetto.dev or ``chrome://tracing``. What it holds:

* one process per chip (``pid``), one thread track per engine (DMA queues, TTU, TVP,
  network), each busy interval an ``X`` event named by its op, with the instruction,
  bytes moved, HBM bytes, FLOPs, number format, the op's bound and kind in ``args``;
* flow arrows (``s``/``f`` events, ``cat`` "wait", both bound to their enclosing slice
  with ``bp: "e"``) from each instruction to every later one whose semaphore wait named
  it (a DMA to the matmul that waits for its data, a matmul to the DMA that waits to
  reuse its buffer);
* counter tracks (``C`` events) of the bytes in use per memory level (HBM, CSRAM, TSRAM
  per tile; runtime/memory_use.py), when the report knows the program it timed.

``validate_trace`` checks a trace against that format (the tests run it on every trace
they write).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from pathlib import Path
from typing import Any

from maiac.runtime.timing import TimingReport

COUNTER_NAMES = {"hbm": "HBM in use (bytes)", "csram": "CSRAM in use (bytes)",
                 "tsram": "TSRAM in use per tile (bytes)"}


def chrome_trace(report: TimingReport, *, pid: int = 1, flow_id_base: int = 0,
                 process_name: str | None = None) -> dict[str, Any]:
    """The trace as a dict: ``traceEvents`` (metadata, X, flow and counter events).

    Built from the timing model alone (no data: shape-only programs work). ``pid``,
    ``flow_id_base`` and ``process_name`` let several chips share one trace.
    """
    engines = [e["name"] for e in report.engines]
    for ev in report.events:
        if ev.engine not in engines:
            engines.append(ev.engine)
    tid = {name: i + 1 for i, name in enumerate(engines)}
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
         "args": {"name": process_name or f"maiac {report.target} (modeled)"}},
        {"name": "process_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
         "args": {"sort_index": pid}},
    ]
    for name, t in tid.items():
        events.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": t,
                       "args": {"name": name}})
        events.append({"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": t,
                       "args": {"sort_index": t}})
    # each event also carries its op's roofline verdict and kind (the report's op row)
    op_rows = {o["name"]: o for o in report.ops}
    # a loop's extrapolated tail repeats its simulated iterations: their number format
    formats = {(ev.name, ev.engine): ev.args["format"] for ev in report.events
               if ev.args.get("format")}
    for ev in report.events:
        row = op_rows.get(ev.name, {})
        args = {**ev.args, "bound": row.get("bound"), "op_kind": row.get("kind")}
        if ev.args.get("extrapolated"):  # named like the other slices: totals and format
            args.setdefault("flops", ev.args.get("loop_flops", 0.0))
            args.setdefault("hbm_bytes", ev.args.get("loop_hbm_bytes", 0.0))
            args.setdefault("format", formats.get((ev.name, ev.engine)) or row.get("format"))
        events.append({"name": ev.name, "cat": ev.kind, "ph": "X", "pid": pid,
                       "tid": tid[ev.engine], "ts": ev.start * 1e6, "dur": ev.dur * 1e6,
                       "args": args})
    events += _flows(report, pid, tid, flow_id_base)
    events += _counters(report, pid)
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {k: v for k, v in report.to_json().items() if k != "ops"}}


def _flows(report: TimingReport, pid: int, tid: dict[str, int], base: int
           ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n = base
    for dst in report.events:
        for i in dst.waits_on:
            src = report.events[i]
            n += 1
            name = f"{src.engine} -> {dst.engine}"
            common = {"name": name, "cat": "wait", "id": n, "pid": pid, "bp": "e"}
            # the start sits inside the source slice, the end at the waiting slice's
            # start (both bind to their enclosing slice)
            out.append({**common, "ph": "s", "tid": tid[src.engine],
                        "ts": (src.start + src.dur / 2) * 1e6})
            out.append({**common, "ph": "f", "tid": tid[dst.engine], "ts": dst.start * 1e6})
    return out


def _counters(report: TimingReport, pid: int) -> list[dict[str, Any]]:
    program = getattr(report, "program", None)
    if program is None:
        return []
    from maiac.runtime.memory_use import memory_use

    out: list[dict[str, Any]] = []
    for lv, use in memory_use(program, report.events, report.modeled_time_s).items():
        if not use.peak:
            continue
        for t, b in zip(use.times.tolist(), use.bytes.tolist(), strict=True):
            out.append({"name": COUNTER_NAMES[lv], "ph": "C", "pid": pid, "tid": 0,
                        "ts": t * 1e6, "args": {"bytes": int(b)}})
    return out


def validate_trace(trace: dict[str, Any]) -> list[str]:
    """What in ``trace`` breaks the trace-event format as Perfetto/chrome://tracing read it
    (empty: nothing). Checks fields and types per phase, that every flow has one start
    and one end (end not before start) each inside a slice of its thread, and that each
    counter track is in time order."""
    bad: list[str] = []
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        return ["no traceEvents list"]
    slices: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    flows: dict[Any, dict[str, dict[str, Any]]] = {}
    counter_ts: dict[tuple[Any, str], float] = {}
    for k, ev in enumerate(events):
        ph = ev.get("ph")
        if ph not in ("M", "X", "s", "f", "C"):
            bad.append(f"event {k}: phase {ph!r}")
            continue
        if not isinstance(ev.get("name"), str) or not ev["name"]:
            bad.append(f"event {k}: no name")
        if not isinstance(ev.get("pid"), int) or not isinstance(ev.get("tid"), int):
            bad.append(f"event {k}: pid/tid not integers")
        ts = ev.get("ts")
        if not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
            bad.append(f"event {k}: ts {ts!r}")
            continue
        if ph in ("M", "C") and not isinstance(ev.get("args"), dict):
            bad.append(f"event {k}: {ph} without args")
        if ph == "X":
            dur = ev.get("dur")
            if not isinstance(dur, int | float) or not math.isfinite(dur) or dur < 0:
                bad.append(f"event {k}: dur {dur!r}")
                continue
            if not isinstance(ev.get("args"), dict):
                bad.append(f"event {k}: X without args")
            slices.setdefault((ev["pid"], ev["tid"]), []).append((ts, ts + dur))
        elif ph in ("s", "f"):
            if ev.get("id") is None or ev.get("cat") is None:
                bad.append(f"event {k}: flow without id/cat")
                continue
            key = (ev["cat"], ev["id"])
            if ph in flows.setdefault(key, {}):
                bad.append(f"flow {key}: two '{ph}' events")
            flows[key][ph] = ev
        elif ph == "C":
            ck = (ev["pid"], ev["name"])
            if ts < counter_ts.get(ck, -math.inf):
                bad.append(f"counter {ev['name']!r}: ts {ts} before the previous sample")
            counter_ts[ck] = ts
            if not all(isinstance(v, int | float) for v in ev["args"].values()):
                bad.append(f"event {k}: counter values not numbers")

    starts = {key: sorted(v) for key, v in slices.items()}
    lows = {key: [lo for lo, _ in v] for key, v in starts.items()}

    def inside(ev: dict[str, Any]) -> bool:
        # an engine's slices do not overlap: the last one starting at or before ts
        # (allowing for float rounding of the µs times)
        key = (ev["pid"], ev["tid"])
        i = bisect.bisect_right(lows.get(key, []), ev["ts"] + 1e-6) - 1
        return i >= 0 and ev["ts"] <= starts[key][i][1] + 1e-6

    for key, pair in flows.items():
        if set(pair) != {"s", "f"}:
            bad.append(f"flow {key}: has {sorted(pair)}, needs a start and an end")
            continue
        if pair["f"]["ts"] < pair["s"]["ts"]:
            bad.append(f"flow {key}: ends before it starts")
        for ev in pair.values():
            if ev.get("bp") == "e" and not inside(ev):
                bad.append(f"flow {key}: '{ev['ph']}' at {ev['ts']} is in no slice of its "
                           f"thread")
    return bad


def write_chrome_trace(report: TimingReport, path: str | os.PathLike[str]) -> None:
    """Write ``chrome_trace(report)`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(chrome_trace(report), separators=(",", ":")))
