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
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from maiac.runtime import isa
from maiac.runtime.isa import Access, Dma, Gather, Instr, Loop, MatMul, Vec
from maiac.runtime.memory import np_dtype

WRITTEN, READ_FIRST, CLOBBERED = 1, 2, 4

Independent = Callable[[Instr, tuple[int, ...], tuple[int, ...]], bool]


def _reads_writes(instr: Instr) -> tuple[list[Access], Access]:
    if isinstance(instr, Dma):
        return [instr.src], instr.dst
    if isinstance(instr, Gather):
        return [instr.table, instr.indices], instr.dst
    if isinstance(instr, MatMul):
        reads = [instr.a, instr.b] + ([instr.c] if instr.accumulate else [])
        return reads + [acc for _, acc in instr.scale_accesses()], instr.c
    assert isinstance(instr, Vec)
    return list(instr.ins), instr.out


class _Shadow:
    def __init__(self, ends: dict[str, int], n_tiles: int) -> None:
        self.mem = {lv: np.zeros((n_tiles, n) if lv == "tsram" else n, np.uint8)
                    for lv, n in ends.items()}

    def view(self, acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> np.ndarray:
        """Byte-level view ``(*trips, *grid, *block, itemsize)``; stride-0 axes (the same
        bytes again) collapsed to length 1."""
        isz = np_dtype(acc.dtype).itemsize
        mem = self.mem[acc.level]
        if acc.level == "tsram":
            gstr = tuple(s * mem.strides[0] for s in isa.contiguous_strides(grid))
        else:
            gstr = tuple(s * isz for s in acc.tile_strides) or (0,) * len(grid)
        lstr = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
        shape = trips + grid + tuple(acc.shape) + (isz,)
        strides = lstr + gstr + tuple(s * isz for s in acc.strides) + (1,)
        keep = len(trips)  # loop axes stay: they are indexed by the iteration
        shape = shape[:keep] + tuple(1 if st == 0 else n for n, st in
                                     zip(shape[keep:], strides[keep:], strict=True))
        return np.ndarray(shape, np.uint8, buffer=mem, offset=acc.addr, strides=strides)

    def whole(self, level: str, lo: int, hi: int) -> np.ndarray:
        mem = self.mem[level]
        return mem[:, lo:hi] if level == "tsram" else mem[lo:hi]


def _read(v: np.ndarray) -> None:
    first = np.bitwise_and(np.invert(v), WRITTEN)
    np.left_shift(first, 1, out=first)  # WRITTEN (1) -> READ_FIRST (2)
    np.bitwise_or(v, first, out=v)


def _write(v: np.ndarray) -> None:
    np.bitwise_or(v, WRITTEN | CLOBBERED, out=v)


def first_reads(program: Any, ends: dict[str, int], n_tiles: int,
                independent: Independent) -> tuple[dict[str, list[tuple[int, int]]], set[str]]:
    """``({level: [(lo, hi), ...]}, clobbered constant names)`` of ``program``.

    The ranges cover every byte some tile reads before this run wrote it (for TSRAM,
    the union over tiles); ``independent(instr, outer, inner)`` is the interpreter's
    test for running a single-instruction loop as one call (then all its reads happen
    before its writes).
    """
    sh = _Shadow(ends, n_tiles)
    loaded = [b for b in program.buffers if b.kind == "const"]
    loaded += [program.buffer(spec.buffer) for spec in program.inputs]
    for b in loaded:  # hold this run's data before the first instruction
        v = sh.whole(b.level, b.addr, b.addr + b.nbytes)
        np.bitwise_or(v, WRITTEN, out=v)

    def leaf(instr: Instr, trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        grid = tuple(instr.grid)
        reads, out = _reads_writes(instr)
        for acc in reads:
            _read(sh.view(acc, grid, trips)[it])
        _write(sh.view(out, grid, trips)[it])

    def walk(instrs: list[Instr], trips: tuple[int, ...], it: tuple[int, ...]) -> None:
        for ins in instrs:
            if not isinstance(ins, Loop):
                leaf(ins, trips, it)
                continue
            inner = trips + tuple(ins.trips)
            if len(ins.body) == 1 and independent(ins.body[0], trips, inner):
                leaf(ins.body[0], inner, it)  # all iterations at once, as the interpreter
                continue
            for sub in itertools.product(*map(range, ins.trips)):
                walk(ins.body, inner, it + sub)

    walk(program.instructions, (), ())
    for spec in program.outputs:  # read back after the run
        b = program.buffer(spec.buffer)
        _read(sh.whole(b.level, b.addr, b.addr + b.nbytes))
    ranges = {}
    for level, mem in sh.mem.items():
        need = np.bitwise_and(mem, READ_FIRST).astype(bool)
        if need.ndim == 2:
            need = need.any(axis=0)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], need, [False]]).astype(np.int8)))
        ranges[level] = [(int(lo), int(hi)) for lo, hi in zip(edges[::2], edges[1::2],
                                                               strict=True)]
    clobbered = {b.name for b in program.buffers if b.kind == "const"
                 and np.any(np.bitwise_and(sh.whole(b.level, b.addr, b.addr + b.nbytes),
                                           CLOBBERED))}
    return ranges, clobbered


def total_bytes(ranges: dict[str, list[tuple[int, int]]]) -> int:
    """Bytes covered by ``first_reads`` ranges (per tile for TSRAM)."""
    return sum(hi - lo for rs in ranges.values() for lo, hi in rs)

