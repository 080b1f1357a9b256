"""bench/paper.py's model of the paper's statistics (no compiling: synthetic rows)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import paper  # noqa: E402

from maiac.runtime.target import get_target  # noqa: E402


def _gemm(flops: float, nbytes: float, bound: str, eff: float) -> dict:
    return {"fmt": "bf16", "shape": [1, 1, 1], "flops": flops, "operand_bytes": nbytes,
            "bound": bound, "time_s": 1.0, "efficiency": eff, "compile_s": 0.0}


def _rows(bf16: list[dict], qwen: list[dict]) -> dict:
    return {r["key"]: r for r in paper.summarize(get_target(), bf16, bf16, qwen)}


def test_thresholds_follow_the_papers_wording() -> None:
    """"> 90 % above 58 TFLOP": after the largest failing shape; "above 50 % only once
    operands exceed 113.5 MiB": before the smallest passing one (a dip after it, like
    the 110 MiB shape here, does not move it)."""
    mib = paper.MIB
    mem = [_gemm(1.0, s * mib, "memory", e) for s, e in
           ((64, 0.45), (100, 0.52), (110, 0.49), (125, 0.51), (200, 0.53))]
    comp = [_gemm(f * 1e12, 1.0, "compute", e) for f, e in
            ((1, 0.95), (20, 0.85), (80, 0.97), (160, 0.99))]
    rows = _rows(mem + comp, [{"batch": 1, "tokens_per_s": 100.0}])
    # the 100 MiB shape is the first above 50 %: nothing below ~80 MiB passes
    assert rows["bf16_50pct_bytes"]["maiac"] == pytest.approx(math.sqrt(64 * 100) * mib)
    assert rows["bf16_90pct_flop"]["maiac"] == pytest.approx(math.sqrt(20 * 80) * 1e12)
    assert rows["bf16_memory_peak"]["maiac"] == 0.53
    # nothing fails / the smallest shape passes: no threshold to place (the sweep, not
    # the model, would decide it)
    assert math.isnan(_rows(comp[2:], [{"batch": 1, "tokens_per_s": 1.0}])
                      ["bf16_90pct_flop"]["maiac"])
    assert math.isnan(_rows(mem[1:], [{"batch": 1, "tokens_per_s": 1.0}])
                      ["bf16_50pct_bytes"]["maiac"])


def test_implied_batch_interpolates_the_tokens_curve() -> None:
    qwen = [{"batch": b, "tokens_per_s": t} for b, t in ((8, 2000.0), (12, 2600.0))]
    assert paper.implied_batch(qwen) == pytest.approx(8 + 4 * 434 / 600)
    assert paper.implied_batch([{"batch": 16, "tokens_per_s": 900.0}]) is None
