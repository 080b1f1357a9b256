"""Shared pieces of the tilers: job grids, their split over tiles and loops, accesses.

A tiled op is a grid of *jobs* (one block of work each). ``split_jobs`` spreads the job
grid over the machine's tiles (spatial, one SPMD instruction covers them) and loop
iterations (temporal). A job coordinate ``c_j = spatial_j * loops_j + loop_j``, so an
operand that moves ``step_j`` elements per job along dim j has tile stride
``step_j * loops_j`` and loop stride ``step_j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from maiac.ir import maia
from maiac.runtime.isa import contiguous_strides
from maiac.runtime.memory import itemsize
from maiac.runtime.timing import ttu_format_key

ALIGN = 64  # bytes; every buffer and scratch block starts on this boundary


def align(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


@cache
def divisors(n: int) -> tuple[int, ...]:
    """All divisors of ``n`` in increasing order."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


@dataclass(frozen=True)
class JobSplit:
    """How a job grid runs: ``spatial[j] * loops[j] == extents[j]`` for every dim."""

    extents: tuple[int, ...]
    spatial: tuple[int, ...]
    loops: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        """The instruction grid: the spatial factors > 1 (or (1,))."""
        return tuple(s for s in self.spatial if s > 1) or (1,)

    @property
    def trips(self) -> tuple[int, ...]:
        return tuple(n for n in self.loops if n > 1)

    @property
    def n_tiles(self) -> int:
        out = 1
        for s in self.spatial:
            out *= s
        return out

    def tile_strides(self, steps: Sequence[int]) -> tuple[int, ...]:
        strides = tuple(st * lp for st, sp, lp in zip(steps, self.spatial, self.loops, strict=True)
                        if sp > 1)
        return strides or (0,)

    def loop_strides(self, steps: Sequence[int]) -> tuple[int, ...]:
        return tuple(st for st, lp in zip(steps, self.loops, strict=True) if lp > 1)


def split_jobs(extents: Sequence[int], n_tiles: int) -> JobSplit:
    """Spread a job grid over ``n_tiles``: outer dims first, each by its largest divisor
    that still fits the tiles left; the rest of each dim becomes loop iterations."""
    return _split_jobs(tuple(extents), n_tiles)


@lru_cache(maxsize=1 << 16)  # the block searches ask for a few grids 10^4 times a layer
def _split_jobs(extents: tuple[int, ...], n_tiles: int) -> JobSplit:
    left = n_tiles
    spatial = []
    for extent in extents:
        s = max(d for d in divisors(extent) if d <= left)
        spatial.append(s)
        left //= s
    loops = tuple(e // s for e, s in zip(extents, spatial, strict=True))
    return JobSplit(tuple(extents), tuple(spatial), loops)


@dataclass
class Access:
    """A block of buffer ``buf`` (before memory planning), as a plain dict for the IR."""

    buf: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    off: int = 0
    ts: tuple[int, ...] = ()
    ls: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"buf": self.buf, "off": self.off, "dtype": self.dtype, "shape": list(self.shape),
                "strides": list(self.strides), "ts": list(self.ts), "ls": list(self.ls)}


@dataclass
class Kernel:
    """What a tiler produces for one op: scratch buffers and instruction ops."""

    op: str
    kind: str
    uid: str = ""  # unique among kernels (several kernels may share a source op)
    flops: int = 0
    scratch: list[tuple[str, int]] = field(default_factory=list)  # (name, nbytes)
    body: list[Any] = field(default_factory=list)

    def scratch_buffer(self, name: str, dtype: str, shape: Sequence[int]) -> str:
        full = f"{self.uid or self.op}/{name}"
        nbytes = itemsize(dtype)
        for d in shape:
            nbytes *= d
        self.scratch.append((full, align(nbytes)))
        return full

    def build(self) -> maia.KernelOp:
        buffers = [maia.instruction(maia.BufferOp, sym=name, level="tsram", nbytes=nbytes,
                                    kind="scratch") for name, nbytes in self.scratch]
        return maia.KernelOp.create(
            attributes={k: maia.to_attr(v) for k, v in
                        {"op": self.op, "kind": self.kind, "flops": int(self.flops)}.items()},
            regions=[maia.region_of(buffers + self.body)])


