"""DMA copy helpers of the interpreter (runtime/interpreter.py): strided views fused into
wide rows (one memcpy per row), broadcast DMAs done once and copied tile to tile, and how a
DMA into TSRAM is split over the host's workers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from maiac.runtime.errors import MachineError
from maiac.runtime.interpreter_matmul import Splitter
from maiac.runtime.isa import Dma
from maiac.runtime.parallel import MIN_SPLIT_BYTES, split_axis


def dma_splitter(instr: Dma, dst: np.ndarray, n_trips: int, n_grid: int) -> Splitter | None:
    """How to split a DMA over tiles, or None: only DMAs into TSRAM (tiles own disjoint
    memory there) from another level (so no chunk reads what another writes), whose
    destination has no byte written twice, and only along axes that are still grid axes
    after ``as_rows`` fused the contiguous tail."""
    if instr.dst.level != "tsram" or instr.src.level == "tsram" or dst.nbytes < MIN_SPLIT_BYTES:
        return None
    if may_self_overlap(dst.shape[n_trips:], dst.strides[n_trips:], dst.itemsize):
        return None
    kept = min(n_grid, dst.ndim - n_trips - 1) if dst.dtype.kind == "V" else n_grid

    def split(dv: np.ndarray, it: tuple[int, ...]) -> int | None:
        if dv.nbytes < MIN_SPLIT_BYTES:
            return None
        return split_axis(dv.shape, n_trips - len(it), kept)
    return split


# A broadcast DMA whose rows already copy as wide (>= 64-byte) elements gains from the
# tile-to-tile copies only when large: below this the extra numpy calls cost more.
WIDE_BROADCAST_BYTES = 1 << 18


def broadcast_copies(dst: np.ndarray, src: np.ndarray, first: int, instr: Dma,
                     grid: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """A DMA into TSRAM whose source block is the same for every tile along some grid
    axes (tile stride 0), as a list of (dst, src) copies: the (strided) read of the
    source once, into the tiles at index 0 of those axes, then whole blocks from their
    TSRAM to the other tiles' (contiguous rows, 2-4x faster than re-reading a strided
    source per tile). Every tile's TSRAM still receives every byte of its block. Views
    keep the ``first`` loop axes in front. None when that does not apply (no broadcast
    axis, wide rows below ``WIDE_BROADCAST_BYTES``, or destination overlapping the
    source)."""
    if instr.dst.level != "tsram" or instr.src.level == "tsram" or dst.size == 0:
        return None
    ts = tuple(instr.src.tile_strides) or (0,) * len(grid)
    axes = [first + g for g, (n, st) in enumerate(zip(grid, ts, strict=True))
            if n > 1 and st == 0]
    if not axes or (as_rows(dst, src, first)[0].itemsize >= 64 and
                    dst.nbytes < WIDE_BROADCAST_BYTES) or np.shares_memory(dst, src):
        return None
    mem = dst.base

    def sub(sel: list[Any], bcast: int | None = None, n: int = 0) -> np.ndarray:
        w = dst[tuple(sel)]
        if bcast is None:
            return w
        shape, strides = list(w.shape), list(w.strides)
        shape[bcast], strides[bcast] = n, 0
        offset = w.__array_interface__["data"][0] - mem.__array_interface__["data"][0]
        return np.ndarray(tuple(shape), w.dtype, buffer=mem, offset=offset,
                          strides=tuple(strides))
    full = [slice(None)] * dst.ndim
    head = list(full)
    for g in axes:
        head[g] = slice(0, 1)
    pairs = [as_rows(sub(head), src[tuple(head)], first)]
    for j, g in enumerate(axes):
        sel = list(full)
        for h in axes[j + 1:]:
            sel[h] = slice(0, 1)
        to, frm = list(sel), list(sel)
        to[g], frm[g] = slice(1, None), slice(0, 1)
        pairs.append(as_rows(sub(to), sub(frm, g, dst.shape[g] - 1), first))
    return pairs


def contiguous_tail(v: np.ndarray, first: int) -> int:
    """Smallest axis ``k >= first`` such that axes ``k..`` of ``v`` are one contiguous run."""
    expect = v.itemsize
    k = v.ndim
    while k > first and (v.shape[k - 1] == 1 or v.strides[k - 1] == expect):
        expect *= v.shape[k - 1]
        k -= 1
    return k


def as_rows(dst: np.ndarray, src: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of the same bytes with the trailing axes that are contiguous in both
    ``dst`` and ``src`` fused into one ``void`` element (a copy of it is a memcpy), so
    numpy's copy loop runs over rows instead of single elements. Axes before
    ``first`` (loop iterations) are kept."""
    k = max(contiguous_tail(dst, first), contiguous_tail(src, first))
    width = dst.itemsize * math.prod(dst.shape[k:])
    if dst.size == 0 or width <= dst.itemsize:
        return dst, src
    row = np.dtype((np.void, width))

    def fused(v: np.ndarray) -> np.ndarray:
        mem = v.base  # the level's byte array (views are built on it directly)
        offset = v.__array_interface__["data"][0] - mem.__array_interface__["data"][0]
        # a trailing length-1 axis: when every axis after the loop axes fuses, indexing
        # one iteration must still give an array (a 0-d index would give an np.void
        # scalar, which np.copyto cannot write into)
        return np.ndarray(v.shape[:k] + (1,), row, buffer=mem, offset=offset,
                          strides=v.strides[:k] + (width,))
    return fused(dst), fused(src)


def may_self_overlap(shape: tuple[int, ...], strides: tuple[int, ...], isz: int) -> bool:
    """Conservative: False only if no two elements of the strided view share a byte."""
    reach = isz
    for stride, n in sorted((abs(s), n) for n, s in zip(shape, strides, strict=True) if n > 1):
        if stride < reach:
            return True
        reach += (n - 1) * stride
    return False


def grid_index(grid: tuple[int, ...], index_rank: int) -> tuple[np.ndarray, ...]:
    """Broadcastable aranges over the tile grid axes, for fancy-indexing a gridded table
    with per-tile row indices of rank ``index_rank``."""
    nd = len(grid) + index_rank
    return tuple(np.arange(g).reshape((1,) * k + (g,) + (1,) * (nd - k - 1))
                 for k, g in enumerate(grid))


def row_indices(indices: np.ndarray, rows: int, what: str) -> np.ndarray:
    """Row indices into a table of ``rows`` rows (negative ones from the end), checked."""
    ix = indices.astype(np.int64)
    if ix.size and 0 <= ix.min() and ix.max() < rows:
        return ix  # all in range already: no negative index to wrap
    ix = np.where(ix < 0, ix + rows, ix)
    if ix.size and (ix.min() < 0 or ix.max() >= rows):
        bad = ix[(ix < 0) | (ix >= rows)].flat[0]
        raise MachineError(f"{what} index out of range: {bad} (table has {rows} rows)")
    return ix
