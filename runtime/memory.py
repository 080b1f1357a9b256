"""Storage dtypes and the address geometry of an ``Access`` (shared by program checks,
the interpreter and the timing model), and the host memory the machine model holds:
its levels in pages written on first touch, constants held once, freed heap returned."""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import gc
import math
import mmap
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from maiac.runtime.isa import Access

NP_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f16": np.dtype(np.float16),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u16": np.dtype(np.uint16),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "f8e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "f8e5m2": np.dtype(ml_dtypes.float8_e5m2),
    # one element per byte, as ml_dtypes stores them (runtime/narrow_store.py)
    "f8e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "f8e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "f8e8m0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "f4e2m1": np.dtype(ml_dtypes.float4_e2m1fn),
    "i4": np.dtype(ml_dtypes.int4),
    "u4": np.dtype(ml_dtypes.uint4),
    "i2": np.dtype(ml_dtypes.int2),
    "u2": np.dtype(ml_dtypes.uint2),
}
_NAMES = {v: k for k, v in NP_DTYPES.items()}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a storage dtype name (KeyError if unknown)."""
    return NP_DTYPES[name]


def dtype_name(dtype: np.dtype) -> str | None:
    """Our name of a numpy dtype, or None if it is not a storage dtype."""
    return _NAMES.get(np.dtype(dtype))


def itemsize(name: str) -> int:
    """Bytes per element of a storage dtype."""
    return NP_DTYPES[name].itemsize


def strided_view(x: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...],
                 writeable: bool = True) -> np.ndarray:
    """``np.lib.stride_tricks.as_strided`` for every storage dtype: as_strided goes through
    ``__array_interface__``, whose typestr of ml_dtypes' float8_e5m2 ('<f1') numpy cannot
    parse, so the view is taken on raw bytes of the same itemsize and retyped."""
    raw = x.view(np.dtype((np.void, x.itemsize)))
    view = np.lib.stride_tricks.as_strided(raw, shape, strides, writeable=writeable)
    return view.view(x.dtype)


def _span(sizes: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int]:
    """(min, max) element offset of an index box ``0 <= i < sizes`` under ``strides``."""
    lo = hi = 0
    for n, s in zip(sizes, strides, strict=True):
        if n <= 0:
            continue
        if s > 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo, hi


def block_extent(acc: Access, grid: tuple[int, ...]) -> tuple[int, int]:
    """``[lo, hi)`` bytes one instruction's access touches at loop iteration 0, over all tiles.

    TSRAM accesses ignore ``tile_strides`` (every tile has its own array, same addresses).
    """
    isz = itemsize(acc.dtype)
    lo, hi = _span(acc.shape, acc.strides)
    if acc.level != "tsram" and acc.tile_strides:
        tlo, thi = _span(grid, acc.tile_strides)
        lo, hi = lo + tlo, hi + thi
    return acc.addr + lo * isz, acc.addr + (hi + 1) * isz


def access_extent(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> tuple[int, int]:
    """``[lo, hi)`` bytes touched over all tiles and all iterations of the enclosing loops."""
    lo, hi = block_extent(acc, grid)
    if acc.loop_strides:
        llo, lhi = _span(trips, acc.loop_strides)
        isz = itemsize(acc.dtype)
        lo, hi = lo + llo * isz, hi + lhi * isz
    return lo, hi


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a block shape."""
    return math.prod(shape)


def distinct_bytes(acc: Access, grid: tuple[int, ...]) -> int:
    """Bytes an access moves over all tiles, counting stride-0 (broadcast) dims once.

    A DMA from HBM whose ``tile_strides`` are all zero reads the block once and the NoC
    broadcasts it (hierarchical broadcast, MAIA200_FACTS); on TSRAM every tile has its
    own copy, so the tile count always multiplies.
    """
    n = math.prod(d for d, s in zip(acc.shape, acc.strides, strict=True) if s != 0)
    if acc.level == "tsram":
        n *= math.prod(grid)
    elif acc.tile_strides:
        n *= math.prod(g for g, s in zip(grid, acc.tile_strides, strict=True) if s != 0)
    return n * itemsize(acc.dtype)


