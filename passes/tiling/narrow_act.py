"""Narrow activations between matmuls: quantized once, by their producer.

A quantized matmul (``a_fmt`` set by the `quantize` pass) used to quantize its fp32
activation block on the TVP at every K step of every job, so each row block was
quantized once per column block (the FFN down projection of an 8B prefill: 8 times), and
streamed its fp32 bytes from memory (the 112 MiB FFN activation, from HBM). When the
activation is the result of another matmul that nothing else reads, that matmul's
epilogue quantizes each result block instead (the same row-wise TVP ``quantize`` with
the consumer's parameters: MX/NVFP4 blocks of 32/16 along the consumer's K, which is the
producer's N, or FP8's static scale) and stores the codes; the consumer's K steps DMA
them as they are. The numbers are the same: the consumer would have computed the same
codes from the same fp32 values, block by block.

Layout of the narrow tensor: row ``r`` holds the row's payload (packed codes of all N
elements) then its block scales (``runtime.quant_ops.quantize_rows`` of the whole row),
so a block of columns ``[c0, c0 + w)`` is two slices of each row (`row_pieces`); FP8 rows
are the f8 elements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from maiac.passes.tiling import row_jobs
from maiac.passes.tiling.common import (
    Access,
    Budget,
    JobSplit,
    Kernel,
    Tensor,
    align,
    contiguous,
    dma,
    split_jobs,
    vec,
)
from maiac.runtime import formats as F
from maiac.runtime.memory import itemsize
from maiac.runtime.quant_ops import n_blocks, pack_unit, payload_bytes, row_bytes
from maiac.runtime.timing import VEC_OPS


def _fmt(q: Any) -> F.Format:
    af = q.fmt("a")
    assert af is not None, "a narrow activation needs the consumer's format"
    return af


def narrow_dtype(q: Any) -> str:
    """The storage dtype of activations in ``q``'s ``a`` format (packed bytes, or f8)."""
    af = _fmt(q)
    return "u8" if af.is_blocked else af.name.replace("fp8", "f8")


