"""The Maia 200 timing model: how long a program would take, and where the time goes.

Needs no data (works on shape-only programs). Each engine — every DMA queue
(``dma0`` ..), the ``ttu`` and the ``tvp`` — has a timeline. An instruction starts when
its engine is free and every earlier instruction it depends on has finished; it then
occupies its engine for its cost:

* DMA / gather: ``max`` over the levels it touches of bytes / bandwidth, plus
  ``dma_latency_s``. HBM and CSRAM are shared levels (``hbm_bw``, ``csram_bw``); TSRAM
  and the NoC into the tiles scale with the tiles the instruction runs on
  (``tsram_bw``/``noc_bw`` x tiles / n_tiles). A stride-0 source (``tile_strides`` all
  zero) is read once and broadcast by the NoC.
* matmul: ``2*M*N*K*batch*tiles`` FLOPs / (``ttu_flops[fmt]`` x tiles / n_tiles) +
  ``instr_latency_s``.
* vec: elements x ops-per-element (``VEC_OPS``, ASSUMED) / (``tvp_flops`` x tiles /
  n_tiles) + ``instr_latency_s``.

Dependencies are data hazards (RAW, WAR, WAW) between the byte ranges instructions
touch on each level (TSRAM addresses are shared by all tiles, so treated as one
range). So the DMA of the next op overlaps the compute of this one wherever the
program's buffers allow it (double buffering, prefetch into separate buffers).

Loops are costed in closed form: the first ``SIM_ITERS`` iterations are scheduled
exactly, then the steady-state period (from the last two simulated iterations) is
extrapolated over the remaining ones; busy times and per-op totals scale by
``trips / SIM_ITERS``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maiac.runtime import tvp_math
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import Access, Collective, Dma, Gather, Instr, Loop, MatMul, Vec
from maiac.runtime.memory import StepMap, block_extent, distinct_bytes, itemsize, numel
from maiac.runtime.network import Network
from maiac.runtime.program import Program
from maiac.runtime.target import Target

SIM_ITERS = 4

# TVP operations per element (ASSUMED: transcendental functions as a short polynomial
# after range reduction; norms/softmax count their passes over the row).
VEC_OPS: dict[str, int] = {
    "copy": 1, "relu": 1, "gelu": 12, "gelu_tanh": 10, "erf": 10, "tanh": 8, "sigmoid": 8,
    "silu": 9, "exp": 6, "log": 6, "sqrt": 4, "rsqrt": 4, "reciprocal": 4, "neg": 1,
    "abs": 1, "cos": 8, "sin": 8, "floor": 1, "ceil": 1, "not": 1, "isnan": 1, "sign": 1,
    "add": 1, "sub": 1, "mul": 1, "div": 4, "pow": 12, "max": 1, "min": 1, "mod": 4,
    "equal": 1, "less": 1, "greater": 1, "less_equal": 1, "greater_equal": 1, "and": 1,
    "or": 1, "xor": 1, "where": 1, "reduce_sum": 1, "reduce_mean": 1, "reduce_max": 1,
    "reduce_min": 1, "softmax": 10, "log_softmax": 10, "layernorm": 8, "rmsnorm": 5,
    "scale": 1, "exp_sub": 7,
    # ASSUMED: |x|, block max, scale exponent, divide, round/saturate, pack
    "quantize": 6,
    "rope": 3,  # x*cos, rotated*sin (the sign flip is free), add
    "causal_mask": 2,  # compare, select
}
VEC_OPS.update(tvp_math.VEC_OPS)  # the op families' functions
ROW_INPUT_FNS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "quantize",
                 "reduce_prod")


def ttu_format_key(fmt: str) -> str:
    """The TTU format key of a MatMul ``fmt`` (fp8 for mixed fp8 x fp4 formats); the
    lower-cased name itself when it is none of the known ones."""
    f = fmt.lower()
    if f in ("fp4", "fp6", "fp8", "bf16", "f32"):
        return f
    if f in ("fp32", "float32"):
        return "f32"
    if f in ("f16", "fp16", "bfloat16"):
        return "bf16"
    if "fp8" in f or "f8" in f or "e4m3" in f or "e5m2" in f or "a8" in f:
        return "fp8"
    if "fp6" in f or "e2m3" in f or "e3m2" in f:
        return "fp6"
    if "fp4" in f or "e2m1" in f:
        return "fp4"
    return f


def ttu_format(fmt: str, target: Target) -> str:
    """The ``ttu_flops`` key a MatMul ``fmt`` runs at (fp8 for mixed fp8 x fp4 formats)."""
    f = fmt.lower()
    if f in target.ttu_flops:
        return f
    key = ttu_format_key(f)
    if key in target.ttu_flops:
        return key
    raise MaiacError(f"matmul format {fmt!r} has no TTU peak; known: "
                     f"{', '.join(target.ttu_flops)} (set ttu_macs.{fmt} to add one)")


@dataclass
class Event:
    """One busy interval of one engine (for the Chrome trace)."""

    engine: str
    name: str
    start: float
    dur: float
    kind: str
    args: dict[str, Any] = field(default_factory=dict)


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

    def to_json(self) -> dict[str, Any]:
        """The stable ``maiac report --json`` dict (events excluded; see trace.py)."""
        return {
            "target": self.target,
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


# --------------------------------------------------------------------------- costs

@dataclass
class _Footprint:
    """Bytes ``[lo, hi)`` of ``level`` at loop iteration 0, moving by ``loop_bytes``."""

    level: str
    lo: int
    hi: int
    loop_bytes: tuple[int, ...]

    def at(self, it: tuple[int, ...]) -> tuple[int, int]:
        off = sum(i * s for i, s in zip(it, self.loop_bytes, strict=False))
        return self.lo + off, self.hi + off

    def over(self, prefix: tuple[int, ...], trips: tuple[int, ...]) -> tuple[int, int]:
        """Range over every iteration of the loop dims after ``prefix``."""
        off = sum(i * s for i, s in zip(prefix, self.loop_bytes, strict=False))
        lo = hi = 0
        for n, s in zip(trips[len(prefix):], self.loop_bytes[len(prefix):], strict=False):
            lo += min(0, (n - 1) * s)
            hi += max(0, (n - 1) * s)
        return self.lo + off + lo, self.hi + off + hi


@dataclass
class _Leaf:
    """A non-loop instruction with its precomputed cost and footprints."""

    path: str
    op: str
    kind: str
    engine: str
    dur: float
    flops: float
    fmt: str  # TTU format key for matmuls, "" otherwise
    hbm_bytes: float
    reads: list[_Footprint]
    writes: list[_Footprint]
    trips: tuple[int, ...]
    waits: tuple[tuple[str, int], ...] = ()  # (engine, pending), async programs only
    hbm_time: float = 0.0  # seconds of the shared HBM bandwidth this DMA needs
    moved_bytes: int = 0  # bytes transferred (DMA, collective) or operand bytes (compute)
    number_format: str = ""  # TTU format of a matmul, else the dtype it writes


def _footprint(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> _Footprint:
    lo, hi = block_extent(acc, grid)
    isz = itemsize(acc.dtype)
    ls = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
    return _Footprint(acc.level, lo, hi, ls)


def _dma_time(t: Target, src: Access, dst: Access, src_b: float, dst_b: float,
              tiles: int) -> float:
    frac = tiles / t.n_tiles

    def level_time(level: str, nbytes: float) -> float:
        bw = {"hbm": t.hbm_sustained_bw, "csram": t.csram_bw, "tsram": t.tsram_bw * frac}[level]
        return nbytes / bw

    times = [level_time(src.level, src_b), level_time(dst.level, dst_b)]
    levels = {src.level, dst.level}
    if "tsram" in levels and len(levels) == 2:  # into or out of the tiles over the NoC
        times.append((dst_b if dst.level == "tsram" else src_b) / (t.noc_bw * frac))
    elif levels == {"hbm", "csram"}:
        times.append(max(src_b, dst_b) / t.noc_bw)
    return max(times) + t.dma_latency_s


def _pad(x: int, granule: int) -> int:
    return -(-x // granule) * granule


def _leaf(instr: Instr, path: str, trips: tuple[int, ...], t: Target,
          net: Network | None = None) -> _Leaf:
    grid = tuple(instr.grid)
    tiles = math.prod(grid)
    frac = tiles / t.n_tiles

    def fp(*accs: Access) -> list[_Footprint]:
        return [_footprint(a, grid, trips) for a in accs]

    flops = hbm = 0.0
    fmt = ""
    moved = 0
    number_format = ""
    if isinstance(instr, Dma | Gather):
        engine = f"dma{instr.queue % t.dma_queues}"
        if isinstance(instr, Dma):
            src, dst = instr.src, instr.dst
            src_b, dst_b = distinct_bytes(src, grid), distinct_bytes(dst, grid)
            reads, writes = fp(src), fp(dst)
        else:
            src, dst = instr.table, instr.dst
            dst_b = distinct_bytes(dst, grid)
            src_b = dst_b // itemsize(dst.dtype) * itemsize(src.dtype)
            reads, writes = fp(instr.table, instr.indices), fp(dst)
        dur = _dma_time(t, src, dst, src_b, dst_b, tiles)
        moved, number_format = max(src_b, dst_b), dst.dtype
        hbm = (src_b if src.level == "hbm" else 0) + (dst_b if dst.level == "hbm" else 0)
    elif isinstance(instr, Collective):
        # the network engine (runtime/network.py); HBM: read src, write dst, and for the
        # reductions read what the peers sent
        engine = "net"
        src_b, dst_b = distinct_bytes(instr.src, grid), distinct_bytes(instr.dst, grid)
        size = {"all_gather": dst_b, "reduce_scatter": src_b}.get(instr.collective, src_b)
        dur, _ = (net or Network()).cost(instr.collective, float(size), instr.chips)
        received = size * (instr.chips - 1) / instr.chips * (
            2 if instr.collective == "all_reduce" else 1)
        hbm = ((src_b + (received if instr.collective != "all_gather" else 0))
               * (instr.src.level == "hbm") + dst_b * (instr.dst.level == "hbm"))
        reads, writes = fp(instr.src), fp(instr.dst)
        moved, number_format = int(size), instr.dst.dtype
    elif isinstance(instr, MatMul):
        engine = "ttu"
        m, n = instr.c.shape[-2:]
        k = instr.logical_ab()[0][-1]
        flops = 2.0 * m * n * k * numel(instr.c.shape[:-2]) * tiles
        fmt = ttu_format(instr.fmt, t)
        # the TTU computes whole native 32 x K x 32 blocks: a partial block costs a whole one
        padded = (2.0 * _pad(m, t.ttu_block_m) * _pad(n, t.ttu_block_n)
                  * _pad(k, t.ttu_block_k(fmt)) * numel(instr.c.shape[:-2]) * tiles)
        dur = padded / (t.ttu_flops[fmt] * frac) + t.instr_latency_s
        reads = fp(instr.a, instr.b, *([instr.c] if instr.accumulate else []),
                   *(acc for _, acc in instr.scale_accesses()))
        writes = fp(instr.c)
        moved = sum(distinct_bytes(a, grid) for a in (instr.a, instr.b, instr.c))
        number_format = fmt
    elif isinstance(instr, Vec):
        engine = "tvp"
        shape = instr.ins[0].shape if instr.fn in ROW_INPUT_FNS else instr.out.shape
        flops = float(numel(shape) * tiles * VEC_OPS.get(instr.fn, 1))
        dur = flops / (t.tvp_flops * frac) + t.instr_latency_s
        reads, writes = fp(*instr.ins), fp(instr.out)
        moved = sum(distinct_bytes(a, grid) for a in (*instr.ins, instr.out))
        number_format = instr.out.dtype
    else:
        raise MaiacError(f"instruction {path}: cannot time {type(instr).__name__}")
    return _Leaf(path, instr.op, instr.kind, engine, dur, flops, fmt, float(hbm), reads,
                 writes, trips, tuple((instr.waits or {}).items()), hbm / t.hbm_sustained_bw,
                 int(moved), number_format)


# --------------------------------------------------------------------------- hazards

class _RangeMax(StepMap):
    """A step function over byte addresses: max over a range, assign or raise over a range."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def query(self, lo: int, hi: int) -> float:
        if hi <= lo:
            return 0.0
        i = bisect.bisect_right(self.keys, lo) - 1
        j = bisect.bisect_left(self.keys, hi)
        return max(self.vals[i:j]) if j > i else self.vals[i]

    def raise_to(self, lo: int, hi: int, v: float) -> None:
        if hi <= lo:
            return
        i, j = self._split(lo), self._split(hi)
        vals = self.vals
        for k in range(i, j):
            if vals[k] < v:
                vals[k] = v


