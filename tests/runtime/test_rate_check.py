"""Honest attribution (issue 14 item 4): the physical-rate check every test's report goes
through can fail, and the roofline of a program counts the formats it actually reads."""

from __future__ import annotations

import copy
import os
import warnings

import pytest

import maiac
from maiac import models
from maiac.runtime.errors import MaiacError
from maiac.runtime.target import get_target
from maiac.runtime.timing import simulate
from maiac.runtime.timing_report import checked, rate_violations

CONTEXT = 4096


def _decode(kv_dtype: str) -> object:
    model = models.llama_decoder(models.LLAMA_TINY, mode="decode", context=CONTEXT,
                                 kv_dtype=kv_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate(maiac.compile(model, shape_only=True).program)


@pytest.fixture(scope="module")
def reports() -> dict[str, object]:
    return {kv: _decode(kv) for kv in ("f32", "bf16")}


def test_the_suite_checks_every_report(reports: dict) -> None:
    # conftest sets it before any test runs, so subprocesses inherit it too
    assert os.environ.get("MAIAC_CHECK_RATES") == "1"
    assert all(rate_violations(r, get_target()) == [] for r in reports.values())


def test_a_row_over_a_physical_rate_is_caught(reports: dict) -> None:
    """An op row, an engine row and the total each fail the check on their own."""
    t = get_target()
    good = reports["bf16"]
    op = max(good.ops, key=lambda o: o["time_s"])
    cases = []
    bad = copy.copy(good)
    bad.ops = [{**o, "hbm_bytes": 2 * t.hbm_bw * o["time_s"] + 1.0} if o is op else o
               for o in good.ops]
    cases.append((bad, f"op {op['name']}"))
    bad = copy.copy(good)
    bad.ops = [{**o, "fmt_flops": {"bf16": 2 * t.ttu_flops["bf16"] * o["time_s"]}}
               if o is op else o for o in good.ops]
    cases.append((bad, "TTU work"))
    bad = copy.copy(good)
    bad.engines = [{**good.engines[0], "busy_s": 2 * good.modeled_time_s}, *good.engines[1:]]
    cases.append((bad, f"engine {good.engines[0]['name']}"))
    bad = copy.copy(good)
    bad.hbm_bytes = 2 * t.hbm_bw * good.modeled_time_s
    cases.append((bad, "total"))
    for report, needle in cases:
        found = rate_violations(report, t)
        assert len(found) == 1 and needle in found[0], (needle, found)
        with pytest.raises(MaiacError, match="exceeds a physical rate"):
            checked(report, t)


def test_roofline_counts_the_kv_cache_in_its_own_format(reports: dict) -> None:
    """A bf16 KV cache moves half the bytes of an f32 one, and the roofline (HBM bytes at
    7 TB/s vs TTU/TVP work at the formats' peaks) follows the bytes actually moved."""
    t = get_target()
    cfg = models.LLAMA_TINY
    kv_f32 = cfg.layers * 2 * cfg.kv_heads * CONTEXT * (cfg.hidden // cfg.heads) * 4
    f32, bf16 = reports["f32"], reports["bf16"]
    assert f32.hbm_bytes - bf16.hbm_bytes == pytest.approx(kv_f32 / 2)
    for r in (f32, bf16):
        assert r.roofline_time_s == pytest.approx(max(r.compute_time_s, r.hbm_bytes / t.hbm_bw))
