"""Which bytes a run reads before it writes them: what the interpreter must poison.

Before each run the interpreter fills memory a run could read stale with 0xFF bytes
(NaN / -1), so a read of data that was never written gives wrong numbers, not a
leftover right answer from the previous run. Only bytes that some instruction (or the
final read of an output) reads before any instruction of the same run wrote them can
carry such a leftover; every other byte is overwritten before it is used. Addresses do
not depend on data (a gather counts as reading its whole table), so one symbolic pass
over the program at load time finds those bytes exactly, per byte and per tile.

The pass follows the program in the interpreter's order on a shadow of every memory
level (one byte per byte): bit ``WRITTEN`` once this run wrote it (inputs and constants
count as written), ``READ_FIRST`` if it was read while not yet written, ``CLOBBERED`` if
an instruction wrote it (a constant with such a byte must be rewritten every run).

The work is bounded whatever the trip counts say (a `.maia` file is untrusted input):
loops are walked one iteration at a time only while the walk stays within
``WALK_BUDGET`` instruction visits. A loop past that is *summarized*: each
instruction of its body reads, then writes, its bytes over all remaining iterations at
once, as the interpreter runs an independent loop. That over-approximates the bytes read
first (a read of what an earlier iteration wrote counts as a first read), which only
poisons more bytes than needed, and writes exactly the bytes the loop writes. A summary
view larger than ``SUMMARY_VIEW_LIMIT`` elements falls back to the access's byte extent:
every unwritten byte in it counts as read first, and for writes it is marked clobbered
but not written (both on the safe side). So the cost is closed-form in the trip counts.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from maiac.runtime import isa
from maiac.runtime.isa import (
    Access,
    Collective,
    Dma,
    Gather,
    Instr,
    Loop,
    MatMul,
    Scatter,
    Sync,
    Vec,
)
from maiac.runtime.memory import access_extent, np_dtype
from maiac.runtime.tsram_layout import TsramLayout

WRITTEN, READ_FIRST, CLOBBERED = 1, 2, 4

WALK_BUDGET = 1 << 17
"""Instruction visits walked iteration by iteration before loops are summarized."""

SUMMARY_VIEW_LIMIT = 1 << 26
"""Elements of an all-iterations view above which a summary uses the byte extent."""

Independent = Callable[[Instr, tuple[int, ...], tuple[int, ...]], bool]


def _reads_writes(instr: Instr) -> tuple[list[Access], Access]:
    if isinstance(instr, Collective) and instr.collective == "recv":
        return [], instr.dst  # src is dst, not read
    if isinstance(instr, Dma | Collective):
        return [instr.src], instr.dst
    if isinstance(instr, Gather):
        return [instr.table, instr.indices], instr.dst
    if isinstance(instr, Scatter):
        return [instr.indices, instr.src], instr.table
    if isinstance(instr, MatMul):
        reads = [instr.a, instr.b] + ([instr.c] if instr.accumulate else [])
        return reads + [acc for _, acc in instr.scale_accesses()], instr.c
    assert isinstance(instr, Vec)
    return list(instr.ins), instr.out


class _Shadow:
    def __init__(self, mem: dict[str, np.ndarray], layout: TsramLayout | None) -> None:
        self.mem = mem
        self.layout = layout

    def view(self, acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> np.ndarray:
        """Byte-level view ``(*trips, *grid, *block, itemsize)``; stride-0 axes (the same
        bytes again) collapsed to length 1."""
        isz = np_dtype(acc.dtype).itemsize
        mem = self.mem[acc.level]
        offset = acc.addr
        if acc.level == "tsram":
            row = mem.strides[0]
            if self.layout is not None:
                offset, row = self.layout.locate(acc.addr) if math.prod(acc.shape) else (0, 0)
            gstr = tuple(s * row for s in isa.contiguous_strides(grid))
        else:
            gstr = tuple(s * isz for s in acc.tile_strides) or (0,) * len(grid)
        lstr = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
        shape = trips + grid + tuple(acc.shape) + (isz,)
        strides = lstr + gstr + tuple(s * isz for s in acc.strides) + (1,)
        keep = len(trips)  # loop axes stay: they are indexed by the iteration
        shape = shape[:keep] + tuple(1 if st == 0 else n for n, st in
                                     zip(shape[keep:], strides[keep:], strict=True))
        # trailing axes that are one contiguous run of bytes become one axis
        k, run = len(shape), 1
        while k > keep and (shape[k - 1] == 1 or strides[k - 1] == run):
            run *= shape[k - 1]
            k -= 1
        return np.ndarray(shape[:k] + (run,), np.uint8, buffer=mem, offset=offset,
                          strides=strides[:k] + (1,))

    def whole(self, level: str, lo: int, hi: int) -> np.ndarray:
        mem = self.mem[level]
        if level != "tsram":
            return mem[lo:hi]
        return mem[:, lo:hi] if self.layout is None else self.layout.rows(mem, lo, hi)

    def addresses(self, level: str, pos: np.ndarray) -> np.ndarray:
        """Per-tile addresses of byte offsets ``pos`` into ``level``'s array."""
        mem = self.mem[level]
        if level != "tsram":
            return pos
        return pos % mem.strides[0] if self.layout is None else self.layout.addresses(pos)


