"""Causal prefill attention on every tile: query rows striped over the tiles.

`passes/tiling/attention.py` splits ``(B, Hkv, G, query blocks)`` jobs over the tiles; an
SPMD address is affine in the tile coordinates and every tile of an instruction runs the
same shapes, so with power-of-two extents (Llama-3-8B: 32 heads, 2048 rows) it keeps 32
of maia200's 36 tiles busy (0.889 at most). Here instead the rows of a head are cut into
``R``-row sub-blocks (``R`` = the TTU's native 32 rows) dealt round-robin over ``T`` tiles
(``T`` = tiles / KV heads on the tiles, 9 on maia200 with 4 of Llama's 8 KV heads side by
side):

* job ``j`` of the tile at stripe ``a`` is sub-block ``t0 + a + T j`` of every one of the
  ``G`` query heads of its KV head, stacked as the ``G R`` rows of one block (they share
  K/V and the key range), so all ``T`` tiles of job ``j`` read the same keys
  ``[0, (t0 + T (j + 1)) R)`` (a NoC broadcast: the K/V tile stride is 0 along ``a``)
  and do the same work: the tiles are balanced and every instruction has the same
  shapes;
* the keys past a tile's own diagonal are masked (`causal_mask` on the last ``T R`` keys
  of each job), about ``T R / 2`` keys per row, as a 256-row query block's diagonal
  costs the block-split tiler;
* the first ``t0 = (Sq / R) mod T`` sub-blocks (the cheapest rows: few keys) are jobs on
  ``B Hkv`` tiles.

The jobs of a tile (``B`` x the KV heads it loops over x ``Sq / (T R)``) are one
straight-line stream, pipelined as `attention._Stream` (the next job's first scores
run during this job's last softmax; the tail first, then long and short jobs
alternating, the longest last). Each job's
keys run in steps of at most ``W`` keys (equal-sized runs). `plan` sizes ``W`` with the
block tiler's per-step and per-job costs (`attention_cost`: the emitted instructions' TTU
and TVP work and issue overheads; the busier engine's total, as the stream overlaps them)
and
`attention.tile_attention` takes the striped plan only when it puts the busier
engine's total below that of its own best block split. Llama-3-8B's layer (fp8: bf16 products): 36 tiles, ``G R =
128`` rows per job, up to 1024 keys per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from maiac.passes.tiling.attention_cost import job_cost, step_cost
from maiac.passes.tiling.common import Budget, long_short

MAX_KEYS = 2048  # keys per step


@dataclass(frozen=True)
class StripePlan:
    """Sub-blocks of ``rows`` query rows dealt over ``stripes`` tiles (after ``tail``
    sub-blocks on their own), ``spatial_kv`` KV heads side by side (``kv_loops`` each),
    steps of at most ``width * rows`` keys; ``cost``: modeled seconds."""

    rows: int
    stripes: int
    tail: int
    spatial_kv: int
    kv_loops: int
    width: int
    cost: float


@dataclass(frozen=True)
class StripeJob:
    """One job: sub-block ``first`` (of the tile at stripe 0; ``+ a`` at stripe ``a``) of
    batch ``b``, KV head ``hkv`` (of the tile at KV coordinate 0), ``keys`` keys in units
    of ``rows``; ``masked_from``: the first key unit past some row's diagonal;
    ``tail``: a job of the leading sub-blocks (on ``B Hkv`` tiles)."""

    b: int
    hkv: int
    first: int
    keys: int
    masked_from: int
    tail: bool


def runs(keys: int, width: int) -> list[tuple[int, int]]:
    """(first key unit, units) of the equal-sized steps over ``keys`` units, at most
    ``width`` each."""
    n = -(-keys // width)
    size = -(-keys // n)
    return [(j, min(size, keys - j)) for j in range(0, keys, size)]


def jobs_of(plan: StripePlan, b: int, sq: int, sk: int) -> list[StripeJob]:
    """Every job of the stream, in key order of their sub-blocks (before interleaving)."""
    r, t = plan.rows, plan.stripes
    offset = (sk - sq) // r  # whole key units before the first query row
    out = [StripeJob(0, 0, s, s + 1 + offset, s + offset, True) for s in range(plan.tail)]
    per_head = (sq // r - plan.tail) // t
    for bi in range(b):
        for hl in range(plan.kv_loops):
            for j in range(per_head):
                first = plan.tail + t * j
                out.append(StripeJob(bi, hl, first, first + t + offset, first + offset, False))
    return out


def plan(dims: Sequence[int], budget: Budget, tsram: Callable[[int, int], int],
         fmt: str) -> StripePlan | None:
    """The cheapest striped plan of a causal ``dims = (B, Hkv, G, Sq, Sk, D)`` attention
    (None when none applies); ``tsram(rows, keys)``: TSRAM bytes of a stream with those
    blocks; ``fmt``: the products' TTU format."""
    b, hkv, g, sq, sk, d = dims
    r = budget.native_m
    if r <= 1 or sq % r or (sk - sq) % r or sq < 2 * r:
        return None
    best: StripePlan | None = None
    for spatial in (s for s in range(1, hkv + 1) if hkv % s == 0):
        if budget.n_tiles % spatial:
            continue
        t = budget.n_tiles // spatial
        if t < 2 or sq // r < t or b * hkv > budget.n_tiles:
            continue
        tail = (sq // r) % t
        for width in range(r, min(MAX_KEYS, sk) + 1, r):
            if tsram(g * r, width) > budget.tsram_bytes:
                break
            cand = StripePlan(r, t, tail, spatial, hkv // spatial, width // r, 0.0)
            total = max(engine_times(cand, dims, budget, fmt))
            if best is None or total < best.cost:
                best = dataclasses.replace(cand, cost=total)
    return best


def engine_times(plan: StripePlan, dims: Sequence[int], budget: Budget, fmt: str
                 ) -> tuple[float, float]:
    """(TTU, TVP) seconds of a tile's stream (`attention_cost`: the emitted
    instructions' costs); the plan's cost is the longer, as the stream overlaps them."""
    b, _, g, sq, sk, d = dims
    m, r = g * plan.rows, plan.rows
    ttu = tvp = 0.0
    jobs = jobs_of(plan, b, sq, sk)
    for job in jobs:
        for j0, n in runs(job.keys, plan.width):
            crossing = max(0, j0 + n - max(j0, job.masked_from)) * r
            c_ttu, c_tvp = step_cost(m, n * r, d, crossing, budget, fmt)
            ttu += c_ttu
            tvp += c_tvp
    return ttu, tvp + len(jobs) * job_cost(m, d, budget)


class Placement:
    """Where a job's blocks are: its grid and, per operand, the element offset of the tile
    at coordinate 0 and the tile strides (and the `JobSplit` interface `attention._Stream`
    uses for blocks that do not move with the job: this stream has no loop)."""

    trips: tuple[int, ...] = ()

    def __init__(self, plan: StripePlan, job: StripeJob, b: int, hkv: int) -> None:
        self.plan, self.job = plan, job
        if job.tail:  # every (batch, KV head) on a tile of its own
            self.moving = (b > 1, hkv > 1)
            grid = tuple(x for x in (b, hkv) if x > 1)
        else:
            self.moving = (False, plan.spatial_kv > 1)
            grid = ((plan.spatial_kv,) if plan.spatial_kv > 1 else ()) + (plan.stripes,)
        self.grid = grid or (1,)

    def tile_strides(self, steps: Sequence[int]) -> tuple[int, ...]:
        """Tile strides of a block that does not move with the job (all 0)."""
        del steps
        return (0,) * len(self.grid)

    def loop_strides(self, steps: Sequence[int]) -> tuple[int, ...]:
        del steps
        return ()

    def place(self, s_b: int, s_h: int, s_sub: int) -> tuple[int, tuple[int, ...]]:
        """(offset, tile strides) of a block that moves ``s_b`` per batch, ``s_h`` per KV
        head and ``s_sub`` per sub-block (``s_sub = 0``: the keys, the same on every
        stripe)."""
        job, p = self.job, self.plan
        off = job.first * s_sub
        if job.tail:
            strides = tuple(s for s, on in zip((s_b, s_h), self.moving, strict=True) if on)
            return off, strides or (0,)
        off += job.b * s_b + job.hkv * s_h
        return off, ((p.kv_loops * s_h,) if self.moving[1] else ()) + (s_sub,)


def interleave(jobs: list[StripeJob]) -> list[StripeJob]:
    """The stream's order: the tail jobs first (the cheapest rows: a short fill), then
    long and short jobs alternating (as `attention._interleave`) with the longest last
    (its products hide the drain of the jobs before it): in the 8B layer 36.3 -> 35.9 us
    over the block tiler's longest-first order."""
    by_keys = sorted((jb for jb in jobs if not jb.tail), key=lambda jb: (-jb.keys, jb.b, jb.hkv))
    return [jb for jb in jobs if jb.tail] + long_short(by_keys)[::-1]


def flops_of(plan: StripePlan, dims: Sequence[int]) -> int:
    """The products' and softmax's work of every job on every tile of its grid."""
    b, hkv, g, sq, sk, d = dims
    total = 0
    for job in jobs_of(plan, b, sq, sk):
        tiles = b * hkv if job.tail else plan.spatial_kv * plan.stripes
        total += tiles * g * plan.rows * job.keys * plan.rows * (4 * d + 8)
    return total
