"""Tiling of TTU matmuls: ``C[..., M, N] = A[..., M, K] @ B[..., K, N] (+ bias, act)``.

Jobs are ``(batch..., M / bm, N / bn)`` output blocks; each runs a K loop of
``bk``-deep partial products accumulated in fp32 in TSRAM. Block sizes come from a small
cost model: per-tile time = waves × max(compute, HBM streaming), with every candidate's
working set inside TSRAM.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from maiac.passes.tiling import narrow_act
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
from maiac.runtime import formats as F
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize
from maiac.runtime.quant_ops import n_blocks, pack_unit, payload_bytes, row_bytes
from maiac.runtime.timing import VEC_OPS, ttu_format


@dataclass(frozen=True)
class MatmulQuant:
    """Quantized operands of a matmul, as the `quantize` pass set them (passes/quantize.py).

    ``w_fmt``: the format of ``b``'s stored payload (u8 packed codes [K, N*bits/8], or f8
    [K, N]; bf16 needs nothing here), ``w_scales`` its scale constant; ``a_fmt``: the
    activation format, quantized per K block by a TVP ``quantize`` before each TTU step.
    """

    w_fmt: str = ""
    w_scales: Tensor | None = None
    w_tensor_scale: float | None = None
    a_fmt: str = ""
    a_scale: float | None = None
    a_tensor_scale: float | None = None
    scale_mode: str = "floor"

    def fmt(self, which: str) -> F.Format | None:
        """The narrow format of operand ``a``/``w`` (None: plain dtype, incl. bf16)."""
        name = self.a_fmt if which == "a" else self.w_fmt
        return F.get_format(name) if name and name != "bf16" else None


def _quant_sizes(q: MatmulQuant, a_size: float, b_size: float
                 ) -> tuple[float, float, int, int]:
    """Bytes per element of a and b in TSRAM, and the K / N block granularity."""
    k_step, n_step = 1, 1
    af, wf = q.fmt("a"), q.fmt("w")
    if q.a_fmt == "bf16":
        a_size = 2
    if af is not None:  # fp32 staging + quantized copy (+ its scales)
        a_size = 4 + af.bits / 8 + (1 / af.block_size if af.is_blocked else 0)
        k_step = af.block_size if af.is_blocked else 1
    if wf is not None:
        b_size = wf.bits / 8 + (1 / wf.block_size if wf.is_blocked else 0)
        if wf.is_blocked:
            k_step = math.lcm(k_step, wf.block_size)
            n_step = pack_unit(wf.name)
    return a_size, b_size, k_step, n_step


def choose_blocks(batch: int, m: int, n: int, k: int, a_size: float, b_size: float,
                  budget: Budget, extra_row_bytes: int = 0, k_step: int = 1,
                  n_step: int = 1, block_bytes: int = 0, a_src: float | None = None,
                  speedup: float = 1.0, quant_ops: float = 0.0, b_src: float | None = None,
                  epilogue_ops: float = 0.0, outputs: int = 1,
                  ragged: bool = False, ragged_k: bool = False,
                  with_peel: bool = False, rates: OperandRates | None = None,
                  row_bytes: int = 0) -> tuple[int, ...]:
    """(bm, bn, bk) minimizing the modeled time of the matmul on ``budget.n_tiles`` tiles.

    ``bm``/``bn`` are multiples of the TTU's native 32 x K x 32 block (or the whole dim);
    with ``ragged`` they need not divide M / N: the tails are costed as the kernels
    `tile_matmul` gives them (each tiled by its own divisor blocks). ``bk`` is a multiple
    of ``k_step`` (or all of K) and ``bn`` of ``n_step`` (quantized operands: whole scale
    blocks along K, whole packed bytes along N); ``with_peel``: a fourth value, the
    column blocks `_regions` peels into a kernel of their own. ``a_size`` and ``b_size`` are TSRAM
    bytes per element, ``a_src``/``b_src`` the bytes per element they are read with
    (default: the TSRAM size); ``block_bytes``: further TSRAM bytes per element of a
    ``[bm, bn]`` block (a residual); ``speedup``: the format's TTU peak over f32;
    ``quant_ops``: TVP ops per element of ``a`` (activation quantize, per K step);
    ``epilogue_ops``: TVP ops per output element (bias, activation, residual);
    ``outputs``: products per job sharing the ``a`` block (2: a gated matmul, whose ``b``
    blocks and ``[bm, bn]`` accumulators come in pairs); ``ragged_k``: ``bk`` need not
    divide K (a first, shorter K step takes the remainder; plain operands only);
    ``rates``: where the activation, the residual and the result stream from (default:
    all HBM at the sustained rate); ``row_bytes``: further TSRAM bytes per row of a
    ``[bm, bn]`` block, loaded per job whatever ``bn`` (a RoPE epilogue's cos/sin rows).

    Each candidate is costed as `_job_time` says: K steps overlapped (DMA, TVP, TTU in a
    pipeline) only when the `double-buffer` pass can give the streamed blocks twins, else
    one after the other.
    """
    args = (batch, k, a_size, b_size, budget, extra_row_bytes, k_step, n_step, block_bytes,
            a_src, speedup, quant_ops, b_src, epilogue_ops, outputs, ragged_k,
            rates or OperandRates(), row_bytes)
    if budget.fixed_block:
        slack = 4 * 64 if (k_step > 1 or n_step > 1 or a_size % 1 or b_size % 1) else 0
        fixed = _fixed_blocks(m, n, k, a_size, b_size, budget, extra_row_bytes, k_step, n_step,
                              slack)
        if fixed is not None:
            return (*fixed, 0) if with_peel else fixed
    best = _best_blocks(m, n, ragged, *args)
    if best is None:
        raise MaiacError("no matmul block fits TSRAM")
    return best[1:5] if with_peel else best[1:4]


@lru_cache(maxsize=4096)
def _best_blocks(m: int, n: int, ragged: bool, batch: int, k: int, a_size: float,
                 b_size: float, budget: Budget, extra_row_bytes: int, k_step: int, n_step: int,
                 block_bytes: int, a_src: float | None, speedup: float, quant_ops: float,
                 b_src: float | None, epilogue_ops: float, outputs: int, ragged_k: bool,
                 rates: OperandRates, row_bytes: int = 0
                 ) -> tuple[float, int, int, int, int] | None:
    """(cost, bm, bn, bk, peel) of the best candidate (see `choose_blocks`; ``peel``:
    the column blocks of the main region `_regions` runs as a kernel of their own), or
    None."""
    args = (batch, k, a_size, b_size, budget, extra_row_bytes, k_step, n_step, block_bytes,
            a_src, speedup, quant_ops, b_src, epilogue_ops, outputs, ragged_k, rates,
            row_bytes)
    slack = 4 * 64 if (k_step > 1 or n_step > 1 or a_size % 1 or b_size % 1) else 0
    gm, gn = budget.native_m, math.lcm(budget.native_n, n_step)
    if ragged:
        ms, ns = (block_candidates(m, gm, budget.n_tiles),
                  [b for b in block_candidates(n, gn, budget.n_tiles) if b % n_step == 0])
    else:
        ms = [d for d in divisors(m) if d % gm == 0 or d == m]
        ns = [d for d in divisors(n) if d % n_step == 0 and (d % gn == 0 or d == n)]
    found: list[tuple[float, float, int, int, int, int]] = []  # (cost, moved, bm, bn, bk, peel)
    for bm in ms:
        for bn in ns:
            best: tuple[float, int, int, int, int] | None = None
            fixed = (outputs * align(bm * bn * 4) + align(bn * extra_row_bytes)
                     + align(bm * bn * block_bytes) + align(bm * row_bytes) + slack
                     + align(math.ceil(bm * bn * rates.out_quant_bytes)))
            split = split_jobs((batch, m // bm, n // bn), budget.n_tiles)
            shape = _JobShape(bm, bn, k, a_size if a_src is None else a_src,
                              outputs * (b_size if b_src is None else b_src), block_bytes,
                              speedup / outputs, quant_ops, epilogue_ops, split, rates,
                              bm * row_bytes)
            tails = 0.0
            if ragged and (m % bm or n % bn):
                tails = _tails_cost(m, n, bm, bn, args)
                if tails is None:
                    continue
            jobs = math.prod(split.loops)
            # the per-job blocks (accumulators, residual, bias) the `double-buffer` pass
            # twins across jobs when they fit, so a job's epilogue and store overlap the
            # next job's K steps
            per_job = fixed - slack
            for twins, job_twins in ((True, True), (True, False), (False, False)):
                if job_twins and not _twinnable(split.trips):
                    continue
                room = budget.tsram_bytes - fixed - (per_job if job_twins else 0)
                bk = _deepest_k(k, bm, bn, a_size * (1 + twins),
                                outputs * b_size * (1 + twins), room, k_step, ragged_k)
                if bk is None:
                    continue
                cost, bk = min((_grid_cost(shape, d, twins, job_twins, jobs, budget) + tails, d)
                               for d in _k_candidates(k, bk, k_step, twins))
                peel = 0
                if ragged:  # uneven column blocks as a kernel of their own (`wave_peel`)
                    peel, peeled = _peeled_cost(shape, bk, twins, job_twins, budget,
                                                lambda mr, nr: _best_blocks(mr, nr, False,
                                                                            *args))
                    if peel and peeled + tails < cost:
                        cost = peeled + tails
                    else:
                        peel = 0
                if best is None or cost < best[0] - 1e-15:
                    best = (cost, bm, bn, bk, peel)
            if best is not None:
                moved = _moved_bytes(batch, m, n, k, bm, bn, shape.a_src, shape.b_src)
                found.append((best[0], moved, *best[1:]))
    if not found:
        if not ragged and (len(ms) < len(divisors(m))):
            # nothing native-shaped fits: any divisor (the TTU pads the block)
            return _best_blocks_any(m, n, *args)
        return None
    return _least_moved(found, m)


# Candidates whose modeled time equals the fastest's (to rounding) are tied. The first
# of them (the smallest blocks along M) stays the choice unless a weight-stationary one
# (all of M in each block: every weight block read by one tile, the activation
# broadcast) moves at most ``LESS_MOVED`` of its bytes into TSRAM. Assumed, not fitted:
# what the cost model leaves out (NoC energy and contention, the machine model's own
# copies) favours fewer bytes, but a marginal saving or a mere reshuffle of N blocks is
# not worth a bigger activation block on the critical path after the previous op, which
# the timing model's prefetch schedule does see.
TIE = 1e-9
LESS_MOVED = 0.75


def _least_moved(found: list[tuple[float, float, int, int, int, int]], m: int
                 ) -> tuple[float, int, int, int, int]:
    """(cost, bm, bn, bk, peel) of the chosen candidate among ``(cost, moved bytes, bm,
    bn, bk, peel)`` of a matmul of ``m`` rows (see ``LESS_MOVED``)."""
    fastest = min(c[0] for c in found)
    tied = [c for c in found if c[0] <= fastest * (1 + TIE)]
    pick = tied[0]
    stationary = [c for c in tied if c[2] == m]
    if stationary:
        least = min(stationary, key=lambda c: c[1])
        if least[1] <= LESS_MOVED * pick[1]:
            pick = least
    cost, _, *blocks = pick
    return (cost, *blocks)


def _k_candidates(k: int, deepest: int, k_step: int, twins: bool) -> list[int]:
    """K blocks worth costing beside the deepest that fits: with twins, the deepest
    divisor of K (whole ``k_step`` units) under it that makes the 3 K steps the
    double-buffered pipeline needs. A job of one or two deep steps loads, multiplies and
    stores one after the other (the narrow tail of a projection: 64 x 64 blocks, K = 4096
    in one step); three shallower steps overlap the loads with the TTU."""
    out = [deepest]
    if twins and -(-k // deepest) < 3:
        shallower = [d for d in divisors(k) if d <= k // 3 and d % k_step == 0]
        if shallower:
            out.append(max(shallower))
    return out


def _grid_cost(shape: _JobShape, bk: int, twins: bool, job_twins: bool, jobs: int,
               budget: Budget) -> float:
    """Modeled time of ``jobs`` waves of ``shape``'s jobs with ``bk``-deep K steps (a job's
    epilogue overlapping the next job's K steps with ``job_twins``)."""
    body, epilogue = _job_parts(shape, bk, twins, budget)
    return jobs * max(body, epilogue) + epilogue if job_twins else jobs * (body + epilogue)


def _moved_bytes(batch: int, m: int, n: int, k: int, bm: int, bn: int, a_src: float,
                 b_src: float) -> float:
    """Bytes the K loops of all ``[bm, bn]`` jobs DMA into TSRAM: each job reads its whole
    ``[bm, K]`` row block of ``a`` and ``[K, bn]`` column block of ``b`` (``b_src``: all
    outputs' bytes per element), so ``a`` is read once per column block and ``b`` once
    per row block. For M up to a few thousand rows, blocking all of M on each tile
    (weight-stationary: each weight block read by one tile, the activation broadcast)
    moves the fewest."""
    rows, cols = -(-m // bm), -(-n // bn)
    return batch * k * (cols * m * a_src + rows * n * b_src)


def _peeled_cost(shape: _JobShape, bk: int, twins: bool, job_twins: bool, budget: Budget,
                 reblock: Callable[[int, int], tuple[float, ...] | None] | None = None
                 ) -> tuple[int, float]:
    """(peeled column blocks, modeled time) of running the job grid as `wave_peel`'s two
    kernels, each part's jobs costed on the tiles it runs on (0 and inf: no peel).
    ``reblock(rows, cols)``: the best (cost, ...) of the peeled columns tiled by blocks
    of their own (`_regions` tiles them so): a last partial wave of big blocks on a few
    tiles becomes finer blocks over more of them (the FFN gate of an 8B prefill: 16
    jobs of 1024 x 64 x 2 on 16 of 36 tiles, a ninth of its time)."""
    *outer, last = shape.split.extents
    peel, _ = wave_peel(shape.split.extents, budget.n_tiles, -(-shape.k // bk))
    if not peel:
        return 0, math.inf
    total = budget.dma_latency_s  # the second kernel
    for cols in (last - peel, peel):
        split = split_jobs((*outer, cols), budget.n_tiles)
        body, epilogue = _job_parts(dataclasses.replace(shape, split=split), bk, twins, budget)
        jobs = math.prod(split.loops)
        part = (jobs * max(body, epilogue) + epilogue if job_twins and _twinnable(split.trips)
                else jobs * (body + epilogue))
        if cols == peel and reblock is not None:
            best = reblock(outer[-1] * shape.bm, peel * shape.bn)
            if best is None:
                return 0, math.inf
            part = best[0]  # its candidates include these blocks
        total += part
    return peel, total


def _best_blocks_any(m: int, n: int, *args: Any) -> tuple[float, int, int, int, int] | None:
    (batch, k, a_size, b_size, budget, extra_row_bytes, k_step, n_step, block_bytes,
     a_src, speedup, quant_ops, b_src, epilogue_ops, outputs, ragged_k, rates,
     row_bytes) = args
    one = dataclasses.replace(budget, native_m=1, native_n=1)
    return _best_blocks(m, n, False, batch, k, a_size, b_size, one, extra_row_bytes, k_step,
                        n_step, block_bytes, a_src, speedup, quant_ops, b_src, epilogue_ops,
                        outputs, ragged_k, rates, row_bytes)


def _tails_cost(m: int, n: int, bm: int, bn: int, args: tuple) -> float | None:
    """Modeled time of the ragged tail kernels of a ``bm x bn`` tiling (None: no fit)."""
    mm_, nn_ = m // bm * bm, n // bn * bn
    total = 0.0
    for mr, nr in ((mm_, n - nn_), (m - mm_, nn_), (m - mm_, n - nn_)):
        if mr and nr:
            best = _best_blocks(mr, nr, False, *args)
            if best is None:
                return None
            total += best[0] + args[4].dma_latency_s  # a kernel of its own
    return total


@dataclass(frozen=True)
class OperandRates:
    """Aggregate bytes/s at which a matmul's activation ``a``, its residual and its result
    move between their buffer and the tiles (0: HBM at the sustained rate). An activation
    the memory planner will likely keep in CSRAM streams at the CSRAM rate, and its bytes
    do not share HBM with the weights' (runtime/timing_costs.py `_dma_time`)."""

    a: float = 0.0
    residual: float = 0.0
    out: float = 0.0
    # > 0: the epilogue quantizes the result into a staging block of this many bytes per
    # element, which is what it stores (`narrow_act`)
    out_quant_bytes: float = 0.0


@dataclass(frozen=True)
class _JobShape:
    """What `_job_time` needs of a ``[bm, bn]`` output block of a K-deep matmul."""

    bm: int
    bn: int
    k: int
    a_src: float  # bytes per element a is read with
    b_src: float  # bytes per element b is read with (all outputs)
    block_bytes: float  # residual bytes per output element
    speedup: float  # TTU peak over f32, divided by the outputs
    quant_ops: float
    epilogue_ops: float
    split: JobSplit
    rates: OperandRates = OperandRates()
    side_bytes: float = 0.0  # bytes per job loaded beside the result block (cos/sin rows)


def _twinnable(trips: tuple[int, ...]) -> bool:
    """Whether `double-buffer` can unroll a job loop of ``trips`` by two."""
    return any(t % 2 == 0 for t in trips) or (len(trips) == 1 and trips[0] >= 3)


def _job_time(s: _JobShape, bk: int, twins: bool, budget: Budget) -> float:
    """Modeled time of one job whose epilogue does not overlap the next (`_job_parts`)."""
    body, epilogue = _job_parts(s, bk, twins, budget)
    return body + epilogue


def _job_parts(s: _JobShape, bk: int, twins: bool, budget: Budget) -> tuple[float, float]:
    """(K steps, epilogue) of one job (one ``[bm, bn]`` block on every tile at once), as
    the timing model charges its instructions (runtime/timing.py):

    * a DMA: max(distinct bytes of all tiles / HBM bandwidth, bytes per tile / NoC
      bandwidth per tile) + the DMA latency; ``a`` is shared by the tiles of one row
      block (broadcast), ``b`` by those of one column block; both share HBM;
    * per K step: DMAs of a and b (own queues), TVP quantize of the a block, TTU;
      with twins (``double-buffer`` applies when the K loop has at least 2 trips) the
      three engines pipeline, so a step costs their max (plus one step to fill);
      without, their sum;
    * per job: the epilogue (TVP ops on the ``[bm, bn]`` block, residual load) and the
      store of the result block.
    """
    sp = s.split.spatial
    tiles = math.prod(sp)
    hbm_bw = budget.tile_bw * budget.n_tiles
    noc = budget.tile_noc_bw or budget.tile_bw
    lat = budget.dma_latency_s

    def dma(per_tile: float, distinct: float, rate: float = 0.0) -> float:
        return max(distinct / (rate or hbm_bw), per_tile / noc) + lat

    a_blk, b_blk = s.bm * bk * s.a_src, bk * s.bn * s.b_src
    a_dist, b_dist = a_blk * sp[0] * sp[1], b_blk * sp[0] * sp[2]
    a_hbm = 0.0 if s.rates.a else a_dist  # an on-chip a does not share HBM with b
    # a and b load on their own queues but share HBM and the NoC into the tiles (the
    # timing model books both per resource, not per queue)
    t_dma = max(dma(a_blk, a_dist, s.rates.a), dma(b_blk, b_dist),
                (a_hbm + b_dist) / hbm_bw + lat, (a_blk + b_blk) / noc + lat)
    # the TTU works in native 32 x K x 32 blocks: a partial block costs a whole one
    pm, pn = (-(-x // g) * g for x, g in ((s.bm, budget.native_m), (s.bn, budget.native_n)))
    t_ttu = 2 * pm * pn * bk / (budget.tile_flops * s.speedup) + budget.instr_overhead_s
    t_tvp = (s.bm * bk * s.quant_ops / budget.tile_vec + budget.instr_overhead_s
             if s.quant_ops and budget.tile_vec else 0.0)
    steps = -(-s.k // bk)  # a ragged K: the remainder is one more (shorter) step
    if twins and steps >= 3:
        body = t_dma + t_tvp + steps * max(t_dma, t_tvp, t_ttu)
    else:
        body = steps * (t_dma + t_tvp + t_ttu)
    c_blk = s.bm * s.bn * (s.rates.out_quant_bytes or 4)
    epilogue = dma(c_blk, c_blk * tiles, s.rates.out)
    if s.block_bytes:
        r_blk = s.bm * s.bn * s.block_bytes
        epilogue += dma(r_blk, r_blk * tiles, s.rates.residual)
    if s.side_bytes:  # one DMA per table, split over two queues: about half each
        epilogue += dma(s.side_bytes / 2, s.side_bytes * sp[0] * sp[1] / 2)
    if s.epilogue_ops and budget.tile_vec:
        epilogue += s.bm * s.bn * s.epilogue_ops / budget.tile_vec + budget.instr_overhead_s
    return body, epilogue


def ttu_speedup(fmt: str, budget: Budget) -> float:
    """The TTU peak of ``fmt`` over the f32 peak (1 when the budget does not say)."""
    peaks = dict(budget.fmt_speedup)
    if not peaks:
        return 1.0
    try:
        return peaks[ttu_format(fmt, SimpleNamespace(ttu_flops=peaks))]  # type: ignore[arg-type]
    except MaiacError:
        return 1.0


def _fixed_blocks(m: int, n: int, k: int, a_size: float, b_size: float, budget: Budget,
                  extra_row_bytes: int, k_step: int, n_step: int,
                  slack: int) -> tuple[int, int, int] | None:
    """The naive baseline's blocks: the largest divisors up to ``budget.fixed_block``
    (no cost model); None when they do not fit TSRAM."""
    size = budget.fixed_block

    def pick(extent: int, step: int) -> int:
        ok = [x for x in divisors(extent) if x <= size and (x % step == 0 or x == extent)]
        return max(ok) if ok else extent
    bm, bn, bk = pick(m, 1), pick(n, n_step), pick(k, k_step)
    need = (align(bm * bn * 4) + align(bn * extra_row_bytes) + slack
            + align(math.ceil(bm * bk * a_size)) + align(math.ceil(bk * bn * b_size)))
    return (bm, bn, bk) if need <= budget.tsram_bytes else None


def _deepest_k(k: int, bm: int, bn: int, a_size: float, b_size: float, room: int,
               k_step: int = 1, ragged: bool = False) -> int | None:
    """The deepest K block that fits ``room``: a divisor of K (a multiple of ``k_step``);
    with ``ragged``, a multiple of ``k_step`` that need not divide K when that takes
    under half the steps (as even as the steps can be: the remainder is the first)."""
    def fits(bk: int) -> bool:
        return align(math.ceil(bm * bk * a_size)) + align(math.ceil(bk * bn * b_size)) <= room

    best = _deepest_divisor(k, fits, k_step)
    if not ragged or k_step <= 0 or k <= k_step:
        return best
    per_k = bm * a_size + bn * b_size
    top = min(k, int(room // max(per_k, 1e-9)) // k_step * k_step)
    while top >= k_step and not fits(top):
        top -= k_step
    if top < k_step:
        return best
    steps = -(-k // top)
    # only where the divisors are poor (K = 32 x a prime: hundreds of 32-deep steps); a
    # divisor that is merely shallower keeps the simpler, evenly alternating K loop
    if best is not None and -(-k // best) < 2 * steps:
        return best
    per_step = -(-k // steps)
    even = -(-per_step // k_step) * k_step  # ceil(K / steps) in whole k_step units
    return even if fits(even) else top


def _deepest_divisor(k: int, fits: Any, k_step: int) -> int | None:
    for bk in reversed(divisors(k)):
        if bk % k_step and bk != k:
            continue
        if fits(bk):
            return bk
    return None


def block_candidates(extent: int, granule: int, n_tiles: int) -> list[int]:
    """Block sizes along a dim of ``extent``: multiples of ``granule`` (the TTU's native 32
    rows/columns, or whole packed bytes) that need not divide ``extent`` (the last block
    is a ragged tail), one per job count up to twice the tiles, plus the divisors that are
    multiples and the whole extent."""
    if extent <= granule:
        return [extent]
    out = {extent} | {d for d in divisors(extent) if d % granule == 0}
    for jobs in range(1, 2 * n_tiles + 1):
        b = -(-extent // jobs)
        out.add(min(extent, -(-b // granule) * granule))
        # ``jobs`` whole blocks and a small ragged tail (2048 rows in 9: 9 x 224 + 32)
        if extent // jobs >= granule:
            out.add(extent // jobs // granule * granule)
    return sorted(out)


@dataclass(frozen=True)
class _Region:
    """A rectangle ``[m0, m0 + mr) x [n0, n0 + nr)`` of the output tiled by ``bm x bn``
    blocks that divide it."""

    m0: int
    mr: int
    n0: int
    nr: int
    bm: int
    bn: int
    bk: int


def wave_peel(extents: tuple[int, ...], n_tiles: int, steps: int = 1 << 30
              ) -> tuple[int, float]:
    """(column blocks to peel off the last job dim, waves): a job grid whose count does
    not split evenly over the tiles (512 column blocks on 36 tiles: 32 tiles x 16 waves)
    runs fewer waves as a main part that does (504 = 36 x 14) and the peeled blocks as a
    kernel of their own right after it (8 tiles x 1): 15 waves. The second kernel's
    pipeline fill and drain (about a K step's load and an epilogue: 2 / ``steps`` of a
    job of ``steps`` K steps) count against it; 0 peeled when that is not shorter."""
    def waves(ext: tuple[int, ...]) -> int:
        return math.prod(split_jobs(ext, n_tiles).loops)

    *outer, last = extents
    best: tuple[int, float] = (0, float(waves(extents)))
    for r in range(1, min(last - 1, n_tiles) + 1):
        w = waves((*outer, last - r)) + waves((*outer, r)) + 2 / max(steps, 1)
        if w < best[1] - 1e-9:
            best = (r, w)
    return best


def _regions(m: int, n: int, bm: int, bn: int, bk: int, tail_blocks: Any,
             peel: int = 0) -> list[_Region]:
    """The main region of whole ``bm x bn`` blocks — its last ``peel`` column blocks a
    region of their own (`wave_peel`) — and the ragged tails along M and N (each tiled by
    ``tail_blocks(mr, nr)``)."""
    mm_, nn_ = m // bm * bm, n // bn * bn
    out = [_Region(0, mm_, 0, nn_ - peel * bn, bm, bn, bk)]
    if peel:  # blocks of its own (`_peeled_cost`)
        out.append(_Region(0, mm_, nn_ - peel * bn, peel * bn, *tail_blocks(mm_, peel * bn)))
    for m0, mr, n0, nr in ((0, mm_, nn_, n - nn_), (mm_, m - mm_, 0, nn_),
                           (mm_, m - mm_, nn_, n - nn_)):
        if mr and nr:
            out.append(_Region(m0, mr, n0, nr, *tail_blocks(mr, nr)))
    return out


@dataclass(frozen=True)
class RopeEpilogue:
    """Rotate-half RoPE of the result block before its store (the q/k projection's
    ``maia.rope``, `FunctionTiler._rope_epilogue`): the ``[B, S, H * D]`` result is
    rotated per head (``cos``/``sin`` broadcasting to ``out`` with stride 0 over the
    heads) and stored head-major into ``out`` ``[B, H, S, D]``, the layout the rope op
    wrote. The batch is not folded into the rows (a row block stays in one sequence)."""

    cos: Tensor
    sin: Tensor
    out: Tensor

    @property
    def head_dim(self) -> int:
        return self.out.shape[-1]

    def table_strides(self, t: Tensor) -> tuple[int, int, int]:
        """(batch, row, column) element strides of table ``t`` over ``[B, S, D]``."""
        b, _, s, d = broadcast_strides(t.shape, self.out.shape)
        return b, s, d


def tile_matmul(kernel: Kernel, a: Tensor, b: Tensor, out: Tensor, budget: Budget,
                bias: Tensor | None = None, act: str | None = None, fmt: str = "f32",
                residual: Tensor | None = None, residual_fn: str = "add",
                quant: MatmulQuant | None = None, glu: str | None = None,
                on_chip: Callable[[Tensor], bool] | None = None,
                out_quant: tuple[MatmulQuant, Tensor] | None = None,
                rope: RopeEpilogue | None = None) -> list[Kernel]:
    """Append the instructions of ``out = act(a @ b + bias) <residual_fn> residual``;
    returns the kernels of the ragged tails (blocks need not divide M or N: the
    remainder rows/columns run as kernels of their own, right after this one).

    ``glu`` (a binary fn, e.g. ``mul``): ``b`` is ``[K, 2N]``, the gate's columns then the
    up projection's, and ``out = glu(act(a @ b[:, :N]), a @ b[:, N:])``: each job streams
    both halves' blocks of ``b`` beside one ``a`` block, into one [gate | up] accumulator.

    ``quant``: quantized operands (see `MatmulQuant`); the TTU then reads packed codes
    and scales, and the activation block is quantized on the TVP first.

    The residual (any shape broadcasting to ``out``) is DMA'd block by block into TSRAM
    and combined before the result's single store: no extra HBM round trip of ``out``.

    A 2-D ``b`` shared by every batch element (a projection of ``[batch, seq, hidden]``
    activations) is one ``[batch * seq, K] @ [K, N]`` matmul (`fold_batch`): a decode
    step's ``[batch, 1, K]`` rows then fill the TTU's 32-row blocks together and ``b``'s
    columns spread over every tile, instead of one 1-row job per sequence.

    ``on_chip``: whether a tensor will likely live in CSRAM (the cost model then streams
    it at the CSRAM rate, see `OperandRates`).

    ``out_quant``: (the consumer's `MatmulQuant`, the narrow tensor): the result is
    stored quantized in the consumer's activation format (`narrow_act`); ``out`` still
    gives its fp32 shape. An ``a`` already in ``quant``'s activation format (such a
    narrow tensor) is loaded as it is, with no quantize step.

    ``rope``: the result is rotated and stored head-major (`RopeEpilogue`); column blocks
    then hold whole heads.
    """
    if rope is None:
        a, out, residual = fold_batch(a, b, out, residual)
    *batch_shape, m, n = out.shape
    k = b.shape[-2]  # a narrow a's rows are bytes
    nbatch = math.prod(batch_shape)
    extra = itemsize(bias.dtype) if bias is not None else 0
    block = itemsize(residual.dtype) if residual is not None else 0  # a [bm, bn] block
    q = quant or MatmulQuant()
    a_size, b_size, k_step, n_step = _quant_sizes(q, itemsize(a.dtype), itemsize(b.dtype))
    a_src: float = itemsize(a.dtype)
    narrow_a = _narrow_a(q, a)
    if narrow_a:
        a_size = a_src = narrow_act.element_bytes(q)
    if out_quant is not None:
        n_step = math.lcm(n_step, narrow_act.column_granule(out_quant[0]))
    side = 0
    if rope is not None:
        assert glu is None and residual is None and out_quant is None
        assert tuple(out.shape) == (rope.out.shape[0], rope.out.shape[2],
                                    rope.out.shape[1] * rope.out.shape[3])
        n_step = math.lcm(n_step, rope.head_dim)
        side = rope.head_dim * (itemsize(rope.cos.dtype) + itemsize(rope.sin.dtype))
    native_k = math.lcm(k_step, budget.native_k(fmt))
    k_step = native_k if k % native_k == 0 else k_step  # K steps of whole TTU blocks
    speedup = ttu_speedup(fmt, budget)
    quant_ops = VEC_OPS["quantize"] if q.fmt("a") is not None and not narrow_a else 0.0
    epilogue_ops = ((1 if bias is not None else 0) + (VEC_OPS.get(act, 1) if act else 0)
                    + (VEC_OPS.get(residual_fn, 1) if residual is not None else 0)
                    + (VEC_OPS.get(glu, 1) if glu else 0)
                    + (VEC_OPS["quantize"] if out_quant is not None else 0)
                    + (VEC_OPS["rope"] if rope is not None else 0))
    halves = 2 if glu else 1
    wf = q.fmt("w")
    if q.w_scales is not None and wf is not None and not wf.is_blocked:
        extra += itemsize(q.w_scales.dtype) * halves  # per-column scales: a [1, bn] block
    csram = budget.csram_bw if on_chip else 0.0

    def rate(t: Tensor | None) -> float:
        return csram if t is not None and on_chip is not None and on_chip(t) else 0.0
    stored = out if out_quant is None else out_quant[1]
    if rope is not None:
        stored = rope.out
    args = dict(extra_row_bytes=extra, k_step=k_step, n_step=n_step, block_bytes=block,
                a_src=a_src, speedup=speedup, quant_ops=quant_ops,
                epilogue_ops=epilogue_ops, outputs=halves, ragged_k=_plain(q),
                rates=OperandRates(rate(a), rate(residual), rate(stored),
                                   narrow_act.element_bytes(out_quant[0])
                                   if out_quant is not None else 0.0),
                row_bytes=side)
    try:
        bm, bn, bk, peel = choose_blocks(nbatch, m, n, k, a_size, b_size, budget, ragged=True,
                                         with_peel=True, **args)
        regions = _regions(m, n, bm, bn, bk, lambda mr, nr: choose_blocks(
            nbatch, mr, nr, k, a_size, b_size, budget, **args), peel)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' (matmul {m}x{k} @ {k}x{n}): no tiling fits "
                         f"TSRAM ({budget.tsram_bytes} bytes per tile)") from err
    kernels = [kernel] + [Kernel(op=kernel.op, kind=kernel.kind, uid=f"{kernel.uid}.tail{i}")
                          for i in range(1, len(regions))]
    for kern, region in zip(kernels, regions, strict=True):
        _tile_region(kern, a, b, out, region, budget.n_tiles, bias, act, fmt, residual,
                     residual_fn, q, glu, out_quant, rope)
    kernel.flops += 2 * nbatch * m * n * k * halves
    if rope is not None:  # as the rope kernel counted it
        kernel.flops += VEC_OPS["rope"] * m * n
    return kernels[1:]


def fold_batch(a: Tensor, b: Tensor, out: Tensor, residual: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
    """``a``, ``out`` (and a full-shaped residual) as 2-D ``[batch * M, ...]`` tensors when
    ``b`` has no batch dims of its own (all contiguous: the rows of every batch element
    follow each other), else unchanged. A residual that broadcasts along the batch or M
    dims blocks the fold unless it is one row (``[..., 1, N]`` of ones, or ``[N]``)."""
    *batch_shape, m, n = out.shape
    if not batch_shape or math.prod(b.shape[:-2]) != 1 or a.shape[:-2] != out.shape[:-2]:
        return a, out, residual
    rows = math.prod(batch_shape) * m
    if residual is not None:
        if tuple(residual.shape) == tuple(out.shape):
            residual = dataclasses.replace(residual, shape=(rows, n))
        elif math.prod(residual.shape[:-1]) == 1:
            residual = dataclasses.replace(residual, shape=tuple(residual.shape[-1:]))
        else:
            return a, out, residual
    return (dataclasses.replace(a, shape=(rows, a.shape[-1])),
            dataclasses.replace(out, shape=(rows, n)), residual)


def _tile_region(kernel: Kernel, a: Tensor, b: Tensor, out: Tensor, region: _Region,
                 n_tiles: int, bias: Tensor | None, act: str | None, fmt: str, residual: Tensor | None,
                 residual_fn: str, q: MatmulQuant, glu: str | None,
                 out_quant: tuple[MatmulQuant, Tensor] | None = None,
                 rope: RopeEpilogue | None = None) -> None:
    """The instructions of one `_Region` of the matmul (see `tile_matmul`)."""
    *batch_shape, m, n = out.shape
    k = b.shape[-2]
    a_row = a.shape[-1]  # elements of a's dtype per row (bytes of a narrow a's row)
    narrow_a = _narrow_a(q, a)
    m0, n0, bm, bn, bk = region.m0, region.n0, region.bm, region.bn, region.bk
    batch_shape = tuple(batch_shape)
    a_batch = broadcast_strides(a.shape[:-2], batch_shape) if batch_shape else ()
    b_batch = broadcast_strides(b.shape[:-2], batch_shape) if batch_shape else ()
    a_batch = tuple(s * m * a_row for s in a_batch)
    b_batch = tuple(s * k * n * (2 if glu else 1) for s in b_batch)
    c_batch = tuple(s * m * n for s in contiguous(batch_shape)) if batch_shape else ()
    halves = 2 if glu else 1
    extents = batch_shape + (region.mr // bm, region.nr // bn)
    split = split_jobs(extents, n_tiles)
    grid = split.grid
    a_steps = a_batch + (bm * a_row, 0)
    b_steps = b_batch + (0, bn)
    c_steps = c_batch + (bm * n, bn)
    ta_dtype = "bf16" if q.a_fmt == "bf16" else a.dtype
    ta_row = narrow_act.block_row(q, bk) if narrow_a else bk
    ta = kernel.scratch_buffer("a", ta_dtype, (bm, ta_row))
    if q.fmt("w") is not None and b.dtype == "u8":  # packed: [bk, bn] elements as bytes
        nb, bnb = payload_bytes(q.w_fmt, n), payload_bytes(q.w_fmt, bn)
        b_steps = b_batch + (0, bnb)
        b_col0 = payload_bytes(q.w_fmt, n0) if n0 else 0
    else:
        nb, bnb, b_col0 = n, bn, n0
    tb = kernel.scratch_buffer("b", b.dtype, (bk, halves * bnb))
    # a gated matmul's two products side by side, [gate | up]: one TTU instruction per K
    # step for both (half the instructions' fixed cost)
    tc = kernel.scratch_buffer("c", "f32", (bm, halves * bn))
    row = halves * nb  # b's row, in elements (bytes when packed)
    nk, kr = divmod(k, bk)  # kr: a ragged K's remainder, the first (shorter) step
    assert not kr or _plain(q), "ragged K only for plain operands"
    outer_a = split.loop_strides(a_steps)
    outer_b = split.loop_strides(b_steps)
    a_quant = (([], *narrow_act.mm_operands(q, ta, bm, bk)) if narrow_a
               else _a_quantizer(kernel, q, ta, bm, bk, grid))
    b_scale = _b_scale_loader(kernel, q, bk, bn, n, batch_shape, split, grid, halves, n0)
    if glu:  # both halves' blocks in one DMA: [bk, 2, bn] -> TSRAM rows [gate | up]
        b_shape, b_strides, tb_strides = (bk, 2, bnb), (row, nb, 1), (2 * bnb, bnb, 1)
    else:
        b_shape, b_strides, tb_strides = (bk, bnb), (nb, 1), (bnb, 1)

    # One K step of plain fp32 blocks: the bias rows are DMA'd into the accumulator and
    # the matmul adds its product to them (the bias as the GEMM's initial C, one TVP op
    # and a TSRAM bias block fewer; fl(a @ b + bias) either way)
    bias_init = (bias is not None and bias.dtype == "f32" and bias.shape[-1] > 1 and nk == 1
                 and not kr and glu is None and _plain(q) and a.dtype == b.dtype == "f32")

    def step(k_index: int, inner: bool, width: int = bk, k0: int = kr) -> list:
        """The K step at elements ``k0 + k_index * bk`` of ``width`` (``inner``: the
        loop's body, its offsets moving by ``bk`` per iteration)."""
        kw = k0 + k_index * bk if inner or k_index else 0
        b_ls = outer_b + ((bk * row,) if inner else ())
        bsh = (width, *b_shape[1:])
        a_loads = _a_loads(q, a, ta, ta_dtype, k, bm, bk, width, kw, m0, inner, narrow_a,
                           split.tile_strides(a_steps), outer_a, grid)
        src_b = Access(b.buf, b.dtype, bsh, b_strides, b.off + b_col0 + kw * row,
                       split.tile_strides(b_steps), b_ls)
        a_ops, a_mm, a_extra = a_quant
        b_ops, b_extra = b_scale(k_index, inner)
        return [
            *a_loads,
            dma(src_b, Access(tb, b.dtype, bsh, tb_strides), grid, queue=1),
            *b_ops,
            *(op.clone() for op in a_ops),  # fresh ops: step() builds the peel and the loop
            mm(a_mm or Access(ta, ta_dtype, (bm, width), (bk, 1)),
               Access(tb, b.dtype, (width, halves * bnb), (halves * bnb, 1)),
               Access(tc, "f32", (bm, halves * bn), (halves * bn, 1)), grid,
               accumulate=k_index > 0 or inner or bias_init, fmt=fmt, **a_extra, **b_extra),
        ]

    c_block = Access(tc, "f32", (bm, bn), (halves * bn, 1))
    body = []
    if bias is not None:
        per_column = bias.shape[-1] > 1
        bias_steps = tuple(0 for _ in batch_shape) + (0, 1 if per_column else 0)
        bias_steps = tuple(s * bn for s in bias_steps)

        def bias_src(shape: tuple[int, ...], strides: tuple[int, ...]) -> Access:
            return Access(bias.buf, bias.dtype, shape, strides,
                          bias.off + (n0 if per_column else 0),
                          split.tile_strides(bias_steps), split.loop_strides(bias_steps))
        if bias_init:
            # on the activation's queue, before its block: the matmul's wait for that
            # queue covers both (at most 2 waits, no barrier)
            body.append(dma(bias_src((bm, bn), (0, 1)), c_block, grid, queue=0))
    if kr:  # the remainder first, then nk whole steps in the loop
        body += step(0, inner=False, width=kr)
        # one whole step after it: outside a loop, at element kr (k_index 1 from kr - bk)
        body += loop((nk,), step(0, inner=True)) if nk > 1 else step(1, False, k0=kr - bk)
    else:
        body += step(0, inner=False)
        if nk > 1:
            body += loop((nk - 1,), step(1, inner=True, k0=0))
    if bias is not None and not bias_init:
        tbias = kernel.scratch_buffer("bias", bias.dtype, (bn,))
        body.append(dma(bias_src((bn,), (1,)), Access(tbias, bias.dtype, (bn,), (1,)), grid,
                        queue=0))
        body.append(vec("add", [c_block, Access(tbias, bias.dtype, (bm, bn), (0, 1))], c_block,
                        grid))
    if act:
        body.append(vec(act, [c_block], c_block, grid))
    if glu:
        up = Access(tc, "f32", (bm, bn), (halves * bn, 1), bn)
        body.append(vec(glu, [c_block, up], c_block, grid))
    if residual is not None:
        body += _residual(kernel, residual, residual_fn, c_block, out.shape, bm, bn, split,
                          grid, m0, n0)
    if out_quant is not None:
        body += narrow_act.store(kernel, out_quant[0], c_block, out_quant[1], m, n, bm, bn,
                                 m0, n0, batch_shape, split, grid)
    elif rope is not None:
        body += _rope(kernel, rope, tc, bm, bn, split, grid, m0, n0, bool(batch_shape))
    else:
        body.append(dma(c_block, Access(out.buf, out.dtype, (bm, bn), (n, 1),
                                        out.off + m0 * n + n0, split.tile_strides(c_steps),
                                        split.loop_strides(c_steps)), grid, queue=1))
    kernel.body.extend(loop(split.trips, body))


def _narrow_a(q: MatmulQuant, a: Tensor) -> bool:
    """Whether ``a`` holds ``q``'s activation codes already (`narrow_act`)."""
    return (q.fmt("a") is not None and a.dtype != "f32"
            and a.dtype == narrow_act.narrow_dtype(q))


def _a_loads(q: MatmulQuant, a: Tensor, ta: str, ta_dtype: str, k: int, bm: int, bk: int,
             width: int, kw: int, m0: int, inner: bool, narrow: bool,
             tile_strides: tuple[int, ...], outer: tuple[int, ...], grid: Sequence[int]
             ) -> list:
    """The DMAs of one K step's ``[bm, width]`` activation block at element ``kw`` into
    the ``[bm, bk]`` block ``ta`` (``inner``: in the K loop, moving by ``bk`` per
    iteration): one strided block, or a narrow a's codes and scales
    (`narrow_act.row_pieces`)."""
    a_row = a.shape[-1]
    if not narrow:
        src = Access(a.buf, a.dtype, (bm, width), (k, 1), a.off + m0 * k + kw, tile_strides,
                     outer + ((bk,) if inner else ()))
        return [dma(src, Access(ta, ta_dtype, (bm, width), (bk, 1)), grid, queue=0)]
    block = narrow_act.block_row(q, bk)
    here, there = (narrow_act.row_pieces(q, k, at, width) for at in (kw, kw + bk))
    loads = []
    for (col, local, cols), (nxt, _, _) in zip(here, there, strict=True):
        src = Access(a.buf, a.dtype, (bm, cols), (a_row, 1), a.off + m0 * a_row + col,
                     tile_strides, outer + ((nxt - col,) if inner else ()))
        loads.append(dma(src, Access(ta, ta_dtype, (bm, cols), (block, 1), local), grid,
                         queue=0))
    return loads


def _plain(q: MatmulQuant) -> bool:
    """Operands the TTU reads as stored (no block scales along K, no quantize step): K
    blocks then need not divide K."""
    return q.fmt("a") is None and q.fmt("w") is None and q.w_scales is None


def _a_quantizer(kernel: Kernel, q: MatmulQuant, ta: str, bm: int, bk: int,
                 grid: Sequence[int]) -> tuple[list, Access | None, dict]:
    """TVP quantize of the [bm, bk] activation block: (ops, mm operand a, mm fields)."""
    af = q.fmt("a")
    if af is None:
        return [], None, {}
    src = Access(ta, "f32", (bm, bk), (bk, 1))
    if not af.is_blocked:  # FP8, static per-tensor scale
        tq = kernel.scratch_buffer("aq", af.name.replace("fp8", "f8"), (bm, bk))
        dst = Access(tq, af.name.replace("fp8", "f8"), (bm, bk), (bk, 1))
        op = vec("quantize", [src], dst, grid, fmt=af.name, scale=q.a_scale)
        return [op], dst, {"a_fmt": af.name, "a_tensor_scale": q.a_scale}
    rb, pb, nbk = row_bytes(af.name, bk), payload_bytes(af.name, bk), n_blocks(af.name, bk)
    tq = kernel.scratch_buffer("aq", "u8", (bm, rb))
    params = {"fmt": af.name}
    if af.is_mx:
        params["scale_mode"] = q.scale_mode
    else:
        params["tensor_scale"] = q.a_tensor_scale
    op = vec("quantize", [src], Access(tq, "u8", (bm, rb), (rb, 1)), grid, **params)
    extra = {"a_fmt": af.name,
             "a_scale": Access(tq, "u8", (bm, nbk), (rb, 1), pb).to_dict(),
             "a_tensor_scale": q.a_tensor_scale}
    return [op], Access(tq, "u8", (bm, pb), (rb, 1)), extra


def _b_scale_loader(kernel: Kernel, q: MatmulQuant, bk: int, bn: int, n: int,
                    batch_shape: tuple[int, ...], split: JobSplit, grid: Sequence[int],
                    halves: int = 1, n0: int = 0) -> Any:
    """Per K step: (DMAs of the weight scales into TSRAM, mm fields for ``b``: both
    halves of a gated matmul's ``b`` side by side)."""
    wf, ws = q.fmt("w"), q.w_scales

    def none(k_index: int, inner: bool) -> tuple[list, dict]:
        return [], {}
    if wf is None:
        return none
    fields = {"b_fmt": wf.name, "b_tensor_scale": q.w_tensor_scale}
    if ws is None:
        return lambda k_index, inner: ([], fields)
    steps = tuple(0 for _ in batch_shape) + (0, bn)
    outer = split.loop_strides(steps)
    rows = n_blocks(wf.name, bk) if wf.is_blocked else 1
    k_stride = rows * n * halves if wf.is_blocked else 0
    ts = kernel.scratch_buffer("b_scale", ws.dtype, (rows, halves * bn))
    if halves == 2:  # [rows, 2, bn]: the gate's scales, then the up projection's
        shape, strides, local_strides = (rows, 2, bn), (2 * n, n, 1), (2 * bn, bn, 1)
    else:
        shape, strides, local_strides = (rows, bn), (n, 1), (bn, 1)
    local = Access(ts, ws.dtype, shape, local_strides)
    both = {**fields, "b_scale": Access(ts, ws.dtype, (rows, halves * bn),
                                        (halves * bn, 1)).to_dict()}

    def load(k_index: int, inner: bool) -> tuple[list, dict]:
        src = Access(ws.buf, ws.dtype, shape, strides, ws.off + n0 + k_index * k_stride,
                     split.tile_strides(steps), outer + ((k_stride,) if inner else ()))
        return [dma(src, local, grid, queue=2)], both
    return load


def matmul_shapes_ok(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) >= 2 and len(b) >= 2 and a[-1] == b[-2]


def _rope(kernel: Kernel, rope: RopeEpilogue, tc: str, bm: int, bn: int, split: JobSplit,
          grid: Sequence[int], m0: int, n0: int, batched: bool) -> list:
    """Load the job's cos/sin rows, rotate the ``[bm, bn]`` result block's heads in place
    and store them head-major (`RopeEpilogue`); ``batched``: the job grid has the batch
    as its first dim."""
    d = rope.head_dim
    heads = bn // d
    _, h, seq, _ = rope.out.shape
    ops, tables = [], []
    for i, (name, t) in enumerate((("cos", rope.cos), ("sin", rope.sin))):
        s_batch, s_row, s_col = rope.table_strides(t)
        steps = (s_batch,) * batched + (bm * s_row, 0)
        local = kernel.scratch_buffer(name, t.dtype, (bm, d))
        ops.append(dma(Access(t.buf, t.dtype, (bm, d), (s_row, s_col), t.off + m0 * s_row,
                              split.tile_strides(steps), split.loop_strides(steps)),
                       Access(local, t.dtype, (bm, d), (d, 1)), grid, queue=2 + i))
        tables.append(Access(local, t.dtype, (bm, heads, d), (d, 0, 1)))
    block = Access(tc, "f32", (bm, heads, d), (bn, d, 1))
    ops.append(vec("rope", [block, *tables], block, grid))
    steps = (h * seq * d,) * batched + (bm * d, heads * seq * d)
    ops.append(dma(block, Access(rope.out.buf, "f32", (bm, heads, d), (d, seq * d, 1),
                                 rope.out.off + m0 * d + n0 // d * seq * d,
                                 split.tile_strides(steps), split.loop_strides(steps)),
                   grid, queue=1))
    return ops


def _residual(kernel: Kernel, r: Tensor, fn: str, c_block: Access, out_shape: Sequence[int],
              bm: int, bn: int, split: JobSplit, grid: Sequence[int], m0: int = 0,
              n0: int = 0) -> list:
    """DMA the residual's [bm, bn] block (broadcast dims read with stride 0) and combine."""
    strides = broadcast_strides(r.shape, out_shape)
    *batch, s_m, s_n = strides
    steps = tuple(batch) + (bm * s_m, bn * s_n)
    tr = kernel.scratch_buffer("residual", r.dtype, (bm, bn))
    local = Access(tr, r.dtype, (bm, bn), (bn, 1))
    return [dma(Access(r.buf, r.dtype, (bm, bn), (s_m, s_n), r.off + m0 * s_m + n0 * s_n,
                       split.tile_strides(steps),
                       split.loop_strides(steps)), local, grid, queue=0),
            vec(fn, [c_block, local], c_block, grid)]
