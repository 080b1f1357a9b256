"""Broadcast DMA tile copies that no instruction reads, found once per program.

A DMA into TSRAM whose source does not move with the tile along some grid axes (tile
stride 0) writes the same bytes to every tile along them: a tiled matmul sends each
weight block to every tile of a grid column and each activation block to every tile of
a grid row, 3/4 of the TSRAM bytes a d768 Llama moves. The interpreter reads such an
fp32 matmul operand once, from the tiles at index 0 of the axes along which it is the
same (the *head* tiles; runtime/tile_uniform.py proves the bytes equal, `MatmulPlan`).
When every instruction that touches the broadcast bytes before they are next written in
full reads only the head tiles' copy, the copies to the other tiles are dead stores:
nothing reads them before they are overwritten. The interpreter then writes the head
tiles only (``elided_dma_axes``).

Memory after a run is byte-identical to the memory with every copy done: a DMA is
elided only if later writes without gaps cover all its bytes on all its tiles (before
any of them is read off the head), so the last write of every byte of every tile is a
real one. Before that write the skipped bytes are read by
no instruction (the only readers are head readers), by no output (outputs are read from
tile 0, always a head tile) and by no other chip (collectives touching them count as
readers). The analysis is conservative: a loop of more than one trip counts as reading
and writing all of its extent, and a DMA inside such a loop is not elided.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from maiac.runtime.isa import Access, Dma, Instr, Loop, MatMul, Sync
from maiac.runtime.liveness import _reads_writes
from maiac.runtime.memory import access_extent
from maiac.runtime.tile_uniform import dense


@dataclass(frozen=True)
class MatmulPlan:
    """How the interpreter reads a matmul's operands: ``a`` / ``b`` only from the tiles at
    index 0 of the grid axes ``a_head`` / ``b_head`` (the same bytes on all tiles along
    them); ``stack``: the grid axis whose tiles' ``a`` rows go through one GEMM (None:
    one GEMM per tile)."""

    a_head: frozenset[int] = frozenset()
    b_head: frozenset[int] = frozenset()
    stack: int | None = None


@dataclass(frozen=True)
class _Event:
    """One instruction as the scan sees it: the TSRAM accesses it reads and writes, over
    all iterations of enclosing loops (``trips``), on ``grid``; ``head``: the grid axes
    along which a read is of the head tiles only."""

    path: str
    instr: Instr | None  # None: a loop of several trips, seen as its whole extent
    grid: tuple[int, ...]
    trips: tuple[int, ...]
    reads: tuple[tuple[Access, frozenset[int]], ...]
    writes: tuple[Access, ...]


def _events(body: list[Instr], path: str, trips: tuple[int, ...],
            plans: dict[str, MatmulPlan]) -> Iterator[_Event]:
    """The instructions in the order they run; a loop of one trip is its body."""
    for k, ins in enumerate(body):
        here = f"{path}.{k}" if path else str(k)
        if isinstance(ins, Loop):
            inner = trips + tuple(ins.trips)
            if math.prod(ins.trips) == 1:
                yield from _events(ins.body, here, inner, plans)
                continue
            for ev in _events(ins.body, here, inner, plans):  # every access, no head reads
                yield _Event(here, None, ev.grid, ev.trips,
                             tuple((a, frozenset()) for a, _ in ev.reads), ev.writes)
            continue
        if isinstance(ins, Sync):
            continue
        reads, write = _reads_writes(ins)
        heads = [frozenset()] * len(reads)
        if isinstance(ins, MatMul) and ins.a is not ins.b:  # reads start with a, b
            plan = plans.get(here, MatmulPlan())
            heads[:2] = [plan.a_head, plan.b_head]
        yield _Event(here, ins, tuple(ins.grid), trips,
                     tuple(zip(reads, heads, strict=True)), (write,))


def _covers(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...], tiles: int) -> bool:
    """True if ``acc`` writes every byte of its extent on tiles ``0 .. tiles - 1``."""
    return acc.level == "tsram" and math.prod(grid) >= tiles and dense(acc, trips)


def broadcast_axes(instr: Dma) -> frozenset[int]:
    """Grid axes (of more than one tile) along which a DMA from HBM/CSRAM into TSRAM writes
    the same bytes to every tile."""
    if instr.dst.level != "tsram" or instr.src.level == "tsram":
        return frozenset()
    grid = tuple(instr.grid)
    ts = tuple(instr.src.tile_strides) or (0,) * len(grid)
    return frozenset(g for g, (n, s) in enumerate(zip(grid, ts, strict=True)) if n > 1 and s == 0)


def elided_dma_axes(instructions: list[Instr], plans: dict[str, MatmulPlan]
                    ) -> dict[str, frozenset[int]]:
    """Per DMA path, the broadcast axes whose copies to non-head tiles are dead (skipped)."""
    events = list(_events(instructions, "", (), plans))
    elided: dict[str, frozenset[int]] = {}
    for i, ev in enumerate(events):
        ins = ev.instr
        if not isinstance(ins, Dma) or ins.src.dtype != ins.dst.dtype:
            continue
        axes = broadcast_axes(ins)
        if axes and _dead(events, i, axes):
            elided[ev.path] = axes
    return elided


def _dead(events: list[_Event], i: int, axes: frozenset[int]) -> bool:
    """True if the bytes event ``i`` (a broadcast DMA) writes are, on its non-head tiles,
    read by no instruction before later ones write all of them on all of its tiles."""
    dma = events[i]
    pending = [access_extent(dma.writes[0], dma.grid, dma.trips)]  # [lo, hi) not yet rewritten
    tiles = math.prod(dma.grid)
    for ev in events[i + 1:]:
        for acc, head in ev.reads:
            if acc.level == "tsram" and _overlaps(pending, *access_extent(acc, ev.grid, ev.trips)) \
                    and not (ev.grid == dma.grid and axes <= head):
                return False
        for acc in ev.writes:
            if acc.level != "tsram":
                continue
            wlo, whi = access_extent(acc, ev.grid, ev.trips)
            if not _overlaps(pending, wlo, whi):
                continue
            if ev.instr is None or not _covers(acc, ev.grid, ev.trips, tiles):
                return False  # leaves older bytes in its gaps or on some tiles
            pending = [(lo, hi) for a, b in pending
                       for lo, hi in ((a, min(b, wlo)), (max(a, whi), b)) if lo < hi]
            if not pending:
                return True
    return False


def _overlaps(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in ranges)
