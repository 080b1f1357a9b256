"""Attention block sizes: the cost model counts each instruction's issue overhead, so a
short sequence runs as one job per tile (fewer instructions for the interpreter to run)
while a long one still keeps every tile it can busy."""

from __future__ import annotations

from maiac.passes.tile import budget_of
from maiac.passes.tiling.attention import choose_blocks
from maiac.passes.tiling.common import split_jobs
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
