"""Matmul helpers of the interpreter (runtime/interpreter.py): the fp32 GEMM calls, how a
matmul is split over the host's workers, one GEMM for the tiles that share a weight block,
and the cache of decoded quantized weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maiac.runtime.isa import MatMul
from maiac.runtime.parallel import MIN_SPLIT_FLOPS, run_split, split_axis
from maiac.runtime.tile_dedupe import unsigned_bits

# OpenBLAS (the SkylakeX/Haswell kernels numpy's wheels ship) runs a GEMM with
# m*n*k <= 100**3 in its small-matrix kernel, whose sums differ in the last bit from the
# blocked kernel's; above that each C element is the same FMA chain over K whatever M
# is, so stacking the rows of several tiles into one GEMM gives the same bytes.
# (bench on this host: 0 of 952 shapes differ above it, 869 of 4592 at or below.)
MERGE_MIN_MNK = 100 ** 3


def mm(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.matmul(a, b, out=c)


def mm_acc(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.add(np.matmul(a, b), c, out=c)


Splitter = Callable[[np.ndarray, tuple[int, ...]], int | None]


def matmul_splitter(instr: MatMul, n_trips: int, n_grid: int) -> Splitter:
    """The grid axis to split a matmul call on (runtime/parallel.py), None if too small.

    Compute touches only each tile's own TSRAM, so chunks of tiles are disjoint.
    """
    flops_per_out = 2 * instr.logical_ab()[0][-1]

    def split(cv: np.ndarray, it: tuple[int, ...]) -> int | None:
        if cv.size * flops_per_out < MIN_SPLIT_FLOPS:
            return None
        return split_axis(cv.shape, n_trips - len(it), n_grid)
    return split


class DecodeCache:
    """Decoded fp32 values of quantized matmul weight blocks, reused while their bytes stay.

    DESIGN §2 allows decoding constant weights once per program. Rather than trusting
    that a TSRAM block holds a constant, each entry keeps a copy of the packed codes and
    scales it was decoded from and is used only when the TSRAM bytes still equal them
    (one byte compare, far cheaper than the decode), so the result is always the decode
    of what is in memory now. Along the grid axes the program proves the block the same
    on every tile (runtime/tile_uniform.py, ``uniform``) only the first tile is kept and
    compared. An operand whose bytes change between runs twice stops being cached; the
    cache holds at most ``limit`` bytes.
    """

    def __init__(self, limit: int = 512 << 20) -> None:
        self.limit = limit
        self.used = 0
        self.hits = 0

    def wrap(self, raw: np.ndarray, scales: np.ndarray | None,
             decode: Callable[[tuple[int, ...]], np.ndarray],
             uniform: tuple[int, frozenset[int]] = (0, frozenset())
             ) -> Callable[[tuple[int, ...]], np.ndarray]:
        """``decode`` with a per-iteration cache validated against ``raw`` / ``scales``.

        ``uniform``: (number of loop axes of ``raw``, grid axes whose tiles hold the same
        bytes)."""
        entries: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
        misses = [0]
        n_trips, axes = uniform

        def kept(v: np.ndarray, it: tuple[int, ...]) -> np.ndarray:
            first = n_trips - len(it)
            return v[tuple(slice(0, 1) if g - first in axes else slice(None)
                           for g in range(v.ndim))] if axes else v

        def get(it: tuple[int, ...]) -> np.ndarray:
            rv = kept(raw[it], it)
            sv = None if scales is None else kept(scales[it], it)
            hit = entries.get(it)
            if hit is not None and same_bytes(hit[0], rv) and (
                    sv is None or same_bytes(hit[1], sv)):
                self.hits += 1
                return hit[2]
            out = decode(it)
            if hit is not None:
                misses[0] += 1
                self.used -= hit[0].nbytes + hit[2].nbytes + (0 if sv is None else sv.nbytes)
                del entries[it]
            size = rv.nbytes + out.nbytes + (0 if sv is None else sv.nbytes)
            if misses[0] < 2 and self.used + size <= self.limit:
                out.setflags(write=False)
                entries[it] = (rv.copy(), None if sv is None else sv.copy(), out)
                self.used += size
            return out
        return get


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two arrays hold the same bytes (0.0 and -0.0 differ, equal NaNs do not),
    compared 8 bytes at a time where the last axis allows it."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = unsigned_bits(a), unsigned_bits(b)
    n = a.shape[-1] * a.itemsize if a.ndim else 0
    if n and n % 8 == 0 and a.strides[-1] == b.strides[-1] == a.itemsize:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return bool((a == b).all())


def row_major(v: np.ndarray, inner: int) -> bool:
    """True if numpy hands the matrices of ``v`` (last two axes, ``inner`` columns) to
    BLAS as they are, row-major (``is_blasable2d`` in numpy's matmul)."""
    isz = v.itemsize
    row = v.strides[-2]
    return v.strides[-1] == isz and row % isz == 0 and row // isz >= inner


def head_tiles(v: np.ndarray, axes: frozenset[int], n_trips: int) -> np.ndarray:
    """``v`` (``(*trips, *grid, ...)``) at index 0 (as ``0:1``) of the grid ``axes``."""
    if not axes:
        return v
    return v[tuple(slice(0, 1) if k - n_trips in axes else slice(None)
                   for k in range(n_trips + max(axes) + 1))]


def stacked_matmul(a: np.ndarray, b: np.ndarray, axis: int, n_rest: tuple[int, int],
                   into: np.ndarray | None = None, accumulate: bool = False
                   ) -> np.ndarray | None:
    """``np.matmul(a, b)`` (fp32, batched over tiles) where ``b`` is the same on every tile
    along ``axis`` (length 1 there, or equal bytes): the rows of those tiles stacked
    into one GEMM per remaining tile. ``n_rest``: (first grid axis, grid axes) of the
    result without ``axis``, for splitting over the workers. Same bytes as the per-tile
    GEMMs when ``m*n*k > MERGE_MIN_MNK`` and both operands are row-major (row_major).

    ``into`` (an fp32 view of the result's shape): the result is written (``accumulate``:
    added) there by the worker that computed it, while its rows are still in cache, and
    None is returned; the same additions as adding the returned array."""
    tiles, rows = a.shape[axis], a.shape[-2]
    b1 = b if b.shape[axis] == 1 else b[(slice(None),) * axis + (slice(0, 1),)]
    a_moved = np.moveaxis(a, axis, -3)  # (..., tiles, M, K): the tiles' rows next to M
    stacked = a_moved.reshape(a_moved.shape[:-3] + (tiles * rows, a.shape[-1]))  # a copy
    b_moved = np.moveaxis(b1, axis, -3)[..., 0, :, :]
    batch = np.broadcast_shapes(stacked.shape[:-2], b_moved.shape[:-2])
    out = np.empty(batch + (tiles * rows, b.shape[-1]), np.float32)
    first, n_grid = n_rest
    split = split_axis(out.shape, first, n_grid) if out.size * 2 * a.shape[-1] >= \
        MIN_SPLIT_FLOPS else None
    if into is not None:
        dst = np.moveaxis(into, axis, -3)  # (..., tiles, M, N), the layout of out's rows
        if dst.shape[:-3] == batch:
            run_split(_mm_add_into if accumulate else _mm_copy_into,
                      [stacked, b_moved, out, dst], split)
            return None
        run_split(_mm_into, [stacked, b_moved, out], split)
        r = np.moveaxis(out.reshape(batch + (tiles, rows, out.shape[-1])), -3, axis)
        if accumulate:
            np.add(r, into, out=into)
        else:
            np.copyto(into, r)
        return None
    run_split(_mm_into, [stacked, b_moved, out], split)
    r = out.reshape(out.shape[:-2] + (tiles, rows, out.shape[-1]))
    return np.moveaxis(r, -3, axis)


def _mm_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b, out=out)


def _mm_add_into(a: np.ndarray, b: np.ndarray, out: np.ndarray, dst: np.ndarray) -> None:
    """``dst += a @ b`` (``dst``: the product's rows as (..., tiles, M, N))."""
    np.matmul(a, b, out=out)
    np.add(out.reshape(dst.shape), dst, out=dst)


def _mm_copy_into(a: np.ndarray, b: np.ndarray, out: np.ndarray, dst: np.ndarray) -> None:
    np.matmul(a, b, out=out)
    np.copyto(dst, out.reshape(dst.shape))
