"""A norm whose result only feeds quantized matmuls stores it in their activation format.

Prefill's ``rmsnorm`` (or ``layernorm``) before q/k/v and before the FFN gate wrote its
fp32 rows to memory; a kernel of its own (`narrow_act.tile_quantize`) then read them back
and stored the codes the matmuls load. Here the norm's kernel does both: each job loads
whole rows, normalizes them on the TVP, quantizes the normalized block (the same
row-wise ``quantize`` with the consumers' parameters) and stores only the codes (and
their scales): one kernel boundary less between the matmuls, and the fp32 rows never go
through memory (unless something else reads them). The numbers are the same: the
quantize kernel computed the same codes from the same fp32 values.

Jobs are blocks of whole rows planned as the quantize kernel's (`row_jobs`: every tile,
a short first job, loads alternating two queues; load, TVP and store pipeline across
jobs); the norm's scale (and bias) rows are loaded once, before the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from maiac.passes.tiling import narrow_act, row_jobs
from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    Tensor,
    align,
    dma,
    split_jobs,
    vec,
)
from maiac.runtime.memory import itemsize
from maiac.runtime.timing import VEC_OPS


def applies(ins: Sequence[Tensor]) -> bool:
    """Whether a norm of ``ins`` (x, scale[, bias]) has the shape this kernel takes: fp32
    rows and per-column parameters of one row each."""
    x = ins[0]
    if x.dtype != "f32" or len(x.shape) < 2:
        return False
    n = x.shape[-1]
    return all(t.dtype == "f32" and math.prod(t.shape) == n and t.shape[-1] == n
               for t in ins[1:])


def tile_norm_quantize(kernel: Kernel, fn: str, ins: Sequence[Tensor],
                       params: dict[str, Any], narrow: Tensor, q: Any, budget: Budget,
                       fp32_out: Tensor | None = None) -> None:
    """``narrow = quantize(fn(*ins))`` in ``q``'s activation format (`narrow_act`), and
    ``fp32_out = fn(*ins)`` as well when given (other readers need the fp32 rows).
    Raises MaiacError when a row does not fit the kernel's share of TSRAM
    (`row_jobs.plan_row_jobs`)."""
    x = ins[0]
    rows, n = math.prod(x.shape[:-1]), x.shape[-1]
    width = narrow_act.block_row(q, n)
    code_row = width * itemsize(narrow_act.narrow_dtype(q))  # bytes of one row's codes
    # per row of a job's block set: the loaded row, the normalized one, its codes
    jobs = row_jobs.required_row_jobs(
        "norm + quantize", rows, n, 8 * n + align(math.ceil(code_row)),
        4 * n * (len(ins) - 1), 4.0, code_row / n + (4 if fp32_out is not None else 0),
        VEC_OPS.get(fn, 1) + VEC_OPS["quantize"], 2, budget)
    top = row_jobs.max_rows(jobs)
    sets = [(kernel.scratch_buffer(f"x{s}", "f32", (top, n)),
             kernel.scratch_buffer(f"normed{s}", "f32", (top, n)),
             kernel.scratch_buffer(f"out_q{s}", narrow_act.narrow_dtype(q), (top, width)))
            for s in range(min(2, len(jobs)))]
    # the scale (and bias) rows: once, read by every job with a stride-0 row
    params_rows = []
    for i, t in enumerate(ins[1:]):
        name = kernel.scratch_buffer(f"param{i}", "f32", (n,))
        kernel.body.append(dma(Access(t.buf, "f32", (n,), (1,), t.off),
                               Access(name, "f32", (n,), (1,)), (budget.n_tiles,),
                               queue=2 + i % 2))
        params_rows.append(name)
    for j, job in enumerate(jobs):
        tx, tn, staged = sets[j % 2]
        r = job.rows
        split = split_jobs((job.tiles, 1), budget.n_tiles)
        grid = split.grid
        x_block = Access(tx, "f32", (r, n), (n, 1))
        normed = Access(tn, "f32", (r, n), (n, 1))
        strides = split.tile_strides((r * n, 0))
        kernel.body.append(dma(Access(x.buf, "f32", (r, n), (n, 1), x.off + job.row0 * n,
                                      strides), x_block, grid, queue=j % 2))
        kernel.body.append(vec(fn, [x_block, *(Access(p, "f32", (r, n), (0, 1))
                                               for p in params_rows)], normed, grid, **params))
        if fp32_out is not None:
            kernel.body.append(dma(normed, Access(fp32_out.buf, "f32", (r, n), (n, 1),
                                                  fp32_out.off + job.row0 * n, strides),
                                   grid, queue=1))
        kernel.body.extend(narrow_act.store(kernel, q, normed, narrow, rows, n, r, n,
                                            job.row0, 0, (), split, grid,
                                            narrow_act.no_loop, staged))
