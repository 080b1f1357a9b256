"""Broadcast DMA copies that no instruction reads (runtime/dead_copies.py): which are
skipped, and a run with them skipped leaves the same outputs and the same memory."""

from __future__ import annotations

import numpy as np
import pytest

from maiac.runtime import interpreter
from maiac.runtime.interpreter import _machine, run_program
from maiac.runtime.isa import Dma, Loop, MatMul, Vec
from maiac.runtime.program import ProgramBuilder

RNG = np.random.default_rng(5)
GRID = (2, 2)


def k_split_program(m: int, *, between: str = "", loop: int = 1):
    """C = A @ B on a 2x2 grid in two K halves through the same TSRAM buffers: each half's
    A block broadcast along the grid columns, B block along the grid rows.
    ``between`` (after the first matmul): "neg" a TVP op reading and writing tb,
    "partial" a DMA into half of tb on every tile, "tile0" the same on tile 0 only; ``loop``: the first half inside a loop of that many
    trips."""
    k, n = 256, 64
    bm, bk, bn = m // 2, k // 2, n // 2
    pb = ProgramBuilder()
    a = pb.input("a", "f32", (m, k))
    b = pb.input("b", "f32", (k, n))
    c = pb.output("c", "f32", (m, n))
    ta, tb, tc = (pb.alloc(x, "tsram", s * 4) for x, s in
                  (("ta", bm * bk), ("tb", bk * bn), ("tc", bm * bn)))
    acc = pb.access
    ta_acc, tb_acc, tc_acc = acc(ta, "f32", (bm, bk)), acc(tb, "f32", (bk, bn)), \
        acc(tc, "f32", (bm, bn))

    def half(h: int, accumulate: bool) -> list:
        return [Dma(pb.access(a, "f32", (bm, bk), (k, 1), tile_strides=(bm * k, 0),
                              offset=h * bk), ta_acc, grid=GRID, op="a"),
                Dma(pb.access(b, "f32", (bk, bn), (n, 1), tile_strides=(0, bn),
                              offset=h * bk * n), tb_acc, grid=GRID, op="b"),
                MatMul(ta_acc, tb_acc, tc_acc, accumulate=accumulate, grid=GRID, op="mm")]
    first = half(0, False)
    extra = {"neg": [Vec("neg", [tb_acc], tb_acc, grid=GRID, op="neg")],
             "partial": [Dma(acc(b, "f32", (bk // 2, bn), (n, 1), tile_strides=(0, bn)),
                             acc(tb, "f32", (bk // 2, bn)), grid=GRID, op="partial")],
             "tile0": [Dma(acc(b, "f32", (bk // 2, bn), (n, 1)), acc(tb, "f32", (bk // 2, bn)),
                           grid=(1,), op="tile0")],
             "": []}[between]
    pb.emit(*([Loop((loop,), first, op="k0")] if loop > 1 else first), *extra,
            *half(1, True),
            Dma(tc_acc, acc(c, "f32", (bm, bn), (n, 1), tile_strides=(bm * n, bn)),
                grid=GRID, op="out"))
    return pb.build()


def _run(prog, feeds, elide: bool, monkeypatch) -> tuple[dict, dict, dict]:
    prog.runtime_cache.clear()
    if not elide:
        monkeypatch.setattr(interpreter, "elided_dma_axes", lambda *_: {})
    out = run_program(prog, feeds)
    monkeypatch.undo()
    machine = _machine(prog)
    return out, {lv: m.copy() for lv, m in machine.mem.items()}, machine.elided


def _feeds(m: int) -> dict[str, np.ndarray]:
    return {"a": RNG.standard_normal((m, 256)).astype(np.float32),
            "b": RNG.standard_normal((256, 64)).astype(np.float32)}


@pytest.mark.parametrize(("m", "between"), [(256, ""), (512, ""), (256, "partial")])
def test_first_half_copies_skipped_same_outputs_and_memory(m, between, monkeypatch):
    """m: per-tile GEMMs / one stacked GEMM; "partial": tb rewritten in two pieces."""
    prog, feeds = k_split_program(m, between=between), _feeds(m)
    out, mem, elided = _run(prog, feeds, True, monkeypatch)
    # the first half's A and B copies are overwritten by the second half's; the second
    # half's are the last writes of their bytes, so they are done
    assert {k: v for k, v in elided.items() if k in "01"} == {
        "0": frozenset({1}), "1": frozenset({0})}
    np.testing.assert_allclose(out["c"], feeds["a"] @ feeds["b"], rtol=1e-4, atol=1e-3)
    ref_out, ref_mem, none = _run(prog, feeds, False, monkeypatch)
    assert none == {}
    assert out["c"].tobytes() == ref_out["c"].tobytes()
    for level in mem:
        assert np.array_equal(mem[level], ref_mem[level]), level


@pytest.mark.parametrize("kw", [{"between": "neg"}, {"between": "tile0"}, {"loop": 3}])
def test_copies_read_or_partly_rewritten_or_in_a_loop_are_done(kw, monkeypatch):
    prog, feeds = k_split_program(256, **kw), _feeds(256)
    out, mem, elided = _run(prog, feeds, True, monkeypatch)
    # a TVP op reading tb on every tile, a rewrite of tile 0 only, or a loop: B's copies
    # stay
    assert "1" not in elided and "0.1" not in elided
    ref_out, ref_mem, _ = _run(prog, feeds, False, monkeypatch)
    assert out["c"].tobytes() == ref_out["c"].tobytes()
    for level in mem:
        assert np.array_equal(mem[level], ref_mem[level]), level
