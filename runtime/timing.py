"""The Maia 200 timing model: how long a program would take, and where the time goes.

Needs no data (works on shape-only programs). Each engine — every DMA queue
(``dma0`` ..), the ``ttu`` and the ``tvp`` — has a timeline. An instruction starts when
its engine is free and every earlier instruction it depends on has finished; it then
occupies its engine for its cost (runtime/timing_costs.py: bytes / bandwidth of the
levels a DMA touches, FLOPs / peak of a matmul's format, TVP ops / rate). What it
reports, and the check against physical rates, is runtime/timing_report.py.

Dependencies are data hazards (RAW, WAR, WAW) between the byte ranges instructions
touch on each level (TSRAM addresses are shared by all tiles, so treated as one
range). So the DMA of the next op overlaps the compute of this one wherever the
program's buffers allow it (double buffering, prefetch into separate buffers).

A program pays ``launch_latency_s`` once: no engine starts before it (the launch and
the completion of the program, fitted to the paper's small memory-bound GEMMs), so the
first op's window holds it.

Loops are costed in closed form: the first ``SIM_ITERS`` iterations are scheduled
exactly, then the steady-state period (from the last two simulated iterations, and never
shorter than any engine's busy time per iteration) is extrapolated over the remaining
ones; busy times and per-op totals scale by ``trips / SIM_ITERS``. A nest of loops
multiplies those iterations (``SIM_ITERS ** depth`` visits of its innermost body), so
when a program's loops would cost more than ``VISIT_BUDGET`` instruction visits, the
innermost loop levels schedule fewer iterations (2, then 1, whose period is that
iteration's span: no overlap between iterations) until it fits (``_plan_iterations``). The work is therefore
bounded by ``max(VISIT_BUDGET, instructions)`` whatever the trip counts and the depth;
the compiler's programs (loops 2 deep) stay far inside the budget and are scheduled
as before. ``TimingReport.visits`` counts the visits a simulation made.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from maiac.runtime.isa import Instr, Loop
from maiac.runtime.memory import StepMap
from maiac.runtime.network import Network
from maiac.runtime.program import Program
from maiac.runtime.target import Target
from maiac.runtime.timing_costs import (  # noqa: F401  (re-exported: the tilers' cost model)
    ROW_INPUT_FNS,
    VEC_OPS,
    Leaf,
    leaf_cost,
    ttu_format,
    ttu_format_key,
)
from maiac.runtime.timing_report import (  # noqa: F401  (re-exported)
    Event,
    Span,
    TimingReport,
    checked,
    dma_compute_overlap,
    op_windows,
    rate_violations,
)

SIM_ITERS = 4
VISIT_BUDGET = 1 << 20
"""Instruction visits the scheduler may make before inner loop levels schedule fewer
iterations (a Llama-3-8B prefill program makes ~1,200 per layer)."""

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


class _BwTimeline:
    """When a shared bandwidth is taken: sorted, disjoint busy intervals. A transfer
    takes the free time at or after it may start, in time order, so a DMA that is ready
    early is not queued behind one simulated before it that starts later (program order is
    not time order across queues). A transfer longer than the first gap fills the gaps
    between transfers booked before it, the way concurrent DMA streams interleave their
    bursts at the HBM controller, instead of waiting for one gap as long as all of it
    (which made a 9 MB store slide past a stream of short weight loads and then block the
    next one for its whole length). Busy intervals never overlap: no two transfers share
    the bandwidth at once, so no modeled rate exceeds the sustained one.

    One timeline per resource every DMA queue shares (``_Sim.bw``): HBM (one memory
    system behind all queues), the CSRAM (``csram_bw`` is the 4 clusters' aggregate, and
    the model does not track which cluster's banks an address lives in, so all queues
    share one aggregate) and the NoC (``noc_bw`` is the aggregate into and out of the
    tiles: a DMA on a fraction of the tiles is capped at that share by its own duration
    and books ``bytes / noc_bw`` of the aggregate, so DMAs on disjoint tiles still run
    side by side). TSRAM is per tile, not shared across tiles; its traffic from other
    levels crosses the NoC and is booked there."""

    KEEP = 256  # intervals kept; older ones are merged into one busy prefix

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def book(self, t0: float, dur: float) -> tuple[float, float]:
        """(first, last): the transfer's ``dur`` seconds of HBM time, taken from the free
        time at or after ``t0`` (gaps first), begin at ``first`` and end at ``last``."""
        starts, ends = self.starts, self.ends
        lo = i = bisect.bisect_right(ends, t0)  # intervals ending after t0
        t, left = t0, dur
        pieces: list[tuple[float, float]] = []
        while left > 0:
            gap_end = starts[i] if i < len(starts) else math.inf
            if gap_end - t >= left:
                pieces.append((t, t + left))
                break
            if gap_end > t:
                pieces.append((t, gap_end))
                left -= gap_end - t
            t = max(t, ends[i])
            i += 1
        merged: list[tuple[float, float]] = []
        for a, b in sorted(pieces + list(zip(starts[lo:i], ends[lo:i], strict=True))):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        starts[lo:i] = [a for a, _ in merged]
        ends[lo:i] = [b for _, b in merged]
        if len(starts) > 2 * self.KEEP:  # old history: one solid block (conservative)
            cut = len(starts) - self.KEEP
            self.starts[:cut] = [starts[0]]
            self.ends[:cut] = [ends[cut - 1]]
        return pieces[0][0], pieces[-1][1]

    def shift_after(self, t: float, extra: float) -> None:
        """A loop's skipped iterations: bookings ending after ``t`` (the last simulated
        iteration's) move ``extra`` later, and the stretch they leave counts as busy."""
        i = bisect.bisect_right(self.ends, t)
        if i == len(self.starts):
            return
        lo = self.starts[i]
        moved = [(a + extra, b + extra) for a, b in zip(self.starts[i:], self.ends[i:],
                                                        strict=True)]
        del self.starts[i:], self.ends[i:]
        self.starts.append(lo)
        self.ends.append(lo + extra)
        for a, b in moved:
            if a <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], b)
            else:
                self.starts.append(a)
                self.ends.append(b)


