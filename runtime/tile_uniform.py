"""Which TSRAM operands hold the same bytes on every tile of a grid axis, from the program.

A tiled matmul DMAs each weight block to every tile of a grid column (the source's tile
stride is 0 along the row axis), so those tiles hold byte-identical ``b`` operands. The
interpreter then multiplies the stacked ``a`` rows of the column by that one ``b`` in one
GEMM instead of one small GEMM per tile (runtime/interpreter_matmul.py) — the same dot
products, read once instead of once per tile.

This module proves the identity statically, once per program, by following its writes
in program order (the order the interpreter runs them). The state is a map from TSRAM
byte addresses to what is known of their content:

* ``Uniform(None, k)``: the same bytes on tiles ``0 .. k-1`` (all of them before any
  instruction ran: the constants, inputs and 0xFF poison of a run are written to every
  tile alike);
* ``Uniform(grid, axes)``: the same bytes on all tiles of ``grid`` that differ only along
  ``axes`` (tile ``t`` of a grid is its row-major index, as the interpreter lays it out).

Only DMAs create uniform content: a DMA from HBM/CSRAM whose source does not move with
the tile along an axis writes the same bytes to every tile along it, a TSRAM-to-TSRAM
DMA (a copy or a deterministic cast inside each tile) keeps its source's uniformity.
Everything else (compute, gathers, collectives) makes the bytes it writes unknown. A
write whose bytes are not one dense range may leave older bytes in its gaps, so it only
narrows what was known (the meet of old and new).

Loops: the state at the start of any iteration is the entry state met with every write
of the body (any of them may have been the last); inside the body, a dense write whose
address does not move with the loops holds exactly until the next write in that
iteration. A read's answer is the meet over every byte and iteration it reads.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

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
from maiac.runtime.memory import StepMap, access_extent


@dataclass(frozen=True)
class Uniform:
    """What is known of some TSRAM bytes: the same on tiles ``0 .. tiles-1`` (``grid`` None),
    or the same on all tiles of ``grid`` that differ only along ``axes``."""

    grid: tuple[int, ...] | None
    axes: frozenset[int] = frozenset()
    tiles: float = 0


UNKNOWN = Uniform(())
EVERYWHERE = Uniform(None, tiles=math.inf)


def meet(x: Uniform, y: Uniform) -> Uniform:
    """What holds of bytes that hold either ``x``'s content or ``y``'s."""
    if x.grid is None and y.grid is None:
        return Uniform(None, tiles=min(x.tiles, y.tiles))
    if x.grid is None:
        x, y = y, x
    assert x.grid is not None
    if y.grid is None:  # x on a grid: the tile-count fact covers all of it or says nothing
        return x if y.tiles >= math.prod(x.grid) else Uniform(x.grid)
    if x.grid == y.grid:
        return Uniform(x.grid, x.axes & y.axes)
    return UNKNOWN


def axes_on(u: Uniform, grid: tuple[int, ...]) -> frozenset[int]:
    """The axes of ``grid`` along which bytes known as ``u`` are the same on all tiles."""
    if u.grid is None:
        return frozenset(range(len(grid))) if u.tiles >= math.prod(grid) else frozenset()
    return u.axes if u.grid == grid else frozenset()


def dense(acc: Access, trips: tuple[int, ...]) -> bool:
    """True if the bytes ``acc`` touches over ``trips`` form one gapless range."""
    dims = [(abs(s), n) for n, s in zip(trips + tuple(acc.shape),
                                        tuple(acc.loop_strides or (0,) * len(trips))
                                        + tuple(acc.strides), strict=True) if n > 1 and s]
    reach = 1
    for stride, n in sorted(dims):
        if stride != reach:
            return False
        reach *= n
    return True


class _State:
    def __init__(self) -> None:
        self.map = StepMap(EVERYWHERE)

    def copy(self) -> _State:
        new = _State()
        new.map.keys, new.map.vals = list(self.map.keys), list(self.map.vals)
        return new

    def read(self, lo: int, hi: int) -> Uniform:
        m = self.map
        i = max(0, _index(m.keys, lo))
        value = m.vals[i]
        while i + 1 < len(m.keys) and m.keys[i + 1] < hi:
            i += 1
            value = meet(value, m.vals[i])
        return value

    def write(self, lo: int, hi: int, value: Uniform, exact: bool) -> None:
        if hi <= lo:
            return
        if exact:
            self.map.assign(lo, hi, value)
            return
        m = self.map
        m._split(lo)
        m._split(hi)
        i = _index(m.keys, lo)
        while i < len(m.keys) and m.keys[i] < hi:
            m.vals[i] = meet(m.vals[i], value)
            i += 1


def _index(keys: list[int], x: int) -> int:
    return bisect.bisect_right(keys, x) - 1


def _writes(ins: Instr, state: _State | None, trips: tuple[int, ...]
            ) -> list[tuple[Access, Uniform]]:
    """(TSRAM access written, what its bytes are known as) of one non-loop instruction;
    ``state`` None: a TSRAM source's content is not known."""
    grid = tuple(ins.grid)
    if isinstance(ins, Dma):
        if ins.dst.level != "tsram":
            return []
        if ins.src.level == "tsram":
            if state is None:
                return [(ins.dst, UNKNOWN)]
            got = axes_on(state.read(*access_extent(ins.src, grid, trips)), grid)
        else:
            ts = tuple(ins.src.tile_strides) or (0,) * len(grid)
            got = frozenset(g for g, (n, s) in enumerate(zip(grid, ts, strict=True))
                            if n == 1 or s == 0)
        if len(got) == len(grid):
            return [(ins.dst, Uniform(None, tiles=math.prod(grid)))]
        return [(ins.dst, Uniform(grid, got))]
    if isinstance(ins, Vec):
        return [(ins.out, UNKNOWN)]
    if isinstance(ins, MatMul):
        return [(ins.c, UNKNOWN)]
    if isinstance(ins, Gather | Collective):
        return [(ins.dst, UNKNOWN)] if ins.dst.level == "tsram" else []
    if isinstance(ins, Scatter | Sync):  # writes HBM/CSRAM rows only / nothing
        return []
    raise TypeError(f"unknown instruction {type(ins).__name__}")


