"""The interpreter's TSRAM segments (runtime/tsram_layout.py) and the merged-axes views of
Vec operands (interpreter_fns.coalesce): the same bytes as the row-per-tile layout, a
small kernel's block one contiguous run over its tiles."""

from __future__ import annotations

import numpy as np
import pytest

from maiac.runtime.interpreter import _machine, run_program
from maiac.runtime.interpreter_fns import FNS, coalesce
from maiac.runtime.isa import Dma, Loop, Vec
from maiac.runtime.liveness import _reads_writes
from maiac.runtime.memory import access_extent
from maiac.runtime.program import ProgramBuilder
from maiac.runtime.tsram_layout import _leaves, tsram_layout

RNG = np.random.default_rng(3)


def small_kernels(rows: int = 16, d: int = 64):
    """x + bias on a grid of ``rows`` tiles, a row each, then an in-place scale of the
    sum in a loop of 2 half rows, a reused scratch buffer overlapping two blocks."""
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (rows, d))
    bias = pb.input("bias", "f32", (d,))
    y = pb.output("y", "f32", (rows, d))
    tx, tb, ts = (pb.alloc(n, "tsram", d * 4) for n in ("tx", "tb", "ts"))
    acc = pb.access
    grid = (rows,)
    half = d // 2
    pb.emit(
        Dma(acc(x, "f32", (1, d), (d, 1), tile_strides=(d,)), acc(tx, "f32", (1, d)),
            grid=grid, op="add"),
        Dma(acc(bias, "f32", (1, d), (0, 1), tile_strides=(0,)), acc(tb, "f32", (1, d)),
            grid=grid, op="add"),
        Vec("add", [acc(tx, "f32", (1, d)), acc(tb, "f32", (1, d))], acc(ts, "f32", (1, d)),
            grid=grid, op="add"),
        Loop((2,), [Vec("scale", [acc(ts, "f32", (1, half), loop_strides=(half,))],
                        acc(ts, "f32", (1, half), loop_strides=(half,)), grid=grid,
                        attrs={"scale": 0.5}, op="scale"),
                    Vec("neg", [acc(tx, "f32", (1, half), offset=half)],
                        acc(tx, "f32", (1, half)), grid=grid, op="neg")], op="loop"),
        Dma(acc(ts, "f32", (1, d)), acc(y, "f32", (1, d), (d, 1), tile_strides=(d,)),
            grid=grid, op="out"),
    )
    return pb.build()


def test_segments_hold_every_access_and_small_blocks_are_contiguous():
    prog = small_kernels()
    layout = tsram_layout(prog, 36)
    assert all(a <= b for a, b in zip(layout.hi, layout.lo[1:], strict=False))  # disjoint
    for ins, trips in _leaves(prog.instructions, ()):
        reads, write = _reads_writes(ins)
        for acc in (*reads, write):
            if acc.level == "tsram":
                layout.segment(*access_extent(acc, tuple(ins.grid), trips))
    # tx, tb, ts: three segments of one 256-byte row each (tx's two halves are one)
    assert layout.stride == (256, 256, 256)
    machine = _machine(prog)
    view = machine.view(prog.instructions[2].out, (16,), ())
    assert view.flags.c_contiguous
    # a tile's bytes are where the layout says: tile 5's sum row
    x, bias = RNG.standard_normal((16, 64)).astype(np.float32), \
        RNG.standard_normal(64).astype(np.float32)
    out = run_program(prog, {"x": x, "bias": bias})
    np.testing.assert_array_equal(out["y"], (x + bias) * np.float32(0.5))
    ts = prog.instructions[2].out.addr
    off, stride = layout.locate(ts)
    tile5 = machine.mem["tsram"][off + 5 * stride:off + 5 * stride + 256].view(np.float32)
    np.testing.assert_array_equal(tile5, (x[5] + bias) * np.float32(0.5))
    with pytest.raises(ValueError, match="no single segment"):
        layout.segment(ts - 4, ts + 4)


@pytest.mark.parametrize("fn", ["add", "gelu_tanh", "layernorm", "reduce_sum", "softmax",
                                "exp_sub"])
def test_coalesced_views_give_the_same_bytes(fn):
    """Operands as the interpreter views them (loop axis, 2x3 grid, a block with a
    size-1 axis, broadcast inputs, a strided row) before and after merging axes."""
    mem = RNG.standard_normal(1 << 14).astype(np.float32)

    def view(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, np.float32, buffer=mem, offset=4 * offset,
                          strides=tuple(4 * s for s in strides))
    full = (2, 2, 3, 1, 8)  # (trips, *grid, *block)
    dense = (144, 24, 8, 8, 1)
    x = view(0, full, dense)
    other = {"add": view(4000, full, (0, 24, 8, 0, 1)),  # broadcast on the loop axis
             "layernorm": view(5000, full, (0, 0, 0, 0, 1)),
             "exp_sub": view(6000, (2, 2, 3, 1, 1), (6, 3, 1, 1, 1))}
    ins = {"add": [x, other["add"]], "gelu_tanh": [x], "softmax": [x], "reduce_sum": [x],
           "layernorm": [x, other["layernorm"], other["layernorm"]],
           "exp_sub": [x, other["exp_sub"]]}[fn]
    row = fn in ("layernorm", "reduce_sum", "softmax")
    out_shape = full[:-1] + (1,) if fn == "reduce_sum" else full
    out = np.zeros(out_shape, np.float32)
    merged = coalesce(out, ins, 1, row)
    assert merged is not None
    flat_out, flat_ins = merged
    assert flat_out.ndim < out.ndim
    attrs = {"eps": 1e-5}
    want = FNS[fn][1](*ins, attrs)
    for it in range(2):
        got = FNS[fn][1](*[v[it] for v in flat_ins], attrs)
        assert np.asarray(got).tobytes() == np.broadcast_to(
            want[it], out_shape[1:]).reshape(flat_out.shape[1:]).tobytes()
