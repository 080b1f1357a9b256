"""Poisoning only what a run reads before writing (runtime/liveness.py) stays a faithful
model: stale data from a previous run is never read, constants written over are
restored; and the interpreter's fused-row DMA copies move the same bytes."""

from __future__ import annotations

import numpy as np

from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Loop, Vec
from maiac.runtime.program import Buffer, ProgramBuilder

RNG = np.random.default_rng(0)


def test_read_before_write_is_poisoned_on_every_run():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (16,))
    y = pb.output("y", "f32", (16,))
    t = pb.alloc("t", "tsram", 64)
    acc = pb.access
    # y = t before any instruction of the run wrote t; then t = x (so a second run
    # would see the first run's x if t were not poisoned)
    pb.emit(Dma(acc(t, "f32", (16,)), acc(y, "f32", (16,))),
            Dma(acc(x, "f32", (16,)), acc(t, "f32", (16,)), grid=(4,)))
    prog = pb.build()
    xin = np.arange(16, dtype=np.float32)
    for _ in range(3):
        assert np.isnan(run_program(prog, {"x": xin})["y"]).all()
    machine = prog.runtime_cache["machine"]
    assert machine.poison["tsram"] == [(t.addr, t.addr + 64)]


def test_partially_written_block_poisons_only_the_unwritten_part():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (8,))
    y = pb.output("y", "f32", (16,))
    t = pb.alloc("t", "tsram", 64)
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (8,)), acc(t, "f32", (8,))),
            Vec("add", [acc(t, "f32", (16,)), acc(t, "f32", (16,))], acc(t, "f32", (16,))),
            Dma(acc(t, "f32", (16,)), acc(y, "f32", (16,))))
    prog = pb.build()
    xin = np.arange(8, dtype=np.float32)
    for _ in range(2):
        got = run_program(prog, {"x": xin})["y"]
        np.testing.assert_array_equal(got[:8], 2 * xin)
        assert np.isnan(got[8:]).all()
    assert prog.runtime_cache["machine"].poison["tsram"] == [(t.addr + 32, t.addr + 64)]


def test_loop_reading_the_previous_iteration_is_not_poisoned():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (1,))
    y = pb.output("y", "f32", (8,))
    t = pb.alloc("t", "tsram", 32)
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (1,)), acc(t, "f32", (1,))),
            Loop((7,), [Dma(acc(t, "f32", (1,), loop_strides=(1,)),
                            acc(t, "f32", (1,), offset=1, loop_strides=(1,)))]),
            Dma(acc(t, "f32", (8,)), acc(y, "f32", (8,))))
    prog = pb.build()
    for v in (3.0, 5.0):
        got = run_program(prog, {"x": np.array([v], np.float32)})["y"]
        np.testing.assert_array_equal(got, np.full(8, v, np.float32))
    assert prog.runtime_cache["machine"].poison["tsram"] == []


def test_constant_written_over_is_restored_every_run():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4,))
    y = pb.output("y", "f32", (4,))
    c = pb.const("c", np.array([1, 2, 3, 4], np.float32), level="csram")
    # a scratch buffer sharing the constant's bytes (as after a planner's reuse)
    s = Buffer("s", "csram", c.addr, 16, "scratch")
    pb.buffers.append(s)
    acc = pb.access
    pb.emit(Dma(acc(c, "f32", (4,)), acc(y, "f32", (4,))),
            Dma(acc(x, "f32", (4,)), acc(s, "f32", (4,))))
    prog = pb.build()
    for _ in range(2):
        got = run_program(prog, {"x": np.full(4, 9, np.float32)})["y"]
        np.testing.assert_array_equal(got, [1, 2, 3, 4])
    assert [b.name for b in prog.runtime_cache["machine"].rewrite] == ["c"]


