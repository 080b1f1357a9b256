"""Unit tests of the tilers' building blocks and the memory planner's allocator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from maiac.passes.plan_memory import Placed, first_fit
from maiac.passes.tiling.common import (
    Budget,
    broadcast_strides,
    divisors,
    merge_dims,
    split_jobs,
)
from maiac.passes.tiling.matmul import choose_blocks


def _matmul_model(w: np.ndarray, m: int) -> onnx.ModelProto:
    """``y[m, N] = x[m, K] @ w`` as an ONNX model (w a constant)."""
    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _compiled_matmul(m: int, k: int, n: int, seed: int, scale: float = 0.05,
                     target_params: dict[str, str] | None = None) -> Any:
    """``x[m, K] @ w[K, N]`` (random, from ``seed``) compiled for ``target_params``, its
    product checked against numpy's; the compiled model."""
    import maiac

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * scale).astype(np.float32)
    compiled = maiac.compile(_matmul_model(w, m), target_params=target_params)
    x = rng.standard_normal((m, k)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], x @ w, rtol=1e-4, atol=1e-4)
    return compiled


def leaves(instrs: list) -> Iterator:
    """The non-loop instructions of a program body, loops flattened."""
    for i in instrs:
        yield from leaves(i.body) if i.kind == "loop" else [i]


def test_divisors() -> None:
    assert divisors(12) == (1, 2, 3, 4, 6, 12)
    assert divisors(50257) == (1, 29, 1733, 50257)


def test_split_jobs_fills_tiles_then_loops() -> None:
    split = split_jobs((4, 32), 64)
    assert split.spatial == (4, 16) and split.loops == (1, 2)
    assert split.grid == (4, 16) and split.trips == (2,)
    # an operand moving 100 elements per job of dim 1: tiles step over the loop iterations
    assert split.tile_strides((0, 100)) == (0, 200) and split.loop_strides((0, 100)) == (100,)


def test_split_jobs_prime_extent() -> None:
    split = split_jobs((7,), 64)
    assert split.grid == (7,) and split.trips == ()


def test_broadcast_strides_follow_numpy_rules() -> None:
    assert broadcast_strides((4,), (2, 3, 4)) == (0, 0, 1)
    assert broadcast_strides((2, 1, 4), (2, 3, 4)) == (4, 0, 1)


def test_merge_dims_fuses_contiguous_walks() -> None:
    shape, strides = merge_dims((2, 3, 4), [(12, 4, 1), (0, 0, 1)])
    assert shape == (6, 4) and strides == [(4, 1), (0, 1)]
    shape, _ = merge_dims((2, 3, 4), [(12, 4, 1)], keep_last=True)
    assert shape == (6, 4)


def test_matmul_blocks_fit_tsram_and_use_all_tiles() -> None:
    budget = Budget(n_tiles=64, tsram_bytes=2 << 20, tile_flops=5e12, tile_bw=1e11)
    bm, bn, bk = choose_blocks(1, 128, 4096, 4096, 4, 4, budget)
    assert (128 // bm) * (4096 // bn) >= 64
    assert bm * bk * 4 + bk * bn * 4 + bm * bn * 4 <= 2 << 20


def test_first_fit_reuses_dead_space() -> None:
    placed = [Placed(0, 64, 0, 1), Placed(64, 64, 0, 5)]
    assert first_fit(placed, 64, 2, 3, 1 << 20) == 0  # [0, 64) is dead after step 1
    assert first_fit(placed, 128, 2, 3, 1 << 20) == 128
    assert first_fit(placed, 64, 0, 0, 128) is None


@pytest.mark.parametrize("m, k, n, quant", [(100, 128, 1000, None), (96, 256, 1000, "mxfp4"),
                                            (200, 64, 1184, "fp8")])
def test_ragged_matmul_tails(m: int, k: int, n: int, quant: str | None) -> None:
    """Blocks that do not divide M or N: the tails run as kernels of their own, with
    blocks that are multiples of the TTU's 32 x K x 32 where the dim allows, and the
    result is the same product."""

    import maiac
    from maiac.passes.tiling.matmul import block_candidates

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    model = _matmul_model(w, m)
    compiled = maiac.compile(model, quant=quant)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = compiled.run({"x": x})["y"]
    ref = x @ w
    if quant is None:
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    else:
        cos = float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref))
        assert cos > 0.98
    shapes = {tuple(i.c.shape) for i in leaves(compiled.program.instructions)
              if i.kind == "matmul"}
    if quant is None:  # the cost model picks 32 x 32-multiple blocks and a ragged tail
        assert len(shapes) >= 2, shapes
    assert all(b % 32 == 0 or b == 1000 for b in block_candidates(1000, 32, 36))
    assert any(1000 % b for b in block_candidates(1000, 32, 36))  # need not divide


