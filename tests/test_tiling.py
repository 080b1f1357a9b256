"""Unit tests of the tilers' building blocks and the memory planner's allocator."""

from __future__ import annotations

from maiac.passes.plan_memory import Placed, first_fit
from maiac.passes.tiling.common import (
    Budget,
    broadcast_strides,
    divisors,
    merge_dims,
    split_jobs,
)
from maiac.passes.tiling.matmul import choose_blocks


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
