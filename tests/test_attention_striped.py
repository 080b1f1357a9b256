"""Causal prefill attention with its query rows striped over all tiles
(passes/tiling/striped_attention.py): Llama-3-8B's 32 heads keep 36 tiles busy instead
of 32, and the outputs match onnxruntime."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnxruntime as ort

import maiac
from maiac.passes.tile import budget_of
from maiac.passes.tiling import attention, striped_attention
from maiac.runtime import isa
from maiac.runtime.target import get_target
from tests.test_attention_pipeline import _leaves
from tests.test_fusion import _causal_model

BF16 = (2, 2, 2, 4)  # bytes per element of Q, K, V (bf16 products) and the mask


def test_llama_8b_attention_runs_on_every_tile() -> None:
    """The 8B layer (32 heads / 8 KV heads, seq 2048, bf16 products): 9 stripes of 32-row
    sub-blocks times 4 KV heads fill maia200's 36 tiles, and the busier engine's modeled
    total is below the best block split's (32 tiles: 38.9 us), by about the 36/32."""
    budget = budget_of(get_target("maia200"))
    dims = (1, 8, 4, 2048, 2048, 128)
    plan = attention._striped_plan(dims, BF16, budget, "bf16")
    assert plan is not None
    assert plan.stripes * plan.spatial_kv == budget.n_tiles == 36
    assert (plan.rows, plan.tail, plan.kv_loops) == (32, 1, 2)
    # the block split `choose_blocks` picks for it (256 x 128 blocks, 4 per step; the
    # search takes seconds)
    blocks = attention._attention_cost((1, 8, 4), 2048, 2048, 128, 256, 128, budget, True,
                                       False, "bf16", 4, engines=True)
    assert plan.cost < 0.93 * blocks


def test_every_row_is_in_one_job() -> None:
    """The tail jobs and the stripes' jobs cover each 32-row sub-block of every head once,
    each job's keys ending at the diagonal of its last stripe's rows."""
    plan = striped_attention.StripePlan(32, 9, 1, 4, 2, 32, 0.0)
    jobs = striped_attention.jobs_of(plan, 1, 2048, 2048)
    covered = sorted(s for jb in jobs if jb.hkv == 0 or jb.tail
                     for s in ([jb.first] if jb.tail else range(jb.first, jb.first + 9)))
    assert covered == list(range(64))
    assert all(jb.keys == jb.first + (1 if jb.tail else 9) for jb in jobs)
    assert sum(not jb.tail for jb in jobs) == 2 * 7  # 2 KV heads per tile, 7 jobs each


def test_striped_outputs_match_onnxruntime() -> None:
    """Forced onto small shapes (GQA, a KV-cache offset, two batches, tail sub-blocks,
    steps narrower than a job's keys, so loops of steps), the outputs match onnxruntime
    and every stripe instruction runs on all 36 tiles."""
    original = attention._striped_plan
    rng = np.random.default_rng(5)
    for b, h, hkv, sq, past, d, width in ((1, 8, 4, 512, 0, 16, 32), (1, 8, 4, 384, 64, 16, 3),
                                          (2, 4, 2, 640, 0, 8, 2)):
        model = _causal_model(b, h, hkv, sq, past, d)

        def forced(*args: object, width: int = width) -> striped_attention.StripePlan:
            plan = original(*args)  # type: ignore[arg-type]
            assert plan is not None
            return dataclasses.replace(plan, width=width, cost=0.0)
        attention._striped_plan = forced  # type: ignore[assignment]
        try:
            compiled = maiac.compile(model)
        finally:
            attention._striped_plan = original
        kinds = compiled.program.meta["ops"]
        grids = {math.prod(i.grid) for i in _leaves(compiled.program.instructions)
                 if isinstance(i, isa.MatMul) and kinds[i.op]["kind"] == "attention"}
        assert 36 in grids
        feeds = {"x": rng.standard_normal((b, sq, h * d)).astype(np.float32)}
        if past:
            for t in ("k", "v"):
                feeds[f"past_{t}"] = rng.standard_normal((b, hkv, past, d)).astype(np.float32)
        ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
        np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)
