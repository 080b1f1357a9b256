"""Tiling of TVP work: elementwise ops (with broadcasting) and last-axis row ops.

The output is cut into blocks ``[1, .., 1, b, S[d+1], .., S[-1]]``; each block is one job.
Every input is DMA'd to TSRAM as its unique data only (broadcast dims stay stride 0),
the TVP computes the block, and the result goes back. Row ops (softmax, norms,
reductions) keep the whole last axis inside a block.

A region with a loop of jobs is double-buffered (``double-buffer`` twins its blocks:
the next block's loads run while the TVP computes this one and the last one is
stored), so the block size is costed as a pipeline: the first job's load, compute and
store, then per further job its slowest stage. The ragged tails get blocks of their
own where the twins still fit TSRAM (a buffer used after the loop cannot be twinned),
else they reuse the first region's. An 8B prefill RoPE (32 heads x 2048 x 128 f32, in CSRAM)
thus runs as a pipeline of jobs per tile instead of one load, compute, store in a row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    Tensor,
    align,
    broadcast_strides,
    compact_strides,
    contiguous,
    divisors,
    dma,
    loop,
    merge_dims,
    split_jobs,
    vec,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize
from maiac.runtime.timing_costs import VEC_OPS


def _choose_block(shape: Sequence[int], operands: Sequence[tuple[Sequence[int], int]],
                  budget: Budget, whole_last: bool, ops_per_elem: float = 1.0,
                  bws: Sequence[float] = ()) -> tuple[int, int]:
    """Split axis ``d`` and block extent ``b`` along it (``b`` need not divide the axis:
    `ragged_regions` tiles the rest), of least modeled time (`_jobs_cost`).

    ``operands``: (strides in iteration coords, itemsize) of every TSRAM block, output
    included; stride 0 dims take no TSRAM. ``ops_per_elem``: the TVP ops of an element;
    ``bws``: per operand, bytes/s a tile's DMA of it moves (default ``budget.tile_bw``,
    the HBM share).
    """
    rank = len(shape)
    best: tuple[tuple[float, int, int], int, int] | None = None

    for d in range(rank):
        if whole_last and d == rank - 1:
            candidates = {shape[d]}
        else:  # the divisors, and blocks giving whole waves over the tiles + a tail
            candidates = set(divisors(shape[d])) | {
                -(-shape[d] // j) for j in range(1, 2 * budget.n_tiles + 1)}
        for b in sorted(candidates):
            if _block_bytes(shape, d, b, operands) > budget.tsram_bytes:
                continue
            # the loop trips split_jobs really makes per region (it spreads only
            # divisors of each extent over the tiles), each region a pipeline of jobs
            # when its blocks get twins; then more tiles, then bigger blocks
            regions = ragged_regions(shape, d, b, budget.n_tiles)
            waves = [(_block(shape, d, blk), math.prod(split_jobs(
                tuple(shape[:d]) + (extent // blk,), budget.n_tiles).trips))
                for _, extent, blk in regions]
            cost = _jobs_cost(operands, waves, pipelined(
                regions, lambda blk, d=d: _block_bytes(shape, d, blk, operands),
                budget.tsram_bytes),
                ops_per_elem, tuple(bws) or (budget.tile_bw,) * len(operands), budget)
            first = split_jobs(tuple(shape[:d]) + (regions[0][1] // b,), budget.n_tiles)
            block_elems = b * math.prod(shape[d + 1:])
            key = (-cost, math.prod(first.grid), block_elems)
            if best is None or key > best[0]:
                best = (key, d, b)
    if best is None:
        raise MaiacError("working set does not fit TSRAM")
    return best[1], best[2]


def _block(shape: Sequence[int], d: int, b: int) -> tuple[int, ...]:
    """The block of extent ``b`` along axis ``d`` (whole axes after it)."""
    return (1,) * d + (b,) + tuple(shape[d + 1:])


def _operand_bytes(block: Sequence[int], operands: Sequence[tuple[Sequence[int], int]]
                   ) -> list[int]:
    """Per TSRAM operand (strides, itemsize), the bytes of its unique data in ``block``
    (stride-0 dims are broadcast, not stored)."""
    return [math.prod(e if st else 1 for e, st in zip(block, strides, strict=True)) * size
            for strides, size in operands]


def _block_bytes(shape: Sequence[int], d: int, b: int,
                 operands: Sequence[tuple[Sequence[int], int]]) -> int:
    """TSRAM bytes of one block's scratch (each operand aligned)."""
    return sum(align(n) for n in _operand_bytes(_block(shape, d, b), operands))


