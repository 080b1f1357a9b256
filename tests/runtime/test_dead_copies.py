"""Broadcast DMA copies that no instruction reads (runtime/dead_copies.py): which are
skipped, and a run with them skipped leaves the same outputs and the same memory."""

from __future__ import annotations

import numpy as np
import pytest

from maiac.runtime.interpreter import _machine, run_program
from maiac.runtime.isa import Dma, Loop, MatMul, Vec
from maiac.runtime.program import ProgramBuilder

RNG = np.random.default_rng(5)
GRID = (2, 2)


def k_split_program(m: int, *, between: str = "", loop: int = 1, b_halves: bool = False,
                    b_transposed: bool = False):
    """C = A @ B on a 2x2 grid in two K halves through the same TSRAM buffers: each half's
    A block broadcast along the grid columns, B block along the grid rows.
    ``between`` (after the first matmul): "neg" a TVP op reading and writing tb,
    "partial" a DMA into half of tb on every tile, "tile0" the same on tile 0 only, "gaps"
    a DMA into every other row of tb; ``loop``:
    the first half inside a loop of that many trips; ``b_halves``: the first B block
    DMAed in two halves of its rows (the matmul's operand is neither DMA's block);
    ``b_transposed``: B given as its transpose ``bt`` [n, k], read column-major."""
    k, n = 256, 64
    bm, bk, bn = m // 2, k // 2, n // 2
    pb = ProgramBuilder()
    a = pb.input("a", "f32", (m, k))
    b = pb.input("bt" if b_transposed else "b", "f32", (n, k) if b_transposed else (k, n))
    c = pb.output("c", "f32", (m, n))
    ta, tb, tc = (pb.alloc(x, "tsram", s * 4) for x, s in
                  (("ta", bm * bk), ("tb", bk * bn), ("tc", bm * bn)))
    acc = pb.access
    ta_acc, tb_acc, tc_acc = acc(ta, "f32", (bm, bk)), acc(tb, "f32", (bk, bn)), \
        acc(tc, "f32", (bm, bn))

    def b_dma(rows: int, src_row: int, dst_row: int) -> Dma:
        src = acc(b, "f32", (rows, bn), (1, k), tile_strides=(0, bn * k), offset=src_row) \
            if b_transposed else \
            acc(b, "f32", (rows, bn), (n, 1), tile_strides=(0, bn), offset=src_row * n)
        return Dma(src, acc(tb, "f32", (rows, bn), offset=dst_row * bn), grid=GRID, op="b")

    def half(h: int, accumulate: bool, halves: bool = False) -> list:
        b_dmas = [b_dma(bk // 2, h * bk, 0), b_dma(bk // 2, h * bk + bk // 2, bk // 2)] \
            if halves else [b_dma(bk, h * bk, 0)]
        return [Dma(acc(a, "f32", (bm, bk), (k, 1), tile_strides=(bm * k, 0), offset=h * bk),
                    ta_acc, grid=GRID, op="a"), *b_dmas,
                MatMul(ta_acc, tb_acc, tc_acc, accumulate=accumulate, grid=GRID, op="mm")]
    first = half(0, False, b_halves)
    extra = {"neg": [Vec("neg", [tb_acc], tb_acc, grid=GRID, op="neg")],
             "partial": [b_dma(bk // 2, 0, 0)],
             "tile0": [Dma(acc(b, "f32", (bk // 2, bn), (n, 1)), acc(tb, "f32", (bk // 2, bn)),
                           grid=(1,), op="tile0")],
             "gaps": [Dma(acc(b, "f32", (bk // 2, bn), (n, 1), tile_strides=(0, bn)),
                          acc(tb, "f32", (bk // 2, bn), (2 * bn, 1)), grid=GRID, op="gaps")],
             "": []}[between]
    pb.emit(*([Loop((loop,), first, op="k0")] if loop > 1 else first), *extra,
            *half(1, True),
            Dma(tc_acc, acc(c, "f32", (bm, bn), (n, 1), tile_strides=(bm * n, bn)),
                grid=GRID, op="out"))
    return pb.build()


def _run(prog, feeds, skip: bool, monkeypatch) -> tuple[dict, dict, object]:
    """Outputs, memory after the run and the machine's ``Copies``; ``skip`` False: with
    every copy done (MAIAC_ALL_COPIES=1)."""
    prog.runtime_cache.clear()
    if not skip:
        monkeypatch.setenv("MAIAC_ALL_COPIES", "1")
    out = run_program(prog, feeds)
    monkeypatch.undo()
    machine = _machine(prog)
    return out, {lv: m.copy() for lv, m in machine.mem.items()}, machine.copies


def _feeds(m: int) -> dict[str, np.ndarray]:
    return {"a": RNG.standard_normal((m, 256)).astype(np.float32),
            "b": RNG.standard_normal((256, 64)).astype(np.float32)}


def _same_as_all_copies(prog, feeds, monkeypatch):
    out, mem, copies = _run(prog, feeds, True, monkeypatch)
    np.testing.assert_allclose(out["c"], feeds["a"] @ feeds["b"], rtol=1e-4, atol=1e-3)
    ref_out, ref_mem, none = _run(prog, feeds, False, monkeypatch)
    assert not (none.forwarded or none.elided)
    assert out["c"].tobytes() == ref_out["c"].tobytes()
    for level in mem:
        assert np.array_equal(mem[level], ref_mem[level]), level
    return copies


@pytest.mark.parametrize(("m", "between"), [(256, ""), (512, ""), (256, "partial"),
                                            (256, "tile0")])
def test_first_half_dmas_forwarded_to_the_matmul(m, between, monkeypatch):
    """m: per-tile GEMMs / one stacked GEMM; "partial": tb rewritten in two pieces (the
    first on all tiles, the second half's DMA); "tile0": the first on tile 0 only."""
    copies = _same_as_all_copies(k_split_program(m, between=between), _feeds(m), monkeypatch)
    # the first half's A and B blocks are read by the matmul only, then overwritten by
    # the second half's, which are the last writes of their bytes and so are done
    assert {"0", "1"} <= copies.forwarded and not {"3", "4", "5"} & copies.forwarded
    assert set(copies.sources) == {("2", "a"), ("2", "b")}


@pytest.mark.parametrize("m", [256, 512])
def test_broadcast_copies_read_from_the_head_tiles_skipped(m, monkeypatch):
    """B's first block in two DMAs: the matmul's operand is neither's block (not
    forwarded), it reads B from the head tiles (row 0 of the grid), so the copies to
    the other grid row are dead."""
    copies = _same_as_all_copies(k_split_program(m, b_halves=True), _feeds(m), monkeypatch)
    assert copies.elided == {"1": frozenset({0}), "2": frozenset({0})}
    assert copies.forwarded == {"0"}


def test_a_transposed_source_is_not_forwarded(monkeypatch):
    """A block DMAed from a column-major source: the matmul would hand BLAS a transposed
    operand (another kernel, other sums), so it reads the TSRAM copy."""
    prog, feeds = k_split_program(256, b_transposed=True), _feeds(256)
    feeds["bt"] = np.ascontiguousarray(feeds.pop("b").T)
    out, _, copies = _run(prog, feeds, True, monkeypatch)
    assert "0" in copies.forwarded and "1" not in copies.forwarded
    ref_out, _, _ = _run(prog, feeds, False, monkeypatch)
    assert out["c"].tobytes() == ref_out["c"].tobytes()


def test_dmas_in_a_loop_forwarded_but_in_the_last_iteration(monkeypatch):
    """The first half in a loop of 3 trips: each iteration's DMAs rewrite the previous
    one's blocks before anything else reads them; the last iteration's are done."""
    copies = _same_as_all_copies(k_split_program(256, loop=3), _feeds(256), monkeypatch)
    assert {"0.0", "0.1"} <= copies.forwarded
    assert copies.last["0.0"] == copies.last["0.1"] == (2,)


@pytest.mark.parametrize("between", ["neg", "gaps"])
def test_copies_read_or_rewritten_with_gaps_are_done(between, monkeypatch):
    # a TVP op reading tb on every tile, or a rewrite with gaps: B's DMA stays whole
    copies = _same_as_all_copies(k_split_program(256, between=between), _feeds(256),
                                 monkeypatch)
    assert "1" not in copies.forwarded | set(copies.elided)
