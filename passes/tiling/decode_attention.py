"""Tiling of single-query ``maia.attention`` (one decode step): split-K flash decoding.

With one query row per head (``Sq == 1``) the flash-attention jobs of
`passes/tiling/attention.py` are ``B * H`` one-row blocks, each streaming every key of
its head: a GQA group's ``G`` heads read the same K/V ``G`` times, and fewer jobs than
tiles leave tiles idle while every job walks the whole cache. Here instead:

* the ``G`` query heads sharing a K/V head are the rows of one block (``[G, D]``), so
  K/V are read once per K/V head;
* the keys are cut into ``S`` chunks spread over the tiles (jobs ``(B, Hkv, S)``), each
  chunk a loop of ``bk``-key blocks with the online softmax; the last ``Sk mod bk`` keys
  (e.g. the new token's row after a ``[past, new]`` cache concat) are one more chunk on
  ``B * Hkv`` tiles;
* each chunk leaves its unnormalized ``O_i``, row max ``m_i`` and row sum ``l_i`` in a
  small activation buffer, and a combine step per row computes
  ``w_i = exp(m_i - max m)``, ``O = (w @ O_parts) / sum(w * l)`` (Dao et al.,
  "Flash-Decoding", 2023).

Both phases are one kernel: the planner puts the partials in CSRAM.

**Narrow products** (``fmt = "bf16"``, set by `quantize` when the spec's activations are
narrow, as for the flash kernel): both products run on the TTU in bf16 with fp32
accumulation -- the scaled query rows stored as bf16, the K/V blocks converted to bf16 by
their DMAs (a bf16 cache as it is, an fp8 one exactly), ``exp_sub`` writing P as bf16 --
while S, the row statistics and the partials stay fp32. A decode step has only ``G``
query rows per K/V head, a fraction of the TTU's native block rows, so in fp32 its
products can take as long as streaming the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from maiac.passes.tiling.common import (
    Access,
    Budget,
    Kernel,
    SoftmaxState,
    Tensor,
    align,
    at_least_one,
    divisors,
    dma,
    loop,
    mm,
    online_softmax,
    split_jobs,
    vec,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize

MAX_BK = 1024  # keys per block
F32 = "f32"


def applies(dims: Sequence[int], n_ins: int, causal: bool) -> bool:
    """One query row per head; a mask operand or causality (a no-op for one row at the
    end of the keys) are fine."""
    b, hkv, g, sq, sk, d = dims
    return sq == 1 and sk >= 2


def _scratch(rows: int, bk: int, d: int, k_size: int, v_size: int, m_size: int | None,
             narrow: int = 0) -> int:
    """TSRAM bytes of one job; ``narrow``: the bytes of the products' format (bf16: 2),
    0 for fp32 (then K/V blocks keep their storage type)."""
    if narrow:
        k_size = v_size = narrow
    total = 2 * align(rows * d * 4) + align(bk * d * k_size) + align(bk * d * v_size)
    total += align(rows * bk * 4) + (align(rows * bk * m_size) if m_size else 0)
    if narrow:  # the bf16 copies of the scaled q rows and of P
        total += align(rows * d * narrow) + align(rows * bk * narrow)
    return total + 6 * align(rows * 4)


def choose_blocks(b: int, hkv: int, g: int, sk: int, d: int, sizes: Sequence[int],
                  masked: bool, budget: Budget, narrow: int = 0) -> tuple[int, int]:
    """(bk, chunks): key block and number of key chunks minimizing the modeled time."""
    _, k_size, v_size, m_size = sizes
    heads = b * hkv
    per_head = max(1, budget.n_tiles // heads)
    best: tuple[float, int, int] | None = None
    cands = {x for x in divisors(sk) if x <= MAX_BK}
    cands |= {x for x in divisors(sk - 1) if x <= MAX_BK and x > 1}
    cands |= {1 << p for p in range(4, 11)}
    for bk in sorted(cands):
        if bk > sk:
            continue
        if _scratch(g, bk, d, k_size, v_size, m_size if masked else None,
                    narrow) > budget.tsram_bytes:
            continue
        nb, rest = divmod(sk, bk)
        chunks = max(x for x in divisors(nb) if x <= per_head)
        per_chunk = nb // chunks
        waves = -(-heads * chunks // budget.n_tiles)
        block = ((k_size + v_size) * bk * d + (m_size * g * bk if masked else 0)) / budget.tile_bw
        step = block + 3 * budget.dma_latency_s + 12 * budget.instr_overhead_s
        cost = waves * per_chunk * step
        if rest:
            cost += (k_size + v_size) * rest * d / budget.tile_bw + 3 * budget.dma_latency_s
        if best is None or cost < best[0] - 1e-15:
            best = (cost, bk, chunks)
    if best is None:
        raise MaiacError("no decode attention block fits TSRAM")
    return best[1], best[2]


def tile_decode_attention(kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                          out: Tensor, budget: Budget, dims: Sequence[int],
                          views: dict[str, Sequence[int]], scale: float,
                          partial: Callable[[str, tuple[int, ...]], Tensor],
                          out_view: Sequence[int] | None = None,
                          zero_empty_rows: bool = False, fmt: str = F32) -> None:
    """Append the split-K decode attention of ``out = attention(q, k, v, mask)``.

    ``partial(name, shape)`` makes an f32 activation buffer for the per-chunk partials;
    ``zero_empty_rows``: a row with every key masked gives 0, not 0/0; ``fmt``: the TTU
    format of both products (``f32`` or ``bf16``).
    """
    b, hkv, g, sq, sk, d = dims
    if fmt not in (F32, "bf16"):
        raise MaiacError(f"op '{kernel.op}': decode attention runs in f32 or bf16, not {fmt}")
    narrow = fmt != F32
    sizes = [itemsize(t.dtype) for t in (q, k, v)] + [itemsize(mask.dtype) if mask else 4]
    try:
        bk, chunks = choose_blocks(b, hkv, g, sk, d, sizes, mask is not None, budget,
                                   itemsize(fmt) if narrow else 0)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' (decode attention, head dim {d}): no block fits "
                         f"TSRAM ({budget.tsram_bytes} bytes per tile)") from err
    nb, rest = divmod(sk, bk)
    per_chunk = nb // chunks
    parts = chunks + (1 if rest else 0)
    o_part = partial("o_part", (b, hkv, g, parts, d))
    m_part = partial("m_part", (b, hkv, g, parts))
    l_part = partial("l_part", (b, hkv, g, parts))

    k_dtype, v_dtype = (fmt, fmt) if narrow else (k.dtype, v.dtype)
    tq = kernel.scratch_buffer("q", F32, (g, d))
    tq_mm = kernel.scratch_buffer("q_" + fmt, fmt, (g, d)) if narrow else tq
    tk = kernel.scratch_buffer("kT", k_dtype, (d, bk))
    tv = kernel.scratch_buffer("v", v_dtype, (bk, d))
    ts = kernel.scratch_buffer("s", F32, (g, bk))
    tp = kernel.scratch_buffer("p_" + fmt, fmt, (g, bk)) if narrow else ts
    to = kernel.scratch_buffer("o", F32, (g, d))
    m, m_new, m_blk, alpha, l_sum, r_sum = (kernel.scratch_buffer(n, F32, (g, 1)) for n in
                                            ("m", "m_new", "m_blk", "alpha", "l", "rowsum"))
    tm = kernel.scratch_buffer("mask", mask.dtype, (g, bk)) if mask is not None else None

    def local(buf: str, shape: tuple[int, int], dtype: str = F32) -> Access:
        return Access(buf, dtype, shape, (shape[1], 1))

    m_acc, mn_acc, mb_acc, a_acc, l_acc, r_acc = (
        local(x, (g, 1)) for x in (m, m_new, m_blk, alpha, l_sum, r_sum))
    o_acc = local(to, (g, d))
    q_mm = local(tq_mm, (g, d), fmt)

    def phase(first_key: int, width: int, blocks: int, n_chunks: int, index0: int) -> list:
        """Chunks of ``blocks`` key blocks of ``width`` keys from key ``first_key``; chunk
        ``c`` writes partial ``index0 + c``."""
        split = split_jobs((b, hkv, n_chunks), budget.n_tiles)
        grid = split.grid
        chunk_keys = blocks * width
        s_acc = local(ts, (g, width))
        p_acc = local(tp, (g, width), fmt)  # P, the second product's a
        kt = local(tk, (d, width), k_dtype)
        vb = local(tv, (width, d), v_dtype)

        def src(t: Tensor, name: str, shape: tuple[int, int], j: int, inner: bool) -> Access:
            off, s_b, s_h, s_g, s_row, s_col = views[name]
            if name == "q":
                steps, strides, key = (s_b, s_h, 0), (s_g, s_col), 0
            elif name == "mask":
                steps, strides, key = (s_b, s_h, chunk_keys * s_col), (s_g, s_col), s_col
            else:
                strides = (s_col, s_row) if name == "k" else (s_row, s_col)
                steps, key = (s_b, s_h, chunk_keys * s_row), s_row
            ls = split.loop_strides(steps) + ((width * key,) if inner else ())
            return Access(t.buf, t.dtype, shape, strides,
                          t.off + off + (first_key + j * width) * key,
                          split.tile_strides(steps), ls)

        body = [dma(src(q, "q", (g, d), 0, False), local(tq, (g, d)), grid),
                vec("scale", [local(tq, (g, d))], q_mm, grid, scale=float(scale))]

        def key_block(j: int, inner: bool) -> list:
            ops = [dma(src(k, "k", (d, width), j, inner), kt, grid),
                   dma(src(v, "v", (width, d), j, inner), vb, grid, queue=1),
                   mm(q_mm, kt, s_acc, grid, accumulate=False, fmt=fmt)]
            if mask is not None and tm is not None:
                mb = local(tm, (g, width), mask.dtype)
                ops += [dma(src(mask, "mask", (g, width), j, inner), mb, grid),
                        vec("add", [s_acc, mb], s_acc, grid)]
            if j == 0 and not inner:  # the first block's max goes straight to m
                first = SoftmaxState(m_acc, m_acc, mb_acc, a_acc, l_acc, r_acc, o_acc)
                return ops + online_softmax(first, s_acc, p_acc, vb, grid, fmt, True)
            state = SoftmaxState(m_acc, mn_acc, mb_acc, a_acc, l_acc, r_acc, o_acc)
            return ops + online_softmax(state, s_acc, p_acc, vb, grid, fmt, False) + [
                vec("copy", [mn_acc], m_acc, grid)]

        body += key_block(0, inner=False)
        if blocks > 1:
            body += loop((blocks - 1,), key_block(1, inner=True))
        # partials: rows of [B, Hkv, G, parts(, D)]
        o_steps = (hkv * g * parts * d, g * parts * d, d)
        s_steps = (hkv * g * parts, g * parts, 1)
        for acc, t, shape, strides, steps in (
                (o_acc, o_part, (g, d), (parts * d, 1), o_steps),
                (m_acc, m_part, (g, 1), (parts, 1), s_steps),
                (l_acc, l_part, (g, 1), (parts, 1), s_steps)):
            off = index0 * steps[-1]
            body.append(dma(acc, Access(t.buf, F32, shape, strides, t.off + off,
                                        split.tile_strides(steps), split.loop_strides(steps)),
                            grid, queue=1))
        return loop(split.trips, body)

    kernel.body.extend(phase(0, bk, per_chunk, chunks, 0))
    if rest:
        kernel.body.extend(phase(nb * bk, rest, 1, 1, chunks))
    kernel.body.extend(_combine(kernel, o_part, m_part, l_part, out, budget, dims, parts,
                                out_view, zero_empty_rows))
    kernel.flops += b * hkv * g * sk * (4 * d + 8)


def _combine(kernel: Kernel, o_part: Tensor, m_part: Tensor, l_part: Tensor, out: Tensor,
             budget: Budget, dims: Sequence[int], parts: int,
             out_view: Sequence[int] | None, zero_empty_rows: bool = False) -> list:
    """Per row: ``w = exp(m - max m)``, ``O = (w @ O_parts) / sum(w * l)`` (the sum is
    >= 1 unless no key of the row is visible; ``zero_empty_rows``: divided by max(sum, 1))."""
    b, hkv, g, sq, sk, d = dims
    split = split_jobs((b, hkv, g), budget.n_tiles)
    grid = split.grid
    tm = kernel.scratch_buffer("c_m", F32, (1, parts))
    tl = kernel.scratch_buffer("c_l", F32, (1, parts))
    top = kernel.scratch_buffer("c_o", F32, (parts, d))
    tmax = kernel.scratch_buffer("c_max", F32, (1, 1))
    tsum = kernel.scratch_buffer("c_sum", F32, (1, 1))
    tres = kernel.scratch_buffer("c_out", F32, (1, d))
    m_acc, l_acc = Access(tm, F32, (1, parts), (parts, 1)), Access(tl, F32, (1, parts), (parts, 1))
    o_acc = Access(top, F32, (parts, d), (d, 1))
    mx, sm = Access(tmax, F32, (1, 1), (1, 1)), Access(tsum, F32, (1, 1), (1, 1))
    res = Access(tres, F32, (1, d), (d, 1))
    s_steps = (hkv * g * parts, g * parts, parts)
    o_steps = tuple(s * d for s in s_steps)

    def rows(t: Tensor, shape: tuple[int, int], steps: tuple[int, ...]) -> Access:
        return Access(t.buf, F32, shape, (shape[1], 1), t.off, split.tile_strides(steps),
                      split.loop_strides(steps))

    h = hkv * g
    if out_view is None:
        out_view = (0, h * sq * d, g * sq * d, sq * d, d, 1)
    off, s_b, s_hkv, s_g, s_row, s_col = out_view
    out_steps = (s_b, s_hkv, s_g)
    body = [dma(rows(m_part, (1, parts), s_steps), m_acc, grid),
            dma(rows(l_part, (1, parts), s_steps), l_acc, grid, queue=1),
            dma(rows(o_part, (parts, d), o_steps), o_acc, grid),
            vec("reduce_max", [m_acc], mx, grid),
            vec("exp_sub", [m_acc, mx], m_acc, grid),
            vec("mul", [m_acc, l_acc], l_acc, grid),
            vec("reduce_sum", [l_acc], sm, grid),
            *(at_least_one(sm, mx, grid) if zero_empty_rows else []),
            mm(m_acc, o_acc, res, grid, accumulate=False),
            vec("div", [res, sm], res, grid),
            dma(res, Access(out.buf, out.dtype, (1, d), (s_row, s_col), out.off + off,
                            split.tile_strides(out_steps), split.loop_strides(out_steps)),
                grid, queue=1)]
    return loop(split.trips, body)
