"""Tiling of data movement: views (transpose/slice/expand), concat, copies, gathers.

Views and concatenations are pure DMA: a strided read on one side, a contiguous write
on the other; no TSRAM is involved. Embedding lookups stage their indices in TSRAM and
use the indexed Gather DMA.
"""

from __future__ import annotations

from collections.abc import Sequence

from maiac.ir import maia
from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    Tensor,
    align,
    contiguous,
    divisors,
    dma,
    loop,
    prefer,
    split_jobs,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize


def tile_view(kernel: Kernel, x: Tensor, out: Tensor, offset: int,
              strides: Sequence[int]) -> None:
    """``out[idx] = flat(x)[offset + idx . strides]`` as one DMA."""
    shape = out.shape or (1,)
    strides = tuple(strides) or (0,)
    kernel.body.append(dma(Access(x.buf, x.dtype, shape, strides, x.off + offset),
                           Access(out.buf, out.dtype, shape, contiguous(shape), out.off), (1,)))


def tile_copy(kernel: Kernel, x: Tensor, out: Tensor) -> None:
    tile_view(kernel, x, out, 0, contiguous(x.shape or (1,)))


def tile_concat(kernel: Kernel, ins: Sequence[Tensor], out: Tensor, axis: int) -> None:
    """Each input lands in its slice of ``out`` (one DMA per input, alternating queues)."""
    out_strides = contiguous(out.shape)
    start = 0
    for i, x in enumerate(ins):
        shape = x.shape
        kernel.body.append(dma(Access(x.buf, x.dtype, shape, contiguous(shape), x.off),
                               Access(out.buf, out.dtype, shape, out_strides,
                                      out.off + start * out_strides[axis]), (1,), queue=i % 2))
        start += shape[axis]


def tile_gather(kernel: Kernel, table: Tensor, indices: Tensor, out: Tensor,
                budget: Budget) -> None:
    """``out[r, :] = table[indices[r], :]`` for the flattened indices, rows split over tiles."""
    rows, row_len = table.shape
    n = max(indices.size, 1)
    row_bytes = row_len * itemsize(table.dtype)
    best = None
    for block in divisors(n):
        if align(block * itemsize(indices.dtype)) + align(block * row_bytes) > budget.tsram_bytes:
            continue
        key = prefer(n // block, block, budget.n_tiles)
        if best is None or key > best[0]:
            best = (key, block)
    if best is None:
        raise MaiacError(f"op '{kernel.op}' (gather): one row of {row_len} elements does not "
                         f"fit TSRAM ({budget.tsram_bytes} bytes per tile)")
    block = best[1]
    split = split_jobs((n // block,), budget.n_tiles)
    grid = split.grid
    ti = kernel.scratch_buffer("indices", indices.dtype, (block,))
    tr = kernel.scratch_buffer("rows", table.dtype, (block, row_len))
    body = [
        dma(Access(indices.buf, indices.dtype, (block,), (1,), indices.off,
                   split.tile_strides((block,)), split.loop_strides((block,))),
            Access(ti, indices.dtype, (block,), (1,)), grid),
        maia.instruction(
            maia.GatherRowsOp,
            table=Access(table.buf, table.dtype, (rows, row_len), (row_len, 1), table.off).to_dict(),
            indices=Access(ti, indices.dtype, (block,), (1,)).to_dict(),
            dst=Access(tr, table.dtype, (block, row_len), (row_len, 1)).to_dict(),
            grid=list(grid)),
        dma(Access(tr, table.dtype, (block, row_len), (row_len, 1)),
            Access(out.buf, out.dtype, (block, row_len), (row_len, 1), out.off,
                   split.tile_strides((block * row_len,)),
                   split.loop_strides((block * row_len,))), grid, queue=1),
    ]
    kernel.body.extend(loop(split.trips, body))