def pipelined(regions: Sequence[tuple[int, int, int]], block_bytes: Any,
              tsram_bytes: int) -> bool:
    """Whether the jobs of ``regions`` overlap: each region (the tails too) has scratch
    blocks of its own, and a region looping over jobs (only the first does) gets
    ``double-buffer`` twins (only if nothing after its loop uses its blocks), when all
    of them fit TSRAM together; else the tails reuse the first region's blocks."""
    loops = regions[0][1] // regions[0][2] > 1
    if len(regions) < 2 and not loops:
        return False
    need = (1 + loops) * block_bytes(regions[0][2]) \
        + sum(block_bytes(blk) for _, _, blk in regions[1:])
    return need <= tsram_bytes


def _jobs_cost(operands: Sequence[tuple[Sequence[int], int]],
               waves: Sequence[tuple[Sequence[int], int]], overlap: bool,
               ops_per_elem: float, bws: Sequence[float], budget: Budget) -> float:
    """Modeled time of the jobs a tile runs: per region (``waves``: its block and jobs
    per tile) the inputs load on DMA queues 0 and 1 by turns and the output stores on
    1, each DMA its latency plus bytes at its ``bws``, the TVP its ops plus an issue;
    ``overlap`` (`pipelined`): the first job's load, compute and store, then each
    further job its slowest stage; else every job's load, compute and store in turn."""
    total = 0.0
    first = True
    for block, trips in waves:
        queues = [0.0, 0.0]
        sizes = _operand_bytes(block, operands)
        for i, nbytes in enumerate(sizes[:-1]):
            queues[i % 2] += budget.dma_latency_s + nbytes / bws[i]
        store = budget.dma_latency_s + sizes[-1] / bws[-1]
        # the two load queues share the level they read (operands at one rate come from
        # one level: the timing model books HBM, CSRAM and the NoC per resource)
        level: dict[float, float] = {}
        for nbytes, bw in zip(sizes[:-1], bws[:-1], strict=True):
            level[bw] = level.get(bw, 0.0) + nbytes / bw
        queues[0] = max(queues[0], budget.dma_latency_s + max(level.values(), default=0.0))
        compute = math.prod(block) * ops_per_elem / (budget.tile_vec or float("inf")) \
            + budget.instr_overhead_s
        job = max(queues) + compute + store
        if not overlap:
            total += trips * job
            continue
        stage = max(queues[0], queues[1] + store, compute)
        total += (job + (trips - 1) * stage) if first else trips * stage
        first = False
    return total


def tile_elementwise(kernel: Kernel, fn: str, ins: Sequence[Tensor], out: Tensor,
                     budget: Budget, params: dict[str, Any] | None = None,
                     row: bool = False,
                     views: dict[int, tuple[int, Sequence[int]]] | None = None,
                     on_chip: Any = None) -> None:
    """Append to ``kernel`` the instructions computing ``out = fn(*ins)``.

    ``row``: ``fn`` works on the last axis (softmax, norms, reductions, rope); for
    reductions ``out`` has last extent 1 while the iteration space is the input's.
    ``views``: input index → (offset, strides) reading that input as a strided view over
    the output's shape instead of a contiguous (broadcast) tensor (see fuse_views.py).
    ``on_chip``: whether a tensor will likely live in CSRAM (the cost model then moves
    its blocks at a tile's share of the CSRAM rate).
    """
    space = out.shape if views else ins[0].shape if row else out.shape
    if not space:
        space = (1,)
    reduced = row and out.shape[-1:] == (1,) and space[-1] != 1
    in_strides = [tuple((views or {})[i][1]) if i in (views or {}) else
                  broadcast_strides(t.shape or (1,), space) for i, t in enumerate(ins)]
    offsets = [int((views or {})[i][0]) if i in (views or {}) else 0 for i in range(len(ins))]
    out_strides = contiguous(out.shape or (1,))
    if reduced:
        out_strides = out_strides[:-1] + (0,)
    shape, merged = merge_dims(space, [out_strides, *in_strides], keep_last=row)
    out_st, in_st = merged[0], merged[1:]
    tsram_ops = [(s, itemsize(t.dtype)) for s, t in zip(in_st, ins, strict=True)]
    tsram_ops.append((out_st, 4 if reduced else itemsize(out.dtype)))
    csram = min(budget.csram_bw / budget.n_tiles, budget.tile_noc_bw or budget.tile_bw)
    bws = [csram if on_chip is not None and budget.csram_bw and on_chip(t) else budget.tile_bw
           for t in (*ins, out)]
    try:
        d, b = _choose_block(shape, tsram_ops, budget, whole_last=row,
                             ops_per_elem=VEC_OPS.get(fn, 1), bws=bws)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' ({fn}): one row of {space[-1]} elements "
                         f"does not fit TSRAM ({budget.tsram_bytes} bytes per tile)") from err
    regions = ragged_regions(shape, d, b, budget.n_tiles)

    own = len(regions) > 1 and pipelined(
        regions, lambda blk: _block_bytes(shape, d, blk, tsram_ops), budget.tsram_bytes)
    names: list[str] = []  # the first region's scratch blocks, reused by the tails (not own)
    for k, (lo, extent, blk) in enumerate(regions):
        if own and k:
            names = []
        _emit_region(kernel, fn, ins, out, shape, in_st, out_st, offsets, d, lo, extent, blk,
                     reduced, params, names, budget.n_tiles, f".{k}" if own and k else "")
    ops_per_elem = {"softmax": 5, "log_softmax": 5, "layernorm": 8, "rmsnorm": 5,
                    "rope": 3}.get(fn, 1)
    elems = 1
    for e in space:
        elems *= e
    kernel.flops += ops_per_elem * elems


