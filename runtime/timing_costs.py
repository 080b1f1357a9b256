"""What one instruction costs in the timing model (runtime/timing.py schedules them).

* DMA / gather: ``max`` over the levels it touches of bytes / bandwidth, plus
  ``dma_latency_s``. HBM and CSRAM are shared levels (``hbm_bw``, ``csram_bw``); TSRAM
  and the NoC into the tiles scale with the tiles the instruction runs on
  (``tsram_bw``/``noc_bw`` x tiles / n_tiles). A stride-0 source (``tile_strides`` all
  zero) is read once and broadcast by the NoC. That caps one DMA's rate; the leaf also
  carries the seconds of the shared HBM, CSRAM and NoC bandwidth it needs (bytes /
  aggregate rate), which the scheduler books on one timeline per resource so that
  concurrent DMA queues share them.
* matmul: ``2*M*N*K*batch*tiles`` FLOPs / (``ttu_flops[fmt]`` x tiles / n_tiles) +
  ``instr_latency_s``, in whole native TTU blocks.
* vec: elements x ops-per-element (``VEC_OPS``, ASSUMED) / (``tvp_flops`` x tiles /
  n_tiles) + ``instr_latency_s``.
* collective: the network model's cost (runtime/network.py).

Each leaf also carries the byte ranges it reads and writes (``Footprint``, moving with
the loop iteration) for the scheduler's hazards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maiac.runtime import tvp_math
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import (
    POINT_TO_POINT,
    Access,
    Collective,
    Dma,
    Gather,
    Instr,
    MatMul,
    Scatter,
    Sync,
    Vec,
)
from maiac.runtime.memory import block_extent, distinct_bytes, itemsize, numel
from maiac.runtime.network import Network
from maiac.runtime.target import Target

# TVP operations per element (ASSUMED: transcendental functions as a short polynomial
# after range reduction; norms/softmax count their passes over the row).
VEC_OPS: dict[str, int] = {
    "copy": 1, "relu": 1, "gelu": 12, "gelu_tanh": 10, "erf": 10, "tanh": 8, "sigmoid": 8,
    "silu": 9, "exp": 6, "log": 6, "sqrt": 4, "rsqrt": 4, "reciprocal": 4, "neg": 1,
    "abs": 1, "cos": 8, "sin": 8, "floor": 1, "ceil": 1, "not": 1, "isnan": 1, "sign": 1,
    "add": 1, "sub": 1, "mul": 1, "div": 4, "pow": 12, "max": 1, "min": 1, "mod": 4,
    "equal": 1, "less": 1, "greater": 1, "less_equal": 1, "greater_equal": 1, "and": 1,
    "or": 1, "xor": 1, "where": 1, "reduce_sum": 1, "reduce_mean": 1, "reduce_max": 1,
    "reduce_min": 1, "softmax": 10, "log_softmax": 10, "layernorm": 8, "rmsnorm": 5,
    "scale": 1, "exp_sub": 7,
    # ASSUMED: |x|, block max, scale exponent, divide, round/saturate, pack
    "quantize": 6,
    "rope": 3,  # x*cos, rotated*sin (the sign flip is free), add
    "causal_mask": 2,  # compare, select
}
VEC_OPS.update(tvp_math.VEC_OPS)  # the op families' functions
ROW_INPUT_FNS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "quantize",
                 "reduce_prod")


def ttu_format_key(fmt: str) -> str:
    """The TTU format key of a MatMul ``fmt`` (fp8 for mixed fp8 x fp4 formats); the
    lower-cased name itself when it is none of the known ones."""
    f = fmt.lower()
    if f in ("fp4", "fp6", "fp8", "bf16", "f32"):
        return f
    if f in ("fp32", "float32"):
        return "f32"
    if f in ("f16", "fp16", "bfloat16"):
        return "bf16"
    if "fp8" in f or "f8" in f or "e4m3" in f or "e5m2" in f or "a8" in f:
        return "fp8"
    if "fp6" in f or "e2m3" in f or "e3m2" in f:
        return "fp6"
    if "fp4" in f or "e2m1" in f:
        return "fp4"
    return f


def ttu_format(fmt: str, target: Target) -> str:
    """The ``ttu_flops`` key a MatMul ``fmt`` runs at (fp8 for mixed fp8 x fp4 formats)."""
    f = fmt.lower()
    if f in target.ttu_flops:
        return f
    key = ttu_format_key(f)
    if key in target.ttu_flops:
        return key
    raise MaiacError(f"matmul format {fmt!r} has no TTU peak; known: "
                     f"{', '.join(target.ttu_flops)} (set ttu_macs.{fmt} to add one)")


@dataclass
class Footprint:
    """Bytes ``[lo, hi)`` of ``level`` at loop iteration 0, moving by ``loop_bytes``."""

    level: str
    lo: int
    hi: int
    loop_bytes: tuple[int, ...]

    def at(self, it: tuple[int, ...]) -> tuple[int, int]:
        off = sum(i * s for i, s in zip(it, self.loop_bytes, strict=False))
        return self.lo + off, self.hi + off

    def over(self, prefix: tuple[int, ...], trips: tuple[int, ...]) -> tuple[int, int]:
        """Range over every iteration of the loop dims after ``prefix``."""
        off = sum(i * s for i, s in zip(prefix, self.loop_bytes, strict=False))
        lo = hi = 0
        for n, s in zip(trips[len(prefix):], self.loop_bytes[len(prefix):], strict=False):
            lo += min(0, (n - 1) * s)
            hi += max(0, (n - 1) * s)
        return self.lo + off + lo, self.hi + off + hi


@dataclass
class Leaf:
    """A non-loop instruction with its precomputed cost and footprints."""

    path: str
    op: str
    kind: str
    engine: str
    dur: float
    flops: float
    fmt: str  # TTU format key for matmuls, "" otherwise
    hbm_bytes: float
    reads: list[Footprint]
    writes: list[Footprint]
    trips: tuple[int, ...]
    waits: tuple[tuple[str, int], ...] = ()  # (engine, pending), async programs only
    hbm_time: float = 0.0  # seconds of the shared HBM bandwidth this DMA needs
    csram_time: float = 0.0  # ... of the aggregate CSRAM bandwidth (csram_bw)
    noc_time: float = 0.0  # ... of the aggregate NoC bandwidth (noc_bw)
    csram_bytes: float = 0.0
    noc_bytes: float = 0.0
    moved_bytes: int = 0  # bytes transferred (DMA, collective) or operand bytes (compute)
    number_format: str = ""  # TTU format of a matmul, else the dtype it writes


def footprint(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> Footprint:
    lo, hi = block_extent(acc, grid)
    isz = itemsize(acc.dtype)
    ls = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
    return Footprint(acc.level, lo, hi, ls)


def noc_bytes(src: Access, dst: Access, src_b: float, dst_b: float) -> float:
    """Bytes a DMA moves over the NoC: into or out of the tiles (the TSRAM side), or
    between HBM and CSRAM."""
    levels = {src.level, dst.level}
    if "tsram" in levels and len(levels) == 2:
        return dst_b if dst.level == "tsram" else src_b
    if levels == {"hbm", "csram"}:
        return max(src_b, dst_b)
    return 0.0


def _dma_time(t: Target, src: Access, dst: Access, src_b: float, dst_b: float,
              tiles: int) -> float:
    frac = tiles / t.n_tiles

    def level_time(level: str, nbytes: float) -> float:
        bw = {"hbm": t.hbm_sustained_bw, "csram": t.csram_bw, "tsram": t.tsram_bw * frac}[level]
        return nbytes / bw

    times = [level_time(src.level, src_b), level_time(dst.level, dst_b)]
    # into or out of the tiles over their share of the NoC; HBM <-> CSRAM over all of it
    noc_bw = t.noc_bw * (frac if "tsram" in (src.level, dst.level) else 1.0)
    times.append(noc_bytes(src, dst, src_b, dst_b) / noc_bw)
    return max(times) + t.dma_latency_s


def _pad(x: int, granule: int) -> int:
    return -(-x // granule) * granule


def leaf_cost(instr: Instr, path: str, trips: tuple[int, ...], t: Target,
          net: Network | None = None) -> Leaf:
    grid = tuple(instr.grid)
    tiles = math.prod(grid)
    frac = tiles / t.n_tiles

    def fp(*accs: Access) -> list[Footprint]:
        return [footprint(a, grid, trips) for a in accs]

    flops = hbm = csram = noc = 0.0
    fmt = ""
    moved = 0
    number_format = ""
    if isinstance(instr, Dma | Gather | Scatter):
        engine = f"dma{instr.queue % t.dma_queues}"
        if isinstance(instr, Dma):
            src, dst = instr.src, instr.dst
            src_b, dst_b = distinct_bytes(src, grid), distinct_bytes(dst, grid)
            reads, writes = fp(src), fp(dst)
        elif isinstance(instr, Scatter):  # only the picked rows of the table are written
            src, dst = instr.src, instr.table
            src_b = distinct_bytes(src, grid)
            dst_b = src_b // itemsize(src.dtype) * itemsize(dst.dtype)
            reads, writes = fp(instr.src, instr.indices), fp(instr.table)
        else:
            src, dst = instr.table, instr.dst
            dst_b = distinct_bytes(dst, grid)
            src_b = dst_b // itemsize(dst.dtype) * itemsize(src.dtype)
            reads, writes = fp(instr.table, instr.indices), fp(dst)
        dur = _dma_time(t, src, dst, src_b, dst_b, tiles)
        moved, number_format = max(src_b, dst_b), dst.dtype
        hbm = (src_b if src.level == "hbm" else 0) + (dst_b if dst.level == "hbm" else 0)
        # counted like HBM: a CSRAM -> CSRAM copy reads and writes the shared banks
        csram = (src_b if src.level == "csram" else 0) + (dst_b if dst.level == "csram" else 0)
        noc = noc_bytes(src, dst, src_b, dst_b)
    elif isinstance(instr, Collective):
        # the network engine (runtime/network.py); HBM: read src, write dst, and for the
        # reductions read what the peers sent
        engine = "net"
        src_b, dst_b = distinct_bytes(instr.src, grid), distinct_bytes(instr.dst, grid)
        if instr.collective in POINT_TO_POINT:  # one block read (send) or written (recv)
            size = src_b
            dur, _ = (net or Network()).p2p_cost(float(size), instr.rank, instr.peer,
                                                 instr.chips)
            hbm = float(size) * (instr.src.level == "hbm")
            reads = fp(instr.src) if instr.collective == "send" else []
            writes = fp(instr.dst)
        else:
            size = {"all_gather": dst_b, "reduce_scatter": src_b}.get(instr.collective, src_b)
            dur, _ = (net or Network()).cost(instr.collective, float(size), instr.chips)
            received = size * (instr.chips - 1) / instr.chips * (
                2 if instr.collective == "all_reduce" else 1)
            hbm = ((src_b + (received if instr.collective != "all_gather" else 0))
                   * (instr.src.level == "hbm") + dst_b * (instr.dst.level == "hbm"))
            reads, writes = fp(instr.src), fp(instr.dst)
        moved, number_format = int(size), instr.dst.dtype
    elif isinstance(instr, MatMul):
        engine = "ttu"
        m, n = instr.c.shape[-2:]
        k = instr.logical_ab()[0][-1]
        flops = 2.0 * m * n * k * numel(instr.c.shape[:-2]) * tiles
        fmt = ttu_format(instr.fmt, t)
        # the TTU computes whole native 32 x K x 32 blocks: a partial block costs a whole one
        padded = (2.0 * _pad(m, t.ttu_block_m) * _pad(n, t.ttu_block_n)
                  * _pad(k, t.ttu_block_k(fmt)) * numel(instr.c.shape[:-2]) * tiles)
        dur = padded / (t.ttu_flops[fmt] * frac) + t.instr_latency_s
        reads = fp(instr.a, instr.b, *([instr.c] if instr.accumulate else []),
                   *(acc for _, acc in instr.scale_accesses()))
        writes = fp(instr.c)
        moved = sum(distinct_bytes(a, grid) for a in (instr.a, instr.b, instr.c))
        number_format = fmt
    elif isinstance(instr, Vec):
        engine = "tvp"
        shape = instr.ins[0].shape if instr.fn in ROW_INPUT_FNS else instr.out.shape
        flops = float(numel(shape) * tiles * VEC_OPS.get(instr.fn, 1))
        dur = flops / (t.tvp_flops * frac) + t.instr_latency_s
        reads, writes = fp(*instr.ins), fp(instr.out)
        moved = sum(distinct_bytes(a, grid) for a in (*instr.ins, instr.out))
        number_format = instr.out.dtype
    elif isinstance(instr, Sync):
        # a barrier: holds its engine until its waits hold, takes no time of its own
        # (ASSUMED: its issue overlaps the wait)
        engine, dur, reads, writes = instr.engine, 0.0, [], []
    else:
        raise MaiacError(f"instruction {path}: cannot time {type(instr).__name__}")
    return Leaf(path, instr.op, instr.kind, engine, dur, flops, fmt, float(hbm), reads,
                 writes, trips, tuple((instr.waits or {}).items()), hbm / t.hbm_sustained_bw,
                 float(csram) / t.csram_bw, float(noc) / t.noc_bw, float(csram), float(noc),
                 int(moved), number_format)