def test_fused_row_copies_move_the_same_bytes():
    # narrow rows (transposed, strided, broadcast over tiles) and an in-place overlap
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (16, 12))
    y = pb.output("y", "f32", (4, 16, 3))
    z = pb.output("z", "f32", (16, 12))
    t = pb.alloc("t", "tsram", 16 * 12 * 4 * 2)
    acc = pb.access
    pb.emit(
        # tile g gets columns 3g..3g+2 of every row: rows of 3 contiguous floats
        Dma(acc(x, "f32", (16, 3), (12, 1), tile_strides=(3,)), acc(t, "f32", (16, 3)),
            grid=(4,)),
        Dma(acc(t, "f32", (16, 3)), acc(y, "f32", (16, 3), tile_strides=(48,)), grid=(4,)),
        Dma(acc(x, "f32", (16, 12)), acc(t, "f32", (16, 12))),
        # overlapping shift by one row inside the same buffer
        Dma(acc(t, "f32", (15, 12)), acc(t, "f32", (15, 12), offset=12)),
        Dma(acc(t, "f32", (16, 12)), acc(z, "f32", (16, 12))),
    )
    prog = pb.build()
    xin = RNG.standard_normal((16, 12)).astype(np.float32)
    out = run_program(prog, {"x": xin})
    np.testing.assert_array_equal(out["y"], xin.reshape(16, 4, 3).transpose(1, 0, 2))
    np.testing.assert_array_equal(out["z"], np.concatenate([xin[:1], xin[:15]]))


def test_cached_weight_decode_follows_the_bytes_in_tsram():
    """The decoded-weight cache is used only while TSRAM holds the bytes it decoded."""
    from maiac.runtime.isa import MatMul
    from maiac.runtime.quant_ops import decode_operand

    k, n, m = 64, 8, 4
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (m, k))
    wq = pb.input("wq", "u8", (k, n // 2))
    ws = pb.input("ws", "u8", (k // 32, n))
    y = pb.output("y", "f32", (m, n))
    tx, tw, ts, ty = (pb.alloc(nm, "tsram", sz) for nm, sz in
                      (("tx", m * k * 4), ("tw", k * n // 2), ("ts", k // 32 * n),
                       ("ty", m * n * 4)))
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (m, k)), acc(tx, "f32", (m, k))),
            Dma(acc(wq, "u8", (k, n // 2)), acc(tw, "u8", (k, n // 2))),
            Dma(acc(ws, "u8", (k // 32, n)), acc(ts, "u8", (k // 32, n))),
            MatMul(acc(tx, "f32", (m, k)), acc(tw, "u8", (k, n // 2)), acc(ty, "f32", (m, n)),
                   fmt="fp4", b_fmt="mxfp4", b_scale=acc(ts, "u8", (k // 32, n))),
            Dma(acc(ty, "f32", (m, n)), acc(y, "f32", (m, n))))
    prog = pb.build()
    xin = RNG.standard_normal((m, k)).astype(np.float32)
    w1 = RNG.integers(0, 256, (k, n // 2), dtype=np.uint8)
    w2 = RNG.integers(0, 256, (k, n // 2), dtype=np.uint8)
    s1 = RNG.integers(120, 130, (k // 32, n), dtype=np.uint8)
    s2 = s1.copy()
    s2[1, 3] += 1
    for w, s in ((w1, s1), (w1, s1), (w2, s1), (w2, s2), (w1, s1)):
        got = run_program(prog, {"x": xin, "wq": w, "ws": s})["y"]
        want = xin @ decode_operand(w, "mxfp4", n, s, -2)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert prog.runtime_cache["machine"]._decode_cache.hits >= 1


def test_transposing_broadcast_dma_fills_every_tile():
    """A strided (transposing) DMA of one block to every tile: gathered once, then copied
    tile to tile; each tile's TSRAM must hold the whole block."""
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (2, 8, 6))
    y = pb.output("y", "f32", (2, 3, 6, 8))
    t = pb.alloc("t", "tsram", 6 * 8 * 4)
    acc = pb.access
    grid = (2, 3)
    pb.emit(Dma(acc(x, "f32", (6, 8), (1, 6), tile_strides=(48, 0)), acc(t, "f32", (6, 8)),
                grid=grid),
            Dma(acc(t, "f32", (6, 8)), acc(y, "f32", (6, 8), tile_strides=(144, 48)),
                grid=grid))
    prog = pb.build()
    xin = RNG.standard_normal((2, 8, 6)).astype(np.float32)
    got = run_program(prog, {"x": xin})["y"]
    want = np.broadcast_to(xin.transpose(0, 2, 1)[:, None], (2, 3, 6, 8))
    np.testing.assert_array_equal(got, want)
