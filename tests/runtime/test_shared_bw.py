"""No modeled CSRAM or NoC rate exceeds the physical one (issue #14 item 4).

The DMA queues run concurrently; each DMA's time already caps *its own* rate at
``csram_bw`` / ``noc_bw`` x its tiles' share, but their *combined* rate is what the chip
has to sustain. This measures it from the schedule independently of how the timing model
books bandwidth: every DMA's CSRAM and NoC bytes come from its instruction, and they
moved within the interval the report says they did (the event's ``<level>_slot`` when
the model gives one, else the DMA's whole run). For any window of time, the bytes of the
DMAs that moved entirely inside it cannot exceed the bandwidth x the window: the test
takes the largest such ratio over every window that starts at one transfer's start and
ends at another's end.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from functools import cache
from typing import Any

import numpy as np
import pytest

import maiac
from maiac import models
from maiac.runtime import isa
from maiac.runtime.memory import distinct_bytes, itemsize
from maiac.runtime.program import Program
from maiac.runtime.target import Target, get_target
from maiac.runtime.timing import TimingReport, simulate
from maiac.runtime.timing_report import overbooked, shared_bw_violations


def _instr(program: Program, path: str) -> isa.Instr:
    node: Any = None
    body = program.instructions
    for part in path.split("."):
        node = body[int(part)]
        body = node.body if isinstance(node, isa.Loop) else []
    return node


def _level_bytes(ins: isa.Instr) -> dict[str, float]:
    """CSRAM and NoC bytes of one DMA/gather/scatter, from the instruction alone."""
    grid = tuple(ins.grid)
    if isinstance(ins, isa.Dma):
        src, dst = ins.src, ins.dst
        sb, db = distinct_bytes(src, grid), distinct_bytes(dst, grid)
    elif isinstance(ins, isa.Scatter):
        src, dst = ins.src, ins.table
        sb = distinct_bytes(src, grid)
        db = sb // itemsize(src.dtype) * itemsize(dst.dtype)
    else:
        src, dst = ins.table, ins.dst
        db = distinct_bytes(dst, grid)
        sb = db // itemsize(dst.dtype) * itemsize(src.dtype)
    csram = sb * (src.level == "csram") + db * (dst.level == "csram")
    levels = {src.level, dst.level}
    if "tsram" in levels and len(levels) == 2:  # into or out of the tiles
        noc = db if dst.level == "tsram" else sb
    elif levels == {"hbm", "csram"}:
        noc = max(sb, db)
    else:
        noc = 0
    return {"csram": float(csram), "noc": float(noc)}


def peak_rate(report: TimingReport, level: str) -> tuple[float, tuple[float, float]]:
    """The largest combined ``level`` rate (B/s) over windows of the report's timeline,
    and that window."""
    rows = []
    for ev in report.events:
        if not ev.engine.startswith("dma") or ev.args.get("extrapolated"):
            continue  # extrapolated loop tails stand for iterations, not transfers
        ins = _instr(report.program, ev.args["instr"])
        if not isinstance(ins, isa.Dma | isa.Gather | isa.Scatter):
            continue  # a barrier on a DMA queue moves nothing
        nbytes = _level_bytes(ins)[level]
        if nbytes:
            lo, hi = ev.args.get(f"{level}_slot", (ev.start, ev.start + ev.dur))
            rows.append((lo, hi, nbytes))
    if not rows:
        return 0.0, (0.0, 0.0)
    a, b, w = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    ua, ub = np.unique(a), np.unique(b)
    # m[i, j]: bytes of the transfers starting at ua[i] and ending at ub[j]; summed over
    # starts >= ua[i] and ends <= ub[j] it is what moved inside [ua[i], ub[j]]
    m = np.zeros((ua.size, ub.size))
    np.add.at(m, (np.searchsorted(ua, a), np.searchsorted(ub, b)), w)
    inside = np.cumsum(np.cumsum(m[::-1], axis=0)[::-1], axis=1)
    span = ub[None, :] - ua[:, None]
    rate = np.where(span > 0, inside / np.where(span > 0, span, 1.0), 0.0)
    i, j = np.unravel_index(np.argmax(rate), rate.shape)
    return float(rate[i, j]), (float(ua[i]), float(ub[j]))


def _bw(target: Target, level: str) -> float:
    return {"csram": target.csram_bw, "noc": target.noc_bw}[level]


@cache
def _prefill_layer(quant: str) -> TimingReport:
    """One Llama-3-8B-shaped prefill layer (seq 2048), shape-only, as bench/schedule.py
    compiles it."""
    model = models.llama_decoder(models.LLAMA3_8B, weights="shape_only", layers=1,
                                 mode="prefill", seq=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = maiac.compile(model, quant=quant, shape_only=True)
    return simulate(compiled.program)


@cache
def _small(name: str) -> TimingReport:
    """Small programs the suite reports: a tiny Llama prefill and decode."""
    kw = {"prefill": {"mode": "prefill", "seq": 64}, "decode": {"mode": "decode",
                                                                 "context": 128}}[name]
    model = models.llama_decoder(models.LLAMA_TINY, weights="shape_only", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = maiac.compile(model, shape_only=True)
    return simulate(compiled.program)


@pytest.mark.parametrize("level", ["csram", "noc"])
@pytest.mark.parametrize("program", ["8b-prefill-fp8", "8b-prefill-mxfp4", "tiny-prefill",
                                     "tiny-decode"])
def test_combined_dma_rate_stays_within_the_physical_one(program: str, level: str) -> None:
    if program.startswith("8b"):
        report = _prefill_layer(program.rsplit("-", 1)[1])
    else:
        report = _small(program.split("-", 1)[1])
    bw = _bw(get_target("maia200"), level)
    rate, (lo, hi) = peak_rate(report, level)
    assert rate <= bw * (1 + 1e-6), (
        f"{program}: combined {level} rate {rate / 1e12:.2f} TB/s over "
        f"[{lo * 1e6:.3f}, {hi * 1e6:.3f}] us > {bw / 1e12:.2f} TB/s "
        f"({rate / bw:.2f}x)")


def test_overbooked_is_exact_over_every_window() -> None:
    # two transfers of 1 s each inside the same 1 s: one second late
    assert overbooked([(0.0, 1.0, 1.0), (0.0, 1.0, 1.0)]) == pytest.approx(1.0)
    assert overbooked([(0.0, 2.0, 1.0), (0.0, 2.0, 1.0)]) == 0.0
    # a long transfer around a short one fills the gaps around it: fits
    assert overbooked([(0.0, 3.0, 2.0), (1.0, 2.0, 1.0)]) == 0.0
    # ... but not with one second more inside [1, 2]
    assert overbooked([(0.0, 3.0, 2.0), (1.0, 2.0, 1.0), (1.0, 2.0, 0.5)]) > 0.0


def test_every_report_checks_the_shared_bandwidths() -> None:
    """rate_violations (run on every report the suite makes) flags a window whose DMAs
    took more CSRAM than the chip has: the 8B layer's events pass; with every CSRAM slot
    squeezed to its first half, they fail."""
    report = _prefill_layer("fp8")
    t = get_target("maia200")
    assert shared_bw_violations(report, t) == []
    squeezed = copy.copy(report)
    squeezed.events = [dataclasses.replace(ev, args={**ev.args, "csram_slot": (
        ev.args["csram_slot"][0], (ev.args["csram_slot"][0] + ev.args["csram_slot"][1]) / 2)})
        if "csram_slot" in ev.args else ev for ev in report.events]
    bad = shared_bw_violations(squeezed, t)
    assert len(bad) == 1 and bad[0].startswith("csram:")
