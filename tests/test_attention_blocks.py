"""Attention block sizes: the cost model counts each instruction's issue overhead, so a
short sequence runs as one job per tile (fewer instructions for the interpreter to run)
while a long one still keeps every tile it can busy."""

from __future__ import annotations

import math

import numpy as np

from maiac.passes.tile import budget_of
from maiac.passes.tiling import attention
from maiac.passes.tiling.attention import choose_blocks, key_steps, query_groups
from maiac.passes.tiling.attention_cost import job_cost, step_cost
from maiac.passes.tiling.common import Budget, divisors, split_jobs
from maiac.runtime.target import get_target

F32 = (4, 4, 4, 4)  # bytes per element of Q, K, V and the mask


def test_short_masked_attention_is_one_job_per_tile() -> None:
    """gpt2_dynamo's attention (B 2, 4 heads, seq 8, head dim 16, a mask operand): it ran
    64 query blocks of one row, two per tile (26 instructions); now one pass of the tiles
    with the whole key sequence in one block (13 instructions)."""
    budget = budget_of(get_target("maia200"))
    bq, bk, _ = choose_blocks((2, 4, 1), 8, 8, 16, F32, True, budget)
    assert bk == 8
    assert not split_jobs((2, 4, 1, 8 // bq), budget.n_tiles).trips


def test_long_attention_keeps_the_tiles_busy() -> None:
    """Seq 2048 with a mask over 32 heads: the query blocks still fill the tiles the
    heads allow (32 of 36), each job looping over its key blocks."""
    budget = budget_of(get_target("maia200"))
    for causal, masked in ((False, True), (True, False)):
        bq, _, _ = choose_blocks((1, 8, 4), 2048, 2048, 128, F32, masked, budget, causal)
        assert split_jobs((1, 8, 4, 2048 // bq), budget.n_tiles).n_tiles == 32



def _walked_cost(jobs: tuple[int, ...], sq: int, sk: int, d: int, bq: int, bk: int,
                 budget: Budget, causal: bool, masked: bool, width: int
                 ) -> tuple[float, float, float]:
    """(sum of the longer engine, TTU, TVP) walking every step of every group."""
    per_job = attention._per_job(bq, bk, d, budget, causal, masked)
    total = ttu = tvp = 0.0
    for group in query_groups(sq, sk, bq, bk, causal):
        turns = math.prod(split_jobs((*jobs, group.count), budget.n_tiles).loops)
        costs = [tuple(float(x) for x in step_cost(
                     bq, n * bk, d, (j + n - max(j, group.masked_from)) * bk * (causal and mask),
                     budget, "f32", masked))
                 for j, n, mask in key_steps(group.keys, group.masked_from, width)]
        total += turns * (sum(max(c) for c in costs) + per_job)
        ttu += turns * sum(c[0] for c in costs)
        tvp += turns * (sum(c[1] for c in costs) + job_cost(bq, d, budget))
    return total, ttu, tvp


def test_block_cost_counts_every_step() -> None:
    """`_attention_costs` (four kinds of steps per group, array operations over the
    groups) equals the walk over every step `key_steps` gives every `query_groups` group,
    with and without a causal diagonal, a KV-cache offset, partial last runs, groups with
    no crossing block (one-row query blocks)."""
    budget = budget_of(get_target("maia200"))
    for jobs, sq, sk, d in (((1, 8, 4), 96, 160, 16), ((2, 4, 1), 64, 64, 8),
                            ((1, 2, 2), 48, 48, 32)):
        for causal, masked in ((True, False), (False, True), (False, False)):
            for bq in (1, 4, 16, 48):
                for bk in (x for x in divisors(sk) if x <= 64):
                    for width in range(1, 5 if causal else 2):
                        want = _walked_cost(jobs, sq, sk, d, bq, bk, budget, causal, masked,
                                            width)
                        got = attention._attention_costs(jobs, sq, sk, d, bq, bk, budget,
                                                         causal, masked, "f32", width)
                        assert np.allclose(got, want, rtol=1e-12, atol=0), \
                            (jobs, sq, sk, bq, bk, width, causal, masked)
