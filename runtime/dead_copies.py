"""DMA copies into TSRAM that no instruction reads, found once per program.

The interpreter moves real bytes for every DMA. Two kinds of those writes are dead
stores, overwritten before any instruction reads the bytes they wrote, and are skipped:

* *Forwarded DMAs* (``forwarded_copies``): a DMA from HBM/CSRAM whose destination is read
  only by fp32 matmuls, through an operand that is exactly that destination block on the
  same grid, before its source changes. The matmul reads the source block instead (the
  same bytes: the DMA's source at the time of the read equals it at the time of the
  DMA; both row-major, so BLAS runs the same kernel on them), and the DMA moves nothing. This is how a tiled matmul's weights reach the TTU.
* *Broadcast copies* (``elided_dma_axes``): a DMA whose source does not move with the
  tile along some grid axes (tile stride 0) writes the same bytes to every tile along
  them (a tiled matmul sends each weight block to every tile of a grid column, each
  activation block to every tile of a grid row: 3/4 of the TSRAM bytes of a d768
  Llama). The interpreter reads such an fp32 matmul operand once, from the tiles at
  index 0 of those axes (the *head* tiles; runtime/tile_uniform.py proves the bytes
  equal, `MatmulPlan`). When only such head reads touch the bytes before they are
  overwritten, the copies to the other tiles are skipped.

Memory after a run is byte-identical to the memory with every copy done, and every read
sees the bytes the program wrote: a write is skipped only if later writes without gaps
cover all its bytes on all its tiles before any of them is read other than as above, so
the last write of every byte of every tile is a real one. Outputs are read from tile 0
(always a head tile); collectives touching the bytes count as readers. In a loop (of
leaf instructions) a DMA whose block the next iteration's DMA rewrites is skipped in
every iteration but the last; a loop with inner loops counts as reading and writing all
of its extent, and DMAs inside it are done. ``MAIAC_ALL_COPIES=1`` does every copy (for comparison).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

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
    """One instruction as the scan sees it: the accesses it reads (with the grid axes
    along which a read is of the head tiles only, and ``"a"``/``"b"`` for a matmul
    operand) and writes, over all iterations of enclosing loops (``trips``)."""

    path: str
    instr: Instr | None  # None: a loop of several trips, seen as its whole extent
    grid: tuple[int, ...]
    trips: tuple[int, ...]
    reads: tuple[tuple[Access, frozenset[int], str], ...]
    writes: tuple[Access, ...]


def _events(body: list[Instr], path: str, trips: tuple[int, ...],
            plans: dict[str, MatmulPlan], sources: dict[tuple[str, str], Access]
            ) -> Iterator[_Event]:
    """The instructions in the order they run; a loop of one trip is its body. A matmul
    operand read from a forwarded DMA's source (``sources``) reads that source."""
    for k, ins in enumerate(body):
        here = f"{path}.{k}" if path else str(k)
        if isinstance(ins, Loop):
            inner = trips + tuple(ins.trips)
            if math.prod(ins.trips) == 1:
                yield from _events(ins.body, here, inner, plans, sources)
                continue
            for ev in _events(ins.body, here, inner, plans, sources):  # no head reads
                yield _Event(here, None, ev.grid, ev.trips,
                             tuple((a, frozenset(), "") for a, _, _ in ev.reads), ev.writes)
            continue
        if isinstance(ins, Sync):
            continue
        reads, write = _reads_writes(ins)
        tagged = [(acc, frozenset(), "") for acc in reads]
        if isinstance(ins, MatMul) and ins.a is not ins.b:  # reads start with a, b
            plan = plans.get(here, MatmulPlan())
            tagged[:2] = [(sources.get((here, role), acc), head, role) for acc, head, role
                          in ((ins.a, plan.a_head, "a"), (ins.b, plan.b_head, "b"))]
        yield _Event(here, ins, tuple(ins.grid), trips, tuple(tagged), (write,))


def broadcast_axes(instr: Dma) -> frozenset[int]:
    """Grid axes (of more than one tile) along which a DMA from HBM/CSRAM into TSRAM writes
    the same bytes to every tile."""
    if instr.dst.level != "tsram" or instr.src.level == "tsram":
        return frozenset()
    grid = tuple(instr.grid)
    ts = tuple(instr.src.tile_strides) or (0,) * len(grid)
    return frozenset(g for g, (n, s) in enumerate(zip(grid, ts, strict=True)) if n > 1 and s == 0)