@pytest.mark.parametrize("k", [2 * 1009, 2 * 601])
def test_ragged_k_first_step(k: int) -> None:
    """K = the TTU's native depth (2 for f32) x a prime has no deep divisor: the K blocks
    then need not divide K (the remainder is a first, shorter step) instead of hundreds
    of native-deep steps; same product."""
    compiled = _compiled_matmul(64, k, 96, 1, target_params={
        "n_clusters": "1", "tiles_per_cluster": "2", "tsram_bytes": "160KiB"})

    depths = {i.a.shape[-1] for i in leaves(compiled.program.instructions)
              if i.kind == "matmul"}
    assert any(k % d for d in depths), depths  # a K block that does not divide K
    assert min(depths) > 2, depths


@pytest.mark.parametrize("batch, residual", [(5, False), (5, True), (3, True)])
def test_batched_rows_share_one_matmul(batch: int, residual: bool) -> None:
    """``[batch, 1, K] @ [K, N]`` (a decode step's projection) is one ``[batch, K]``
    matmul: the rows fill the TTU's 32-row blocks together and the weight's columns
    spread over the tiles (not one 1-row job per sequence, which took the TTU 32 x the
    padded work and left most tiles idle from batch 5 on); same product, residual too."""
    from onnx import TensorProto, helper, numpy_helper

    import maiac
    from maiac.runtime.timing import simulate

    k, n = 256, 1152
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not residual else "p"], name="mm")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, k])]
    if residual:
        nodes.append(helper.make_node("Add", ["p", "r"], ["y"], name="res"))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [batch, 1, n]))
    g = helper.make_graph(nodes, "g", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1, n])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    compiled = maiac.compile(model)
    feeds = {"x": rng.standard_normal((batch, 1, k)).astype(np.float32)}
    ref = feeds["x"] @ w
    if residual:
        feeds["r"] = rng.standard_normal((batch, 1, n)).astype(np.float32)
        ref = ref + feeds["r"]
    np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-4, atol=1e-4)

    mms = [i for i in leaves(compiled.program.instructions) if i.kind == "matmul"]
    assert {tuple(i.c.shape)[0] for i in mms} == {batch}, [i.c.shape for i in mms]
    assert max(np.prod(i.grid) for i in mms) >= 8  # the columns spread over the tiles
    rep = simulate(compiled.program)
    ttu = next(e["busy_s"] for e in rep.to_json()["engines"] if e["name"] == "ttu")
    # one 32-row block of padded work per K x N, not batch of them
    peak = compiled.program.target["ttu_flops"]["f32"]
    assert ttu < 4 * 2 * 32 * k * n / peak + 64 * 50e-9


def test_wave_peel_runs_the_uneven_jobs_as_their_own_kernel() -> None:
    """512 column blocks on 36 tiles: 32 tiles x 16 waves, or 504 on all 36 (14 waves)
    and 8 more on 8 tiles (1): 15 plus the second kernel's fill and drain (2 K steps of
    a job's 1,000). Jobs that split evenly are left alone."""
    from maiac.passes.tiling.matmul import wave_peel

    assert wave_peel((1, 1, 512), 36, 1000) == (8, pytest.approx(15.002))
    assert wave_peel((1, 1, 72), 36) == (0, 2)
    assert wave_peel((1, 4, 9), 36) == (0, 1)
    assert wave_peel((1, 1, 37), 36, 4) == (1, 2.5)  # prime: 1 tile x 37 waves before
    # a short job (2 K steps): the second kernel's fill and drain cost a whole wave
    assert wave_peel((1, 1, 512), 36, 2) == (0, 16)