def dma(src: Access, dst: Access, grid: Sequence[int], queue: int = 0) -> Any:
    return maia.instruction(maia.DmaOp, src=src.to_dict(), dst=dst.to_dict(), grid=list(grid),
                            queue=queue)


def vec(fn: str, ins: Sequence[Access], out: Access, grid: Sequence[int], **params: Any) -> Any:
    return maia.instruction(maia.VecOp, fn=fn, ins=[a.to_dict() for a in ins], out=out.to_dict(),
                            grid=list(grid), params=params or None)


def at_least_one(x: Access, scratch: Access, grid: Sequence[int]) -> list[Any]:
    """``x = max(x, 1)``; ``scratch`` (x's shape) gets the ones, ``exp(x - x)`` (x finite).

    The softmax denominator of an attention with ``empty_rows = "zero"``
    (passes/fuse_attention.py): a row with no visible key has ``l = 0`` and ``O = 0``,
    so ``O / max(l, 1)`` is 0 instead of 0/0; every other row has ``l >= 1`` (its max
    term is ``exp(0) = 1``) and is divided by its own ``l``.
    """
    return [vec("exp_sub", [x, x], scratch, grid), vec("max", [x, scratch], x, grid)]


@dataclass(frozen=True)
class SoftmaxState:
    """The TSRAM blocks of an online softmax (FlashAttention, Dao et al. 2022, Alg. 1):
    the running max ``m`` (``m_new`` after this block), this block's max and rescale,
    the denominator ``l``, this block's row sum, and the output ``o``."""

    m: Access
    m_new: Access
    m_blk: Access
    alpha: Access
    l_sum: Access
    r_sum: Access
    o: Access


def online_softmax(st: SoftmaxState, s: Access, p: Access, v: Access, grid: Sequence[int],
                   fmt: str, first: bool) -> list[Any]:
    """The online-softmax update of one key block of scores ``s`` and ``o (+)= P v``::

        m' = max(m, rowmax s); a = exp(m - m'); P = exp(s - m')
        l  = a l + rowsum P;  o = a o + P v         (the first block: m, l, o from it)

    ``p`` takes P (in the TTU's ``fmt``); the new max lands in ``st.m_new``."""
    if first:
        return [vec("reduce_max", [s], st.m_new, grid),
                vec("exp_sub", [s, st.m_new], p, grid),
                vec("reduce_sum", [p], st.l_sum, grid),
                mm(p, v, st.o, grid, accumulate=False, fmt=fmt)]
    return [vec("reduce_max", [s], st.m_blk, grid),
            vec("max", [st.m, st.m_blk], st.m_new, grid),
            vec("exp_sub", [st.m, st.m_new], st.alpha, grid),
            vec("exp_sub", [s, st.m_new], p, grid),
            vec("reduce_sum", [p], st.r_sum, grid),
            vec("mul", [st.l_sum, st.alpha], st.l_sum, grid),
            vec("add", [st.l_sum, st.r_sum], st.l_sum, grid),
            vec("mul", [st.o, st.alpha], st.o, grid),
            mm(p, v, st.o, grid, accumulate=True, fmt=fmt)]


def mm(a: Access, b: Access, c: Access, grid: Sequence[int], accumulate: bool,
       fmt: str = "f32", **quant: Any) -> Any:
    """A TTU matmul; ``quant``: isa.MatMul's quantized-operand fields (None ones dropped)."""
    return maia.instruction(maia.MmOp, a=a.to_dict(), b=b.to_dict(), c=c.to_dict(),
                            grid=list(grid), accumulate=accumulate, fmt=fmt, **quant)


def loop(trips: Sequence[int], body: list[Any]) -> list[Any]:
    """``body`` inside a loop over ``trips`` (no loop when there are no trips)."""
    if not trips:
        return body
    return [maia.LoopOp.create(attributes={"trips": maia.to_attr(list(trips))},
                               regions=[maia.region_of(body)])]