@dataclass
class Copies:
    """What the interpreter skips: DMAs whose every reader is an fp32 matmul operand read
    straight from the DMA's source (``forwarded``; ``sources``: (matmul path, "a"/"b") ->
    the access to read instead), and per broadcast DMA the axes whose copies to the
    non-head tiles are dead (``elided``). A DMA in a loop is skipped in every iteration
    but the last (``last``: path -> that iteration), whose bytes later ones do not cover."""

    forwarded: set[str]
    sources: dict[tuple[str, str], Access]
    elided: dict[str, frozenset[int]]
    last: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _copies(events: list[_Event]) -> Iterator[tuple[int, _Event, Dma]]:
    """(index, event, DMA) of the byte-copy DMAs from HBM/CSRAM into TSRAM."""
    for i, ev in enumerate(events):
        ins = ev.instr
        if isinstance(ins, Dma) and ins.dst.level == "tsram" and ins.src.level != "tsram" \
                and ins.src.dtype == ins.dst.dtype:
            yield i, ev, ins


def _loops(body: list[Instr], path: str, trips: tuple[int, ...]
           ) -> Iterator[tuple[str, Loop, tuple[int, ...]]]:
    """Loops of several trips without inner loops, inside loops of one trip only."""
    for k, ins in enumerate(body):
        here = f"{path}.{k}" if path else str(k)
        if isinstance(ins, Loop):
            inner = trips + tuple(ins.trips)
            if math.prod(ins.trips) == 1:
                yield from _loops(ins.body, here, inner)
            elif not any(isinstance(b, Loop) for b in ins.body):
                yield here, ins, inner


def _scans(instructions: list[Instr], plans: dict[str, MatmulPlan],
           sources: dict[tuple[str, str], Access]
           ) -> Iterator[tuple[list[_Event], _Event, Dma, tuple[int, ...] | None]]:
    """(events from a DMA on, the DMA's event, the DMA, the last iteration of its loop) of
    every DMA that may be skipped. At the top level: the program from the DMA on. In a
    loop: the rest of the body, the body before the DMA (the next iteration; its reads
    count as of every tile, not forwardable) and the DMA again, which rewrites all of its
    block (its destination does not move with the loop) — in every iteration but the last."""
    events = list(_events(instructions, "", (), plans, sources))
    for i, ev, dma in _copies(events):
        yield events[i:], ev, dma, None
    for path, loop, trips in _loops(instructions, "", ()):
        body = list(_events(loop.body, path, trips, plans, sources))
        for i, ev, dma in _copies(body):
            if any(dma.dst.loop_strides):
                continue
            wrap = [replace(e, reads=tuple((a, frozenset(), "") for a, _, _ in e.reads))
                    for e in body[:i]]
            yield [ev, *body[i + 1:], *wrap, ev], ev, dma, tuple(t - 1 for t in trips)


def forwarded_copies(instructions: list[Instr], fp32_matmuls: set[str]) -> Copies:
    """The DMAs into TSRAM read only by matmuls of ``fp32_matmuls`` (paths) through an
    operand that is exactly the DMA's destination, on the same grid, before the source
    changes, and whose bytes later writes cover on all tiles: those matmuls read the
    source instead and the DMA is skipped (``Copies.forwarded``)."""
    copies = Copies(set(), {}, {})
    for events, ev, dma, last in _scans(instructions, {}, {}):
        if tuple(dma.src.shape) != tuple(dma.dst.shape) or not (
                _row_major(dma.src) and _row_major(dma.dst)):
            continue
        readers = _forward_readers(events, dma, fp32_matmuls)
        if readers:
            copies.forwarded.add(ev.path)
            if last is not None:
                copies.last[ev.path] = last
            for path, role, trips in readers:
                # at the top level every enclosing loop has one trip (iteration 0); in a
                # loop the reader runs in the DMA's iteration
                copies.sources[(path, role)] = dma.src if last is not None else \
                    replace(dma.src, loop_strides=(0,) * len(trips))
    return copies


def _row_major(acc: Access) -> bool:
    """True if numpy hands every matrix of ``acc`` (last two axes) to BLAS untransposed:
    then reading it from the DMA's source runs the same GEMM as from TSRAM (a transposed
    or non-BLAS layout would take another kernel, summing in another order)."""
    if len(acc.shape) < 2:
        return False
    return acc.strides[-1] == 1 and acc.strides[-2] >= acc.shape[-1]


