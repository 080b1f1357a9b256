"""Ragged tails beyond matmul: TVP kernels (elementwise, norms, softmax, reductions),
gather and attention split dims of odd and prime sizes over the 36 tiles of maia200 and
give the same numbers. Jobs spread over the tiles by divisors of their count, so before
ragged regions 997 rows ran on 1 tile; now whole waves over every tile plus a tail."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac import models
from maiac.passes.tiling.elementwise import ragged_regions


def _model(nodes: list, inputs: dict[str, list[int]], out: list[int], inits: list = ()
           ) -> object:
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs.items()],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _leaves(instrs: list) -> list:
    out = []
    for i in instrs:
        out.extend(_leaves(i.body) if i.kind == "loop" else [i])
    return out


def _tiles(compiled: object, kind: str = "vec") -> int:
    return max(math.prod(i.grid) for i in _leaves(compiled.program.instructions)
               if i.kind == kind)


@pytest.mark.parametrize("rows, cols", [(997, 1031), (37, 4099)])
def test_elementwise_and_rows_on_all_tiles(rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    bias = rng.standard_normal(cols).astype(np.float32)
    scale = rng.standard_normal(cols).astype(np.float32)
    model = _model([helper.make_node("Add", ["x", "bias"], ["h"]),
                    helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["n"],
                                     axis=-1, epsilon=1e-5),
                    helper.make_node("Softmax", ["n"], ["y"], axis=-1)],
                   {"x": [rows, cols]}, [rows, cols],
                   [numpy_helper.from_array(bias, "bias"), numpy_helper.from_array(scale, "scale")])
    compiled = maiac.compile(model)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    h = x + bias
    n = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * scale + bias
    e = np.exp(n - n.max(-1, keepdims=True))
    np.testing.assert_allclose(compiled.run({"x": x})["y"], e / e.sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    assert _tiles(compiled) >= 36 if rows > 36 else _tiles(compiled) >= rows


def test_reduction_of_prime_rows() -> None:
    rng = np.random.default_rng(1)
    model = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                   {"x": [3, 331, 2053]}, [3, 331, 1],
                   [numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    compiled = maiac.compile(model)
    x = rng.standard_normal((3, 331, 2053)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], x.sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-3)
    assert _tiles(compiled) >= 33  # 3 x 11 before: 331 is prime


def test_regions_cover_the_axis_with_whole_waves() -> None:
    for shape, d, b in [((997, 64), 0, 28), ((2048, 4096), 0, 57), ((3, 37, 41), 1, 1),
                        ((7,), 0, 7), ((1000,), 0, 28)]:
        regions = ragged_regions(shape, d, b, 36)
        assert regions[0][0] == 0 and sum(e for _, e, _ in regions) == shape[d]
        assert all(lo + e == nxt for (lo, e, _), (nxt, _, _) in zip(regions, regions[1:], strict=False))
        assert all(e % blk == 0 and blk <= b for _, e, blk in regions)
        assert regions[0][2] == max(blk for _, _, blk in regions)
    assert ragged_regions((997, 64), 0, 1, 36) == [(0, 972, 1), (972, 25, 1)]


@pytest.mark.parametrize("seq", [37, 53])
def test_attention_and_gather_of_prime_lengths(seq: int) -> None:
    """Prefill of a prime number of tokens (embedding gather, norms, causal attention,
    projections) against onnxruntime."""
    report = maiac.verify(models.llama_decoder(models.LLAMA_TINY, seq=seq))
    assert report["ok"], report


def test_big_norm_runs_as_a_pipeline_of_jobs() -> None:
    """An RMSNorm too big for one load, compute, store per tile to overlap (8B prefill
    shape, in CSRAM) runs several jobs per tile, the ragged tails in blocks of their own
    (the next job's loads overlap this one's compute and store; a looping region's
    blocks get ``double-buffer`` twins); the cost model says why."""
    from maiac.passes.tile import budget_of
    from maiac.passes.tiling import elementwise as ew
    from maiac.runtime.target import get_target

    budget = budget_of(get_target("maia200"))
    shape, ops = (2048, 4096), [((4096, 1), 4), ((0, 1), 4), ((4096, 1), 4)]
    csram = min(budget.csram_bw / budget.n_tiles, budget.tile_noc_bw)
    d, b = ew._choose_block(shape, ops, budget, True, ops_per_elem=5,
                            bws=(csram, budget.tile_bw, csram))
    one_job = -(-shape[0] // budget.n_tiles)
    assert d == 0 and b < one_job

    def cost(blk: int) -> float:
        regions = ragged_regions(shape, 0, blk, budget.n_tiles)
        waves = [([bl, 4096], math.ceil(e / bl / budget.n_tiles)) for _, e, bl in regions]
        sizes = [sum(ew.align((x if st[0] else 1) * 4096 * s) for st, s in ops)
                 for x in (blk,)]
        overlap = ew.pipelined(regions, lambda x: sizes[0] * x // blk, budget.tsram_bytes)
        return ew._jobs_cost(ops, waves, overlap, 5, (csram, budget.tile_bw, csram), budget)
    assert cost(b) < 0.85 * cost(one_job)

    # numbers and blocks of its own for the tail on a smaller norm through the same path
    rng = np.random.default_rng(2)
    rows, cols = 997, 1024
    scale = rng.standard_normal(cols).astype(np.float32)
    model = _model([helper.make_node("Add", ["x0", "scale"], ["x"]),  # x in CSRAM
                    helper.make_node("Mul", ["x", "x"], ["sq"]),
                    helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
                    helper.make_node("Add", ["ms", "eps"], ["mse"]),
                    helper.make_node("Sqrt", ["mse"], ["rms"]),
                    helper.make_node("Div", ["x", "rms"], ["xn"]),
                    helper.make_node("Mul", ["xn", "scale"], ["y"])],
                   {"x0": [rows, cols]}, [rows, cols],
                   [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
                    numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
                    numpy_helper.from_array(scale, "scale")])
    compiled = maiac.compile(model, target="maia200")
    x0 = rng.standard_normal((rows, cols)).astype(np.float32)
    x = x0 + scale
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(compiled.run({"x0": x0})["y"], want, rtol=1e-4, atol=1e-5)
    names = {buf.name for buf in compiled.program.buffers if buf.kind == "scratch"}
    assert any(n.endswith("/in0.1") for n in names), sorted(names)
    norm_jobs = [i for i in _leaves(compiled.program.instructions)
                 if i.kind == "vec" and i.fn == "rmsnorm"]
    assert len(norm_jobs) >= 2
