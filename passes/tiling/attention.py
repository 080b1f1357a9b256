"""Tiling of ``maia.attention``: flash attention from MatMul and Vec instructions.

Jobs are ``(B, Hkv, G, Sq / bq)`` query blocks; query head ``h = hkv * G + g`` reads
K/V head ``hkv`` (the G dim has K/V stride 0: GQA without repeated K/V). Each job
loops over ``Sk / bk`` key blocks with the online softmax of FlashAttention (Dao et al.
2022, Alg. 1), so at most a ``[bq, bk]`` block of scores exists, in TSRAM::

    S  = (scale * Q) @ K_jᵀ (+ M_j)        MatMul (Q scaled once per job), Vec add
    m' = max(m, rowmax S)                 Vec reduce_max, max
    a  = exp(m - m'); P = exp(S - m')     Vec exp_sub (0 for -inf - -inf)
    l  = a l + rowsum P;  O = a O + P V_j Vec reduce_sum, mul, add, mul; MatMul (accumulate)
    m  = m'

The first key block is peeled (it initializes m, l, O); the job ends with ``O / l``
and one DMA of the ``[bq, D]`` block to the contiguous ``[B, H, Sq, D]`` result.
"""

from __future__ import annotations

from collections.abc import Sequence

from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    Tensor,
    align,
    divisors,
    dma,
    loop,
    mm,
    prefer,
    split_jobs,
    vec,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize

MAX_BQ = 128  # query rows per job (the TTU's natural M)
MAX_BK = 512  # keys per block


def _tsram_bytes(bq: int, bk: int, d: int, sizes: Sequence[int], masked: bool) -> int:
    """Scratch of one job: Q and O (f32), K and V blocks, scores (+ mask), row stats."""
    _, k, v, m = sizes
    total = 2 * align(bq * d * 4) + align(bk * d * k) + align(bk * d * v)
    total += align(bq * bk * 4) + (align(bq * bk * m) if masked else 0)
    return total + 6 * align(bq * 4)


