"""Tile splitting over workers and tile dedupe keep the bytes (runtime/parallel.py,
runtime/tile_dedupe.py)."""

from __future__ import annotations

import numpy as np
import pytest
import threadpoolctl

import maiac
from maiac import models
from maiac.inputs import random_inputs
from maiac.runtime import parallel
from maiac.runtime.interpreter import run_program
from maiac.runtime.tile_dedupe import shared_grid_axes


@pytest.mark.parametrize("quant", [None, "mxfp4"])
def test_split_over_workers_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch,
                                                 quant: str | None) -> None:
    model = models.mlp(batch=128, width=256, hidden=1024, layers=1)
    feeds = random_inputs(model, {}, seed=1)
    program = maiac.compile(model, quant=quant).program
    splits = []
    real = parallel.run_split

    def counting(fn, arrays, axis):  # type: ignore[no-untyped-def]
        splits.append(axis)
        real(fn, arrays, axis)
    monkeypatch.setattr("maiac.runtime.interpreter.run_split", counting)
    monkeypatch.setattr("maiac.runtime.interpreter_matmul.run_split", counting)  # stacked GEMMs
    outs = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("MAIAC_THREADS", n)
        program.runtime_cache.clear()
        outs[n] = run_program(program, feeds)["y"]
    assert any(a is not None for a in splits)  # the big matmuls and DMAs were split
    assert outs["1"].tobytes() == outs["2"].tobytes() == outs["3"].tobytes()


def test_blas_limit_is_restored() -> None:
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    with parallel.single_threaded_blas(), parallel.single_threaded_blas():
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info())
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == before


def test_dedupe_compares_bytes_not_values() -> None:
    x = np.zeros((2, 3, 4), np.float32)
    assert shared_grid_axes([x], 0, 2) == (slice(0, 1), slice(0, 1), slice(None))
    y = x.copy()
    y[1, 0, 0] = -0.0  # equal as a value, not as bytes
    assert shared_grid_axes([y], 0, 2) is None
    z = np.full((2, 3, 4), np.nan, np.float32)  # same NaN bytes: the same result
    assert shared_grid_axes([z], 0, 1) == (slice(0, 1), slice(None), slice(None))
    w = x.copy()
    w[0, 2, 3] = 1.0  # one tile differs: nothing shared
    assert shared_grid_axes([x, w], 0, 2) is None
    w = x.copy()
    w[1, :, 0] = 1.0  # the grid rows differ, the tiles within each row do not
    assert shared_grid_axes([x, w], 0, 2) == (slice(None), slice(0, 1), slice(None))
    v = np.zeros((3, 4), np.float32)
    v[2, 1] = 1.0  # tiles 0 and 1 agree (the early check), tile 2 does not
    assert shared_grid_axes([v], 0, 1) is None
    # an axis the program proves uniform (tile_uniform.py) is taken without comparing
    assert shared_grid_axes([v], 0, 1, known=frozenset({0})) == (slice(0, 1), slice(None))


@pytest.mark.parametrize("quant", [None, "mxfp4", "nvfp4"])
def test_vec_functions_split_over_workers_give_the_same_bytes(
        monkeypatch: pytest.MonkeyPatch, quant: str | None) -> None:
    """GELU, LayerNorm, softmax and the TVP quantize of a GPT-2 block split over the
    workers along a grid axis (parallel.vec_splitter) and give the bytes of one thread."""
    model = models.transformer(layers=1, seq=128, d_model=256, heads=4, vocab=512)
    feeds = random_inputs(model, {}, seed=2)
    program = maiac.compile(model, quant=quant).program
    split_fns: set[str] = set()
    real = parallel.vec_splitter

    def recording(instr, n_trips, n_grid):  # type: ignore[no-untyped-def]
        inner = real(instr, n_trips, n_grid)

        def split(x, it):  # type: ignore[no-untyped-def]
            axis = inner(x, it)
            if axis is not None:
                split_fns.add(instr.fn)
            return axis
        return split
    monkeypatch.setattr("maiac.runtime.interpreter.vec_splitter", recording)
    outs = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("MAIAC_THREADS", n)
        program.runtime_cache.clear()
        outs[n] = next(iter(run_program(program, feeds).values())).tobytes()
    assert "gelu" in split_fns or "gelu_tanh" in split_fns
    assert quant is None or "quantize" in split_fns
    assert outs["1"] == outs["2"] == outs["3"]