def test_matmul_uses_every_tile_when_its_blocks_do_not_split_evenly() -> None:
    """[32, 2048] @ [2048, 160] on 3 tiles: 5 column blocks of 32 would run 1 tile x 5
    waves; the main kernel runs 3 of them on all 3 tiles, the last 2 as a kernel of their
    own (2 waves); same product."""
    compiled = _compiled_matmul(32, 2048, 160, 3, target_params={
        "n_clusters": "1", "tiles_per_cluster": "3", "tsram_bytes": "96KiB"})

    grids = {tuple(i.grid) for i in leaves(compiled.program.instructions) if i.kind == "matmul"}
    assert grids == {(3,), (2,)}, grids


def test_tied_blocks_prefer_weight_stationary_only_when_it_moves_far_less() -> None:
    """Equal modeled time: the first candidate unless one with all of M in its block
    moves at most LESS_MOVED of its bytes; a faster candidate always wins."""
    from maiac.passes.tiling.matmul import LESS_MOVED, _least_moved

    first = (1.0, 100.0, 32, 256, 768)
    stationary = (1.0, 100.0 * LESS_MOVED, 128, 64, 768)
    assert _least_moved([first, stationary], 128) == (1.0, 128, 64, 768)
    barely = (1.0, 100.0 * LESS_MOVED + 1, 128, 64, 768)
    assert _least_moved([first, barely], 128) == (1.0, 32, 256, 768)
    reshuffle = (1.0, 10.0, 32, 512, 768)  # fewer bytes, same M block: not taken
    assert _least_moved([first, reshuffle], 128) == (1.0, 32, 256, 768)
    slower = (1.01, 10.0, 128, 64, 768)
    assert _least_moved([first, slower], 128) == (1.0, 32, 256, 768)