def _apply(ins: Instr, state: _State, trips: tuple[int, ...]) -> None:
    """One instruction's writes, in one iteration of the enclosing loops: a dense write
    that does not move with the loops replaces what was known, any other narrows it."""
    grid = tuple(ins.grid)
    for acc, value in _writes(ins, state, trips):
        if acc.level == "tsram":
            exact = dense(acc, trips) and not any(acc.loop_strides)
            state.write(*access_extent(acc, grid, trips), value, exact=exact)


def _all_writes(body: list[Instr], state: _State, trips: tuple[int, ...]) -> None:
    """Meet every write of ``body`` (any iteration, any order) into ``state``."""
    for ins in body:
        if isinstance(ins, Loop):
            _all_writes(ins.body, state, trips + tuple(ins.trips))
            continue
        grid = tuple(ins.grid)
        for acc, value in _writes(ins, None, trips):
            if acc.level == "tsram":
                state.write(*access_extent(acc, grid, trips), value, exact=False)


def _walk(body: list[Instr], path: str, state: _State, trips: tuple[int, ...],
          found: Found) -> None:
    for k, ins in enumerate(body):
        here = f"{path}.{k}" if path else str(k)
        if isinstance(ins, Loop):
            if math.prod(ins.trips) < 1:  # never runs (validation refuses such loops)
                continue
            inner = trips + tuple(ins.trips)
            _all_writes(ins.body, state, inner)  # the state at the start of any iteration
            _walk(ins.body, here, state, inner, found)
            continue
        grid = tuple(ins.grid)
        if isinstance(ins, MatMul):
            for operand, scale, known in ((ins.b, ins.b_scale, found.b),
                                          (ins.a, ins.a_scale, found.a)):
                u = state.read(*access_extent(operand, grid, trips))
                if scale is not None:
                    u = meet(u, state.read(*access_extent(scale, grid, trips)))
                known[here] = axes_on(u, grid)
        elif isinstance(ins, Vec) and all(a.level == "tsram" for a in ins.ins):
            axes = frozenset(range(len(grid)))
            for acc in ins.ins:
                axes &= axes_on(state.read(*access_extent(acc, grid, trips)), grid)
            found.vec[here] = axes
        _apply(ins, state, trips)


@dataclass
class Found:
    """Grid axes along which operands hold the same bytes on every tile, every time the
    instruction runs, keyed by instruction path (``"7"``, or ``"12.3"`` for a loop body's
    instruction 3): a matmul's ``b`` (with ``b_scale``), its ``a`` (with ``a_scale``),
    and all inputs of a Vec."""

    b: dict[str, frozenset[int]] = field(default_factory=dict)
    vec: dict[str, frozenset[int]] = field(default_factory=dict)
    a: dict[str, frozenset[int]] = field(default_factory=dict)


def uniform_operands(instructions: list[Instr]) -> Found:
    """Per matmul and Vec, the grid axes along which its operands are uniform (`Found`)."""
    found = Found()
    _walk(instructions, "", _State(), (), found)
    return found


def uniform_axes(instructions: list[Instr]
                 ) -> tuple[dict[str, frozenset[int]], dict[str, frozenset[int]]]:
    """``(matmul b axes, vec input axes)`` of `uniform_operands`."""
    found = uniform_operands(instructions)
    return found.b, found.vec


def uniform_b_axes(instructions: list[Instr]) -> dict[str, frozenset[int]]:
    """Per matmul path, the grid axes along which its ``b`` operand (and ``b_scale``)
    holds the same bytes on every tile (`uniform_axes`)."""
    return uniform_axes(instructions)[0]
