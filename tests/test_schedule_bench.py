"""bench/schedule.py's per-op-kind breakdown (op_kinds) on a small compiled prefill."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import maiac
from maiac import models
from maiac.runtime.target import get_target
from maiac.runtime.timing import simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import schedule  # noqa: E402


def test_op_kinds_cover_every_op_and_bound_them() -> None:
    model = models.llama_decoder(models.LLAMA_TINY, mode="prefill", seq=64)
    rep = simulate(maiac.compile(model).program).to_json()
    target = get_target()
    kinds = schedule.op_kinds(rep, target)
    by_kind = {k["kind"]: k for k in kinds}
    assert {"matmul", "attention", "norm"} <= set(by_kind)
    assert sum(k["ops"] for k in kinds) == len(rep["ops"])
    assert sum(k["time_s"] for k in kinds) == pytest.approx(sum(o["time_s"] for o in rep["ops"]))
    attention = [o for o in rep["ops"] if o["kind"] == "attention"]
    assert by_kind["attention"]["bound_s"] == pytest.approx(
        sum(schedule.op_bound(o, target) for o in attention))
    for k in kinds:  # no op kind is faster than its peak-rate work allows
        assert 0 < k["of_bound"] <= 1.0 + 1e-9 or k["bound_s"] == 0
    gap = rep["modeled_time_s"] - schedule.calibrated_time(rep, target)
    assert sum(k["gap_share"] * gap for k in kinds) == pytest.approx(
        sum(k["time_s"] - k["bound_s"] for k in kinds))
    per_op = schedule.per_op_curve_time(rep, target)
    # the program's launch is in neither op kind's bound: the curve pays it once
    assert per_op == pytest.approx(sum(k["bound_s"] for k in kinds) + target.launch_latency_s)
    # the per-op curve sums maxima, the program-wide curve takes the max of sums
    assert per_op >= schedule.calibrated_time(rep, target) * (1 - 1e-9)
    text = schedule.ops_table([{"mode": "prefill", "quant": "fp32", "op_kinds": kinds}])
    assert f"| prefill | fp32 | attention | {len(attention)} |" in text
