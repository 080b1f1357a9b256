"""What the timing model reports: the ``TimingReport`` (DESIGN §5 ``report`` contract),
trace events, per-op time windows and the check against the chip's physical rates."""

from __future__ import annotations

import bisect
import heapq
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from maiac.runtime.errors import MaiacError
from maiac.runtime.target import Target


@dataclass
class Event:
    """One busy interval of one engine (for the Chrome trace)."""

    engine: str
    name: str
    start: float
    dur: float
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    # indices (into the report's events) of the instructions this one's semaphore waits
    # named, for the trace's flow arrows
    waits_on: tuple[int, ...] = ()


@dataclass
class TimingReport:
    """What ``simulate`` finds; ``to_json`` is the DESIGN §5 ``report`` contract."""

    target: str
    modeled_time_s: float
    roofline_time_s: float
    roofline_fraction: float
    flops: float
    hbm_bytes: float
    weight_bytes: int
    sram_peak_bytes: dict[str, int]
    engines: list[dict[str, Any]]
    ops: list[dict[str, Any]]
    ttu_flops: float = 0.0
    tvp_ops: float = 0.0
    compute_time_s: float = 0.0
    memory_time_s: float = 0.0
    dma_compute_overlap_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # added report keys (tokens/s, ...)
    events: list[Event] = field(default_factory=list, repr=False)
    program: Any = field(default=None, repr=False, compare=False)  # what was simulated
    visits: int = 0  # instructions the scheduler visited (its work; not in the JSON)
    fit: str = ""  # which fit of the target produced these figures (Target.fit_statement)

    def to_json(self) -> dict[str, Any]:
        """The stable ``maiac report --json`` dict (events excluded; see trace.py)."""
        return {
            "target": self.target,
            "fit": self.fit,
            "modeled_time_s": self.modeled_time_s,
            "roofline_time_s": self.roofline_time_s,
            "roofline_fraction": self.roofline_fraction,
            "flops": self.flops,
            "hbm_bytes": self.hbm_bytes,
            "weight_bytes": self.weight_bytes,
            "sram_peak_bytes": dict(self.sram_peak_bytes),
            "engines": [dict(e) for e in self.engines],
            "ops": [dict(o) for o in self.ops],
            "ttu_flops": self.ttu_flops,
            "tvp_ops": self.tvp_ops,
            "compute_time_s": self.compute_time_s,
            "memory_time_s": self.memory_time_s,
            "dma_compute_overlap_s": self.dma_compute_overlap_s,
            **self.extra,
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        return (f"target {self.target}: modeled {self.modeled_time_s * 1e3:.3f} ms, roofline "
                f"{self.roofline_time_s * 1e3:.3f} ms ({self.roofline_fraction:.1%}), "
                f"{self.flops / 1e9:.3g} GFLOP, HBM {self.hbm_bytes / 1e6:.4g} MB, "
                f"weights {self.weight_bytes / 1e6:.4g} MB")


@dataclass
class Span:
    """One instruction (or an extrapolated stretch of a loop) of op ``op``: TTU FLOPs of
    format ``fmt`` and TVP ops spread over ``[start, end]``, HBM bytes over
    ``[hbm_start, hbm_end]``."""

    op: str
    start: float
    end: float
    ttu_flops: float
    tvp_ops: float
    fmt: str
    hbm_start: float
    hbm_end: float
    hbm_bytes: float
    fmt_flops: dict[str, float] | None = None


def op_windows(spans: list[Span], order: list[str], target: Target,
                makespan: float) -> dict[str, dict[str, Any]]:
    """Per op (in program order) its window of the timeline — from the end of the op
    before it to its own last instruction's end — and what ran inside that window: TTU
    FLOPs, TVP ops and HBM bytes of *every* instruction, each spread evenly over the time
    it ran (a prefetched weight's bytes count in the window they moved in). The windows
    partition [0, makespan], so no row's rate can exceed an engine's."""
    last: dict[str, float] = defaultdict(float)
    for sp in spans:
        last[sp.op] = max(last[sp.op], sp.end, sp.hbm_end if sp.hbm_bytes else 0.0)
    bounds = []
    edge = 0.0
    for op in order:
        lo = edge
        edge = max(edge, min(last[op], makespan))
        bounds.append((op, lo, edge))
    bounds[-1:] = [(bounds[-1][0], bounds[-1][1], makespan)] if bounds else []
    starts = [lo for _, lo, _ in bounds]
    rows = {op: {"window": (lo, hi), "flops": 0.0, "tvp_ops": 0.0, "hbm_bytes": 0.0,
                 "fmt_flops": defaultdict(float)} for op, lo, hi in bounds}

    def spread(lo: float, hi: float, amount: float, add: Any) -> None:
        if amount == 0.0:
            return
        if hi <= lo:  # an instant: all in the window that holds it
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            add(bounds[i][0], amount)
            return
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        while i < len(bounds):
            op, w_lo, w_hi = bounds[i]
            if w_lo >= hi:
                break
            part = max(0.0, min(hi, w_hi) - max(lo, w_lo))
            if part > 0 or (i == len(bounds) - 1 and hi > w_hi):
                add(op, amount * max(part, 0.0) / (hi - lo))
            i += 1

    for sp in spans:
        fmts = sp.fmt_flops or ({sp.fmt: sp.ttu_flops} if sp.fmt else {})
        for fmt, fl in fmts.items():
            def add_fmt(op: str, v: float, fmt: str = fmt) -> None:
                rows[op]["flops"] += v
                rows[op]["fmt_flops"][fmt] += v
            spread(sp.start, sp.end, fl, add_fmt)
        spread(sp.start, sp.end, sp.tvp_ops,
               lambda op, v: rows[op].__setitem__("tvp_ops", rows[op]["tvp_ops"] + v))
        spread(sp.hbm_start, sp.hbm_end, sp.hbm_bytes,
               lambda op, v: rows[op].__setitem__("hbm_bytes", rows[op]["hbm_bytes"] + v))
    return rows


def rate_violations(report: TimingReport, target: Target, rel: float = 1e-6) -> list[str]:
    """Rows of ``report`` (ops, engines, total) whose work exceeds what the chip's
    physical peaks allow in the row's time, and windows of the timeline whose DMAs take
    more HBM, CSRAM or NoC bandwidth than the chip has (empty when consistent)."""
    bad = []
    slack = 1 + rel

    def check(label: str, time_s: float, hbm: float, fmt_flops: dict[str, float],
              tvp: float) -> None:
        eps = 1e-15
        if hbm > target.hbm_bw * time_s * slack + 1e-3:
            bad.append(f"{label}: {hbm:.4g} B in {time_s:.4g} s > {target.hbm_bw:.3g} B/s")
        ttu = sum(f / target.ttu_flops[k] for k, f in fmt_flops.items())
        if ttu > time_s * slack + eps:
            bad.append(f"{label}: TTU work of {ttu:.4g} s at peak in {time_s:.4g} s")
        if tvp / target.tvp_flops > time_s * slack + eps:
            bad.append(f"{label}: TVP work of {tvp / target.tvp_flops:.4g} s in {time_s:.4g} s")

    for op in report.ops:
        check(f"op {op['name']}", op["time_s"], op["hbm_bytes"], op.get("fmt_flops", {}),
              op.get("tvp_ops", 0.0))
    for e in report.engines:
        if e["busy_s"] > report.modeled_time_s * slack + 1e-15:
            bad.append(f"engine {e['name']}: busy {e['busy_s']:.4g} s > makespan")
    check("total", report.modeled_time_s, report.hbm_bytes,
          report.extra.get("fmt_flops", {}), report.tvp_ops)
    return bad + shared_bw_violations(report, target)


def overbooked(jobs: list[tuple[float, float, float]], rel: float = 1e-6) -> float:
    """How late the most overbooked window finishes: ``jobs`` are (first, last, seconds)
    — a transfer needing ``seconds`` of one bandwidth within [first, last]. They fit at
    that bandwidth iff no window holds more seconds of the transfers inside it than it
    lasts, iff earliest-deadline-first meets every ``last`` (the classic preemptive
    single-resource feasibility test, exact over every window, n log n). Returns the
    largest lateness beyond ``rel`` of the job's seconds (0.0: every window fits)."""
    jobs = sorted(jobs)
    heap: list[list[float]] = []  # [last, seconds left]
    t, i, worst = 0.0, 0, 0.0
    while i < len(jobs) or heap:
        if not heap:
            t = max(t, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= t:
            heapq.heappush(heap, [jobs[i][1], jobs[i][2], jobs[i][2]])
            i += 1
        job = heap[0]
        run = min(job[1], (jobs[i][0] if i < len(jobs) else math.inf) - t)
        t += run
        if run >= job[1]:
            heapq.heappop(heap)
            late = t - job[0]
            if late > rel * job[2] + 1e-15 * max(t, 1.0):
                worst = max(worst, late)
        else:
            job[1] -= run
    return worst


def shared_bw_violations(report: TimingReport, target: Target) -> list[str]:
    """The shared bandwidths (HBM at its physical peak, the CSRAM and NoC aggregates) over
    every window of the event timeline: the bytes each DMA moved within its booked slot
    (``<resource>_slot`` of the event's args) must fit the rate."""
    bws = {"hbm": target.hbm_bw, "csram": target.csram_bw, "noc": target.noc_bw}
    jobs: dict[str, list[tuple[float, float, float]]] = {r: [] for r in bws}
    for ev in report.events:
        for r, bw in bws.items():
            sl = ev.args.get(f"{r}_slot")
            nbytes = ev.args.get(f"{r}_bytes", 0.0)
            if sl is not None and nbytes:
                jobs[r].append((sl[0], sl[1], nbytes / bw))
    return [f"{r}: a window of the timeline needs {late:.4g} s more than it lasts at "
            f"{bws[r]:.3g} B/s" for r in bws if (late := overbooked(jobs[r])) > 0]


def dma_compute_overlap(events: list[Event]) -> float:
    """Seconds during which some DMA queue and some compute engine are both busy."""
    def union(evs: list[Event]) -> list[tuple[float, float]]:
        spans: list[tuple[float, float]] = []
        for e in sorted(evs, key=lambda e: e.start):
            s, f = e.start, e.start + e.dur
            if spans and s <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], f))
            else:
                spans.append((s, f))
        return spans

    a = union([e for e in events if e.engine.startswith("dma")])
    b = union([e for e in events if not e.engine.startswith("dma")])
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def checked(report: TimingReport, target: Target) -> TimingReport:
    """``report``, after checking it against the chip's physical rates when the
    environment asks for it (``MAIAC_CHECK_RATES=1``: the test suite sets it, so every
    report any test makes is checked)."""
    if os.environ.get("MAIAC_CHECK_RATES") == "1":
        bad = rate_violations(report, target)
        if bad:
            raise MaiacError("timing report exceeds a physical rate: " + "; ".join(bad[:5]))
    return report
