"""Tiles sharing a weight block: the static proof (runtime/tile_uniform.py) and the
stacked GEMM it allows (runtime/interpreter_matmul.py) giving the same bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.runtime import interpreter
from maiac.runtime.interpreter import _machine, run_program
from maiac.runtime.isa import Dma, Loop, MatMul, Vec
from maiac.runtime.program import ProgramBuilder
from maiac.runtime.tile_uniform import uniform_axes, uniform_b_axes

RNG = np.random.default_rng(3)


def shared_b_program(m: int = 256, k: int = 256, n: int = 64, *, b_moves: bool = False,
                     clobber: str = "", loop: bool = False):
    """C = A @ B on a 2x2 grid: a row block per grid row, B's column block per grid
    column broadcast down the rows (``b_moves``: a different K slice per row instead).
    ``clobber``: "before" overwrites tb by a TVP op between the DMA and the matmul,
    "after" at the end of a loop iteration (``loop``: the DMA + matmul in a 1-trip loop)."""
    pb = ProgramBuilder()
    bm, bn = m // 2, n // 2
    a = pb.input("a", "f32", (m, k))
    b = pb.input("b", "f32", (2 * k if b_moves else k, n))
    c = pb.output("c", "f32", (m, n))
    ta, tb, tc = (pb.alloc(x, "tsram", s * 4) for x, s in
                  (("ta", bm * k), ("tb", k * bn), ("tc", bm * bn)))
    grid = (2, 2)
    acc = pb.access
    tb_acc = acc(tb, "f32", (k, bn))
    body = [
        Dma(acc(b, "f32", (k, bn), (n, 1), tile_strides=(k * n if b_moves else 0, bn)),
            tb_acc, grid=grid, op="mm"),
        *([Vec("neg", [tb_acc], tb_acc, grid=grid, op="mm")] if clobber == "before" else []),
        MatMul(acc(ta, "f32", (bm, k)), tb_acc, acc(tc, "f32", (bm, bn)), grid=grid, op="mm"),
        *([Vec("neg", [tb_acc], tb_acc, grid=grid, op="mm")] if clobber == "after" else []),
    ]
    pb.emit(
        Dma(acc(a, "f32", (bm, k), (k, 1), tile_strides=(bm * k, 0)), acc(ta, "f32", (bm, k)),
            grid=grid, op="mm"),
        *([Loop((1,), body, op="mm")] if loop else body),
        Dma(acc(tc, "f32", (bm, bn)), acc(c, "f32", (bm, bn), (n, 1), tile_strides=(bm * n, bn)),
            grid=grid, op="mm"),
    )
    return pb.build()


def _matmul_paths(prog) -> dict[str, frozenset[int]]:
    found = uniform_b_axes(prog.instructions)
    return {p: v for p, v in found.items()}


def test_broadcast_weight_dma_is_uniform_along_the_row_axis():
    assert set(_matmul_paths(shared_b_program()).values()) == {frozenset({0})}
    assert set(_matmul_paths(shared_b_program(loop=True)).values()) == {frozenset({0})}
    # a dense DMA at the start of every iteration holds until the clobber that follows
    assert set(_matmul_paths(shared_b_program(loop=True, clobber="after")).values()) == {
        frozenset({0})}


@pytest.mark.parametrize("kw", [{"b_moves": True}, {"clobber": "before"},
                                {"clobber": "before", "loop": True}])
def test_differing_or_overwritten_weights_are_not_uniform(kw):
    assert set(_matmul_paths(shared_b_program(**kw)).values()) == {frozenset()}


def test_vec_inputs_a_dma_broadcast_are_uniform():
    """A TVP op reading the broadcast block (uniform down the rows) computes once per
    column (tile_dedupe.shared_grid_axes takes the axis without comparing bytes)."""
    assert uniform_axes(shared_b_program(clobber="before").instructions)[1] == {
        "2": frozenset({0})}
    assert uniform_axes(shared_b_program(clobber="before", loop=True).instructions)[1] == {
        "1.1": frozenset({0})}
    assert uniform_axes(shared_b_program(clobber="before", b_moves=True).instructions)[1] == {
        "2": frozenset()}


def test_a_write_left_from_an_earlier_iteration_is_not_uniform():
    """The DMA before the loop, a TVP write at the end of each iteration: from the
    second iteration on, the matmul reads the TVP's bytes."""
    pb = ProgramBuilder()
    b = pb.input("b", "f32", (64, 64))
    pb.output("c", "f32", (64, 64))
    tb, ta, tc = (pb.alloc(x, "tsram", 64 * 32 * 4) for x in ("tb", "ta", "tc"))
    acc = pb.access
    tb_acc = acc(tb, "f32", (64, 32))
    pb.emit(Dma(acc(b, "f32", (64, 32), (64, 1), tile_strides=(0, 32)), tb_acc, grid=(2, 2)),
            Loop((3,), [MatMul(acc(ta, "f32", (32, 64)), tb_acc, acc(tc, "f32", (32, 32)),
                               grid=(2, 2)),
                        Vec("neg", [tb_acc], tb_acc, grid=(2, 2))]))
    assert set(uniform_b_axes(pb.build().instructions).values()) == {frozenset()}