def long_short(ordered: Sequence[Any]) -> list[Any]:
    """``ordered`` (longest first) as longest, shortest, second longest, second shortest,
    ...: each short job of a straight-line stream runs between two long ones."""
    rest, out = list(ordered), []
    while rest:
        out.append(rest.pop(0))
        if rest:
            out.append(rest.pop())
    return out


def contiguous(shape: Sequence[int]) -> tuple[int, ...]:
    return contiguous_strides(tuple(shape))


def compact_strides(shape: Sequence[int], broadcast: Sequence[bool]) -> tuple[int, ...]:
    """Row-major strides of ``shape`` with broadcast dims collapsed to stride 0."""
    unique = [1 if b else d for d, b in zip(shape, broadcast, strict=True)]
    strides = contiguous(unique)
    return tuple(0 if b else s for s, b in zip(strides, broadcast, strict=True))


@dataclass(frozen=True)
class Tensor:
    """A tensor value as the tilers see it: contiguous, ``off`` elements into ``buf``."""

    buf: str
    dtype: str
    shape: tuple[int, ...]
    off: int = 0

    @property
    def size(self) -> int:
        out = 1
        for d in self.shape:
            out *= d
        return out

    @property
    def nbytes(self) -> int:
        return self.size * itemsize(self.dtype)


@dataclass(frozen=True)
class Budget:
    """What a tiler may use: tiles, TSRAM bytes per tile, and rates for its cost model."""

    n_tiles: int
    tsram_bytes: int
    tile_flops: float  # TTU fp32-equivalent flop/s of one tile
    tile_bw: float  # bytes/s one tile can stream from HBM when all tiles stream
    csram_bw: float = 0.0  # aggregate bytes/s between CSRAM and the tiles (0: not modeled)
    csram_bytes: int = 0  # CSRAM of all clusters (where plan-memory puts activations)
    tile_noc_bw: float = 0.0  # bytes/s of the NoC into one tile (0: tile_bw)
    instr_overhead_s: float = 1e-7
    dma_latency_s: float = 5e-7  # fixed cost of one DMA instruction
    tile_vec: float = 0.0  # TVP op/s of one tile (0: not modeled)
    fmt_speedup: tuple[tuple[str, float], ...] = ()  # TTU format key -> peak / f32 peak
    fixed_block: int = 0  # > 0: naive tiling, blocks of this size (no cost model)
    native_m: int = 1  # the TTU's native block rows / columns (32 x K x 32 on maia200)
    native_n: int = 1
    native_ks: tuple[tuple[str, int], ...] = ()  # TTU format key -> native block depth K

    def native_k(self, fmt: str) -> int:
        """The native block depth of matmul format ``fmt`` (1 when unknown)."""
        return dict(self.native_ks).get(ttu_format_key(fmt), 1)


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides (elements) of a contiguous ``shape`` read in ``out_shape`` coordinates."""
    pad = len(out_shape) - len(shape)
    own = contiguous(shape)
    strides = []
    for i, extent in enumerate(out_shape):
        j = i - pad
        strides.append(0 if j < 0 or (shape[j] == 1 and extent != 1) else own[j])
    return tuple(strides)


def merge_dims(shape: Sequence[int], strides: Sequence[Sequence[int]],
               keep_last: bool = False) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Fuse adjacent dims that every operand walks contiguously (fewer, bigger dims)."""
    dims = [[d] for d in shape]
    out_shape = [shape[0]] if shape else []
    out_strides = [[s[0]] for s in strides] if shape else [[] for _ in strides]
    for i in range(1, len(shape)):
        last_pair = keep_last and i == len(shape) - 1
        mergeable = not last_pair and all(s[i - 1] == s[i] * shape[i] for s in strides)
        if mergeable:
            out_shape[-1] *= shape[i]
            for acc, s in zip(out_strides, strides, strict=True):
                acc[-1] = s[i]
        else:
            out_shape.append(shape[i])
            for acc, s in zip(out_strides, strides, strict=True):
                acc.append(s[i])
    del dims
    return tuple(out_shape), [tuple(s) for s in out_strides]


def prefer(jobs: int, block_elems: int, n_tiles: int) -> tuple[int, int]:
    """Sort key for block candidates: enough jobs for every tile, then the biggest block."""
    return (min(jobs, n_tiles), block_elems)