class StepMap:
    """A step function over byte addresses: ``vals[i]`` holds on [keys[i], keys[i+1]).

    The shared core of the timing model's and the hazard checker's byte-range maps.
    """

    def __init__(self, initial: object) -> None:
        self.keys: list[int] = [0]
        self.vals: list = [initial]

    def _split(self, x: int) -> int:
        """Index of the segment that starts at ``x`` (splitting one if needed)."""
        i = bisect.bisect_right(self.keys, x) - 1
        if self.keys[i] == x:
            return i
        self.keys.insert(i + 1, x)
        self.vals.insert(i + 1, self.vals[i])
        return i + 1

    def assign(self, lo: int, hi: int, value: object) -> None:
        """Set [lo, hi) to ``value`` (one segment)."""
        if hi <= lo:
            return
        i, j = self._split(lo), self._split(hi)
        self.keys[i:j] = [lo]
        self.vals[i:j] = [value]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> object | None:
    """glibc's ``malloc_trim``, or None on another C library."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _return_freed_heap() -> None:
    """Hand the heap pages already freed back to the OS (glibc; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_freed_memory() -> None:
    """Collect garbage and hand the heap pages it freed back to the operating system.

    glibc serves allocations under its (adaptive, up to 32 MiB) mmap threshold from the
    heap and keeps freed heap pages mapped, so after a program's weights (hundreds of
    blocks of a few MiB) are freed the process's RSS stays as high until ``malloc_trim``
    returns them. Called between the stages of ``maiac verify`` so its peak is the
    largest stage's, not the sum of the stages.
    """
    gc.collect()
    _return_freed_heap()


@contextlib.contextmanager
def frees_own_garbage() -> Iterator[None]:
    """Collect the reference cycles the enclosed code leaves and return the freed heap.

    A compile's xDSL module is a web of cycles (ops, blocks, SSA uses) that outlives
    the compile until a full collection runs, which may be after the program's first
    run: on a small export that garbage (1.4 MB) was a third of the run's peak. A full
    collection walks every object of the process (the imports alone: 150K, 30-150 ms);
    the heap is frozen on entry, so the one on exit walks only what the enclosed code
    created (2 ms for bert_dynamo). Nested (or inside a caller's own ``gc.freeze``),
    it leaves the collection to the outer level.
    """
    outer = gc.get_freeze_count() == 0
    if outer:
        gc.freeze()
    try:
        yield
    finally:
        if outer:
            gc.collect()
            gc.unfreeze()
            _return_freed_heap()


def zeroed_memory(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-filled ``uint8`` array whose pages the OS allocates when first written.

    An anonymous private mapping in 4 KiB pages: numpy's own large allocations ask for
    2 MiB transparent huge pages, and a machine's SRAM is touched sparsely (each tile
    uses only the buffers of the kernels its grid covers, at addresses the planner
    spreads over the whole level), so one written byte would make 2 MiB resident. On a
    small export that doubled the machine's resident TSRAM. Large programs run no slower
    in small pages (llama 4L d768 s128: 130.8 ms CPU per run, 131.3 ms in huge pages).
    """
    n = math.prod(shape)
    if n == 0 or not hasattr(mmap, "MAP_PRIVATE"):  # Windows: numpy's calloc'd memory
        return np.zeros(shape, np.uint8)
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, np.uint8).reshape(shape)


def share_constant(constants: dict[str, Any], buf: Any, mem: dict[str, np.ndarray]) -> None:
    """Let ``constants[buf.name]`` be a read-only view of the machine's copy of it.

    Called once the machine has written the constant into HBM or CSRAM, for a constant
    no instruction writes (the interpreter's reset does not poison it either, every run
    reads it as written): those bytes never change, so the program need not hold a
    second copy of its weights. Freed one constant at a time, as the machine fills its
    memory, so a run's peak holds the weights once. TSRAM constants (one copy per tile)
    and constants a ``.maia`` file inflates lazily (``ZipBlob``, no copy held) stay.
    """
    data = constants[buf.name]
    if buf.level == "tsram" or not isinstance(data, bytes | bytearray | np.ndarray):
        return
    view = mem[buf.level][buf.addr:buf.addr + memoryview(data).nbytes]
    view.flags.writeable = False
    constants[buf.name] = view
    del data
    # glibc keeps freed heap blocks (weights under its adaptive mmap threshold, up to
    # 32 MiB) resident: hand them back every so often, so the machine's copy replaces
    # the program's as it grows instead of adding to it (a build peaked at twice the
    # weights)
    _unreturned[0] += view.nbytes
    if _unreturned[0] >= TRIM_EVERY:
        _unreturned[0] = 0
        _return_freed_heap()


TRIM_EVERY = 8 << 20
"""Bytes of constants shared (their program copy freed) between two ``malloc_trim``."""
_unreturned = [0]