def _bytes(out: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in out.items()}


def test_stacked_gemm_gives_the_per_tile_bytes(monkeypatch):
    prog = shared_b_program(loop=True)
    feeds = {"a": RNG.standard_normal((256, 256)).astype(np.float32),
             "b": RNG.standard_normal((256, 64)).astype(np.float32)}
    stacked = run_program(prog, feeds)
    assert _machine(prog).stacked_calls == 1
    np.testing.assert_allclose(stacked["c"], feeds["a"] @ feeds["b"], rtol=1e-4, atol=1e-4)
    prog.runtime_cache.clear()
    monkeypatch.setattr(interpreter, "MERGE_MIN_MNK", 1 << 62)  # per tile, as before
    per_tile = run_program(prog, feeds)
    assert _machine(prog).stacked_calls == 0
    assert _bytes(stacked) == _bytes(per_tile)


def _matmul_model(m: int, k: int, n: int) -> onnx.ModelProto:
    w = numpy_helper.from_array((RNG.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
                                "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("quant", ["", "mxfp4", "mxfp8"])
def test_compiled_matmul_stacked_bytes_equal_per_tile(monkeypatch, quant):
    # a q-projection shape, tiled with 32-row blocks (each weight block on 4 row tiles);
    # 128 x 768 @ 768 x 2048 is tiled weight-stationary (nothing to stack)
    model = _matmul_model(128, 768, 768)
    feeds = {"x": RNG.standard_normal((128, 768)).astype(np.float32)}
    prog = maiac.compile(model, quant=quant or None).program
    stacked = run_program(prog, feeds)
    assert _machine(prog).stacked_calls > 0
    prog.runtime_cache.clear()
    monkeypatch.setattr(interpreter, "MERGE_MIN_MNK", 1 << 62)
    per_tile = run_program(prog, feeds)
    assert _machine(prog).stacked_calls == 0
    assert _bytes(stacked) == _bytes(per_tile)


def test_decode_cache_compares_bytes_of_the_tiles_not_proven_uniform():
    """The cached decode of a weight block is reused only while its bytes stay: all tiles
    are compared except along a grid axis the program proves uniform (there tile 0)."""
    from maiac.runtime.interpreter_matmul import DecodeCache, same_bytes
    assert same_bytes(np.zeros((2, 16), np.float32), np.zeros((2, 16), np.float32))
    assert not same_bytes(np.zeros(3, np.float32), np.array([0.0, -0.0, 0.0], np.float32))
    nan = np.full((2, 8), np.nan, np.float32)
    assert same_bytes(nan, nan.copy())  # the same NaN bytes decode alike
    raw = np.zeros((2, 3, 4, 8), np.uint8)  # (grid rows, grid cols, K, N bytes)
    calls: list[int] = []

    def decode(it: tuple[int, ...]) -> np.ndarray:
        calls.append(1)
        return raw[it].astype(np.float32)
    for axes, changed_hits in ((frozenset(), False), (frozenset({0}), True)):
        cache, calls[:] = DecodeCache(), []
        get = cache.wrap(raw, None, decode, (0, axes))
        get(())
        get(())
        assert (len(calls), cache.hits) == (1, 1)
        raw[1, 2, 3, 7] = 5  # a tile past the first grid row
        get(())
        assert cache.hits == (2 if changed_hits else 1)
        raw[0, 2, 3, 7] = 5  # the first row: always seen
        get(())
        assert len(calls) == (2 if changed_hits else 3)
        raw[...] = 0
