"""Tiling of ``maia.cache_write``: a KV cache's new rows written in place at run-time rows.

One job per sequence ``b`` (split over the tiles): DMA its position ``pos[b]`` and its
new keys (or values) ``new[b, :, 0, :]`` ([H, D]) into TSRAM, then one Scatter stores the
[H, D] block at row ``pos[b]`` of the cache seen as rows ``[C, H, D]`` (strides ``D``,
``C * D``, 1), converting to the cache's element type. Only the new rows move: the cache
itself is never read or copied.
"""

from __future__ import annotations

from maiac.ir import maia
from maiac.passes.tiling.common import Access, Budget, Kernel, Tensor, dma, loop, split_jobs
from maiac.runtime.errors import MaiacError


def tile_cache_write(kernel: Kernel, cache: Tensor, new: Tensor, pos: Tensor,
                     budget: Budget) -> None:
    """Append ``cache[b, :, pos[b], :] = new[b, :, 0, :]`` for every sequence ``b``."""
    if len(cache.shape) != 4 or len(new.shape) != 4 or new.shape[2] != 1 \
            or new.shape[:2] != cache.shape[:2] or new.shape[3] != cache.shape[3]:
        raise MaiacError(f"op '{kernel.op}' (cache write): new rows {list(new.shape)} do not "
                         f"fit cache {list(cache.shape)} one position at a time")
    b, h, c, d = cache.shape
    if pos.size != b:
        raise MaiacError(f"op '{kernel.op}' (cache write): {pos.size} positions for {b} "
                         f"sequences")
    split = split_jobs((b,), budget.n_tiles)
    grid = split.grid
    ti = kernel.scratch_buffer("position", pos.dtype, (1,))
    tr = kernel.scratch_buffer("rows", new.dtype, (1, h, d))
    rows = Access(tr, new.dtype, (1, h, d), (h * d, d, 1))
    index = Access(ti, pos.dtype, (1,), (1,))
    body = [
        dma(Access(pos.buf, pos.dtype, (1,), (1,), pos.off, split.tile_strides((1,)),
                   split.loop_strides((1,))), index, grid),
        dma(Access(new.buf, new.dtype, (1, h, d), (h * d, d, 1), new.off,
                   split.tile_strides((h * d,)), split.loop_strides((h * d,))), rows, grid,
            queue=1),
        maia.instruction(
            maia.ScatterRowsOp,
            dst=Access(cache.buf, cache.dtype, (c, h, d), (d, c * d, 1), cache.off,
                       split.tile_strides((h * c * d,)),
                       split.loop_strides((h * c * d,))).to_dict(),
            indices=index.to_dict(), src=rows.to_dict(), grid=list(grid)),
    ]
    kernel.body.extend(loop(split.trips, body))
