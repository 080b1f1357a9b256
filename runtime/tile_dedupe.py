"""Compute once what many tiles compute from identical bytes.

A tiled matmul broadcasts its activation block to every tile of a grid row, so those
tiles hold byte-identical copies and a TVP quantize or a TTU operand decode of them
gives identical results. Checking that the bytes are equal (one read of the inputs) is
far cheaper than decoding or quantizing them again per tile, so the interpreter compares
the inputs along each grid axis and, where every input is the same on all tiles of that
axis, computes on the first tile only and broadcasts the result (every destination tile
still receives its own bytes). Results are bit-identical: a deterministic function of
identical bytes. The comparison is of bytes (not values: 0.0 == -0.0 and NaN != NaN).
"""

from __future__ import annotations

import numpy as np

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def unsigned_bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as unsigned integers of its element size (same strides)."""
    dt = _UINT.get(a.dtype.itemsize)
    if dt is None or a.dtype.kind == "V":
        return a.view(np.uint8) if a.dtype.kind != "V" or a.dtype.itemsize == 1 else a
    return a.view(dt)


def shared_grid_axes(arrays: list[np.ndarray], first: int, n_grid: int,
                     known: frozenset[int] = frozenset()) -> tuple[slice, ...] | None:
    """An index keeping only position 0 (as ``0:1``) of every grid axis
    ``first .. first + n_grid - 1`` along which every array's bytes are the same on all
    tiles; None if there is no such axis. All arrays share those leading axes.

    ``known``: grid axes (0 = the first grid axis) along which the program already proves
    the bytes the same (runtime/tile_uniform.py): taken without comparing. Any other axis
    is compared, its second tile against the first before all of them, so an axis whose
    tiles differ costs a fraction of a full compare."""
    if not arrays or n_grid == 0:
        return None
    sel: list[slice] = [slice(None)] * arrays[0].ndim
    views = [unsigned_bits(a) for a in arrays]
    for g in range(first, first + n_grid):
        if views[0].shape[g] <= 1:
            continue
        head = (slice(None),) * g + (slice(0, 1),)
        second = (slice(None),) * g + (slice(1, 2),)
        if g - first in known or all(
                v.strides[g] == 0 or (np.array_equal(v[second], v[head])
                                      and bool((v == v[head]).all())) for v in views):
            sel[g] = slice(0, 1)
            views = [v[head] for v in views]
    return tuple(sel) if any(s != slice(None) for s in sel) else None