def narrow_shape(q: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """The narrow tensor of an fp32 activation of ``shape`` (rows along the last axis)."""
    af = _fmt(q)
    *rows, n = shape
    return (*rows, row_bytes(af.name, n) if af.is_blocked else n)


def element_bytes(q: Any) -> float:
    """Bytes per activation element in ``q``'s format (codes and their scales)."""
    af = _fmt(q)
    return af.bits / 8 + 1 / af.block_size if af.is_blocked else 1.0


def column_granule(q: Any) -> int:
    """Columns a narrow block must be a multiple of: whole scale blocks and whole bytes."""
    af = _fmt(q)
    return math.lcm(af.block_size, pack_unit(af.name)) if af.is_blocked else 1


def row_pieces(q: Any, n: int, col0: int, width: int) -> list[tuple[int, int, int]]:
    """The slices of a stored row of ``n`` elements that hold elements ``[col0, col0 +
    width)``: (first column of the stored row, first column in a block row laid out as
    ``quantize`` writes ``width`` elements, columns), in the narrow dtype's elements."""
    af = _fmt(q)
    if not af.is_blocked:
        return [(col0, 0, width)]
    name = af.name
    return [(payload_bytes(name, col0), 0, payload_bytes(name, width)),
            (payload_bytes(name, n) + n_blocks(name, col0), payload_bytes(name, width),
             n_blocks(name, width))]


def block_row(q: Any, width: int) -> int:
    """Columns of a block row of ``width`` elements as ``quantize`` writes it."""
    af = _fmt(q)
    return row_bytes(af.name, width) if af.is_blocked else width


def quantize_params(q: Any) -> dict[str, Any]:
    """The TVP ``quantize`` fields of ``q``'s activation format."""
    af = _fmt(q)
    if not af.is_blocked:
        return {"fmt": af.name, "scale": q.a_scale}
    if af.is_mx:
        return {"fmt": af.name, "scale_mode": q.scale_mode}
    return {"fmt": af.name, "tensor_scale": q.a_tensor_scale}


def mm_operands(q: Any, block: str, rows: int, width: int) -> tuple[Access, dict[str, Any]]:
    """The TTU's ``a`` access and quantized-operand fields for a TSRAM block of ``rows``
    narrow rows of ``width`` elements (laid out as ``quantize`` writes them)."""
    af = _fmt(q)
    dtype = narrow_dtype(q)
    if not af.is_blocked:
        return (Access(block, dtype, (rows, width), (width, 1)),
                {"a_fmt": af.name, "a_tensor_scale": q.a_scale})
    rb, pb = row_bytes(af.name, width), payload_bytes(af.name, width)
    scales = Access(block, dtype, (rows, n_blocks(af.name, width)), (rb, 1), pb)
    return (Access(block, dtype, (rows, pb), (rb, 1)),
            {"a_fmt": af.name, "a_scale": scales.to_dict(), "a_tensor_scale": q.a_tensor_scale})


Strides = Callable[[Sequence[int]], tuple[int, ...]]


def store(kernel: Kernel, q: Any, c_block: Access, dst: Tensor, m: int, n: int, bm: int,
          bn: int, m0: int, n0: int, batch_shape: tuple[int, ...], split: JobSplit,
          grid: Sequence[int], loop_strides: Strides | None = None,
          staged: str | None = None) -> list:
    """Quantize the fp32 ``[bm, bn]`` result block on the TVP and store its codes (and
    scales) into rows ``m0 + ...`` and columns ``n0 + ...`` of the narrow ``dst`` (of an
    ``[..., m, n]`` activation), job by job along ``split`` (``loop_strides``: the
    enclosing loops' strides of a job step, default ``split``'s; ``staged``: the TSRAM
    block for the codes, default a new one)."""
    dtype = narrow_dtype(q)
    width = block_row(q, bn)
    staged = staged or kernel.scratch_buffer("out_q", dtype, (bm, width))
    ops = [vec("quantize", [c_block], Access(staged, dtype, (bm, width), (width, 1)), grid,
               **quantize_params(q))]
    row = dst.shape[-1]
    batch = tuple(s * m * row for s in contiguous(batch_shape)) if batch_shape else ()
    first, second = row_pieces(q, n, n0, bn), row_pieces(q, n, n0 + bn, bn)
    pieces = [(col, local, cols, nxt - col)
              for (col, local, cols), (nxt, _, _) in zip(first, second, strict=True)]
    if len(pieces) == 2 and bn == n:  # whole rows: the codes and scales are laid out
        (col, local, cols, _), (col2, local2, cols2, _) = pieces  # as stored, one DMA
        if col2 == col + cols and local2 == local + cols:
            pieces = [(col, local, cols + cols2, 0)]
    for col, local, cols, col_step in pieces:
        steps = batch + (bm * row, col_step)
        ops.append(dma(Access(staged, dtype, (bm, cols), (width, 1), local),
                       Access(dst.buf, dtype, (bm, cols), (row, 1), dst.off + m0 * row + col,
                              split.tile_strides(steps),
                              (loop_strides or split.loop_strides)(steps)),
                       grid, queue=1))
    return ops


def tile_quantize(kernel: Kernel, a: Tensor, dst: Tensor, q: Any, budget: Budget) -> None:
    """``dst = a`` in ``q``'s activation format, as a kernel of its own: blocks of whole
    rows of ``a`` into TSRAM, quantized on the TVP and stored (`store`), in the jobs
    `row_jobs.plan_row_jobs` plans (every tile, a short first job). A quantized matmul
    whose activation is large (prefill) reads it this way once instead of quantizing
    each block again for every column block of its result.

    Only the first job's load waits for the activation's producer (the jobs are
    unrolled: each instruction gets the waits of its own bytes)."""
    rows, n = math.prod(a.shape[:-1]), a.shape[-1]
    width = block_row(q, n)
    code_row = width * itemsize(narrow_dtype(q))  # bytes of one row's codes
    jobs = row_jobs.required_row_jobs("activation quantize", rows, n,
                                      4 * n + align(math.ceil(code_row)), 0, 4.0,
                                      code_row / n, VEC_OPS["quantize"], 1, budget)
    top = row_jobs.max_rows(jobs)
    sets = [(kernel.scratch_buffer(f"x{s}", "f32", (top, n)),
             kernel.scratch_buffer(f"out_q{s}", narrow_dtype(q), (top, width)))
            for s in range(min(2, len(jobs)))]
    for j, job in enumerate(jobs):
        x, staged = sets[j % 2]
        split = split_jobs((job.tiles, 1), budget.n_tiles)
        block = Access(x, "f32", (job.rows, n), (n, 1))
        kernel.body.append(dma(Access(a.buf, "f32", (job.rows, n), (n, 1),
                                      a.off + job.row0 * n,
                                      split.tile_strides((job.rows * n, 0))),
                               block, split.grid, queue=j % 2))
        kernel.body.extend(store(kernel, q, block, dst, rows, n, job.rows, n, job.row0, 0, (),
                                 split, split.grid, no_loop, staged))


def no_loop(steps: Sequence[int]) -> tuple[int, ...]:
    """`store`'s ``loop_strides`` for a job outside any loop."""
    return ()