SHARED = ("hbm", "csram", "noc")  # resources booked on a _BwTimeline (``Leaf.<r>_time``)


class _Sim:
    def __init__(self, target: Target, sync: CollectiveSync | None = None) -> None:
        self.t = target
        self.sync = sync
        # the program's launch: no engine starts an instruction before it (a fixed cost
        # per program, ``launch_latency_s``, so a 20 us GEMM pays it, a 10 ms decode not)
        launch = target.launch_latency_s
        self.free: dict[str, float] = defaultdict(lambda: launch)
        self.wf = defaultdict(_RangeMax)  # level -> finish of the last write
        self.af = defaultdict(_RangeMax)  # level -> finish of the last access of any kind
        self.events: list[Event] = []
        self.last_end: dict[int, float] = {}  # id(leaf) -> finish of its latest run
        self.bw = {r: _BwTimeline() for r in SHARED}
        self.visits = 0  # leaf schedulings: the work counter the budget bounds
        self.spans: list[Span] = []
        self.stats = [_Stats()]
        self.op_order: dict[str, None] = {}
        # semaphores: instructions issued per engine, and the finish time of each
        # (``seqs[e][i]`` instructions issued when the one finishing at ``ends[e][i]`` ended)
        self.issued: dict[str, int] = defaultdict(int)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.ends: dict[str, list[float]] = defaultdict(list)
        self.event_of: dict[tuple[str, int], int] = {}  # (engine, seq) -> index in events

    def _end_of(self, engine: str, seq: int) -> float:
        """When instruction number ``seq`` (1-based) of ``engine`` finished."""
        seqs = self.seqs[engine]
        i = min(bisect.bisect_left(seqs, seq), len(seqs) - 1)
        return self.ends[engine][i] if i >= 0 else 0.0

    def leaf(self, lf: Leaf, it: tuple[int, ...]) -> float:
        self.visits += 1
        start = self.free[lf.engine]
        waited: list[int] = []
        for e, k in lf.waits:
            seq = self.issued[e] - k
            if seq >= 1:
                start = max(start, self._end_of(e, seq))
                if (e, seq) in self.event_of:  # not inside an extrapolated loop tail
                    waited.append(self.event_of[(e, seq)])
        spans_r = [(f.level, *f.at(it)) for f in lf.reads]
        spans_w = [(f.level, *f.at(it)) for f in lf.writes]
        for lv, lo, hi in spans_r:
            start = max(start, self.wf[lv].query(lo, hi))
        for lv, lo, hi in spans_w:
            start = max(start, self.af[lv].query(lo, hi))
        if self.sync is not None and lf.engine == "net":
            start = self.sync(lf.path, start)
        end = start + lf.dur
        slot = slot_end = end
        slots: dict[str, tuple[float, float]] = {}
        for res, need in (("hbm", lf.hbm_time), ("csram", lf.csram_time),
                          ("noc", lf.noc_time)):
            if need > 0:
                # shared by all DMA queues: the transfer takes its slot after the queue's
                # fixed latency, once earlier transfers on that resource are through
                slots[res] = self.bw[res].book(start + self.t.dma_latency_s, need)
                self.stats[-1].busy[res] += need
                end = max(end, slots[res][1])
        if "hbm" in slots:
            slot, slot_end = slots["hbm"]
        # what ran when, for the per-op windows: compute over [start, end], HBM bytes over
        # the transfer's slot
        name = lf.op or lf.kind
        self.spans.append(Span(name, start, end, lf.flops if lf.fmt else 0.0,
                                lf.flops if lf.engine == "tvp" else 0.0, lf.fmt,
                                slot, slot_end, lf.hbm_bytes))
        self.free[lf.engine] = end
        self.last_end[id(lf)] = end
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
        if lf.csram_bytes:
            args["csram_bytes"] = lf.csram_bytes
        if lf.noc_bytes:
            args["noc_bytes"] = lf.noc_bytes
        for res, sl in slots.items():  # when its bytes moved (rate_violations checks them)
            args[f"{res}_slot"] = sl
        if it:
            args["iteration"] = list(it)
        self.event_of[(lf.engine, self.issued[lf.engine])] = len(self.events)
        self.events.append(Event(lf.engine, name, start, end - start, lf.kind, args,
                                 tuple(waited)))
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
        k = min(n, lp.sim_iters)
        self.stats.append(_Stats())
        ends: list[float] = []
        before = dict(self.issued)
        first_event = len(self.events)
        for inner in _first_iterations(lp.trips, k):
            before = dict(self.issued)
            ends.append(max(self.run(lp.body, prefix + inner), ends[-1] if ends else 0.0))
        frame = self.stats.pop()
        end = ends[-1]
        if n > k:
            if k >= 2:
                period = (ends[-1] - ends[-3]) / 2 if k >= 3 else ends[-1] - ends[0]
            else:  # one iteration scheduled: its own span (no overlap between iterations)
                period = end - min((e.start for e in self.events[first_event:]), default=end)
            # no engine (nor a shared bandwidth) can do an iteration's work faster
            # than its busy time
            period = max([period, *(busy / k for busy in frame.busy.values())])
            extra = (n - k) * period
            scale = (n - k) / k
            for op, fl in frame.op_flops.items():
                ttu = sum(f for (o, _), f in frame.op_fmt_flops.items() if o == op)
                self.spans.append(Span(op, end, end + extra, ttu * scale, (fl - ttu) * scale,
                                        "", end, end + extra, frame.op_hbm[op] * scale,
                                        fmt_flops={f: v * scale for (o, f), v in
                                                   frame.op_fmt_flops.items() if o == op}))
            for e, busy in frame.busy.items():
                if e in self.bw:  # not an engine: no track of its own
                    self.bw[e].shift_after(ends[-2] if k >= 2 else ends[0] - period, extra)
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
            # the machine leaves the loop as it left the last simulated iteration, shifted
            # by the skipped iterations: each engine's last instructions, and each leaf's
            # bytes, finish ``extra`` later than they did then (not all at the loop's end,
            # which would drain the pipeline into the next job or kernel)
            for e, count in list(self.issued.items()):
                per_iter = count - before.get(e, 0)
                if per_iter:
                    skipped = (n - k) * per_iter
                    seqs, ends_e = self.seqs[e], self.ends[e]
                    # seqs ascend: the last iteration's entries are a suffix (a scan of
                    # the whole list per loop made deep nests quadratic)
                    i = bisect.bisect_right(seqs, before.get(e, 0))
                    last = list(zip(seqs[i:], ends_e[i:], strict=True))
                    self.issued[e] += skipped
                    top = ends_e[-1]
                    for q, f in last:
                        top = max(top, f + extra)
                        seqs.append(q + skipped)
                        ends_e.append(top)
            for lf in lp.leaves:
                lf_end = self.last_end.get(id(lf), end - extra) + extra
                self.last_end[id(lf)] = lf_end
                for fps, writes in ((lf.reads, False), (lf.writes, True)):
                    for f in fps:
                        lo, hi = f.over(prefix, lf.trips)
                        if writes:
                            self.wf[f.level].assign(lo, hi, lf_end)
                            self.af[f.level].assign(lo, hi, lf_end)
                        else:
                            self.af[f.level].raise_to(lo, hi, lf_end)
        self.stats[-1].merge(frame, n / k)
        return end