def _forward_readers(events: list[_Event], dma: Dma, fp32_matmuls: set[str]
                     ) -> list[tuple[str, str, tuple[int, ...]]] | None:
    """(matmul path, operand, trips) of every read of ``dma``'s bytes (``events[0]``), if
    all are forwardable and later writes cover the bytes on all tiles; else None."""
    ev0 = events[0]
    pending = [(0, math.prod(ev0.grid), *access_extent(dma.dst, ev0.grid, ev0.trips))]
    slo, shi = access_extent(dma.src, ev0.grid, ev0.trips)
    readers: list[tuple[str, str, tuple[int, ...]]] = []
    source_changed = rewritten = False
    for ev in events[1:]:
        tiles = math.prod(ev.grid)
        for acc, _, role in ev.reads:
            if acc.level != "tsram" or not _overlaps(pending, tiles, *access_extent(
                    acc, ev.grid, ev.trips)):
                continue
            if rewritten or source_changed or ev.path not in fp32_matmuls or not role or \
                    ev.grid != ev0.grid or _key(acc) != _key(dma.dst):
                return None
            readers.append((ev.path, role, ev.trips))
        for acc in ev.writes:
            wlo, whi = access_extent(acc, ev.grid, ev.trips)
            if acc.level == dma.src.level and wlo < shi and slo < whi:
                source_changed = True
            if acc.level != "tsram" or not _overlaps(pending, tiles, wlo, whi):
                continue
            if ev.instr is None or not dense(acc, ev.trips):
                return None
            rewritten = True
            pending = _minus(pending, tiles, wlo, whi)
            if not pending:
                return readers
    return None


def _key(acc: Access) -> tuple:
    """An access's bytes per tile, loop strides aside (every enclosing loop has one trip)."""
    return (acc.level, acc.addr, acc.dtype, tuple(acc.shape), tuple(acc.strides))


def elided_dma_axes(instructions: list[Instr], plans: dict[str, MatmulPlan],
                    copies: Copies) -> dict[str, frozenset[int]]:
    """Per DMA path (not forwarded), the broadcast axes whose copies to non-head tiles are
    dead (skipped); ``copies.elided`` is set to it."""
    elided: dict[str, frozenset[int]] = {}
    for events, ev, dma, last in _scans(instructions, plans, copies.sources):
        axes = broadcast_axes(dma)
        if axes and ev.path not in copies.forwarded and _dead(events, axes):
            elided[ev.path] = axes
            if last is not None:
                copies.last[ev.path] = last
    copies.elided = elided
    return elided


def _dead(events: list[_Event], axes: frozenset[int]) -> bool:
    """True if the bytes ``events[0]`` (a broadcast DMA) writes are, on its non-head tiles,
    read by no instruction before later ones write all of them on all of its tiles."""
    dma = events[0]
    pending = [(0, math.prod(dma.grid), *access_extent(dma.writes[0], dma.grid, dma.trips))]
    for ev in events[1:]:
        tiles = math.prod(ev.grid)
        for acc, head, _ in ev.reads:
            if acc.level == "tsram" and _overlaps(pending, tiles, *access_extent(
                    acc, ev.grid, ev.trips)) and not (ev.grid == dma.grid and axes <= head):
                return False
        for acc in ev.writes:
            if acc.level != "tsram":
                continue
            wlo, whi = access_extent(acc, ev.grid, ev.trips)
            if not _overlaps(pending, tiles, wlo, whi):
                continue
            if ev.instr is None or not dense(acc, ev.trips):
                return False  # leaves older bytes in its gaps
            pending = _minus(pending, tiles, wlo, whi)
            if not pending:
                return True
    return False


# The bytes of a skipped write not yet rewritten, as rectangles (t0, t1, lo, hi): bytes
# [lo, hi) of tiles t0 .. t1 - 1. An instruction on a grid of n tiles touches tiles
# 0 .. n - 1 (TSRAM row t is tile t).
Pending = list[tuple[int, int, int, int]]


def _overlaps(pending: Pending, tiles: int, lo: int, hi: int) -> bool:
    return any(t0 < tiles and a < hi and lo < b for t0, _, a, b in pending)


def _minus(pending: Pending, tiles: int, lo: int, hi: int) -> Pending:
    """``pending`` less bytes [lo, hi) of tiles 0 .. tiles - 1."""
    out: Pending = []
    for t0, t1, a, b in pending:
        if not (t0 < tiles and a < hi and lo < b):
            out.append((t0, t1, a, b))
            continue
        out += [(t0, t1, x, y) for x, y in ((a, min(b, lo)), (max(a, hi), b)) if x < y]
        if tiles < t1:  # the tiles past the write keep the overlap
            out.append((tiles, t1, max(a, lo), min(b, hi)))
    return out