def choose_blocks(jobs: int, sq: int, sk: int, d: int, sizes: Sequence[int], masked: bool,
                  budget: Budget) -> tuple[int, int]:
    """(bq, bk): enough query blocks for every tile, then the biggest key block that fits."""
    best: tuple[tuple[int, int], int, int] | None = None
    for bq in (x for x in divisors(sq) if x <= MAX_BQ):
        for bk in (x for x in divisors(sk) if x <= MAX_BK):
            if _tsram_bytes(bq, bk, d, sizes, masked) > budget.tsram_bytes:
                continue
            key = prefer(jobs * (sq // bq), bq * bk, budget.n_tiles)
            if best is None or key > best[0]:
                best = (key, bq, bk)
    if best is None:
        raise MaiacError("no attention block fits TSRAM")
    return best[1], best[2]


def tile_attention(kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   out: Tensor, budget: Budget, dims: Sequence[int],
                   views: dict[str, Sequence[int]], scale: float) -> None:
    """Append the flash-attention instructions of ``out = attention(q, k, v, mask)``."""
    b, hkv, g, sq, sk, d = dims
    sizes = [itemsize(t.dtype) for t in (q, k, v)] + [itemsize(mask.dtype) if mask else 4]
    try:
        bq, bk = choose_blocks(b * hkv * g, sq, sk, d, sizes, mask is not None, budget)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' (attention, head dim {d}): no block fits TSRAM "
                         f"({budget.tsram_bytes} bytes per tile)") from err
    split = split_jobs((b, hkv, g, sq // bq), budget.n_tiles)
    grid = split.grid
    nk = sk // bk

    f32 = "f32"
    tq = kernel.scratch_buffer("q", f32, (bq, d))
    tk = kernel.scratch_buffer("kT", k.dtype, (d, bk))
    tv = kernel.scratch_buffer("v", v.dtype, (bk, d))
    ts = kernel.scratch_buffer("s", f32, (bq, bk))
    to = kernel.scratch_buffer("o", f32, (bq, d))
    m, m_new, m_blk, alpha, l_sum, r_sum = (kernel.scratch_buffer(n, f32, (bq, 1)) for n in
                                            ("m", "m_new", "m_blk", "alpha", "l", "rowsum"))
    tm = kernel.scratch_buffer("mask", mask.dtype, (bq, bk)) if mask is not None else None

    def local(buf: str, shape: tuple[int, int], dtype: str = f32) -> Access:
        return Access(buf, dtype, shape, (shape[1], 1))

    s_acc, o_acc = local(ts, (bq, bk)), local(to, (bq, d))
    m_acc, mn_acc, mb_acc, a_acc, l_acc, r_acc = (
        local(x, (bq, 1)) for x in (m, m_new, m_blk, alpha, l_sum, r_sum))

    def src(t: Tensor, name: str, shape: tuple[int, int], transpose: bool,
            key_index: int, inner: bool) -> Access:
        """Block of operand ``name`` for this job (and key block ``key_index``)."""
        off, s_b, s_h, s_g, s_row, s_col = views[name]
        steps = (s_b, s_h, s_g, bq * s_row if name in ("q", "mask") else 0)
        key_step = 0 if name == "q" else bk * (s_col if name == "mask" else s_row)
        strides = (s_col, s_row) if transpose else (s_row, s_col)
        ls = split.loop_strides(steps) + ((key_step,) if inner else ())
        return Access(t.buf, t.dtype, shape, strides, t.off + off + key_index * key_step,
                      split.tile_strides(steps), ls)

    # per job: Q block, scaled once
    body = [dma(src(q, "q", (bq, d), False, 0, False), local(tq, (bq, d)), grid),
            vec("scale", [local(tq, (bq, d))], local(tq, (bq, d)), grid, scale=float(scale))]

    def key_block(j: int, inner: bool) -> list:
        first = j == 0 and not inner
        ops = [dma(src(k, "k", (d, bk), True, j, inner), local(tk, (d, bk), k.dtype), grid),
               dma(src(v, "v", (bk, d), False, j, inner), local(tv, (bk, d), v.dtype), grid,
                   queue=1),
               mm(local(tq, (bq, d)), local(tk, (d, bk), k.dtype), s_acc, grid, accumulate=False)]
        if mask is not None and tm is not None:
            ops += [dma(src(mask, "mask", (bq, bk), False, j, inner),
                        local(tm, (bq, bk), mask.dtype), grid),
                    vec("add", [s_acc, local(tm, (bq, bk), mask.dtype)], s_acc, grid)]
        if first:
            ops += [vec("reduce_max", [s_acc], m_acc, grid),
                    vec("exp_sub", [s_acc, m_acc], s_acc, grid),
                    vec("reduce_sum", [s_acc], l_acc, grid),
                    mm(s_acc, local(tv, (bk, d), v.dtype), o_acc, grid, accumulate=False)]
            return ops
        ops += [vec("reduce_max", [s_acc], mb_acc, grid),
                vec("max", [m_acc, mb_acc], mn_acc, grid),
                vec("exp_sub", [m_acc, mn_acc], a_acc, grid),
                vec("exp_sub", [s_acc, mn_acc], s_acc, grid),
                vec("reduce_sum", [s_acc], r_acc, grid),
                vec("mul", [l_acc, a_acc], l_acc, grid),
                vec("add", [l_acc, r_acc], l_acc, grid),
                vec("mul", [o_acc, a_acc], o_acc, grid),
                mm(s_acc, local(tv, (bk, d), v.dtype), o_acc, grid, accumulate=True),
                vec("copy", [mn_acc], m_acc, grid)]
        return ops

    body += key_block(0, inner=False)
    if nk > 1:
        body += loop((nk - 1,), key_block(1, inner=True))
    h = hkv * g
    out_steps = (h * sq * d, g * sq * d, sq * d, bq * d)
    body += [vec("div", [o_acc, l_acc], o_acc, grid),
             dma(o_acc, Access(out.buf, out.dtype, (bq, d), (d, 1), out.off,
                           split.tile_strides(out_steps), split.loop_strides(out_steps)),
                 grid, queue=1)]
    kernel.body.extend(loop(split.trips, body))
    kernel.flops += b * h * sq * sk * (4 * d + 8)