def ragged_regions(shape: Sequence[int], d: int, b: int, n_tiles: int
                   ) -> list[tuple[int, int, int]]:
    """``(start, extent, block)`` ranges of axis ``d`` covering it, each tiled by whole
    blocks (blocks never larger than ``b``, the first the largest). Jobs spread over the
    tiles by divisors of their count (`split_jobs`: 37 rows of blocks of 1 would run on 1
    tile), so the axis splits into whole waves of ``b``-blocks over every tile the outer
    dims leave (36 rows), then the whole ``b``-blocks left (one wave), then the rest (a
    ragged tail, fewer than ``b`` rows) in blocks of ``ceil(rest / tiles)`` the same way."""
    free = max(1, n_tiles // split_jobs(tuple(shape[:d]) + (1,), n_tiles).n_tiles)
    out: list[tuple[int, int, int]] = []
    lo, size = 0, shape[d]
    while size:
        jobs = size // b
        if size % b == 0 and (jobs <= free or jobs % free == 0):
            out.append((lo, size, b))
            break
        main = (jobs // free * free or jobs) * b  # whole waves, else the whole blocks
        if main:
            out.append((lo, main, b))
            lo, size = lo + main, size - main
        b = min(b, -(-size // free))
    return out


def _emit_region(kernel: Kernel, fn: str, ins: Sequence[Tensor], out: Tensor,
                 shape: Sequence[int], in_st: Sequence[Sequence[int]], out_st: Sequence[int],
                 offsets: Sequence[int], d: int, lo: int, extent: int, b: int, reduced: bool,
                 params: dict[str, Any] | None, names: list[str], n_tiles: int,
                 tag: str = "") -> None:
    """The DMA in / TVP / DMA out jobs of ``[lo, lo + extent)`` along axis ``d`` of the
    iteration space (blocks of ``b``). The first region names the scratch blocks
    (``names`` empty); later ones (ragged tails, never larger) reuse them, or name their
    own (``tag``: the suffix telling them apart)."""
    block = (1,) * d + (b,) + tuple(shape[d + 1:])
    split = split_jobs(tuple(shape[:d]) + (extent // b,), n_tiles)
    grid = split.grid

    def steps(strides: Sequence[int]) -> tuple[int, ...]:
        return tuple(strides[:d]) + (b * strides[d],)

    first = not names
    body = []
    tsram_ins = []
    for i, (t, strides) in enumerate(zip(ins, in_st, strict=True)):
        bcast = [s == 0 for s in strides]
        unique = tuple(1 if z else e for e, z in zip(block, bcast, strict=True))
        if first:
            names.append(kernel.scratch_buffer(f"in{i}{tag}", t.dtype, unique))
        src = Access(t.buf, t.dtype, unique, tuple(strides), t.off + offsets[i] + lo * strides[d],
                     split.tile_strides(steps(strides)), split.loop_strides(steps(strides)))
        body.append(dma(src, Access(names[i], t.dtype, unique, contiguous(unique)), grid,
                        queue=i % 2))
        tsram_ins.append(Access(names[i], t.dtype, block, compact_strides(block, bcast)))
    out_block = block[:-1] + (1,) if reduced else block
    out_bcast = [s == 0 for s in out_st]
    out_unique = tuple(1 if z else e for e, z in zip(block, out_bcast, strict=True))
    if reduced:
        out_unique = out_block
    if first:
        names.append(kernel.scratch_buffer(f"out{tag}", out.dtype, out_unique))
    out_name = names[len(ins)]
    body.append(vec(fn, tsram_ins, Access(out_name, out.dtype, out_block, contiguous(out_block)),
                    grid, **(params or {})))
    dst_strides = tuple(out_st[:-1]) + ((1,) if reduced else (out_st[-1],))
    body.append(dma(Access(out_name, out.dtype, out_block, contiguous(out_block)),
                    Access(out.buf, out.dtype, out_block, dst_strides, out.off + lo * out_st[d],
                           split.tile_strides(steps(out_st)), split.loop_strides(steps(out_st))),
                    grid, queue=1))
    kernel.body.extend(loop(split.trips, body))
