"""The Scatter instruction (Gather's inverse): rows written at run-time positions."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from maiac.runtime.errors import MachineError, ProgramError
from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Scatter
from maiac.runtime.program import ProgramBuilder, load_program, save_program, validate_program
from maiac.runtime.timing import simulate

B, H, C, D = 2, 3, 5, 4


def cache_write_program(cache_dtype: str = "bf16"):
    """cache [B, H, C, D] (an input) gets new [B, H, 1, D] at row pos[b] of each
    sequence, then the whole cache is copied (as f32) to the output."""
    pb = ProgramBuilder()
    cache = pb.input("cache", cache_dtype, (B, H, C, D))
    new = pb.input("new", "f32", (B, H, 1, D))
    pos = pb.input("pos", "i64", (B,))
    out = pb.output("out", "f32", (B, H, C, D))
    ti = pb.alloc("ti", "tsram", 8)
    tr = pb.alloc("tr", "tsram", H * D * 4)
    acc = pb.access
    pb.emit(
        Dma(acc(pos, "i64", (1,), tile_strides=(1,)), acc(ti, "i64", (1,)), grid=(B,)),
        Dma(acc(new, "f32", (1, H, D), tile_strides=(H * D,)), acc(tr, "f32", (1, H, D)),
            grid=(B,)),
        # the cache of sequence b seen as rows [C, H, D]
        Scatter(acc(cache, cache_dtype, (C, H, D), (D, C * D, 1), tile_strides=(H * C * D,)),
                acc(ti, "i64", (1,)), acc(tr, "f32", (1, H, D)), grid=(B,), op="kv"),
        Dma(acc(cache, cache_dtype, (B * H * C * D,)), acc(out, "f32", (B * H * C * D,))),
    )
    return pb.build()


def test_scatter_writes_only_the_rows_at_the_positions_converting_to_the_table_dtype():
    rng = np.random.default_rng(0)
    cache = rng.standard_normal((B, H, C, D)).astype(ml_dtypes.bfloat16)
    new = rng.standard_normal((B, H, 1, D)).astype(np.float32)
    pos = np.array([3, -1])   # negative wraps, as Gather's indices
    out = run_program(cache_write_program(), {"cache": cache, "new": new, "pos": pos})["out"]
    want = cache.astype(np.float32)
    want[0, :, 3] = new[0, :, 0].astype(ml_dtypes.bfloat16).astype(np.float32)
    want[1, :, C - 1] = new[1, :, 0].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(out, want)


def test_scatter_out_of_range_is_a_machine_error():
    feeds = {"cache": np.zeros((B, H, C, D), ml_dtypes.bfloat16),
             "new": np.zeros((B, H, 1, D), np.float32), "pos": np.array([0, C])}
    with pytest.raises(MachineError, match=r"scatter, op 'kv'\).*out of range: 5"):
        run_program(cache_write_program(), feeds)


def test_scatter_round_trips_the_program_file_and_counts_only_its_rows(tmp_path):
    prog = cache_write_program("f32")
    save_program(prog, tmp_path / "p.maia")
    again = load_program(tmp_path / "p.maia")
    assert any(isinstance(i, Scatter) for i in again.instructions)
    op = {o["name"]: o for o in simulate(again).ops}["kv"]
    # the rows it writes (B x H x D f32), not the table it writes into
    assert op["own_hbm_bytes"] == B * H * D * 4


def test_scatter_src_shape_must_match_the_rows():
    prog = cache_write_program()
    bad = prog.instructions[2]
    bad.src = type(bad.src)(bad.src.level, bad.src.addr, "f32", (1, H, D - 1), (H * D, D, 1))
    with pytest.raises(ProgramError, match="src shape"):
        validate_program(prog)
