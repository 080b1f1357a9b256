"""Tiling of TTU matmuls: ``C[..., M, N] = A[..., M, K] @ B[..., K, N] (+ bias, act)``.

Jobs are ``(batch..., M / bm, N / bn)`` output blocks; each runs a K loop of
``bk``-deep partial products accumulated in fp32 in TSRAM. Block sizes come from a small
cost model: per-tile time = waves × max(compute, HBM streaming), with every candidate's
working set inside TSRAM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from maiac.passes.tiling.common import (
    Access,
    Budget,
    JobSplit,
    Kernel,
    Tensor,
    align,
    broadcast_strides,
    contiguous,
    divisors,
    dma,
    loop,
    mm,
    split_jobs,
    vec,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize


def choose_blocks(batch: int, m: int, n: int, k: int, a_size: int, b_size: int,
                  budget: Budget, extra_row_bytes: int = 0) -> tuple[int, int, int]:
    """(bm, bn, bk) minimizing the modeled time of the matmul on ``budget.n_tiles`` tiles."""
    best: tuple[float, int, int, int] | None = None
    for bm in divisors(m):
        for bn in divisors(n):
            fixed = align(bm * bn * 4) + align(bn * extra_row_bytes)
            bk = _deepest_k(k, bm, bn, a_size, b_size, budget.tsram_bytes - fixed)
            if bk is None:
                continue
            jobs = batch * (m // bm) * (n // bn)
            waves = math.ceil(jobs / budget.n_tiles)
            compute = 2 * bm * bn * k / budget.tile_flops
            stream = (bm * k * a_size + k * bn * b_size + bm * bn * 4) / budget.tile_bw
            overhead = budget.instr_overhead_s * 3 * (k // bk)
            cost = waves * (max(compute, stream) + overhead)
            if best is None or cost < best[0] - 1e-15:
                best = (cost, bm, bn, bk)
    if best is None:
        raise MaiacError("no matmul block fits TSRAM")
    return best[1], best[2], best[3]


def _deepest_k(k: int, bm: int, bn: int, a_size: int, b_size: int, room: int) -> int | None:
    for bk in reversed(divisors(k)):
        if align(bm * bk * a_size) + align(bk * bn * b_size) <= room:
            return bk
    return None


def tile_matmul(kernel: Kernel, a: Tensor, b: Tensor, out: Tensor, budget: Budget,
                bias: Tensor | None = None, act: str | None = None, fmt: str = "f32",
                residual: Tensor | None = None, residual_fn: str = "add") -> None:
    """Append the instructions of ``out = act(a @ b + bias) <residual_fn> residual``.

    The residual (any shape broadcasting to ``out``) is DMA'd block by block into TSRAM
    and combined before the result's single store: no extra HBM round trip of ``out``.
    """
    *batch_shape, m, n = out.shape
    k = a.shape[-1]
    batch_shape = tuple(batch_shape)
    a_batch = broadcast_strides(a.shape[:-2], batch_shape) if batch_shape else ()
    b_batch = broadcast_strides(b.shape[:-2], batch_shape) if batch_shape else ()
    a_batch = tuple(s * m * k for s in a_batch)
    b_batch = tuple(s * k * n for s in b_batch)
    c_batch = tuple(s * m * n for s in contiguous(batch_shape)) if batch_shape else ()
    nbatch = math.prod(batch_shape)
    extra = itemsize(bias.dtype) if bias is not None else 0
    if residual is not None:  # a [bm, bn] block per job, charged per row of bn
        extra += itemsize(residual.dtype) * m
    try:
        bm, bn, bk = choose_blocks(nbatch, m, n, k, itemsize(a.dtype), itemsize(b.dtype),
                                   budget, extra)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' (matmul {m}x{k} @ {k}x{n}): no tiling fits "
                         f"TSRAM ({budget.tsram_bytes} bytes per tile)") from err
    extents = batch_shape + (m // bm, n // bn)
    split = split_jobs(extents, budget.n_tiles)
    grid = split.grid
    a_steps = a_batch + (bm * k, 0)
    b_steps = b_batch + (0, bn)
    c_steps = c_batch + (bm * n, bn)
    ta = kernel.scratch_buffer("a", a.dtype, (bm, bk))
    tb = kernel.scratch_buffer("b", b.dtype, (bk, bn))
    tc = kernel.scratch_buffer("c", "f32", (bm, bn))
    nk = k // bk
    outer_a = split.loop_strides(a_steps)
    outer_b = split.loop_strides(b_steps)

    def step(k_index: int, inner: bool) -> list:
        a_ls = outer_a + ((bk,) if inner else ())
        b_ls = outer_b + ((bk * n,) if inner else ())
        src_a = Access(a.buf, a.dtype, (bm, bk), (k, 1), a.off + k_index * bk,
                       split.tile_strides(a_steps), a_ls)
        src_b = Access(b.buf, b.dtype, (bk, bn), (n, 1), b.off + k_index * bk * n,
                       split.tile_strides(b_steps), b_ls)
        return [
            dma(src_a, Access(ta, a.dtype, (bm, bk), (bk, 1)), grid, queue=0),
            dma(src_b, Access(tb, b.dtype, (bk, bn), (bn, 1)), grid, queue=1),
            mm(Access(ta, a.dtype, (bm, bk), (bk, 1)), Access(tb, b.dtype, (bk, bn), (bn, 1)),
               Access(tc, "f32", (bm, bn), (bn, 1)), grid, accumulate=k_index > 0 or inner,
               fmt=fmt),
        ]

    body = step(0, inner=False)
    if nk > 1:
        body += loop((nk - 1,), step(1, inner=True))
    c_block = Access(tc, "f32", (bm, bn), (bn, 1))
    if bias is not None:
        tbias = kernel.scratch_buffer("bias", bias.dtype, (bn,))
        bias_steps = tuple(0 for _ in batch_shape) + (0, 1 if bias.shape[-1] > 1 else 0)
        bias_steps = tuple(s * bn for s in bias_steps)
        body.append(dma(Access(bias.buf, bias.dtype, (bn,), (1,), bias.off,
                               split.tile_strides(bias_steps), split.loop_strides(bias_steps)),
                        Access(tbias, bias.dtype, (bn,), (1,)), grid, queue=0))
        body.append(vec("add", [c_block, Access(tbias, bias.dtype, (bm, bn), (0, 1))], c_block,
                        grid))
    if act:
        body.append(vec(act, [c_block], c_block, grid))
    if residual is not None:
        body += _residual(kernel, residual, residual_fn, c_block, out.shape, bm, bn, split,
                          grid)
    body.append(dma(c_block, Access(out.buf, out.dtype, (bm, bn), (n, 1), out.off,
                                    split.tile_strides(c_steps), split.loop_strides(c_steps)),
                    grid, queue=1))
    kernel.body.extend(loop(split.trips, body))
    kernel.flops += 2 * nbatch * m * n * k


def matmul_shapes_ok(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) >= 2 and len(b) >= 2 and a[-1] == b[-2]


def _residual(kernel: Kernel, r: Tensor, fn: str, c_block: Access, out_shape: Sequence[int],
              bm: int, bn: int, split: JobSplit, grid: Sequence[int]) -> list:
    """DMA the residual's [bm, bn] block (broadcast dims read with stride 0) and combine."""
    strides = broadcast_strides(r.shape, out_shape)
    *batch, s_m, s_n = strides
    steps = tuple(batch) + (bm * s_m, bn * s_n)
    tr = kernel.scratch_buffer("residual", r.dtype, (bm, bn))
    local = Access(tr, r.dtype, (bm, bn), (bn, 1))
    return [dma(Access(r.buf, r.dtype, (bm, bn), (s_m, s_n), r.off, split.tile_strides(steps),
                       split.loop_strides(steps)), local, grid, queue=0),
            vec(fn, [c_block, local], c_block, grid)]