@dataclass
class _Stats:
    """Additive totals of a stretch of the schedule (scaled for extrapolated loops)."""

    busy: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    op_busy: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    op_flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    op_hbm: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fmt_flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    op_fmt_flops: dict[tuple[str, str], float] = field(
        default_factory=lambda: defaultdict(float))
    tvp_ops: float = 0.0

    def merge(self, other: _Stats, scale: float) -> None:
        for e, v in other.busy.items():
            self.busy[e] += v * scale
        for op, d in other.op_busy.items():
            for e, v in d.items():
                self.op_busy[op][e] += v * scale
        for src, dst in ((other.op_flops, self.op_flops), (other.op_hbm, self.op_hbm),
                         (other.fmt_flops, self.fmt_flops),
                         (other.op_fmt_flops, self.op_fmt_flops)):
            for k, v in src.items():
                dst[k] += v * scale
        self.tvp_ops += other.tvp_ops * scale


# A cross-chip semaphore: called with (instruction path, the time this chip could start
# a collective), returns when every chip of the group can (runtime/multichip.py).
CollectiveSync = Callable[[str, float], float]


@dataclass
class _Span:
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


def _op_windows(spans: list[_Span], order: list[str], target: Target,
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
    physical peaks allow in the row's time (empty when the report is consistent)."""
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
    return bad


class _Sim:
    def __init__(self, target: Target, sync: CollectiveSync | None = None) -> None:
        self.t = target
        self.sync = sync
        self.free: dict[str, float] = defaultdict(float)
        self.wf = defaultdict(_RangeMax)  # level -> finish of the last write
        self.af = defaultdict(_RangeMax)  # level -> finish of the last access of any kind
        self.events: list[Event] = []
        self.spans: list[_Span] = []
        self.stats = [_Stats()]
        self.op_order: dict[str, None] = {}
        # semaphores: instructions issued per engine, and the finish time of each
        # (``seqs[e][i]`` instructions issued when the one finishing at ``ends[e][i]`` ended)
        self.issued: dict[str, int] = defaultdict(int)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.ends: dict[str, list[float]] = defaultdict(list)

    def _end_of(self, engine: str, seq: int) -> float:
        """When instruction number ``seq`` (1-based) of ``engine`` finished."""
        seqs = self.seqs[engine]
        i = min(bisect.bisect_left(seqs, seq), len(seqs) - 1)
        return self.ends[engine][i] if i >= 0 else 0.0

    def leaf(self, lf: _Leaf, it: tuple[int, ...]) -> float:
        start = self.free[lf.engine]
        for e, k in lf.waits:
            seq = self.issued[e] - k
            if seq >= 1:
                start = max(start, self._end_of(e, seq))
        spans_r = [(f.level, *f.at(it)) for f in lf.reads]
        spans_w = [(f.level, *f.at(it)) for f in lf.writes]
        for lv, lo, hi in spans_r:
            start = max(start, self.wf[lv].query(lo, hi))
        for lv, lo, hi in spans_w:
            start = max(start, self.af[lv].query(lo, hi))
        if self.sync is not None and lf.engine == "net":
            start = self.sync(lf.path, start)
        end = start + lf.dur
        slot = end
        if lf.hbm_time > 0:
            # HBM bandwidth is shared by all DMA queues: the transfer takes its slot after
            # the queue's fixed latency, once earlier HBM transfers are through
            slot = max(start + self.t.dma_latency_s, self.free["hbm"])
            self.free["hbm"] = slot + lf.hbm_time
            self.stats[-1].busy["hbm"] += lf.hbm_time
            end = max(end, slot + lf.hbm_time)
        # what ran when, for the per-op windows: compute over [start, end], HBM bytes over
        # the transfer's slot
        name = lf.op or lf.kind
        self.spans.append(_Span(name, start, end, lf.flops if lf.fmt else 0.0,
                                lf.flops if lf.engine == "tvp" else 0.0, lf.fmt,
                                slot, slot + lf.hbm_time, lf.hbm_bytes))
        self.free[lf.engine] = end
        self.issued[lf.engine] += 1
        self.seqs[lf.engine].append(self.issued[lf.engine])
        self.ends[lf.engine].append(end)
        for lv, lo, hi in spans_r:
            self.af[lv].raise_to(lo, hi, end)
        for lv, lo, hi in spans_w:
            self.wf[lv].assign(lo, hi, end)
            self.af[lv].assign(lo, hi, end)
        args: dict[str, Any] = {"instr": lf.path, "bytes": lf.moved_bytes,
                                "hbm_bytes": lf.hbm_bytes, "flops": lf.flops,
                                "format": lf.number_format}
        if it:
            args["iteration"] = list(it)
        self.events.append(Event(lf.engine, name, start, end - start, lf.kind, args))
        s = self.stats[-1]
        s.busy[lf.engine] += end - start
        s.op_busy[name][lf.engine] += end - start
        s.op_flops[name] += lf.flops
        s.op_hbm[name] += lf.hbm_bytes
        if lf.fmt:
            s.fmt_flops[lf.fmt] += lf.flops
            s.op_fmt_flops[(name, lf.fmt)] += lf.flops
        elif lf.engine == "tvp":
            s.tvp_ops += lf.flops
        self.op_order.setdefault(name, None)
        return end

    def run(self, items: list[Any], it: tuple[int, ...]) -> float:
        end = 0.0
        for item in items:
            end = max(end, self.loop(item, it) if isinstance(item, _LoopItem)
                      else self.leaf(item, it))
        return end

    def loop(self, lp: _LoopItem, prefix: tuple[int, ...]) -> float:
        n = math.prod(lp.trips)
        k = min(n, SIM_ITERS)
        self.stats.append(_Stats())
        ends: list[float] = []
        before = dict(self.issued)
        for inner in itertools.islice(itertools.product(*map(range, lp.trips)), k):
            before = dict(self.issued)
            ends.append(max(self.run(lp.body, prefix + inner), ends[-1] if ends else 0.0))
        frame = self.stats.pop()
        end = ends[-1]
        if n > k:
            period = (ends[-1] - ends[-3]) / 2 if k >= 3 else ends[-1] - ends[0]
            # no engine (nor HBM) can do an iteration's work faster than its busy time
            period = max([period, *(busy / k for busy in frame.busy.values())])
            extra = (n - k) * period
            scale = (n - k) / k
            for op, fl in frame.op_flops.items():
                ttu = sum(f for (o, _), f in frame.op_fmt_flops.items() if o == op)
                self.spans.append(_Span(op, end, end + extra, ttu * scale, (fl - ttu) * scale,
                                        "", end, end + extra, frame.op_hbm[op] * scale,
                                        fmt_flops={f: v * scale for (o, f), v in
                                                   frame.op_fmt_flops.items() if o == op}))
            for e, busy in frame.busy.items():
                if e == "hbm":  # not an engine: no track of its own
                    self.free[e] += extra
                    continue
                # named by op like the simulated iterations; the args say what it stands for
                self.events.append(Event(e, lp.op or "loop", end,
                                         min(extra, busy / k * (n - k)), "loop",
                                         {"instr": lp.path, "extrapolated": True,
                                          "iterations": n - k,
                                          "loop_flops": sum(frame.op_flops.values()) * scale,
                                          "loop_hbm_bytes": sum(frame.op_hbm.values()) * scale}))
                self.free[e] += extra
            end += extra
            for e, count in list(self.issued.items()):
                per_iter = count - before.get(e, 0)
                if per_iter:  # the skipped instructions all finish by the loop's end
                    self.issued[e] += (n - k) * per_iter
                    self.seqs[e].append(self.issued[e])
                    self.ends[e].append(max(self.free[e], self.ends[e][-1]))
            for lf in lp.leaves:
                for fps, writes in ((lf.reads, False), (lf.writes, True)):
                    for f in fps:
                        lo, hi = f.over(prefix, lf.trips)
                        if writes:
                            self.wf[f.level].assign(lo, hi, end)
                            self.af[f.level].assign(lo, hi, end)
                        else:
                            self.af[f.level].raise_to(lo, hi, end)
        self.stats[-1].merge(frame, n / k)
        return end


@dataclass
class _LoopItem:
    path: str
    op: str
    trips: tuple[int, ...]
    body: list[Any]
    leaves: list[_Leaf]  # every leaf inside, at any depth


def _items(instrs: list[Instr], prefix: str, trips: tuple[int, ...], t: Target,
           net: Network | None = None) -> list[Any]:
    out: list[Any] = []
    for i, ins in enumerate(instrs):
        path = f"{prefix}{i}"
        if isinstance(ins, Loop):
            inner = trips + tuple(ins.trips)
            body = _items(ins.body, f"{path}.", inner, t, net)
            leaves = [x for b in body for x in (b.leaves if isinstance(b, _LoopItem) else [b])]
            out.append(_LoopItem(path, ins.op, tuple(ins.trips), body, leaves))
        else:
            out.append(_leaf(ins, path, trips, t, net))
    return out


def _overlap(events: list[Event]) -> float:
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


def simulate(program: Program, target: Target | None = None, *, network: Network | None = None,
             sync: CollectiveSync | None = None) -> TimingReport:
    """Schedule ``program`` on the target's engines and report time, roofline and per-op rows.

    ``network``: the scale-up network collectives are costed on (default: the program's
    ``meta["network"]`` parameters); ``sync``: the cross-chip semaphore of a multi-chip
    simulation (runtime/multichip.py), else every other chip is taken to arrive at a
    collective when this one does.
    """
    t = target or Target.from_json(program.target or {})
    meta = program.meta if isinstance(program.meta, dict) else {}
    net = network or Network.from_json(meta.get("network"))
    sim = _Sim(t, sync)
    modeled = sim.run(_items(program.instructions, "", (), t, net), ())
    stats = sim.stats[0]
    engines = [f"dma{q}" for q in range(t.dma_queues)] + ["ttu", "tvp"]
    if "net" in stats.busy:
        engines.append("net")
    hbm_bytes = sum(stats.op_hbm.values())
    ttu_flops = sum(stats.fmt_flops.values())
    compute = max(sum(f / t.ttu_flops[fmt] for fmt, f in stats.fmt_flops.items()),
                  stats.tvp_ops / t.tvp_flops)
    memory = hbm_bytes / t.hbm_bw
    roofline = max(compute, memory)
    kinds = program.meta.get("ops", {}) if isinstance(program.meta, dict) else {}
    windows = _op_windows(sim.spans, list(sim.op_order), t, modeled)
    ops = []
    for name in sim.op_order:
        busy = stats.op_busy[name]
        w = windows[name]
        lo, hi = w["window"]
        op_compute = max(sum(f / t.ttu_flops[k] for k, f in w["fmt_flops"].items()),
                         w["tvp_ops"] / t.tvp_flops)
        op_memory = w["hbm_bytes"] / t.hbm_bw
        net_busy = busy.get("net", 0.0)
        info = kinds.get(name, {}) if isinstance(kinds, dict) else {}
        ops.append({"name": name, "kind": info.get("kind") if isinstance(info, dict) else None,
                    "time_s": hi - lo, "flops": w["flops"] + w["tvp_ops"],
                    "hbm_bytes": w["hbm_bytes"],
                    "bound": "network" if net_busy > max(op_compute, op_memory) else
                    "compute" if op_compute >= op_memory else "memory",
                    "start_s": lo, "fmt_flops": dict(w["fmt_flops"]), "tvp_ops": w["tvp_ops"],
                    "own_flops": stats.op_flops[name], "own_hbm_bytes": stats.op_hbm[name],
                    "busy_s": {e: busy[e] for e in sorted(busy)}})
    tiles_used = max((math.prod(i.grid) for i in _all_leaves(program.instructions)), default=1)
    peak = {lv: max((b.addr + b.nbytes for b in program.buffers if b.level == lv), default=0)
            for lv in ("csram", "tsram")}
    return _checked(TimingReport(
        target=t.name,
        modeled_time_s=modeled,
        roofline_time_s=roofline,
        roofline_fraction=roofline / modeled if modeled > 0 else 0.0,
        flops=ttu_flops + stats.tvp_ops,
        hbm_bytes=hbm_bytes,
        weight_bytes=sum(b.nbytes for b in program.buffers if b.kind == "const"),
        sram_peak_bytes={"csram": peak["csram"], "tsram": peak["tsram"] * tiles_used},
        engines=[{"name": e, "busy_s": stats.busy.get(e, 0.0),
                  "utilization": stats.busy.get(e, 0.0) / modeled if modeled else 0.0}
                 for e in engines],
        ops=ops,
        ttu_flops=ttu_flops,
        tvp_ops=stats.tvp_ops,
        compute_time_s=compute,
        memory_time_s=memory,
        dma_compute_overlap_s=_overlap(sim.events),
        events=sim.events,
        extra={**_extra_keys(program, modeled, stats), "fmt_flops": dict(stats.fmt_flops)},
    ), t)


def _checked(report: TimingReport, target: Target) -> TimingReport:
    """``report``, after checking it against the chip's physical rates when the
    environment asks for it (``MAIAC_CHECK_RATES=1``: the test suite sets it, so every
    report any test makes is checked)."""
    if os.environ.get("MAIAC_CHECK_RATES") == "1":
        bad = rate_violations(report, target)
        if bad:
            raise MaiacError("timing report exceeds a physical rate: " + "; ".join(bad[:5]))
    return report


def _extra_keys(program: Program, modeled: float, stats: _Stats) -> dict[str, Any]:
    """Report keys beyond DESIGN §5: weights resident in SRAM, HBM busy time, the
    semantics, and tokens/s for prefill/decode programs (meta ``mode``/``tokens``)."""
    resident = [b for b in program.buffers if b.kind == "const" and b.level != "hbm"]
    meta = program.meta if isinstance(program.meta, dict) else {}
    out: dict[str, Any] = {
        "resident_weights": [b.name for b in resident],
        "resident_weight_bytes": sum(b.nbytes for b in resident),
        "hbm_busy_s": stats.busy.get("hbm", 0.0),
        "async": bool(meta.get("async")),
    }
    if meta.get("mode") in ("prefill", "decode") and isinstance(meta.get("tokens"), int):
        out["mode"] = meta["mode"]
        out["tokens"] = meta["tokens"]
        out["tokens_per_s"] = meta["tokens"] / modeled if modeled > 0 else 0.0
    return out


def _all_leaves(instrs: list[Instr]) -> list[Instr]:
    out: list[Instr] = []
    for ins in instrs:
        out.extend(_all_leaves(ins.body) if isinstance(ins, Loop) else [ins])
    return out
