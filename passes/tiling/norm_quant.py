"""A norm whose result only feeds quantized matmuls stores it in their activation format.

Prefill's ``rmsnorm`` (or ``layernorm``) before q/k/v and before the FFN gate wrote its
fp32 rows to memory; a kernel of its own (`narrow_act.tile_quantize`) then read them back
and stored the codes the matmuls load. Here the norm's kernel does both: each job loads
whole rows, normalizes them on the TVP, quantizes the normalized block (the same
row-wise ``quantize`` with the consumers' parameters) and stores only the codes (and
their scales): one kernel boundary less between the matmuls, and the fp32 rows never go
through memory (unless something else reads them). The numbers are the same: the
quantize kernel computed the same codes from the same fp32 values.

Jobs are blocks of whole rows sized as `narrow_act.quantize_rows` sizes the quantize
kernel's (load, TVP and store pipeline across jobs); the norm's scale (and bias) rows are
loaded once, before the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from maiac.passes.tiling import narrow_act
from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    Tensor,
    dma,
    loop,
    split_jobs,
    vec,
)
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
    (`narrow_act.quantize_rows`)."""
    x = ins[0]
    rows, n = math.prod(x.shape[:-1]), x.shape[-1]
    stored = narrow_act.block_row(q, n) / n + (4 if fp32_out is not None else 0)
    # two fp32 blocks: the loaded rows and the normalized ones
    bm = narrow_act.quantize_rows(rows, n, stored, budget,
                                  tvp_ops=VEC_OPS.get(fn, 1) + VEC_OPS["quantize"],
                                  f32_blocks=2, fixed_bytes=4 * n * (len(ins) - 1))
    split = split_jobs((rows // bm, 1), budget.n_tiles)  # (row blocks, one column block)
    grid = split.grid
    trips = split.loops[0]
    tx = kernel.scratch_buffer("x", "f32", (bm, n))
    tn = kernel.scratch_buffer("normed", "f32", (bm, n))
    staged = kernel.scratch_buffer("out_q", narrow_act.narrow_dtype(q),
                                   (bm, narrow_act.block_row(q, n)))
    # the scale (and bias) rows: once, read by every job with a stride-0 row
    consts = []
    for i, t in enumerate(ins[1:]):
        name = kernel.scratch_buffer(f"param{i}", "f32", (n,))
        kernel.body.append(dma(Access(t.buf, "f32", (n,), (1,), t.off),
                               Access(name, "f32", (n,), (1,)), grid, queue=2 + i % 2))
        consts.append(Access(name, "f32", (bm, n), (0, 1)))
    x_block = Access(tx, "f32", (bm, n), (n, 1))
    normed = Access(tn, "f32", (bm, n), (n, 1))

    def job(index: int, looped: bool) -> list:
        """Job ``index`` of every tile (``looped``: and the later ones, one per trip);
        the first job runs before the loop so only its load waits for the producer (see
        `narrow_act.tile_quantize`)."""
        def loop_strides(steps: Sequence[int]) -> tuple[int, ...]:
            return (steps[0],) if looped else ()
        row0 = index * bm * n
        ops = [dma(Access(x.buf, "f32", (bm, n), (n, 1), x.off + row0,
                          split.tile_strides((bm * n, 0)), loop_strides((bm * n,))),
                   x_block, grid, queue=0),
               vec(fn, [x_block, *consts], normed, grid, **params)]
        if fp32_out is not None:
            ops.append(dma(normed, Access(fp32_out.buf, "f32", (bm, n), (n, 1),
                                          fp32_out.off + row0,
                                          split.tile_strides((bm * n, 0)),
                                          loop_strides((bm * n,))), grid, queue=1))
        return ops + narrow_act.store(kernel, q, normed, narrow, rows, n, bm, n, index * bm,
                                      0, (), split, grid, loop_strides, staged)
    kernel.body.extend(job(0, False))
    if trips > 1:
        kernel.body.extend(loop((trips - 1,), job(1, True)))