def _first_iterations(trips: tuple[int, ...], k: int) -> Iterator[tuple[int, ...]]:
    """The first ``k`` index tuples of a loop over ``trips`` (last axis fastest), without
    building the ranges (``itertools.product`` would hold a 10^9-long one in memory)."""
    for flat in range(k):
        idx = []
        for n in reversed(trips):
            flat, i = divmod(flat, n)
            idx.append(i)
        yield tuple(reversed(idx))


@dataclass
class _LoopItem:
    path: str
    op: str
    trips: tuple[int, ...]
    body: list[Any]
    leaves: list[Leaf]  # every leaf inside, at any depth
    sim_iters: int = SIM_ITERS  # iterations scheduled before extrapolating (_plan_iterations)


def _depth(items: list[Any]) -> int:
    """Loop levels of the deepest nest in ``items``."""
    return max((1 + _depth(x.body) for x in items if isinstance(x, _LoopItem)), default=0)


def _visits(items: list[Any], iters: list[int], cap: int, depth: int = 0) -> int:
    """Leaf visits of scheduling ``items`` when loops at depth ``d`` schedule ``iters[d]``
    iterations (any value past ``cap`` is reported as ``cap + 1``)."""
    total = 0
    for x in items:
        if isinstance(x, _LoopItem):
            total += min(math.prod(x.trips), iters[depth]) * _visits(x.body, iters, cap,
                                                                      depth + 1)
        else:
            total += 1
        if total > cap:
            return cap + 1
    return total


