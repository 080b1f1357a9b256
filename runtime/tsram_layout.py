"""Where the interpreter keeps every tile's TSRAM bytes: one flat array, in segments.

Each tile has its own TSRAM (the same addresses on every tile). The program's TSRAM
accesses, each over all its loop iterations, and its TSRAM input, output and constant
buffers cover address intervals; intervals that overlap are joined into *segments*.
Segment ``s`` holds bytes ``[lo, hi)`` of every tile, tile after tile: byte ``a`` of tile
``t`` is at ``base + t * stride + (a - lo)`` (``stride`` is ``hi - lo`` rounded up to
the widest element accessed in it, ``base`` keeps every address's offset modulo 64, so
elements are as aligned as at their program address). Every access lies in one segment
(its extent is one of the joined intervals), so its view over a tile grid is a strided
view as before, with tile stride ``stride``. A block that is its whole segment (a small
kernel's buffer, not reused by the planner) is then one contiguous run over the tiles
of its grid: numpy runs an instruction on it as one flat loop (its fast path, about a
third of the cost of a 2-D iteration on a 16-tile view) and a DMA as one memcpy. A
program whose planner reuses TSRAM for everything has one segment: the row-per-tile
layout ``(tiles, bytes)``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from maiac.runtime.isa import Instr, Loop, Sync
from maiac.runtime.memory import access_extent, np_dtype

ALIGN = 64  # a segment's base keeps each address's offset modulo this


@dataclass(frozen=True)
class TsramLayout:
    """Segments ``[lo[s], hi[s])`` (sorted, disjoint) at ``base[s]``, tile stride ``stride[s]``."""

    n_tiles: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    base: tuple[int, ...]
    stride: tuple[int, ...]
    nbytes: int  # of the flat array

    def segment(self, lo: int, hi: int) -> int:
        """The segment holding bytes ``[lo, hi)``; ValueError if none holds all of them."""
        s = bisect.bisect_right(self.lo, lo) - 1
        if s < 0 or hi > self.hi[s] or (hi > lo and lo >= self.hi[s]):
            raise ValueError(f"TSRAM bytes [{lo:#x}, {hi:#x}) are in no single segment")
        return s

    def locate(self, addr: int, end: int | None = None) -> tuple[int, int]:
        """(offset of ``addr`` of tile 0 in the flat array, tile stride) for an access
        whose bytes on one tile span ``[addr, end)`` (default: one byte)."""
        s = self.segment(addr, addr + 1 if end is None else end)
        return self.base[s] + addr - self.lo[s], self.stride[s]

    def rows(self, mem: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Bytes ``[lo, hi)`` of every tile, ``(n_tiles, hi - lo)``, a view of ``mem``."""
        off, stride = self.locate(lo, hi)
        return np.ndarray((self.n_tiles, hi - lo), np.uint8, buffer=mem, offset=off,
                          strides=(stride, 1))

    def pieces(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """``[lo, hi)`` cut at segment bounds: the parts that lie in segments."""
        s = max(bisect.bisect_right(self.lo, lo) - 1, 0)
        while s < len(self.lo) and self.lo[s] < hi:
            a, b = max(lo, self.lo[s]), min(hi, self.hi[s])
            if a < b:
                yield a, b
            s += 1

    def addresses(self, pos: np.ndarray) -> np.ndarray:
        """Per-tile addresses of flat-array offsets ``pos`` (int64)."""
        if pos.size == 0:
            return pos
        s = np.searchsorted(np.asarray(self.base, np.int64), pos, side="right") - 1
        base, lo = np.asarray(self.base, np.int64)[s], np.asarray(self.lo, np.int64)[s]
        return lo + (pos - base) % np.asarray(self.stride, np.int64)[s]


def _leaves(body: list[Instr], trips: tuple[int, ...]
            ) -> Iterator[tuple[Instr, tuple[int, ...]]]:
    for ins in body:
        if isinstance(ins, Loop):
            yield from _leaves(ins.body, trips + tuple(ins.trips))
        elif not isinstance(ins, Sync):
            yield ins, trips


def tsram_layout(program: Any, n_tiles: int) -> TsramLayout:
    """The segments of ``program``'s TSRAM (see the module docstring)."""
    from maiac.runtime.liveness import _reads_writes  # liveness takes a layout

    spans: list[tuple[int, int, int]] = []  # (lo, hi, widest element)
    for ins, trips in _leaves(program.instructions, ()):
        reads, write = _reads_writes(ins)
        for acc in (*reads, write):
            if acc.level == "tsram" and math.prod(acc.shape) > 0:
                lo, hi = access_extent(acc, tuple(ins.grid), trips)
                spans.append((lo, hi, np_dtype(acc.dtype).itemsize))
    for b in program.buffers:
        if b.level == "tsram" and b.kind in ("input", "output", "const") and b.nbytes > 0:
            spans.append((b.addr, b.addr + b.nbytes, 1))
    spans.sort()
    merged: list[list[int]] = []
    for lo, hi, isz in spans:
        if merged and lo < merged[-1][1]:
            m = merged[-1]
            m[1], m[2] = max(m[1], hi), max(m[2], isz)
        else:
            merged.append([lo, hi, isz])
    los, his, bases, strides = [], [], [], []
    cursor = 0
    for lo, hi, isz in merged:
        stride = -(-(hi - lo) // isz) * isz
        base = cursor + (lo - cursor) % ALIGN
        los.append(lo)
        his.append(hi)
        bases.append(base)
        strides.append(stride)
        cursor = base + n_tiles * stride
    return TsramLayout(n_tiles, tuple(los), tuple(his), tuple(bases), tuple(strides),
                       -(-cursor // ALIGN) * ALIGN + ALIGN)
