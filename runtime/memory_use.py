"""Bytes in use per memory level over the modeled time of a program (numpy only).

The program file keeps each buffer's address and size but not its lifetime (the memory
planner reuses addresses, so one address range may hold several tensors in turn). The
lifetimes are recovered from the timing model's events: every event names the
instruction it ran, and the instruction's accesses name the bytes it touched. A buffer
*slot* (a distinct ``[addr, addr + nbytes)`` range of one level) is in use from a write
that covers the whole slot (a new tensor lands there) up to the last access before the
next such write; partial writes (a loop filling a block piece by piece) and reads extend
the current use. Inputs and constants (in HBM or resident in SRAM) are in use for the
whole run, HBM outputs from their first write to the end. TSRAM addresses are per tile, so its curve is per tile.

This feeds the memory-over-time plot of ``maiac report --html`` and the SRAM counter
tracks of the Chrome trace (runtime/trace.py).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from maiac.runtime.isa import Access, Collective, Dma, Gather, Instr, Loop, MatMul, Scatter, Vec
from maiac.runtime.memory import access_extent
from maiac.runtime.program import Program

LEVELS = ("hbm", "csram", "tsram")


@dataclass
class LevelUse:
    """A step function: ``bytes[i]`` in use from ``times[i]`` until ``times[i + 1]``."""

    level: str
    times: np.ndarray  # seconds, non-decreasing, starting at 0
    bytes: np.ndarray  # int64, same length
    capacity: int  # bytes of the level (all clusters for CSRAM, per tile for TSRAM)

    @property
    def peak(self) -> int:
        return int(self.bytes.max()) if len(self.bytes) else 0


def _accesses(instr: Instr) -> tuple[list[Access], list[Access]]:
    """(reads, writes) of one leaf instruction."""
    if isinstance(instr, Dma | Collective):
        return [instr.src], [instr.dst]
    if isinstance(instr, Gather):
        return [instr.table, instr.indices], [instr.dst]
    if isinstance(instr, Scatter):
        return [instr.indices, instr.src], [instr.table]
    if isinstance(instr, MatMul):
        reads = [instr.a, instr.b] + ([instr.c] if instr.accumulate else [])
        reads += [s for s in (instr.a_scale, instr.b_scale) if s is not None]
        return reads, [instr.c]
    if isinstance(instr, Vec):
        return list(instr.ins), [instr.out]
    return [], []


def _leaves(instr: Instr, trips: tuple[int, ...]) -> list[tuple[Instr, tuple[int, ...]]]:
    if isinstance(instr, Loop):
        inner = trips + tuple(instr.trips)
        return [x for b in instr.body for x in _leaves(b, inner)]
    return [(instr, trips)]


def _paths(instrs: list[Instr], prefix: str = "", trips: tuple[int, ...] = (),
           out: dict[str, list[tuple[Instr, tuple[int, ...]]]] | None = None
           ) -> dict[str, list[tuple[Instr, tuple[int, ...]]]]:
    """Instruction path as the timing model names it ("3", "3.0.1") -> its leaves."""
    out = {} if out is None else out
    for i, ins in enumerate(instrs):
        path = f"{prefix}{i}"
        out[path] = _leaves(ins, trips)
        if isinstance(ins, Loop):
            _paths(ins.body, f"{path}.", trips + tuple(ins.trips), out)
    return out


class _Slots:
    """The distinct buffer ranges of one level, found by byte overlap."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = sorted(set(ranges))
        self.starts = [lo for lo, _ in self.ranges]
        self.max_len = max((hi - lo for lo, hi in self.ranges), default=0)

    def overlapping(self, lo: int, hi: int) -> list[int]:
        i = bisect.bisect_left(self.starts, lo - self.max_len)
        out = []
        while i < len(self.ranges) and self.ranges[i][0] < hi:
            if self.ranges[i][1] > lo:
                out.append(i)
            i += 1
        return out