def _plan_iterations(items: list[Any], budget: int) -> list[int]:
    """Iterations each loop level schedules: ``SIM_ITERS`` everywhere when the program's
    visits fit ``budget``; else the innermost levels drop to 2, then 1, one level at a
    time, until they fit (or every level schedules one iteration: visits = leaves).
    Sets ``sim_iters`` of every loop item; returns the per-depth iterations."""
    iters = [SIM_ITERS] * _depth(items)
    level = len(iters) - 1
    while level >= 0 and _visits(items, iters, budget) > budget:
        iters[level] = 2 if iters[level] > 2 else 1
        if iters[level] == 1:
            level -= 1

    def assign(xs: list[Any], depth: int) -> None:
        for x in xs:
            if isinstance(x, _LoopItem):
                x.sim_iters = iters[depth]
                assign(x.body, depth + 1)
    assign(items, 0)
    return iters


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
            out.append(leaf_cost(ins, path, trips, t, net))
    return out


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
    items = _items(program.instructions, "", (), t, net)
    _plan_iterations(items, VISIT_BUDGET)
    modeled = sim.run(items, ())
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
    windows = op_windows(sim.spans, list(sim.op_order), t, modeled)
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
    return checked(TimingReport(
        target=t.name,
        fit=t.fit_statement(),
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
        dma_compute_overlap_s=dma_compute_overlap(sim.events),
        events=sim.events,
        program=program,
        visits=sim.visits,
        extra={**_extra_keys(program, modeled, stats), "fmt_flops": dict(stats.fmt_flops)},
    ), t)


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
