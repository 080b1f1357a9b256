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
and one DMA of the ``[bq, D]`` block to the result (contiguous ``[B, H, Sq, D]``, or
wherever ``out_view`` puts it, e.g. ``[B, Sq, H, D]``).

**Narrow attention** (``fmt = "bf16"``, set by `quantize` when the spec's activations
are narrow): the TTU runs both products in bf16 with fp32 accumulation. The scaled Q
block is stored as bf16, K and V blocks are converted to bf16 by their DMAs, and
``exp_sub`` writes P as bf16 (the row sum ``l`` adds those same rounded values); S, the
row statistics m and l, and O stay fp32.

**Pipelined key loop.** A job's key blocks run as a software pipeline: step ``t``
issues the next block's scores (``S = Q K_{t+1}ᵀ`` into the other of two score
buffers) before the softmax of block ``t`` and its ``P V_t``, so the TTU computes the
next scores while the TVP runs this block's softmax (each engine issues in program
order: without the rotation, the TTU would wait for every softmax). Scores,
probabilities, K/V blocks and the running max alternate between two copies by step,
Q, O and the row positions by job; the values are those of the plain loop.

**Causal attention without a mask operand.** Key ``c`` is hidden from query row ``r``
iff ``c > r + Sk - Sq``. Query block ``i`` then needs only the key blocks up to its last
row's diagonal, and only those crossing some row's diagonal need a mask. Query blocks
needing the same number of key blocks form a *group* (consecutive blocks) with a fixed
trip count, whose jobs ``(B, Hkv, G, blocks in the group)`` are split over the tiles.
A group with a loop of jobs is a kernel of its own; consecutive groups whose jobs each
run once per tile are one kernel and one pipelined stream (the next group's first
scores run during this group's last softmax). Key blocks run diagonal first: the blocks
that cross a diagonal get their mask from ``Vec causal_mask(S, qpos, kpos)``, the row
and column positions DMA'd from a small ``arange`` table (``bq + bk`` numbers instead
of ``bq * bk`` mask elements), then the fully visible blocks. A step may take up to ``MAX_WIDTH`` key blocks
(`key_steps`: runs of ``width`` blocks from key 0, one ``[bq, width bk]`` score product and
one ``P V``: fewer TTU and TVP instructions); the run at the diagonal masks only its
crossing blocks. The epilogue of a job is issued after the next job's Q is scaled (the
in-order TVP would otherwise hold that scale until the job's last ``P V``), and a stream
alternates long and short query blocks (`_interleave`). Llama-3-8B's layer (fp8: bf16
products, 256 x 128 blocks, 4 per step): 40.3 -> 40.0 us, 0.814 -> 0.820 of its TTU bound.
Block sizes minimize the modeled time summed over groups (per key block the longer of
the TTU's products and the TVP's softmax, which the pipeline overlaps), so the skipped
blocks (about half of them) are not paid back by idle tiles or instruction overheads.
The same model (one group, every key block) sizes the blocks of an attention with a
mask operand or none: every instruction costs its issue overhead, so a short sequence
runs as one job per tile with all its keys in one block (gpt2_dynamo's seq-8 attention:
13 instructions, not 26 for two one-row query blocks per tile), while a long one still
fills every tile the heads allow.