def test_weight_stationary_matmul_reads_each_weight_block_once() -> None:
    """An M = 128 projection whose splits all model the same time (HBM-bound) is tiled
    weight-stationary: the weight's DMA moves with the tile on every grid axis (each
    block lands on one tile), the activation's does not (broadcast), far fewer bytes go
    into TSRAM than with 32-row blocks, and the product is the same."""
    import math

    from maiac.runtime.memory import itemsize

    m, k, n = 128, 768, 3072
    compiled = _compiled_matmul(m, k, n, 2, scale=0.03)

    def counted(instrs: list, times: int = 1) -> Iterator:
        """(instruction, how many times it runs): loops flattened."""
        for i in instrs:
            if i.kind == "loop":
                yield from counted(i.body, times * math.prod(i.trips))
            else:
                yield i, times
    runs = list(counted(compiled.program.instructions))
    mms = [i for i, _ in runs if i.kind == "matmul"]
    a_block = tuple(mms[0].a.shape)
    assert {tuple(i.a.shape)[0] for i in mms} == {m}, "all of M in each block"
    into = [(i, t) for i, t in runs if i.kind == "dma" and i.dst.level == "tsram"]
    weights = [i for i, _ in into if tuple(i.src.shape) != a_block]
    acts = [i for i, _ in into if tuple(i.src.shape) == a_block]
    assert weights and acts
    assert all(all(s for s in i.src.tile_strides) for i in weights)
    assert all(not any(i.src.tile_strides) for i in acts)
    moved = sum(t * math.prod(i.grid) * math.prod(i.dst.shape) * itemsize(i.dst.dtype)
                for i, t in into)
    tiles = math.prod(mms[0].grid)
    rows_32 = 4 * k * (tiles // 4 * m + 4 * n)  # 32-row blocks on as many tiles
    assert moved <= 0.75 * rows_32, (moved, rows_32)


def test_k_candidates_add_a_pipelined_depth_only_when_the_deepest_cannot_pipeline() -> None:
    """One or two deep K steps cannot overlap loads with the TTU: a shallower divisor
    giving 3 steps (whole k_step units) is costed too; not without twins or when the
    deepest already makes 3 steps."""
    from maiac.passes.tiling.matmul import _k_candidates

    assert _k_candidates(4096, 4096, 32, True) == [4096, 1024]
    assert _k_candidates(4096, 2048, 32, True) == [2048, 1024]
    assert _k_candidates(4096, 1024, 32, True) == [1024]
    assert _k_candidates(4096, 4096, 32, False) == [4096]
    assert _k_candidates(96, 96, 64, True) == [96]  # no multiple of 64 under 96 / 3


def test_block_candidates_include_whole_blocks_with_a_small_tail() -> None:
    """36 tiles and power-of-two dims: 2048 rows as 9 blocks of 224 and a 32-row tail,
    4096 columns as 9 of 448 and a 64-column tail (a 4 x 9 grid), besides the rounded-up
    blocks of at most ``jobs`` each (9 x 480 > 4096: 8 blocks and a 256 tail)."""
    from maiac.passes.tiling.matmul import block_candidates

    rows, cols = block_candidates(2048, 32, 36), block_candidates(4096, 32, 36)
    assert 224 in rows and 448 in cols and 480 in cols
    assert all(b % 32 == 0 for b in rows + cols)


def test_matmul_cost_streams_on_chip_activations_at_the_csram_rate() -> None:
    """An activation plan-memory will keep in CSRAM moves at the CSRAM rate and does not
    share HBM with the weights: a K step whose f32 activation block dominates its DMA
    costs less than with the activation in HBM, and the candidates rank accordingly."""
    from maiac.passes.tiling.matmul import OperandRates, _best_blocks

    budget = Budget(n_tiles=36, tsram_bytes=3 << 20, tile_flops=8.2e12 * 16,
                    tile_bw=3.85e12 / 36, tile_noc_bw=80e12 / 36, csram_bw=28e12,
                    native_m=32, native_n=32, instr_overhead_s=5e-8, dma_latency_s=1.25e-7)

    def cost(rates: OperandRates) -> float:
        best = _best_blocks(2048, 4096, True, 1, 4096, 4.0, 1.0, budget, 0, 32, 1, 0, 4.0,
                            1.0, 0.0, None, 0.0, 1, True, rates)
        assert best is not None
        return best[0]

    in_hbm, on_chip = cost(OperandRates()), cost(OperandRates(28e12, 28e12, 28e12))
    assert on_chip < 0.8 * in_hbm, (on_chip, in_hbm)
    # near compute-bound once on chip: 2 x 2048 x 4096 x 4096 flops on 36 tiles (the
    # rest: ragged tails or idle tiles, instruction overheads, the result's store)
    assert on_chip < 1.35 * 2 * 2048 * 4096 * 4096 / (36 * 8.2e12 * 16)


def test_only_activations_that_leave_room_count_as_on_chip() -> None:
    from maiac.passes.tile import CSRAM_SHARE, FunctionTiler
    from maiac.passes.tiling.common import Tensor

    tiler = FunctionTiler(Budget(n_tiles=4, tsram_bytes=1 << 20, tile_flops=1e12,
                                 tile_bw=1e11, csram_bytes=1 << 24))
    tiler.buffer_kind.update({"h": "act", "x": "input"})
    small = int(CSRAM_SHARE * (1 << 24)) // 4
    assert tiler.likely_on_chip(Tensor("h", "f32", (small,)))
    assert not tiler.likely_on_chip(Tensor("h", "f32", (small + 1,)))  # too big to be sure
    assert not tiler.likely_on_chip(Tensor("x", "f32", (16,)))  # program inputs: HBM


def test_gated_matmul_computes_both_halves_in_one_instruction() -> None:
    """SwiGLU's gate and up products share one [gate | up] accumulator: one TTU
    instruction per K step covers both halves' columns, and the epilogue combines the
    halves of that block."""
    import maiac
    from maiac import models
    from maiac.runtime import isa

    compiled = maiac.compile(models.llama_decoder(models.LLAMA_TINY, mode="prefill", seq=64))
    gate = [i for i in leaves(compiled.program.instructions) if "gate_proj" in i.op]
    mms = [i for i in gate if isinstance(i, isa.MatMul)]
    combine = [i for i in gate if isinstance(i, isa.Vec) and i.fn == "mul"]
    assert mms and combine
    half = combine[0].out.shape[-1]
    assert {i.c.shape[-1] for i in mms} == {2 * half}
    assert {i.b.shape[-1] for i in mms} == {2 * half}
