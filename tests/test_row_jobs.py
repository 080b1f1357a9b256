"""Row jobs of the norm and activation-quantize kernels (passes/tiling/row_jobs.py): every
tile, the leftover rows as a first job of their own, a plan the cost model picks; the
same outputs bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from maiac.passes.tile import budget_of
from maiac.passes.tiling import row_jobs
from maiac.runtime import isa
from maiac.runtime.errors import MaiacError
from maiac.runtime.target import get_target
from tests.test_narrow_act import _leaves, _norm_projections, _with_and_without


def test_prefill_norm_runs_on_every_tile_with_a_short_first_job() -> None:
    """Llama-3-8B prefill: 2048 rows of 4096 on maia200's 36 tiles. The divisor split ran
    them on 32 tiles in 4 jobs of 16 rows; the plan puts 56 rows on each of the 36 tiles
    and the 32 left over first (one row each on 32 tiles), and models shorter."""
    budget = budget_of(get_target("maia200"))
    rows, n = 2048, 4096
    args = (n, 4.0, 1.0, 11, 2)
    jobs = row_jobs.plan_row_jobs(rows, n, 8 * n + n, 4 * n, 4.0, 1.0, 11, 2, budget)
    row_jobs.check(jobs, rows)
    assert jobs[0] == row_jobs.RowJob(2016, 32, 1)
    assert {j.tiles for j in jobs[1:]} == {36}
    assert sum(j.rows for j in jobs[1:]) == 56
    divisor_split = [row_jobs.RowJob(i * 512, 32, 16) for i in range(4)]
    assert row_jobs.plan_cost(list(jobs), *args, budget) < \
        0.95 * row_jobs.plan_cost(divisor_split, *args, budget)


@pytest.mark.parametrize("rows", [1, 20, 36, 37, 1153, 4099])
def test_every_row_once(rows: int) -> None:
    """Fewer rows than tiles, a multiple of them, one over: each row in one job, no job
    on more tiles than there are, none longer than the blocks allow."""
    budget = budget_of(get_target("maia200"))
    jobs = row_jobs.plan_row_jobs(rows, 4096, 8 * 4096 + 4096, 0, 4.0, 1.0, 11, 2, budget)
    row_jobs.check(jobs, rows)
    assert all(1 <= j.tiles <= budget.n_tiles and j.rows >= 1 for j in jobs)
    assert 2 * row_jobs.max_rows(jobs) * (8 * 4096 + 4096) <= budget.tsram_bytes // 2


def test_rows_that_do_not_fit_give_no_plan() -> None:
    budget = budget_of(get_target("maia200"))
    n = budget.tsram_bytes // 8  # one row's two fp32 block sets: all of TSRAM
    assert row_jobs.plan_row_jobs(64, n, 8 * n, 0, 4.0, 1.0, 6, 1, budget) == ()
    with pytest.raises(MaiacError, match=rf"norm \+ quantize: a row of {n} elements does not fit"):
        row_jobs.required_row_jobs("norm + quantize", 64, n, 8 * n, 0, 4.0, 1.0, 6, 1, budget)


@pytest.mark.parametrize("quant", ["mxfp4", "fp8"])
def test_norm_jobs_with_a_leftover_give_the_same_outputs(
        quant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """258 rows on 4 tiles: 64 each and 2 left over (a job on 2 tiles); 1024-element rows
    leave room for 7 rows per block, so every tile runs several jobs. The norm storing its
    codes gives the same outputs, bit for bit, as the norm then the quantize kernel."""
    m, k = 258, 1024
    model = _norm_projections(m, k, 32, 7, False)
    x = np.random.default_rng(8).standard_normal((m, k)).astype(np.float32)
    fused, _ = _with_and_without(model, quant, x, "_norm_to_narrow",
                                 lambda self, op, ins, label: False, monkeypatch)
    loads = [i for i in _leaves(fused.program.instructions)
             if isinstance(i, isa.Dma) and i.op == "norm" and i.dst.level == "tsram"
             and i.src.level != "tsram" and len(i.src.shape) == 2]
    assert {tuple(i.grid) for i in loads} == {(4,), (2,)}
    assert len(loads) > 8 and sum(i.src.shape[0] * i.grid[0] for i in loads) == m