def memory_use(program: Program, events: list[Any], end_s: float) -> dict[str, LevelUse]:
    """Per level, the bytes in use over ``[0, end_s]`` from the timing events."""
    target = program.target if isinstance(program.target, dict) else {}
    by_level: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for b in program.buffers:
        if b.nbytes > 0:
            by_level[b.level].append((b.addr, b.addr + b.nbytes))
    slots = {lv: _Slots(by_level.get(lv, [])) for lv in LEVELS}
    paths = _paths(program.instructions)
    # per (level, slot): (start, end, whole-slot write) of every access, in time order
    touches: dict[tuple[str, int], list[tuple[float, float, bool]]] = defaultdict(list)
    for ev in events:
        args = ev.args if hasattr(ev, "args") else ev.get("args", {})
        start = float(ev.start if hasattr(ev, "start") else ev["start_s"])
        dur = float(ev.dur if hasattr(ev, "dur") else ev["dur_s"])
        for instr, trips in paths.get(str(args.get("instr")), ()):
            reads, writes = _accesses(instr)
            for acc, is_write in [(a, False) for a in reads] + [(a, True) for a in writes]:
                if acc.level not in slots:
                    continue
                lo, hi = access_extent(acc, tuple(instr.grid), trips)
                s = slots[acc.level]
                for k in s.overlapping(lo, hi):
                    slo, shi = s.ranges[k]
                    whole = is_write and lo <= slo and hi >= shi
                    touches[(acc.level, k)].append((start, start + dur, whole))
    # constants (in HBM, or resident in SRAM across calls) and inputs are there for the
    # whole run; outputs stay once written
    always = {(b.level, b.addr, b.addr + b.nbytes): b.kind for b in program.buffers
              if b.kind in ("input", "const") or (b.level == "hbm" and b.kind == "output")}
    capacity = {"hbm": int(target.get("hbm_bytes") or 0),
                # CSRAM addresses span every cluster's CSRAM (as the planner's capacity)
                "csram": int(target.get("csram_bytes") or 0) * int(target.get("n_clusters") or 1),
                "tsram": int(target.get("tsram_bytes") or 0)}
    out: dict[str, LevelUse] = {}
    for lv in LEVELS:
        s = slots[lv]
        # (time, +1 / -1, slot): a slot's use starts or ends
        changes: list[tuple[float, int, int]] = []
        for k, (lo, hi) in enumerate(s.ranges):
            kind = always.get((lv, lo, hi))
            ts = sorted(touches.get((lv, k), []))
            if kind in ("input", "const"):
                spans = [(0.0, end_s)]
            elif kind == "output":
                spans = [(ts[0][0] if ts else 0.0, end_s)]
            else:
                spans = []
                for t0, t1, whole in ts:
                    if not spans or whole:
                        spans.append((t0, t1))
                    else:
                        spans[-1] = (spans[-1][0], max(spans[-1][1], t1))
            for a, b in spans:
                if b <= a and b < end_s:  # an instant: never in use for any time
                    continue
                changes.append((a, 1, k))
                if b < end_s:  # what is still there at the end stays on the curve
                    changes.append((max(a, b), -1, k))
        out[lv] = LevelUse(lv, *_union_curve(s, changes, end_s), capacity[lv])
    return out


def _union_curve(s: _Slots, changes: list[tuple[float, int, int]], end_s: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Bytes covered by the slots in use, over time. Slot ranges of different buffers
    can overlap (the planner reuses addresses), so the bytes of the union are counted,
    not the sum of the slots: the curve never exceeds the level's highest address."""
    edges = np.unique(np.asarray([x for r in s.ranges for x in r], dtype=np.int64))
    seg_len = np.diff(edges)
    count = np.zeros(len(seg_len), dtype=np.int64)
    seg = [(int(np.searchsorted(edges, lo)), int(np.searchsorted(edges, hi)))
           for lo, hi in s.ranges]
    times, level = [0.0], [0]
    covered = 0
    for t, d, k in sorted(changes, key=lambda c: (c[0], c[1])):
        a, b = seg[k]
        c = count[a:b]
        if d > 0:
            covered += int(seg_len[a:b][c == 0].sum())
            c += 1
        else:
            c -= 1
            covered -= int(seg_len[a:b][c == 0].sum())
        if t == times[-1]:
            level[-1] = covered
        else:
            times.append(t)
            level.append(covered)
    times.append(max(end_s, times[-1]))
    level.append(covered)
    return np.asarray(times, dtype=np.float64), np.asarray(level, dtype=np.int64)
