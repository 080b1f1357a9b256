"""The prefill attention tilers' TTU and TVP costs (passes/tiling/attention_cost.py) are
the timing model's costs of the instructions they emit: the striped plan's and the
block split's per-tile engine totals equal the sum of runtime/timing_costs.py's leaf
costs over the emitted attention kernels (to 1e-9: float rounding), so the tilers'
search cannot drift from what runtime/timing charges."""

from __future__ import annotations

import dataclasses
import math

import maiac
from maiac.passes.tile import budget_of
from maiac.passes.tiling import attention, striped_attention
from maiac.runtime import isa
from maiac.runtime.target import Target
from maiac.runtime.timing_costs import leaf_cost
from tests.test_fusion import _causal_model

F32 = (4, 4, 4, 4)


def _engine_times(compiled: maiac.CompiledModel) -> tuple[float, float]:
    """(TTU, TVP) seconds of a tile's attention instructions, by the timing model."""
    program = compiled.program
    target = Target.from_json(program.target)
    kinds = program.meta["ops"]
    busy = {"ttu": 0.0, "tvp": 0.0}

    def walk(instrs: list[isa.Instr], trips: tuple[int, ...]) -> None:
        for i in instrs:
            if isinstance(i, isa.Loop):
                walk(i.body, trips + tuple(i.trips))
            elif isinstance(i, isa.MatMul | isa.Vec) and kinds[i.op]["kind"] == "attention":
                leaf = leaf_cost(i, "", trips, target)
                busy[leaf.engine] += leaf.dur * math.prod(trips)
    walk(program.instructions, ())
    return busy["ttu"], busy["tvp"]


def test_striped_plan_costs_the_emitted_stream() -> None:
    """Striped plans forced onto small shapes (tail jobs, steps narrower than a job's
    keys, jobs masked from their first step, head dim 16 padded to the TTU's native
    depth, two batches): `striped_attention.engine_times` is the emitted kernel's."""
    original = attention._striped_plan
    budget = budget_of(maiac.runtime.target.get_target("maia200"))
    for b, h, hkv, sq, d, width in ((1, 8, 4, 512, 16, 32), (2, 4, 2, 640, 8, 2),
                                    (1, 8, 4, 384, 16, 3)):
        plans: list[striped_attention.StripePlan] = []

        def forced(*args: object, width: int = width,
                   plans: list[striped_attention.StripePlan] = plans
                   ) -> striped_attention.StripePlan:
            plan = original(*args)  # type: ignore[arg-type]
            assert plan is not None
            plans.append(dataclasses.replace(plan, width=width, cost=0.0))
            return plans[-1]
        attention._striped_plan = forced  # type: ignore[assignment]
        try:
            compiled = maiac.compile(_causal_model(b, h, hkv, sq, 0, d))
        finally:
            attention._striped_plan = original
        (plan,) = plans
        want = striped_attention.engine_times(plan, (b, hkv, h // hkv, sq, sq, d), budget,
                                              "f32")
        got = _engine_times(compiled)
        assert all(math.isclose(w, g, rel_tol=1e-9) for w, g in zip(want, got, strict=True)), \
            (b, h, sq, width, want, got)


def test_block_split_costs_the_emitted_streams() -> None:
    """The block split (causal, generated masks: groups of query blocks, loops of jobs
    and of step pairs, wide steps): `attention._attention_costs`'s engine totals are
    those of the emitted kernels."""
    budget = budget_of(maiac.runtime.target.get_target("maia200"))
    original, striped = attention.choose_blocks, attention._striped_plan
    for h, hkv, sq, d, bq, bk, width in ((2, 1, 256, 16, 32, 32, 2), (4, 2, 192, 16, 64, 32, 3),
                                         (8, 8, 512, 32, 64, 64, 1)):
        def forced(*args: object, bq: int = bq, bk: int = bk, width: int = width
                   ) -> tuple[int, int, int]:
            return bq, bk, width
        attention.choose_blocks = forced  # type: ignore[assignment]
        attention._striped_plan = lambda *args: None  # type: ignore[assignment]
        try:
            compiled = maiac.compile(_causal_model(1, h, hkv, sq, 0, d))
        finally:
            attention.choose_blocks, attention._striped_plan = original, striped
        _, ttu, tvp = attention._attention_costs((1, hkv, h // hkv), sq, sq, d, bq, bk, budget,
                                                 True, False, "f32", width)
        got = _engine_times(compiled)
        assert all(math.isclose(w, g, rel_tol=1e-9) for w, g in zip((ttu, tvp), got, strict=True)), \
            (h, sq, bq, bk, width, (ttu, tvp), got)