The tile grid is that of ``(B, Hkv, G, blocks)``: Llama-3-8B's 32 heads would run on 32
of maia200's 36 tiles, since an SPMD address is affine in the tile coordinates and none
of these extents has a factor 3. A causal attention without a mask may instead stripe
its 32-row query sub-blocks over all the tiles (`striped_attention`, `_StripedStream`),
taken when the busier engine's modeled total is below the block split's (the 8B layer:
35.5 vs 38.9 us).
GQA's shared K/V blocks are read once per instruction: their tile stride along G is 0,
so the NoC broadcasts them to the G tiles of a KV head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from maiac.passes.tiling import striped_attention
from maiac.passes.tiling.attention_cost import job_cost, step_cost
from maiac.passes.tiling.common import (
    Access,
    Budget,
    JobSplit,
    Kernel,
    SoftmaxState,
    Tensor,
    align,
    at_least_one,
    divisors,
    dma,
    long_short,
    loop,
    mm,
    online_softmax,
    split_jobs,
    vec,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize

MAX_BQ = 256  # query rows per job (8 native 32-row TTU blocks)
MAX_BK = 512  # keys per block


@dataclass(frozen=True)
class QueryGroup:
    """Query blocks ``[first, first + count)`` that all read key blocks ``[0, keys)``;
    key blocks ``[masked_from, keys)`` cross the diagonal of some of their rows."""

    first: int
    count: int
    keys: int
    masked_from: int


def query_groups(sq: int, sk: int, bq: int, bk: int, causal: bool) -> list[QueryGroup]:
    """The groups of query blocks with equal key-block counts (one group unless causal)."""
    nq, nk = sq // bq, sk // bk
    if not causal:
        return [QueryGroup(0, nq, nk, nk)]
    offset = sk - sq
    groups: list[QueryGroup] = []
    for i in range(nq):
        keys = min(nk, ((i + 1) * bq - 1 + offset) // bk + 1)
        full = min(keys, (i * bq + offset + 1) // bk)
        last = groups[-1] if groups else None
        if last is not None and last.keys == keys:
            groups[-1] = QueryGroup(last.first, last.count + 1, keys,
                                    min(last.masked_from, full))
        else:
            groups.append(QueryGroup(i, 1, keys, full))
    return groups


def _tsram_bytes(bq: int, bk: int, d: int, sizes: Sequence[int], masked: bool,
                 causal: bool = False, narrow: int = 0, width: int = 1) -> int:
    """Scratch of a stream of jobs: two copies of Q and O (f32, by job) and of the K and
    V blocks and the scores (by key block: the pipelined loop), the mask or positions,
    row stats; ``narrow``: bytes per element of the TTU operands (+ Q and P copies);
    ``width``: the K, V, score, probability and key-position blocks hold that many key
    blocks (a step's keys)."""
    _, k, v, m = sizes
    bk = width * bk
    if narrow:
        k = v = narrow
    total = 4 * align(bq * d * 4) + 2 * (align(bk * d * k) + align(bk * d * v))
    total += 2 * align(bq * bk * 4) + (align(bq * bk * m) if masked else 0)
    if narrow:
        total += 2 * align(bq * d * narrow) + 2 * align(bq * bk * narrow)
    if causal:
        total += 2 * align(bq * 4) + align(bk * 4)
    return total + 6 * align(bq * 4)


MAX_WIDTH = 4  # key blocks per step of a causal attention


def key_steps(keys: int, masked_from: int, width: int) -> list[tuple[int, int, bool]]:
    """(first key block, key blocks, masked) of the steps over key blocks ``[0, keys)``
    of a query block whose blocks ``[masked_from, keys)`` cross a diagonal: runs of
    ``width`` blocks from key 0 (the last run, at the diagonal, may be shorter), the runs
    touching a crossing block masked; masked runs first (a row hidden so far keeps
    m = -inf, l = 0: the online softmax is order-free), each kind in key order."""
    runs = [(j, min(width, keys - j)) for j in range(0, keys, width)]
    masked = [(j, n, True) for j, n in runs if j + n > masked_from]
    return masked + [(j, n, False) for j, n in runs if j + n <= masked_from]


@lru_cache(maxsize=4096)
def _group_arrays(sq: int, sk: int, bq: int, bk: int, causal: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, keys, masked_from) of every `query_groups` group, as arrays (the block
    search asks for them once per candidate width: no list of groups)."""
    nq, nk = sq // bq, sk // bk
    if not causal:
        return np.array([nq]), np.array([nk]), np.array([nk])
    i = np.arange(nq, dtype=np.int64)
    offset = sk - sq
    keys = np.minimum(nk, ((i + 1) * bq - 1 + offset) // bk + 1)
    full = np.minimum(keys, (i * bq + offset + 1) // bk)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    count = np.diff(np.r_[starts, nq])
    return count, keys[starts], np.minimum.reduceat(full, starts)


def _step_kinds(keys: np.ndarray, masked_from: np.ndarray, width: int
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(steps, key blocks, crossing blocks) of the four kinds of steps `key_steps` cuts
    each group's key blocks into (per group): the whole runs before the first crossing
    block, the run holding it, the whole runs after it and the last (shorter) run; a
    group with no crossing block runs its whole runs and its last one unmasked."""
    runs = -(-keys // width)
    last = keys - (runs - 1) * width
    clear = masked_from >= keys  # no block crosses a diagonal
    before = np.where(clear, runs - 1, masked_from // width)
    first = np.where(before < runs - 1, width, last)  # the run holding the first crossing
    zero = np.zeros_like(keys)
    return [(before, np.full_like(keys, width), zero),
            (np.ones_like(keys), np.where(clear, last, first),
             np.where(clear, 0, before * width + first - masked_from)),
            (np.where(clear, 0, np.maximum(0, runs - 2 - before)), np.full_like(keys, width),
             np.full_like(keys, width)),
            (np.where(clear, 0, (runs - 1 > before).astype(keys.dtype)), last, last)]


def _per_job(bq: int, bk: int, d: int, budget: Budget, causal: bool, masked: bool,
             fmt: str = "f32") -> float:
    """TVP seconds a job adds to its steps in the sum of the longer engine: the softmax
    of its last step, which no product hides, and `attention_cost.job_cost`."""
    return (float(step_cost(bq, bk, d, bk * causal, budget, fmt, masked)[1])
            + job_cost(bq, d, budget))


def _attention_costs(jobs: Sequence[int], sq: int, sk: int, d: int, bq: int, bk: int,
                     budget: Budget, causal: bool, masked: bool, fmt: str = "f32",
                     width: int = 1) -> tuple[float, float, float]:
    """(sum over steps of the busier engine, TTU total, TVP total) of `_attention_cost`;
    the engines' totals are those of the emitted instructions (`attention_cost`). The
    steps of a group come in four kinds (`_step_kinds`), so a candidate costs a few
    array operations over its groups, not a loop over every step."""
    count, keys, masked_from = _group_arrays(sq, sk, bq, bk, causal)
    turns = np.array([math.prod(split_jobs((*jobs, int(c)), budget.n_tiles).loops)
                      for c in count], dtype=np.float64)
    longer, ttu, tvp = (np.zeros(len(count)) for _ in range(3))
    for steps, n, crossing in _step_kinds(keys, masked_from, width):
        c_ttu, c_tvp = step_cost(bq, n * bk, d, crossing * bk * causal, budget, fmt, masked)
        longer += steps * np.maximum(c_ttu, c_tvp)
        ttu += steps * c_ttu
        tvp += steps * c_tvp
    jobs_per_tile = float(turns.sum())
    return (float(turns @ longer) + jobs_per_tile * _per_job(bq, bk, d, budget, causal, masked,
                                                              fmt),
            float(turns @ ttu), float(turns @ tvp) + jobs_per_tile * job_cost(bq, d, budget))


def _attention_cost(jobs: Sequence[int], sq: int, sk: int, d: int, bq: int, bk: int,
                    budget: Budget, causal: bool, masked: bool, fmt: str = "f32",
                    width: int = 1, engines: bool = False) -> float:
    """Modeled time (s) of attention in ``(bq, bk)`` blocks: per group of query blocks
    (one unless ``causal``), the jobs each tile runs in turn times the steps per job
    (`key_steps`), each taking the longer of its two products (TTU) and its softmax
    (TVP), which the pipelined key loop overlaps, plus per job the softmax and epilogue
    no product hides; ``masked``: a mask operand, added to every key block's scores;
    ``fmt``: the TTU format of the products. Every instruction costs its issue
    overhead, so of blocks equally fast on the TTU and TVP the fewer jobs per tile (and
    so fewer instructions: a short sequence's attention as one job per tile) cost less.
    ``width``: key blocks per step (one product over ``width * bk`` keys: fewer
    instructions; a step touching the diagonal masks all of its keys). ``engines``: the
    busier engine's total instead (TTU and TVP summed apart, as a stream that overlaps
    them fully runs): what `tile_attention` weighs the striped plan against."""
    total, ttu, tvp = _attention_costs(jobs, sq, sk, d, bq, bk, budget, causal, masked,
                                       fmt, width)
    return max(ttu, tvp) if engines else total


def choose_blocks(job_dims: Sequence[int], sq: int, sk: int, d: int, sizes: Sequence[int],
                  masked: bool, budget: Budget, causal: bool = False,
                  fmt: str = "f32") -> tuple[int, int, int]:
    """(bq, bk, width) of least modeled time (`_attention_cost`), the bigger block (then
    the narrower step) on a tie.

    ``job_dims``: the ``(B, Hkv, G)`` job dims; ``causal``: a causal attention without a
    mask, which counts only the key blocks each query block needs and the tiles each
    group of query blocks keeps busy, and may run up to ``MAX_WIDTH`` key blocks per step
    (``width``, where the wider blocks fit TSRAM); ``fmt``: the products' TTU format
    (``bf16``: narrow operand copies in TSRAM).
    """
    return _choose_blocks(tuple(job_dims), sq, sk, d, tuple(sizes), masked, budget, causal,
                          fmt)


@lru_cache(maxsize=1024)  # every layer of a model asks the same question
def _choose_blocks(job_dims: tuple[int, ...], sq: int, sk: int, d: int,
                   sizes: tuple[int, ...], masked: bool, budget: Budget, causal: bool,
                   fmt: str) -> tuple[int, int, int]:
    narrow = _narrow(fmt)
    best: tuple[tuple[float, ...], int, int, int] | None = None
    for bq in (x for x in divisors(sq) if x <= MAX_BQ):
        for bk in (x for x in divisors(sk) if x <= MAX_BK):
            for width in range(1, MAX_WIDTH + 1 if causal else 2):
                if width > 1 and width * bk > sk or \
                        _tsram_bytes(bq, bk, d, sizes, masked, causal, narrow, width) \
                        > budget.tsram_bytes:
                    continue
                key = (-_attention_cost(job_dims, sq, sk, d, bq, bk, budget, causal, masked,
                                        fmt, width), bq * bk, -width)
                if best is None or key > best[0]:
                    best = (key, bq, bk, width)
    if best is None:
        raise MaiacError("no attention block fits TSRAM")
    return best[1], best[2], best[3]


@lru_cache(maxsize=256)
def _striped_plan(dims: tuple[int, ...], sizes: tuple[int, ...], budget: Budget, fmt: str
                  ) -> striped_attention.StripePlan | None:
    """`striped_attention.plan` of a causal attention with generated masks, its TSRAM
    that of `_Stream`'s blocks (``[G R, D]`` rows, ``keys`` per step)."""
    d, narrow = dims[5], _narrow(fmt)
    return striped_attention.plan(
        dims, budget,
        lambda rows, keys: _tsram_bytes(rows, keys, d, sizes, False, True, narrow), fmt)


def _narrow(fmt: str) -> int:
    """Bytes per element of the TTU operand copies of ``fmt`` (0: the f32 operands)."""
    return 2 if fmt == "bf16" else 0


def tile_attention(kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   out: Tensor, budget: Budget, dims: Sequence[int],
                   views: dict[str, Sequence[int]], scale: float, causal: bool = False,
                   positions: Tensor | None = None,
                   out_view: Sequence[int] | None = None, fmt: str = "f32",
                   zero_empty_rows: bool = False) -> list[Kernel]:
    """Append the flash-attention instructions of ``out = attention(q, k, v, mask)``.

    ``fmt``: the TTU operand format of both products (``f32`` or ``bf16``).
    ``zero_empty_rows``: a query row with every key masked gives 0, not 0/0
    (``empty_rows = "zero"``, the absorbed NaN guard of passes/fuse_attention.py).

    ``causal`` without ``mask``: the mask is generated (``positions``: an f32 ``arange``
    of at least ``Sk`` elements) and hidden key blocks are skipped; the kernels of the
    groups of query blocks after the first stream are returned, to run after ``kernel``.
    """
    b, hkv, g, sq, sk, d = dims
    generate = causal and mask is None
    if generate and (positions is None or sk < sq):
        raise MaiacError(f"op '{kernel.op}': causal attention without a mask needs "
                         f"Sk >= Sq and a positions table")
    sizes = [itemsize(t.dtype) for t in (q, k, v)] + [itemsize(mask.dtype) if mask else 4]
    if fmt not in ("f32", "bf16"):
        raise MaiacError(f"op '{kernel.op}': attention runs in f32 or bf16, not {fmt}")
    try:
        bq, bk, width = choose_blocks((b, hkv, g), sq, sk, d, sizes, mask is not None,
                                      budget, generate, fmt)
    except MaiacError as err:
        raise MaiacError(f"op '{kernel.op}' (attention, head dim {d}): no block fits TSRAM "
                         f"({budget.tsram_bytes} bytes per tile)") from err
    h = hkv * g
    if out_view is None:
        out_view = (0, h * sq * d, g * sq * d, sq * d, d, 1)
    stripes = _striped_plan(tuple(dims), tuple(sizes), budget, fmt) \
        if generate else None
    if stripes is not None and stripes.cost < _attention_cost(
            (b, hkv, g), sq, sk, d, bq, bk, budget, True, False, fmt, width, engines=True):
        assert positions is not None
        jobs = striped_attention.jobs_of(stripes, b, sq, sk)
        _StripedStream(kernel, q, k, v, out, budget, dims, views, scale, stripes, positions,
                       out_view, fmt, zero_empty_rows, len(jobs)).emit(
            striped_attention.interleave(jobs))
        kernel.flops += striped_attention.flops_of(stripes, dims)
        return []
    # a group whose jobs each take a tile once is straight-line code: consecutive such
    # groups share a kernel and one pipelined stream of key blocks (the next group's
    # first scores run while this one's last softmax does); a group with a loop of jobs
    # is a kernel of its own (its scratch then has twins for `double-buffer`)
    streams: list[list[QueryGroup]] = []
    straight = False  # the last stream is straight-line
    for group in query_groups(sq, sk, bq, bk, generate):
        single = not split_jobs((b, hkv, g, group.count), budget.n_tiles).trips
        if single and straight:
            streams[-1].append(group)
        else:
            streams.append([group])
        straight = single
    kernels = []
    for index, groups in enumerate(streams):
        part = kernel if index == 0 else Kernel(op=kernel.op, kind=kernel.kind,
                                                uid=f"{kernel.uid or kernel.op}.{index}")
        _Stream(part, q, k, v, mask, out, budget, dims, views, scale, bq, bk,
                positions if generate else None, out_view, fmt, zero_empty_rows,
                len(groups), width).emit(_interleave(groups))
        # the work done: a causal group skips the key blocks above its diagonal
        part.flops += sum(b * h * grp.count * bq * grp.keys * bk * (4 * d + 8)
                          for grp in groups)
        if index:
            kernels.append(part)
    return kernels


def _interleave(groups: list[QueryGroup]) -> list[QueryGroup]:
    """A straight-line stream's groups, longest and shortest alternating (the last
    query block, the first, the last but one, ...): a short job's steps are TVP-bound
    (its softmax, mask and epilogue against few products), so each runs between two
    long jobs whose products overlap it; the job's results do not depend on the order."""
    return long_short(sorted(groups, key=lambda grp: -grp.keys))


class _Stream:
    """The instructions of groups of query blocks run as one stream of key blocks.

    The key blocks are software-pipelined: step ``t`` issues the scores of the next
    block (``S[(t + 1) % 2] = Q K_{t+1}ᵀ``, of the next job's first block at a job's
    end, after its Q load) before the softmax of block ``t`` and its ``P V_t``, so the
    TTU computes the next scores while the TVP runs this block's softmax. Scores,
    probabilities, K/V blocks and the running max come in two copies by the parity of
    the step, Q, O and the row positions by the parity of the job, so no step waits
    for the one before to release a buffer; the blocks and every value computed from
    them are the same as unpipelined.
    """

    def __init__(self, kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                 out: Tensor, budget: Budget, dims: Sequence[int],
                 views: dict[str, Sequence[int]], scale: float, bq: int, bk: int,
                 positions: Tensor | None, out_view: Sequence[int], fmt: str,
                 zero_empty_rows: bool, jobs: int, width: int = 1) -> None:
        self.q, self.k, self.v, self.mask, self.out = q, k, v, mask, out
        self.budget, self.dims, self.views, self.scale = budget, dims, views, scale
        self.bq, self.bk, self.positions, self.out_view = bq, bk, positions, out_view
        self.fmt, self.zero_empty_rows, self.narrow = fmt, zero_empty_rows, fmt != "f32"
        self.kernel = kernel
        self.width = width  # key blocks per step (`key_steps`)
        d = dims[5]
        f32 = "f32"
        self.k_dtype, self.v_dtype = (fmt, fmt) if self.narrow else (k.dtype, v.dtype)
        buf = kernel.scratch_buffer
        # per job parity (``jobs`` in the stream): Q (and its TTU copy), O, row positions
        both = (0, 1) if jobs > 1 else (0,)
        self.tq = [buf(f"q{i}", f32, (bq, d)) for i in both]
        self.tq_mm = [buf(f"q{i}_" + fmt, fmt, (bq, d)) for i in both] if self.narrow \
            else self.tq
        self.to = [buf(f"o{i}", f32, (bq, d)) for i in both]
        self.tqp = [buf(f"qpos{i}", f32, (bq, 1)) for i in both] if positions else []
        # per step parity: K and V blocks, scores, probabilities (the scores when f32), max
        wk = width * bk
        self.tk = [buf(f"kT{i}", self.k_dtype, (d, wk)) for i in (0, 1)]
        self.tv = [buf(f"v{i}", self.v_dtype, (wk, d)) for i in (0, 1)]
        self.ts = [buf(f"s{i}", f32, (bq, wk)) for i in (0, 1)]
        self.tp = [buf(f"p{i}_" + fmt, fmt, (bq, wk)) for i in (0, 1)] if self.narrow \
            else self.ts
        self.tmax = [buf(f"m{i}", f32, (bq, 1)) for i in (0, 1)]
        self.m_blk, self.alpha, self.l_sum, self.r_sum = (
            self.local(buf(n, f32, (bq, 1)), (bq, 1)) for n in ("m_blk", "alpha", "l", "rowsum"))
        self.tm = buf("mask", mask.dtype, (bq, bk)) if mask is not None else None
        self.tkp = buf("kpos", f32, (1, wk)) if positions else None

    @staticmethod
    def local(buf: str, shape: tuple[int, int], dtype: str = "f32") -> Access:
        return Access(buf, dtype, shape, (shape[1], 1))

    def _split(self, group: QueryGroup) -> JobSplit:
        b, hkv, g = self.dims[:3]
        return split_jobs((b, hkv, g, group.count), self.budget.n_tiles)

    def _src(self, group: QueryGroup, t: Tensor, name: str, shape: tuple[int, int],
             transpose: bool, key_index: int, per_iter: int) -> Access:
        """Block of operand ``name`` for a job of ``group`` and key block ``key_index``,
        moving ``per_iter`` key blocks per iteration of the key loop (0: not in it)."""
        split, bq, bk = self._split(group), self.bq, self.bk
        off, s_b, s_h, s_g, s_row, s_col = self.views[name]
        steps = (s_b, s_h, s_g, bq * s_row if name in ("q", "mask") else 0)
        key_step = 0 if name == "q" else bk * (s_col if name == "mask" else s_row)
        strides = (s_col, s_row) if transpose else (s_row, s_col)
        first_row = group.first * bq * s_row if name in ("q", "mask") else 0
        ls = split.loop_strides(steps) + ((per_iter * key_step,) if per_iter else ())
        return Access(t.buf, t.dtype, shape, strides,
                      t.off + off + first_row + key_index * key_step,
                      split.tile_strides(steps), ls)

    def _order(self, group: QueryGroup) -> list[tuple[int, bool, int]]:
        """(first key block, masked, key blocks) of the steps a job of ``group`` runs
        (`key_steps`: ``width`` key blocks per step, those touching a diagonal first and
        masked; without generated masks, every block in order, one per step)."""
        if self.positions is None:
            return [(j, False, 1) for j in range(group.keys)]
        return [(j, with_mask, n) for j, n, with_mask in
                key_steps(group.keys, group.masked_from, self.width)]

    def prologue(self, group: QueryGroup, job: int) -> list:
        """A job's Q block, scaled once (and the positions of its rows, when masked)."""
        split, bq, d = self._split(group), self.bq, self.dims[5]
        grid = split.grid
        q_mm = self.local(self.tq_mm[job], (bq, d), self.fmt if self.narrow else "f32")
        ops = [dma(self._src(group, self.q, "q", (bq, d), False, 0, 0),
                   self.local(self.tq[job], (bq, d)), grid),
               vec("scale", [self.local(self.tq[job], (bq, d))], q_mm, grid,
                   scale=float(self.scale))]
        if self.positions is not None and any(m for _, m, _ in self._order(group)):
            sq, sk = self.dims[3:5]
            steps = (0, 0, 0, bq)
            ops.append(dma(Access(self.positions.buf, "f32", (bq, 1), (1, 1),
                                  self.positions.off + sk - sq + group.first * bq,
                                  split.tile_strides(steps), split.loop_strides(steps)),
                           self.local(self.tqp[job], (bq, 1)), grid))
        return ops

    def scores(self, group: QueryGroup, job: int, j: int, parity: int, per_iter: int,
               width: int = 1) -> list:
        """K/V blocks ``j`` (to ``j + width``) into the ``parity`` copies, and their
        scores."""
        grid, bq, bk, d = self._split(group).grid, self.bq, self.bk * width, self.dims[5]
        kt = self.local(self.tk[parity], (d, bk), self.k_dtype)
        q_mm = self.local(self.tq_mm[job], (bq, d), self.fmt if self.narrow else "f32")
        return [dma(self._src(group, self.k, "k", (d, bk), True, j, per_iter), kt, grid),
                dma(self._src(group, self.v, "v", (bk, d), False, j, per_iter),
                    self.local(self.tv[parity], (bk, d), self.v_dtype), grid, queue=1),
                mm(q_mm, kt, self.local(self.ts[parity], (bq, bk)), grid, accumulate=False,
                   fmt=self.fmt)]

    def softmax(self, group: QueryGroup, job: int, j: int, parity: int, per_iter: int,
                first: bool, causal_mask: bool, width: int = 1) -> list:
        """The online softmax of key block ``j`` (to ``j + width``; scores in the
        ``parity`` copies) and ``O (+)= P V_j``; the running max moves from
        ``m[parity]`` to ``m[1 - parity]``."""
        split, bq, bk, d, fmt = (self._split(group), self.bq, self.bk * width, self.dims[5],
                                 self.fmt)
        grid, local = split.grid, self.local
        s_acc = local(self.ts[parity], (bq, bk))
        p_acc = local(self.tp[parity], (bq, bk), fmt if self.narrow else "f32")
        m_acc, mn_acc = local(self.tmax[parity], (bq, 1)), local(self.tmax[1 - parity], (bq, 1))
        v_acc, o_acc = local(self.tv[parity], (bk, d), self.v_dtype), local(self.to[job], (bq, d))
        ops = []
        if self.mask is not None and self.tm is not None:
            ops += [dma(self._src(group, self.mask, "mask", (bq, bk), False, j, per_iter),
                        local(self.tm, (bq, bk), self.mask.dtype), grid),
                    vec("add", [s_acc, local(self.tm, (bq, bk), self.mask.dtype)], s_acc, grid)]
        if causal_mask and self.positions is not None and self.tkp is not None:
            # only the key blocks from the first crossing one on (a step's leading
            # blocks may be fully visible: `key_steps`)
            skip = max(j, group.masked_from) - j
            cols = bk - skip * self.bk
            still = (0, 0, 0, 0)
            ls = split.loop_strides(still) + ((per_iter * self.bk,) if per_iter else ())
            crossing = Access(self.ts[parity], "f32", (bq, cols), (bk, 1), skip * self.bk)
            ops += [dma(Access(self.positions.buf, "f32", (1, cols), (cols, 1),
                               self.positions.off + (j + skip) * self.bk,
                               split.tile_strides(still), ls),
                        local(self.tkp, (1, cols)), grid),
                    vec("causal_mask", [crossing, local(self.tqp[job], (bq, 1)),
                                        local(self.tkp, (1, cols))], crossing, grid)]
        state = SoftmaxState(m_acc, mn_acc, self.m_blk, self.alpha, self.l_sum, self.r_sum,
                             o_acc)
        return ops + online_softmax(state, s_acc, p_acc, v_acc, grid, fmt, first)

    def epilogue(self, group: QueryGroup, job: int) -> list:
        """``O / l`` of a job and its store."""
        split, bq, d = self._split(group), self.bq, self.dims[5]
        grid, o_acc = split.grid, self.local(self.to[job], (bq, d))
        off, s_b, s_hkv, s_g, s_row, s_col = self.out_view
        out_steps = (s_b, s_hkv, s_g, bq * s_row)
        ops = at_least_one(self.l_sum, self.r_sum, grid) if self.zero_empty_rows else []
        return ops + [vec("div", [o_acc, self.l_sum], o_acc, grid),
                      dma(o_acc, Access(self.out.buf, self.out.dtype, (bq, d), (s_row, s_col),
                                        self.out.off + off + group.first * bq * s_row,
                                        split.tile_strides(out_steps),
                                        split.loop_strides(out_steps)),
                          grid, queue=1)]

    def emit(self, groups: list[QueryGroup]) -> None:
        """The stream of ``groups`` (one group with a loop of jobs, or several whose jobs
        each run once per tile) into the kernel."""
        steps = [(n, t, j, with_mask, w) for n, group in enumerate(groups)
                 for t, (j, with_mask, w) in enumerate(self._order(group))]
        body = self.prologue(groups[0], 0) + self.scores(groups[0], 0, steps[0][2], 0, 0,
                                                         steps[0][4])
        i = 0
        pending: list = []  # the epilogue of the job before this step's
        while i < len(steps):
            n, t, j, with_mask, w = steps[i]
            group, job = groups[n], n % 2
            # steps whose next block follows in the same job and segment: a loop of pairs
            run = 0
            while t > 0 and i + run + 1 < len(steps) and \
                    steps[i + run + 1] == (n, t + run + 1, j + w * (run + 1), with_mask, w):
                run += 1
            if run >= 2:
                pair = []
                for half in (0, 1):
                    parity = (i + half) % 2
                    pair += self.scores(group, job, j + w * (half + 1), 1 - parity, 2 * w, w)
                    pair += self.softmax(group, job, j + w * half, parity, 2 * w, False,
                                         with_mask, w)
                body += loop((run // 2,), pair)
                i += run // 2 * 2
                continue
            parity = i % 2
            if i + 1 < len(steps):
                n_next, _, j_next, _, w_next = steps[i + 1]
                if n_next != n:  # the next job's Q and first scores before this softmax
                    body += self.prologue(groups[n_next], n_next % 2)
                body += self.scores(groups[n_next], n_next % 2, j_next, 1 - parity, 0, w_next)
            # the last job's epilogue after the next job's Q is scaled: the TVP would
            # otherwise hold that scale (and the TTU its first scores) until the last P V
            body += pending
            body += self.softmax(group, job, j, parity, 0, t == 0, with_mask, w)
            pending = []
            if i + 1 == len(steps) or steps[i + 1][0] != n:
                pending = self.epilogue(group, job)
            i += 1
        body += pending
        trips = self._split(groups[0]).trips
        self.kernel.body.extend(loop(trips, body))


class _StripedStream(_Stream):
    """The stream of a striped plan (`striped_attention`): each job is one ``R``-row
    sub-block of the G query heads of a KV head per tile (``[G R, D]`` blocks), placed by
    `striped_attention.Placement`; the pipeline is `_Stream.emit`'s."""

    def __init__(self, kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                 budget: Budget, dims: Sequence[int], views: dict[str, Sequence[int]],
                 scale: float, stripes: striped_attention.StripePlan, positions: Tensor,
                 out_view: Sequence[int], fmt: str, zero_empty_rows: bool,
                 jobs: int) -> None:
        g, r = dims[2], stripes.rows
        super().__init__(kernel, q, k, v, None, out, budget, dims, views, scale, g * r, r,
                         positions, out_view, fmt, zero_empty_rows, jobs, stripes.width)
        self.stripes = stripes

    def _split(self, group: striped_attention.StripeJob) -> striped_attention.Placement:
        return striped_attention.Placement(self.stripes, group, self.dims[0], self.dims[1])

    def _order(self, group: striped_attention.StripeJob) -> list[tuple[int, bool, int]]:
        """(first key unit, masked, units) of the job's steps, in key order."""
        return [(j, j + n > group.masked_from, n)
                for j, n in striped_attention.runs(group.keys, self.stripes.width)]

    def _rows(self, group: striped_attention.StripeJob, t: Tensor, view: Sequence[int],
              dtype: str) -> Access:
        """The job's ``[G, R, D]`` rows in tensor ``t`` (view ``(off, s_b, s_h, s_g, s_row,
        s_col)``)."""
        g, r, d = self.dims[2], self.stripes.rows, self.dims[5]
        off, s_b, s_h, s_g, s_row, s_col = view
        where, ts = self._split(group).place(s_b, s_h, r * s_row)
        return Access(t.buf, dtype, (g, r, d), (s_g, s_row, s_col), t.off + off + where, ts)

    def _local3(self, buf: str, dtype: str = "f32") -> Access:
        g, r, d = self.dims[2], self.stripes.rows, self.dims[5]
        return Access(buf, dtype, (g, r, d), (r * d, d, 1))

    def prologue(self, group: striped_attention.StripeJob, job: int) -> list:
        """The job's Q rows, scaled once, and their positions."""
        place, bq, d = self._split(group), self.bq, self.dims[5]
        g, r = self.dims[2], self.stripes.rows
        grid = place.grid
        q_mm = self.local(self.tq_mm[job], (bq, d), self.fmt if self.narrow else "f32")
        sq, sk = self.dims[3:5]
        assert self.positions is not None
        where, ts = place.place(0, 0, r)
        return [dma(self._rows(group, self.q, self.views["q"], self.q.dtype),
                    self._local3(self.tq[job]), grid),
                vec("scale", [self.local(self.tq[job], (bq, d))], q_mm, grid,
                    scale=float(self.scale)),
                dma(Access(self.positions.buf, "f32", (g, r, 1), (0, 1, 1),
                           self.positions.off + sk - sq + where, ts),
                    Access(self.tqp[job], "f32", (g, r, 1), (r, 1, 1)), grid)]

    def scores(self, group: striped_attention.StripeJob, job: int, j: int, parity: int,
               per_iter: int, width: int = 1) -> list:
        """K/V key units ``j`` to ``j + width`` into the ``parity`` copies, and their
        scores (the same keys on every stripe)."""
        place, bq, d = self._split(group), self.bq, self.dims[5]
        grid, keys = place.grid, self.bk * width
        kt = self.local(self.tk[parity], (d, keys), self.k_dtype)
        q_mm = self.local(self.tq_mm[job], (bq, d), self.fmt if self.narrow else "f32")
        ops = []
        for name, t, shape, transpose, dst, queue in (
                ("k", self.k, (d, keys), True, kt, 0),
                ("v", self.v, (keys, d), False,
                 self.local(self.tv[parity], (keys, d), self.v_dtype), 1)):
            off, s_b, s_h, _, s_row, s_col = self.views[name]
            where, ts = place.place(s_b, s_h, 0)
            ls = (per_iter * self.bk * s_row,) if per_iter else ()
            src = Access(t.buf, t.dtype, shape, (s_col, s_row) if transpose else (s_row, s_col),
                         t.off + off + where + j * self.bk * s_row, ts, ls)
            ops.append(dma(src, dst, grid, queue=queue))
        return ops + [mm(q_mm, kt, self.local(self.ts[parity], (bq, keys)), grid,
                         accumulate=False, fmt=self.fmt)]

    def epilogue(self, group: striped_attention.StripeJob, job: int) -> list:
        """``O / l`` of a job and its store."""
        grid = self._split(group).grid
        o_acc = self.local(self.to[job], (self.bq, self.dims[5]))
        ops = at_least_one(self.l_sum, self.r_sum, grid) if self.zero_empty_rows else []
        return ops + [vec("div", [o_acc, self.l_sum], o_acc, grid),
                      dma(self._local3(self.to[job]),
                          self._rows(group, self.out, self.out_view, self.out.dtype),
                          grid, queue=1)]