def _write(v: np.ndarray) -> None:
    np.bitwise_or(v, WRITTEN | CLOBBERED, out=v)


def first_reads(program: Any, mem: dict[str, np.ndarray], independent: Independent,
                work: dict[str, int] | None = None, layout: TsramLayout | None = None
                ) -> tuple[dict[str, list[tuple[int, int]]], set[str]]:
    """``({level: [(lo, hi), ...]}, clobbered constant names)`` of ``program``.

    The ranges cover every byte some tile reads before this run wrote it (for TSRAM,
    the union over tiles); ``independent(instr, outer, inner)`` is the interpreter's
    test for running a single-instruction loop as one call (then all its reads happen
    before its writes). ``mem`` (level -> zero-filled byte array, TSRAM ``(tiles,
    bytes)``, or flat in the segments of ``layout``) serves as the shadow and is left holding flags: the machine passes its own
    memory before writing the constants (a byte no run reads before writing may hold
    anything; every other one is poisoned before each run), which also pays the first
    touch of its pages here rather than in the first run. ``work``, if given, receives
    the walk's counters: ``visits`` (instructions walked one iteration at a time) and
    ``summarized`` (loops summarized in closed form).
    """
    sh = _Shadow(mem, layout)
    # Constants hold their bytes whenever a run starts (written once, or rewritten if
    # clobbered), so no byte of theirs is ever read first: they are not flagged (that
    # would make every weight page resident before the machine writes the weights, so
    # its build held the weights twice), a read inside one is skipped and the ranges
    # found are cut by them. Inputs are flagged as this run's data.
    consts: dict[str, list[tuple[int, int]]] = {lv: [] for lv in sh.mem}
    for b in program.buffers:
        if b.kind == "const" and b.nbytes:
            consts[b.level].append((b.addr, b.addr + b.nbytes))
    const_lo = {lv: sorted(rs) for lv, rs in consts.items()}
    const_starts = {lv: [lo for lo, _ in rs] for lv, rs in const_lo.items()}
    for b in (program.buffer(spec.buffer) for spec in program.inputs):
        v = sh.whole(b.level, b.addr, b.addr + b.nbytes)
        np.bitwise_or(v, WRITTEN, out=v)

    def in_constant(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> bool:
        """Whether every byte ``acc`` reads over all tiles and iterations is one constant's."""
        lo, hi = access_extent(acc, grid, trips)
        i = bisect.bisect_right(const_starts[acc.level], lo) - 1
        return i >= 0 and hi <= const_lo[acc.level][i][1]
    first: dict[str, list[np.ndarray]] = {lv: [] for lv in sh.mem}
    written: dict[str, list[tuple[int, int]]] = {lv: [] for lv in sh.mem}

    def read(level: str, v: np.ndarray) -> None:
        if v.size == 0 or np.bitwise_and.reduce(v, axis=None) & WRITTEN:
            return  # the common case: every byte already written this run
        mem = sh.mem[level]
        idx = np.nonzero(np.bitwise_and(v, WRITTEN) == 0)
        off = v.__array_interface__["data"][0] - mem.__array_interface__["data"][0]
        pos = off + sum(i.astype(np.int64) * st for i, st in zip(idx, v.strides, strict=True))
        first[level].append(np.unique(sh.addresses(level, pos)))
        np.bitwise_or(v, READ_FIRST, out=v, where=np.bitwise_and(v, WRITTEN) == 0)

    def leaf(instr: Instr, trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        if isinstance(instr, Sync):  # a barrier touches no memory
            return
        grid = tuple(instr.grid)
        reads, out = _reads_writes(instr)
        for acc in reads:
            if not in_constant(acc, grid, trips):
                read(acc.level, sh.view(acc, grid, trips)[it])
        _write(sh.view(out, grid, trips)[it])
        written[out.level].append(access_extent(out, grid, trips))

    def summary_view(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...],
                     it: tuple[int, ...]) -> np.ndarray | None:
        """The bytes of ``acc`` over all iterations after ``it`` (None if too large)."""
        v = sh.view(acc, grid, trips)[it]
        loops = len(trips) - len(it)
        # a loop axis with stride 0 visits the same bytes again: one copy is enough
        v = v[tuple(slice(0, 1) if st == 0 else slice(None) for st in v.strides[:loops])]
        return v if v.size <= SUMMARY_VIEW_LIMIT else None

    def summarize_leaf(instr: Instr, trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        if isinstance(instr, Sync):
            return
        grid = tuple(instr.grid)
        reads, out = _reads_writes(instr)
        for acc in reads:
            if in_constant(acc, grid, trips):
                continue
            v = summary_view(acc, grid, trips, it)
            read(acc.level, v if v is not None
                 else sh.whole(acc.level, *access_extent(acc, grid, trips)))
        v = summary_view(out, grid, trips, it)
        lo, hi = access_extent(out, grid, trips)
        if v is not None:
            _write(v)
        else:  # clobbered but not known to be written: later reads count as first reads
            whole = sh.whole(out.level, lo, hi)
            np.bitwise_or(whole, CLOBBERED, out=whole)
        written[out.level].append((lo, hi))

    def summarize(instrs: list[Instr], trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        for ins in instrs:
            if isinstance(ins, Loop):
                summarize(ins.body, trips + tuple(ins.trips), it)
            else:
                summarize_leaf(ins, trips, it)

    budget = [WALK_BUDGET]

    def visits(instrs: list[Instr], trips: tuple[int, ...]) -> int:
        """Instruction visits an exact walk of ``instrs`` costs (capped past the budget)."""
        total = 0
        for ins in instrs:
            if not isinstance(ins, Loop):
                total += 1
                continue
            inner = trips + tuple(ins.trips)
            if len(ins.body) == 1 and independent(ins.body[0], trips, inner):
                total += 1
                continue
            n = math.prod(ins.trips)
            total += n * visits(ins.body, inner) if n <= budget[0] else budget[0] + 1
            if total > budget[0]:
                return budget[0] + 1
        return total

    def walk(instrs: list[Instr], trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        for ins in instrs:
            if not isinstance(ins, Loop):
                leaf(ins, trips, it)
                budget[0] -= 1
                continue
            inner = trips + tuple(ins.trips)
            if len(ins.body) == 1 and independent(ins.body[0], trips, inner):
                leaf(ins.body[0], inner, it)  # all iterations at once, as the interpreter
                budget[0] -= 1
                continue
            if math.prod(ins.trips) * visits(ins.body, inner) > budget[0]:
                summarize(ins.body, inner, it)
                summarized[0] += 1
                continue
            for sub in itertools.product(*map(range, ins.trips)):
                walk(ins.body, inner, it + sub)

    summarized = [0]
    walk(program.instructions, (), ())
    if work is not None:
        work.update(visits=WALK_BUDGET - budget[0], summarized=summarized[0])
    for spec in program.outputs:  # read back after the run
        b = program.buffer(spec.buffer)
        read(b.level, sh.whole(b.level, b.addr, b.addr + b.nbytes))
    ranges = {}
    for level, found in first.items():
        pos = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        ranges[level] = _cut([(int(r[0]), int(r[-1]) + 1) for r in np.split(pos, breaks)
                              if r.size], _merged(const_lo[level]))

    def clobbered(b: Any) -> bool:
        lo, hi = b.addr, b.addr + b.nbytes
        if not any(wlo < hi and lo < whi for wlo, whi in written[b.level]):
            return False
        return bool(np.any(np.bitwise_and(sh.whole(b.level, lo, hi), CLOBBERED)))
    return ranges, {b.name for b in program.buffers if b.kind == "const" and clobbered(b)}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``[lo, hi)`` ranges with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _cut(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]
         ) -> list[tuple[int, int]]:
    """``ranges`` (sorted, disjoint) less the bytes of ``holes`` (sorted, disjoint)."""
    out = []
    for lo, hi in ranges:
        i = bisect.bisect_right(holes, (lo, math.inf)) - 1  # the hole starting at or before lo
        i = max(i, 0)
        while lo < hi and i < len(holes) and holes[i][0] < hi:
            hlo, hhi = holes[i]
            if hhi <= lo:
                i += 1
                continue
            if hlo > lo:
                out.append((lo, hlo))
            lo = max(lo, hhi)
            i += 1
        if lo < hi:
            out.append((lo, hi))
    return out


def total_bytes(ranges: dict[str, list[tuple[int, int]]]) -> int:
    """Bytes covered by ``first_reads`` ranges (per tile for TSRAM)."""
    return sum(hi - lo for rs in ranges.values() for lo, hi in rs)

