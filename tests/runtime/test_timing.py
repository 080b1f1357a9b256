"""Timing model: closed-form costs, overlap, loop extrapolation, report contract, trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from maiac.runtime import timing
from maiac.runtime.isa import Dma, Loop, MatMul, Vec
from maiac.runtime.program import ProgramBuilder
from maiac.runtime.target import get_target
from maiac.runtime.timing import simulate
from maiac.runtime.trace import chrome_trace, write_chrome_trace

T = get_target()
BLOCK = 256 * 1024  # bytes per tile
N = T.n_tiles  # 36 on maia200
L = T.launch_latency_s  # paid once per program: no instruction starts before it


def dma_program(tile_strides: tuple[int, ...] = (BLOCK // 4,)):
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (N * BLOCK // 4,))
    t = pb.alloc("t", "tsram", BLOCK)
    pb.emit(Dma(pb.access(x, "f32", (BLOCK // 4,), tile_strides=tile_strides),
                pb.access(t, "f32", (BLOCK // 4,)), grid=(N,), op="load"))
    pb.meta = {"ops": {"load": {"kind": "Identity"}}}
    return pb.build()


def test_dma_bound_program_closed_form():
    rep = simulate(dma_program())
    nbytes = N * BLOCK
    # HBM (at its sustained rate) is the slowest level involved
    expected = nbytes / T.hbm_sustained_bw + T.dma_latency_s + L
    assert rep.modeled_time_s == pytest.approx(expected, rel=1e-12)
    assert rep.hbm_bytes == nbytes
    assert rep.roofline_time_s == pytest.approx(nbytes / T.hbm_bw)
    [op] = rep.ops
    assert {k: op[k] for k in ("name", "kind", "time_s", "flops", "hbm_bytes", "bound",
                               "busy_s")} == {
        "name": "load", "kind": "Identity", "time_s": pytest.approx(expected),
        "flops": 0.0, "hbm_bytes": nbytes, "bound": "memory",
        "busy_s": {"dma0": pytest.approx(expected - L)}}


def test_broadcast_dma_reads_hbm_once():
    rep = simulate(dma_program(tile_strides=(0,)))
    assert rep.hbm_bytes == BLOCK
    # the NoC still delivers N copies into the tiles
    expected = max(BLOCK / T.hbm_sustained_bw, N * BLOCK / T.noc_bw, N * BLOCK / T.tsram_bw)
    assert rep.modeled_time_s == pytest.approx(expected + T.dma_latency_s + L)


def matmul_program(m=128, n=128, k=128, grid=(N,), fmt="fp8"):
    pb = ProgramBuilder()
    a, b, c = (pb.alloc(x, "tsram", m * k * 4) for x in "abc")
    pb.emit(MatMul(pb.access(a, "f32", (m, k)), pb.access(b, "f32", (k, n)),
                   pb.access(c, "f32", (m, n)), fmt=fmt, grid=grid, op="mm"))
    return pb.build()


@pytest.mark.parametrize("fmt, key", [("fp8", "fp8"), ("mxfp4", "fp4"), ("bf16", "bf16"),
                                      ("f32", "f32"), ("mxfp6e2m3", "fp6")])
def test_compute_bound_matmul_closed_form(fmt: str, key: str):
    rep = simulate(matmul_program(fmt=fmt))
    flops = 2 * 128**3 * N
    assert rep.flops == flops
    assert rep.modeled_time_s == pytest.approx(flops / T.ttu_flops[key] + T.instr_latency_s + L)
    assert rep.roofline_time_s == pytest.approx(flops / T.ttu_flops[key])
    assert rep.ops[0]["bound"] == "compute"
    assert 0 < rep.roofline_fraction < 1


def test_fewer_tiles_take_proportionally_longer():
    full = simulate(matmul_program(grid=(N,))).modeled_time_s - T.instr_latency_s
    quarter = simulate(matmul_program(grid=(3, 3))).modeled_time_s - T.instr_latency_s
    assert quarter == pytest.approx(full)  # same per-tile work at 1/4 of the tiles: same time
    one = simulate(matmul_program(grid=(1,))).modeled_time_s - T.instr_latency_s
    assert one == pytest.approx(full)


def loop_program(trips: int, serial: bool = True):
    """Each iteration: DMA a block from HBM, then a Vec on it; ``serial`` reuses one buffer."""
    pb = ProgramBuilder()
    n = 64 * 1024
    x = pb.input("x", "f32", (trips * n,))
    t = pb.alloc("t", "tsram", (1 if serial else trips) * n * 4)
    y = pb.alloc("y", "tsram", n * 4)
    ls = (0,) if serial else (n,)
    pb.emit(Loop((trips,), [
        Dma(pb.access(x, "f32", (n,), loop_strides=(n,)),
            pb.access(t, "f32", (n,), loop_strides=ls), op="body"),
        Vec("exp", [pb.access(t, "f32", (n,), loop_strides=ls)], pb.access(y, "f32", (n,)),
            op="body"),
    ], op="body"))
    return pb.build()


def test_loop_costs_trips_times_body():
    one = simulate(loop_program(1)).modeled_time_s - L
    rep = simulate(loop_program(1000))
    assert rep.modeled_time_s - L == pytest.approx(1000 * one, rel=1e-9)
    assert rep.engines[0]["busy_s"] == pytest.approx(1000 * simulate(loop_program(1)).engines[0]["busy_s"])
    # bytes are spread over the time windows in floating point: equal to rounding
    assert rep.ops[0]["hbm_bytes"] == pytest.approx(1000 * 64 * 1024 * 4, rel=1e-12)


def test_loop_extrapolation_matches_full_simulation(monkeypatch):
    closed = simulate(loop_program(50, serial=False))
    monkeypatch.setattr(timing, "SIM_ITERS", 10**6)
    full = simulate(loop_program(50, serial=False))
    assert closed.modeled_time_s == pytest.approx(full.modeled_time_s, rel=1e-9)
    # independent iterations pipeline: faster than serial, DMA overlaps compute
    assert closed.modeled_time_s < simulate(loop_program(50)).modeled_time_s
    assert closed.dma_compute_overlap_s > 0


def test_prefetch_overlaps_compute_but_hazards_serialize():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (1 << 16,))
    t1, t2, o = (pb.alloc(n, "tsram", 1 << 18) for n in ("t1", "t2", "o"))
    acc = pb.access
    v = Vec("exp", [acc(t1, "f32", (1 << 16,))], acc(o, "f32", (1 << 16,)), op="a")
    pb.emit(Dma(acc(x, "f32", (1 << 16,)), acc(t1, "f32", (1 << 16,)), op="a"), v,
            Dma(acc(x, "f32", (1 << 16,)), acc(t2, "f32", (1 << 16,)), queue=1, op="b"))
    ev = {(e.name, e.engine): e for e in simulate(pb.build()).events}
    assert ev["b", "dma1"].start == L  # the independent prefetch runs beside op a
    # RAW: the vec waits for its load
    assert ev["a", "tvp"].start == pytest.approx(L + ev["a", "dma0"].dur)
    # WAR: overwriting t1 must wait for the vec that reads it
    pb.emit(Dma(acc(x, "f32", (1 << 16,)), acc(t1, "f32", (1 << 16,)), queue=2, op="c"))
    evs = simulate(pb.build()).events
    vec_end = next(e.start + e.dur for e in evs if e.engine == "tvp")
    assert next(e for e in evs if e.name == "c").start == pytest.approx(vec_end)


def test_report_json_contract_and_shape_only():
    prog = loop_program(8)
    prog.constants.clear()
    rep = simulate(prog).to_json()
    json.dumps(rep)
    for key in ("target", "modeled_time_s", "roofline_time_s", "roofline_fraction", "flops",
                "hbm_bytes", "weight_bytes", "sram_peak_bytes", "engines", "ops"):
        assert key in rep
    assert set(rep["sram_peak_bytes"]) >= {"csram", "tsram"}
    assert [e["name"] for e in rep["engines"]] == ["dma0", "dma1", "dma2", "dma3", "ttu", "tvp"]
    for op in rep["ops"]:
        assert {"name", "kind", "time_s", "flops", "hbm_bytes", "bound"} <= set(op)


def test_chrome_trace_has_one_track_per_engine(tmp_path: Path):
    rep = simulate(loop_program(100, serial=False))
    path = tmp_path / "trace.json"
    write_chrome_trace(rep, path)
    data = json.loads(path.read_text())
    names = {e["tid"]: e["args"]["name"] for e in data["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(e["name"] for e in rep.engines)
    xs = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert xs and all(e["tid"] in names for e in xs)
    assert max(e["ts"] + e["dur"] for e in xs) == pytest.approx(rep.modeled_time_s * 1e6)
    assert chrome_trace(rep)["traceEvents"][0]["ph"] == "M"


def test_weight_bytes_counts_const_buffers():
    pb = ProgramBuilder()
    pb.const("w", np.zeros((100,), np.float32))
    assert simulate(pb.build()).weight_bytes == 400


def test_hbm_timeline_fills_gaps_in_time_order() -> None:
    """HBM is taken in time order, not program order: a transfer ready early takes a gap
    before one simulated earlier that starts later; busy stretches never overlap."""
    from maiac.runtime.timing import _BwTimeline

    hbm = _BwTimeline()
    assert hbm.book(10.0, 2.0) == (10.0, 12.0)
    assert hbm.book(0.0, 3.0) == (0.0, 3.0)  # before it
    assert hbm.book(3.0, 4.0) == (3.0, 7.0)  # fits before 10
    spans = sorted(zip(hbm.starts, hbm.ends, strict=True))
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))
    hbm.shift_after(11.0, 100.0)  # a loop's skipped iterations
    assert hbm.book(12.5, 1.0)[0] >= 112.0


def test_hbm_timeline_long_transfer_fills_the_gaps_between_short_ones() -> None:
    """A transfer longer than every gap takes the gaps in order (concurrent DMA streams
    interleave at the HBM controller) rather than waiting past the short transfers booked
    before it — and never shares a moment of HBM with them: the busy time is the sum."""
    from maiac.runtime.timing import _BwTimeline

    hbm = _BwTimeline()
    for k in range(4):  # weight loads: [0, 1), [3, 4), [6, 7), [9, 10)
        hbm.book(3.0 * k, 1.0)
    assert hbm.book(0.0, 5.0) == (1.0, 8.0)  # [1, 3) + [4, 6) + [7, 8)
    assert list(zip(hbm.starts, hbm.ends, strict=True)) == [(0.0, 8.0), (9.0, 10.0)]
    assert hbm.book(0.0, 2.0) == (8.0, 11.0)  # [8, 9) + [10, 11)
    assert list(zip(hbm.starts, hbm.ends, strict=True)) == [(0.0, 11.0)]


def nested_program(trips: tuple[int, ...], depth: int = 1):
    """``depth`` loops nested around the serial DMA + Vec body of ``loop_program`` (the
    innermost loop has ``trips``, the 15 around it 2 iterations each, the rest 1: the
    modeled time stays ~10^3 s, where float64 still resolves a 1.4 us period)."""
    pb = ProgramBuilder()
    n = 64 * 1024
    x = pb.input("x", "f32", (n,))
    t = pb.alloc("t", "tsram", n * 4)
    y = pb.alloc("y", "tsram", n * 4)
    body: list = [Dma(pb.access(x, "f32", (n,)), pb.access(t, "f32", (n,)), op="body"),
                  Vec("exp", [pb.access(t, "f32", (n,))], pb.access(y, "f32", (n,)), op="body")]
    loop = Loop(trips, body, op="body")
    for level in range(depth - 1):
        loop = Loop((2 if level < 15 else 1,), [loop], op="body")
    pb.emit(loop)
    return pb.build()


def test_loop_time_is_trips_times_body_in_closed_form():
    """T(N) = N x the body's period for N up to 1e9 (here one DMA then a Vec on one buffer:
    serial, so the period is their sum), scheduled with the same work for every N."""
    costs = [timing.leaf_cost(ins, "", (1,), T) for ins in nested_program((1,)).instructions[0].body]
    period = sum(c.dur for c in costs)
    visits = set()
    for n in (8, 1000, 10**6, 10**9, (10**5, 10**5)):
        trips = n if isinstance(n, tuple) else (n,)
        rep = simulate(nested_program(trips))
        total = math.prod(trips)
        assert rep.modeled_time_s == pytest.approx(total * period + L, rel=1e-9)
        assert rep.ops[0]["hbm_bytes"] == pytest.approx(total * 64 * 1024 * 4, rel=1e-12)
        visits.add(rep.visits)
    assert visits == {2 * timing.SIM_ITERS}


@pytest.mark.parametrize("depth", [3, 12, 16, 300])
def test_deep_nests_are_scheduled_within_the_visit_budget(monkeypatch, depth):
    """A nest 300 deep (the loader refuses past 8; the timing model needs no such bound)
    costs at most the budget in visits, and its time still scales with the trips."""
    monkeypatch.setattr(timing, "VISIT_BUDGET", 4096)
    reps = [simulate(nested_program((n,), depth)) for n in (10**3, 10**9)]
    assert all(r.visits <= 4096 for r in reps)
    assert reps[0].visits == reps[1].visits
    costs = [timing.leaf_cost(ins, "", (1,), T) for ins in nested_program((1,)).instructions[0].body]
    period = sum(c.dur for c in costs)
    outer = 2 ** min(depth - 1, 15)
    for n, rep, rel in zip((10**3, 10**9), reps, (1e-9, 2e-3), strict=True):
        # each level extrapolates from what it scheduled; at 10^9 trips later iterations
        # start ~10^7 s in, where float64 resolves a 1.4 us period to ~1e-4, and 16 levels
        # of 2 scheduled iterations each carry their own rounding (1.07e-3 at the DMA setup
        # of the 0.125 us fit)
        assert rep.modeled_time_s == pytest.approx(outer * n * period + L, rel=rel)


def test_programs_within_the_budget_schedule_sim_iters_per_loop():
    items = timing._items(nested_program((50,), 2).instructions, "", (), T)
    assert timing._plan_iterations(items, timing.VISIT_BUDGET) == [timing.SIM_ITERS] * 2
    assert timing._plan_iterations(items, 5) == [4, 1]  # 2 outer trips x 1 x 2 leaves = 4


def test_launch_cost_delays_every_instruction_by_exactly_it():
    """``launch_latency_s`` is paid once per program: no engine starts before it, so the
    whole timeline (and the modeled time) moves by exactly it and no engine is busier
    (bench/fit_paper.py shifts the GEMM rows by it instead of re-simulating)."""
    import dataclasses

    program = loop_program(40, serial=False)
    base = simulate(program, dataclasses.replace(T, launch_latency_s=0.0))
    launch = 2.5e-6
    late = simulate(program, dataclasses.replace(T, launch_latency_s=launch))
    assert late.modeled_time_s == pytest.approx(base.modeled_time_s + launch, rel=1e-12)
    assert min(e.start for e in late.events) == pytest.approx(launch, rel=1e-12)
    assert [e.start for e in late.events] == pytest.approx(
        [e.start + launch for e in base.events], rel=1e-9)
    assert [e["busy_s"] for e in late.engines] == pytest.approx(
        [e["busy_s"] for e in base.engines], rel=1e-12)
    assert sum(op["time_s"] for op in late.ops) == pytest.approx(late.modeled_time_s)
    assert get_target("maia200-ideal").launch_latency_s == 0.0
    assert T.status_of("launch_latency_s")[0] == "fitted"
