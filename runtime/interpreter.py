"""The functional Maia 200 machine model: runs a ``Program`` on numpy arrays.

Memory is real bytes: HBM one ``uint8`` array, CSRAM one array spanning all clusters,
TSRAM a ``(n_tiles, tsram_bytes)`` array (row t is tile t's private SRAM); each is cut
off after the highest buffer end of its level. Every instruction runs for all ``prod(grid)`` tiles in one
numpy call on strided views of those arrays: an access becomes a view of shape
``(*loop_trips, *grid, *block)``, indexed by the loop iteration at run time.

Before each run, every byte the run reads before writing it (runtime/liveness.py) is
filled with 0xFF (NaN for floats, -1 for ints), so a read of data that was never written
gives wrong numbers instead of a stale right answer. Views, decoded constants and the
memory arrays are built once per program and cached in ``program.runtime_cache``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from maiac.runtime import isa, tvp_math
from maiac.runtime.conversions import convert_input
from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.hazards import check_program
from maiac.runtime.isa import Access, Collective, Dma, Gather, Instr, Loop, MatMul, Vec
from maiac.runtime.limits import check_runnable
from maiac.runtime.liveness import first_reads
from maiac.runtime.memory import access_extent, np_dtype
from maiac.runtime.parallel import (
    BLAS_THREADED_MNK,
    MIN_SPLIT_BYTES,
    MIN_SPLIT_FLOPS,
    run_split,
    single_threaded_blas,
    split_axis,
)
from maiac.runtime.program import Program, _program_target, instr_label, validate_program
from maiac.runtime.quant_ops import count_nonfinite, decode_operand, quantize_rows
from maiac.runtime.tile_dedupe import shared_grid_axes

F32 = np.dtype(np.float32)
FLOAT_DTYPES = ("f32", "bf16", "f16", "f8e4m3", "f8e5m2")
INT_DTYPES = ("i64", "i32", "i8", "u8")
# Narrow float formats saturate on store (DESIGN §3: casts round to nearest even and
# saturate to the largest finite value); NaN stays NaN.
_SATURATE = {name: float(ml_dtypes.finfo(np_dtype(name)).max) for name in ("f8e4m3", "f8e5m2")}

Step = Callable[[tuple[int, ...]], None]


# --------------------------------------------------------------------------- erf / TVP fns

_TAYLOR = [(-1.0) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(14)]
_ERFC_NR = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
            -1.13520398, 1.48851587, -0.82215223, 0.17087277)


_BLOCK = 16384  # elements per cache-sized block of the float64 erf/gelu evaluation


def _blocked(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``fn`` (elementwise, float32 result) over ``x`` in blocks of ``_BLOCK`` elements.

    The float64 polynomial steps then stay in cache (about 2x faster on 1e5 elements);
    each block is one vectorized call and elementwise results do not depend on the
    blocking, so the bytes are the same as one call on the whole array.
    """
    x = np.asarray(x)
    if x.size <= 2 * _BLOCK:
        return fn(x)
    flat = x.reshape(-1)
    out = np.empty(flat.shape, np.float32)
    for lo in range(0, flat.size, _BLOCK):
        out[lo:lo + _BLOCK] = fn(flat[lo:lo + _BLOCK])
    return out.reshape(x.shape)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized erf, computed in float64, returned as float32; |error| < 3e-8.

    |x| < 1: Maclaurin series to 14 terms (truncation < 1e-10). |x| >= 1: erfc from the
    Chebyshev-fitted formula of Numerical Recipes (2nd ed., §6.2, ``erfcc``; fractional
    error < 1.2e-7), and erf = 1 - erfc, so |error| < 1.2e-7 * erfc(1) < 2e-8.
    Evaluated in place (Horner steps into one buffer): the same float64 operations in
    the same order as the textbook form, without a temporary per step.
    """
    x64 = np.array(x, dtype=np.float64)
    z = x64 * x64
    series = np.full_like(x64, _TAYLOR[-1])
    for c in reversed(_TAYLOR[:-1]):
        series *= z
        series += c
    series *= np.multiply(x64, 2.0 / math.sqrt(math.pi), out=z)  # (2/sqrt(pi) * x) * series
    ax = np.abs(x64, out=z)
    large = _erfc_nr(ax)
    np.subtract(1.0, large, out=large)
    np.copysign(large, x64, out=large)
    return np.where(ax < 1.0, series, large).astype(np.float32)


def _erfc_nr(ax: np.ndarray) -> np.ndarray:
    """erfc(|x|) for ``ax = |x|`` in float64; fractional error < 1.2e-7 (NR ``erfcc``).

    Returns a new array; ``ax`` is not modified.
    """
    t = np.multiply(ax, 0.5)
    t += 1.0
    np.divide(1.0, t, out=t)
    poly = np.full_like(ax, _ERFC_NR[-1])
    for c in reversed(_ERFC_NR[:-1]):
        poly *= t
        poly += c
    e = np.multiply(ax, ax)
    np.negative(e, out=e)
    e += poly
    np.exp(e, out=e)
    e *= t
    return e


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU ``0.5 x (1 + erf(x / sqrt 2))`` with relative error < 2e-7.

    ``1 + erf(u)`` is ``erfc(-u)`` for u < 0 and ``2 - erfc(u)`` otherwise, so one
    erfc evaluation (relative error 1.2e-7) gives it to full relative accuracy on both
    sides, also deep in the negative tail. In place, same operations as ``erf``.
    """
    x64 = np.array(x, dtype=np.float64)
    u = np.abs(x64)
    u *= 1.0 / math.sqrt(2.0)
    e = _erfc_nr(u)
    one_plus_erf = np.subtract(2.0, e, out=u)
    np.copyto(one_plus_erf, e, where=x64 < 0)
    # 0.5 * x * y, evaluated left to right as before: (0.5 * x) * y
    np.multiply(x64, 0.5, out=x64)
    x64 *= one_plus_erf
    return x64.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(x.dtype)


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (ONNX Div on integers)."""
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + fix


def _mean(x: np.ndarray) -> np.ndarray:
    """``x.mean(-1, keepdims=True)`` by the same two ufunc calls, without its Python wrapper."""
    s = np.add.reduce(x, -1, keepdims=True)
    return np.true_divide(s, np.intp(x.shape[-1]), out=s, casting="unsafe")


def _layernorm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = _mean(x)
    d = x - mean
    var = _mean(d * d)
    return d / np.sqrt(var + np.float32(eps)) * scale + bias


def _rmsnorm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    ms = _mean(x * x)
    return x / np.sqrt(ms + np.float32(eps)) * scale


def _exp_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``exp(a - b)``; where ``a == b == -inf`` (a fully masked row so far) it is 0, not NaN.

    The online-softmax step of flash attention (Dao et al. 2022, Alg. 1): both the
    rescale factor ``exp(m_old - m_new)`` and the probabilities ``exp(s - m_new)``.
    """
    d = a - b
    return np.exp(np.where(np.isnan(d) & np.isneginf(a), -np.inf, d)).astype(np.float32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE over the last axis: ``x * cos + concat(-x2, x1) * sin``."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([np.negative(x[..., half:]), x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    s = x - x.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


_SQRT_2_PI = np.float32(math.sqrt(2.0 / math.pi))

# fn -> (compute mode, function(args, attrs)). Mode "float": every input upcast to fp32;
# "num": fp32 if any input is a float, else integer arithmetic; "logic": inputs as bool;
# "cmp": like "num", result is bool.
_FNS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "copy": ("num", lambda x, at: x),
    "relu": ("num", lambda x, at: np.maximum(x, 0).astype(x.dtype)),
    "gelu": ("float", lambda x, at: _blocked(gelu, x)),
    "gelu_tanh": ("float", lambda x, at: np.float32(0.5) * x * (np.float32(1) + np.tanh(
        _SQRT_2_PI * (x + np.float32(0.044715) * x * x * x)))),
    "erf": ("float", lambda x, at: _blocked(erf, x)),
    "tanh": ("float", lambda x, at: np.tanh(x)),
    "sigmoid": ("float", lambda x, at: _sigmoid(x)),
    "silu": ("float", lambda x, at: x * _sigmoid(x)),
    "exp": ("float", lambda x, at: np.exp(x)),
    "log": ("float", lambda x, at: np.log(x)),
    "sqrt": ("float", lambda x, at: np.sqrt(x)),
    "rsqrt": ("float", lambda x, at: np.float32(1) / np.sqrt(x)),
    "reciprocal": ("float", lambda x, at: np.float32(1) / x),
    "neg": ("num", lambda x, at: np.negative(x)),
    "abs": ("num", lambda x, at: np.abs(x)),
    "cos": ("float", lambda x, at: np.cos(x)),
    "sin": ("float", lambda x, at: np.sin(x)),
    "floor": ("num", lambda x, at: np.floor(x) if x.dtype.kind == "f" else x),
    "ceil": ("num", lambda x, at: np.ceil(x) if x.dtype.kind == "f" else x),
    "not": ("logic", lambda x, at: np.logical_not(x)),
    "isnan": ("float", lambda x, at: np.isnan(x)),
    "sign": ("num", lambda x, at: np.sign(x)),
    "scale": ("float", lambda x, at: x * np.float32(at.get("scale", 1.0))),
    "add": ("num", lambda a, b, at: a + b),
    "sub": ("num", lambda a, b, at: a - b),
    "mul": ("num", lambda a, b, at: a * b),
    "div": ("num", lambda a, b, at: a / b if a.dtype.kind == "f" else _trunc_div(a, b)),
    "pow": ("float", lambda a, b, at: np.power(a, b)),
    "max": ("num", lambda a, b, at: np.maximum(a, b)),
    "min": ("num", lambda a, b, at: np.minimum(a, b)),
    "mod": ("num", lambda a, b, at: np.fmod(a, b) if at.get("fmod") else np.mod(a, b)),
    "equal": ("cmp", lambda a, b, at: a == b),
    "less": ("cmp", lambda a, b, at: a < b),
    "greater": ("cmp", lambda a, b, at: a > b),
    "less_equal": ("cmp", lambda a, b, at: a <= b),
    "greater_equal": ("cmp", lambda a, b, at: a >= b),
    "and": ("logic", lambda a, b, at: np.logical_and(a, b)),
    "or": ("logic", lambda a, b, at: np.logical_or(a, b)),
    "xor": ("logic", lambda a, b, at: np.logical_xor(a, b)),
    "exp_sub": ("float", lambda a, b, at: _exp_sub(a, b)),
    "where": ("where", lambda c, a, b, at: np.where(c, a, b)),
    "reduce_sum": ("num", lambda x, at: x.sum(-1, keepdims=True, dtype=x.dtype)),
    "reduce_mean": ("float", lambda x, at: _mean(x)),
    "reduce_max": ("num", lambda x, at: x.max(-1, keepdims=True)),
    "reduce_min": ("num", lambda x, at: x.min(-1, keepdims=True)),
    "softmax": ("float", lambda x, at: _softmax(x)),
    "log_softmax": ("float", lambda x, at: _log_softmax(x)),
    "layernorm": ("float", lambda x, s, b, at: _layernorm(x, s, b, at.get("eps", 1e-5))),
    "rmsnorm": ("float", lambda x, s, at: _rmsnorm(x, s, at.get("eps", 1e-5))),
    "quantize": ("float", lambda x, at: quantize_rows(x, at)),
    "rope": ("float", lambda x, c, s, at: _rope(x, c, s)),
    "causal_mask": ("float", lambda s, q, k, at: np.where(k > q, np.float32(-np.inf), s)),
}
_FNS.update(tvp_math.FNS)  # the op families' functions (round, cumsum, bit ops, ...)
assert set(_FNS) == set(isa.VEC_FNS), set(isa.VEC_FNS) ^ set(_FNS)


# Vec fns that are one numpy ufunc on fp32 operands (the _FNS lambda of the fn computes
# exactly this); with fp32 inputs and output they write into the output view directly.
_F32_UFUNCS: dict[str, np.ufunc] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum, "exp": np.exp, "tanh": np.tanh, "sqrt": np.sqrt,
    "neg": np.negative, "abs": np.abs, "log": np.log, "scale": np.multiply,
}


# Vec fns whose cost per element is well above a byte compare of their inputs: for
# these, tiles holding identical inputs (a broadcast) compute once (runtime/tile_dedupe.py).
_DEDUPE_MIN_ELEMENTS = 16384  # below this the compare's fixed cost outweighs the saving
_DEDUPE_FNS = frozenset({"quantize", "gelu", "gelu_tanh", "erf", "silu", "sigmoid", "tanh",
                         "softmax", "log_softmax", "layernorm", "rmsnorm", "exp_sub", "rope"})


def _caster(dtypes: list[str], mode: str) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Per input, how to bring a stored block to the compute type of ``mode``."""
    def ident(x: np.ndarray) -> np.ndarray:
        return x

    def to_f32(x: np.ndarray) -> np.ndarray:
        return x.astype(F32)

    def to_bool(x: np.ndarray) -> np.ndarray:
        return x.astype(np.bool_)

    if mode == "where":
        return [to_bool, *_caster(dtypes[1:], "num")]
    if mode == "logic":
        return [ident if d == "bool" else to_bool for d in dtypes]
    is_float = mode == "float" or any(d in FLOAT_DTYPES for d in dtypes)
    if is_float:
        return [ident if d == "f32" else to_f32 for d in dtypes]
    return [ident for _ in dtypes]


# --------------------------------------------------------------------------- the machine

class _Machine:
    """Memory arrays plus one compiled step per instruction, for one program."""

    def __init__(self, program: Program) -> None:
        validate_program(program, MachineError)
        # asynchronous programs: every DMA/compute conflict must be ordered by waits
        # (checked once per program, from addresses and waits alone)
        check_program(program)
        self.program = program
        self.target = _program_target(program, MachineError)
        # before any memory is allocated: a shape-only 70B program would ask for its HBM
        self.consts = [b for b in program.buffers if b.kind == "const"]
        missing = [b.name for b in self.consts if b.name not in program.constants]
        if missing:
            raise MaiacError(f"program has no data for constant {missing[0]!r} (and "
                             f"{len(missing) - 1} more): it is shape-only; it can be timed "
                             f"(maiac report, --trace) but not run")
        by_level: dict[str, list[Any]] = {lv: [] for lv in isa.LEVELS}
        for b in program.buffers:
            by_level[b.level].append(b)
        # Each level is allocated up to its highest buffer end (validate_program checked
        # the capacities), so memory and first-touch cost follow what the program uses.
        end = {lv: -(-max((b.addr + b.nbytes for b in bs), default=0) // 64) * 64 + 64
               for lv, bs in by_level.items()}
        self.mem = {
            "hbm": np.zeros(end["hbm"], np.uint8),
            "csram": np.zeros(end["csram"], np.uint8),
            "tsram": np.zeros((self.target.n_tiles, end["tsram"]), np.uint8),
        }
        self.vectorized_loops = 0
        self.blas_limit = False  # set when a per-tile GEMM is large enough to be threaded
        self._decode_cache = _DecodeCache()
        self.steps = [(instr_label(str(i), ins), self._compile(ins, str(i), ()))
                      for i, ins in enumerate(program.instructions)]
        # What reset() poisons: the bytes some run reads before writing them (exact, from
        # the access pattern; runtime/liveness.py, which uses the memory as its scratch).
        # Constants are written once, here, and again before each run only if an
        # instruction writes over them.
        self.poison, clobbered = first_reads(program, self.mem, self._independent)
        self.rewrite = [b for b in self.consts if b.name in clobbered]
        for b in self.consts:
            self._write_bytes(b.level, b.addr, program.constants[b.name])

    # -- memory ----------------------------------------------------------------
    def _write_bytes(self, level: str, addr: int, data: Any) -> None:
        raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        mem = self.mem[level]
        if level == "tsram":
            mem[:, addr:addr + raw.size] = raw
        else:
            mem[addr:addr + raw.size] = raw

    def reset(self) -> None:
        """Poison (0xFF) every byte a run reads before writing it, on every tile; rewrite
        constants the previous run wrote over."""
        for level, ranges in self.poison.items():
            mem = self.mem[level]
            for lo, hi in ranges:
                if level == "tsram":
                    mem[:, lo:hi] = 0xFF
                else:
                    mem[lo:hi] = 0xFF
        for b in self.rewrite:
            self._write_bytes(b.level, b.addr, self.program.constants[b.name])

    def read(self, level: str, addr: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of a contiguous tensor stored at ``addr`` (tile 0's copy for TSRAM)."""
        dt = np_dtype(dtype)
        n = math.prod(shape) * dt.itemsize
        mem = self.mem[level][0] if level == "tsram" else self.mem[level]
        return mem[addr:addr + n].view(dt).reshape(shape).copy()

    # -- views -----------------------------------------------------------------
    def view(self, acc: Access, grid: tuple[int, ...], trips: tuple[int, ...],
             rank: int | None = None) -> np.ndarray:
        """``acc`` as a strided view of shape ``(*trips, *grid, *block)``.

        ``rank`` left-pads the block with size-1 dims (numpy broadcasting against an
        operand of higher rank, e.g. a Vec bias row against a [rows, cols] block).
        """
        dt = np_dtype(acc.dtype)
        isz = dt.itemsize
        shape, strides = tuple(acc.shape), tuple(s * isz for s in acc.strides)
        if rank is not None and len(shape) < rank:
            pad = rank - len(shape)
            shape, strides = (1,) * pad + shape, (0,) * pad + strides
        mem = self.mem[acc.level]
        if acc.level == "tsram":
            row = mem.strides[0]
            gstr = tuple(s * row for s in isa.contiguous_strides(grid))
        else:
            gstr = tuple(s * isz for s in acc.tile_strides) or (0,) * len(grid)
        lstr = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
        return np.ndarray(trips + grid + shape, dt, buffer=mem, offset=acc.addr,
                          strides=lstr + gstr + strides)

    # -- compile instructions to steps -----------------------------------------
    def _compile(self, instr: Instr, path: str, trips: tuple[int, ...]) -> Step:
        if isinstance(instr, Loop):
            return self._loop(instr, path, trips)
        grid = tuple(instr.grid)
        if isinstance(instr, Collective):
            return self._collective(instr, path)
        if isinstance(instr, Dma):
            return self._dma(instr, grid, trips)
        if isinstance(instr, Gather):
            return self._gather(instr, path, grid, trips)
        if isinstance(instr, MatMul):
            return self._matmul(instr, grid, trips)
        return self._vec(instr, grid, trips)

    def _loop(self, loop: Loop, path: str, trips: tuple[int, ...]) -> Step:
        inner = trips + tuple(loop.trips)
        if len(loop.body) == 1 and self._independent(loop.body[0], trips, inner):
            # one numpy call over (*loop.trips, *grid, *block) instead of a Python loop
            self.vectorized_loops += 1
            return self._compile(loop.body[0], f"{path}.0", inner)
        body = [(instr_label(f"{path}.{k}", ins), self._compile(ins, f"{path}.{k}",
                                                                 trips + tuple(loop.trips)))
                for k, ins in enumerate(loop.body)]
        ranges = [range(t) for t in loop.trips]

        def step(it: tuple[int, ...]) -> None:
            for inner in itertools.product(*ranges):
                full = it + inner
                for label, sub in body:
                    try:
                        sub(full)
                    except MachineError:
                        raise
                    except Exception as err:  # numpy error inside a loop body
                        raise MachineError(f"{label} at iteration {full}: {err}") from err
        return step

    def _independent(self, instr: Instr, outer: tuple[int, ...],
                     inner: tuple[int, ...]) -> bool:
        """True if running every iteration of the innermost loop at once gives the same bytes.

        Holds when the written block never overlaps itself across iterations and tiles,
        and every read either is the identical access (in place: each iteration reads
        only what it alone writes) or does not touch the written bytes at all.
        """
        if isinstance(instr, Dma):
            reads, out = [instr.src], instr.dst
        elif isinstance(instr, Vec):
            reads, out = list(instr.ins), instr.out
        elif isinstance(instr, MatMul):
            reads, out = [instr.a, instr.b] + ([instr.c] if instr.accumulate else []), instr.c
            reads += [acc for _, acc in instr.scale_accesses()]
        else:
            return False
        grid = tuple(instr.grid)
        view = self.view(out, grid, inner)
        own = len(outer)
        if _may_self_overlap(view.shape[own:], view.strides[own:], view.itemsize):
            return False
        lo, hi = access_extent(out, grid, inner)
        for acc in reads:
            if acc == out:
                continue
            rlo, rhi = access_extent(acc, grid, inner)
            if acc.level == out.level and rlo < hi and lo < rhi:
                return False
        return True

    def _collective(self, instr: Collective, path: str) -> Step:
        """A group of one chip is a copy; larger groups need every chip's memory
        (runtime/multichip.py runs them between the steps of all chips)."""
        def step(it: tuple[int, ...]) -> None:
            if instr.chips != 1:
                raise MachineError(f"{instr_label(path, instr)}: a {instr.collective} over "
                                   f"{instr.chips} chips runs only in a multi-chip run "
                                   f"(maiac.runtime.multichip.run_chips)")
            from maiac.runtime.multichip import apply_collective

            apply_collective([instr], [self])
        return step

    def _dma(self, instr: Dma, grid: tuple[int, ...], trips: tuple[int, ...]) -> Step:
        src, dst = self.view(instr.src, grid, trips), self.view(instr.dst, grid, trips)
        store = _storer(instr.dst.dtype)
        if instr.src.dtype == instr.dst.dtype:
            # a byte copy: trailing dims contiguous on both sides move as one wide element
            pairs = _broadcast_copies(dst, src, len(trips), instr, grid)
            if pairs is not None:
                def step(it: tuple[int, ...]) -> None:
                    for d, s_ in pairs:
                        np.copyto(d, s_)
                return step
            dst, src = _as_rows(dst, src, len(trips))
            split = _dma_splitter(instr, dst, len(trips), len(grid))
            if split is None and not trips:
                def step(it: tuple[int, ...]) -> None:
                    np.copyto(dst, src)
            else:
                def step(it: tuple[int, ...]) -> None:
                    d = dst[it]
                    run_split(np.copyto, [d, src[it]], split and split(d, it))
        else:
            split = _dma_splitter(instr, dst, len(trips), len(grid))

            def step(it: tuple[int, ...]) -> None:
                d = dst[it]
                run_split(store, [d, src[it]], split and split(d, it))
        return step

    def _gather(self, instr: Gather, path: str, grid: tuple[int, ...],
                trips: tuple[int, ...]) -> Step:
        table = self.view(instr.table, grid, trips)
        idx = self.view(instr.indices, grid, trips)
        dst = self.view(instr.dst, grid, trips)
        store = _storer(instr.dst.dtype)
        rows = instr.table.shape[0]
        nd = len(grid) + len(instr.indices.shape)
        gidx = tuple(np.arange(g).reshape((1,) * k + (g,) + (1,) * (nd - k - 1))
                     for k, g in enumerate(grid))
        label = instr_label(path, instr)

        def step(it: tuple[int, ...]) -> None:
            ix = idx[it].astype(np.int64)
            ix = np.where(ix < 0, ix + rows, ix)
            if ix.size and (ix.min() < 0 or ix.max() >= rows):
                bad = ix[(ix < 0) | (ix >= rows)].flat[0]
                raise MachineError(f"{label}: gather index out of range: {bad} "
                                   f"(table has {rows} rows)")
            store(dst[it], table[it][(*gidx, ix)])
        return step

    def _matmul(self, instr: MatMul, grid: tuple[int, ...], trips: tuple[int, ...]) -> Step:
        (*_, rows, depth), cols = instr.logical_ab()[0], instr.c.shape[-1]
        if rows * depth * cols >= BLAS_THREADED_MNK:
            self.blas_limit = True
        if instr.a_fmt or instr.b_fmt:
            return self._qmatmul(instr, grid, trips)
        rank = len(instr.c.shape)
        a, b = self.view(instr.a, grid, trips, rank), self.view(instr.b, grid, trips, rank)
        c = self.view(instr.c, grid, trips)
        ca = instr.a.dtype != "f32"
        cb = instr.b.dtype != "f32"
        store = _storer(instr.c.dtype)
        acc = instr.accumulate
        split = _matmul_splitter(instr, len(trips), len(grid))
        if not (ca or cb) and instr.c.dtype == "f32":
            # fp32 throughout: the TTU result goes straight into the TSRAM view (numpy
            # buffers it if it overlaps an operand), the K-step partial sum likewise
            fn = _mm_acc if acc else _mm
        else:
            def fn(av: np.ndarray, bv: np.ndarray, cv: np.ndarray) -> None:
                r = np.matmul(av.astype(F32) if ca else av, bv.astype(F32) if cb else bv)
                if acc:
                    r += cv
                store(cv, r)

        if c.size * 2 * instr.logical_ab()[0][-1] < MIN_SPLIT_FLOPS:
            def step(it: tuple[int, ...]) -> None:
                fn(a[it], b[it], c[it])
            return step

        def step(it: tuple[int, ...]) -> None:
            cv = c[it]
            run_split(fn, [a[it], b[it], cv], split(cv, it))
        return step

    def _qmatmul(self, instr: MatMul, grid: tuple[int, ...], trips: tuple[int, ...]) -> Step:
        """A matmul with quantized operands: decode blocks to fp32 (runtime/quant_ops.py,
        bit-exact with formats.dequantize), multiply, accumulate in fp32."""
        rank = len(instr.c.shape)
        c = self.view(instr.c, grid, trips)
        store = _storer(instr.c.dtype)
        acc = instr.accumulate
        k = instr.logical_ab()[0][-1]
        n = instr.c.shape[-1]

        def operand(x: Access, fmt: str, sc: Access | None, ts: float | None, n_el: int,
                    k_axis: int, cached: bool) -> Callable[[tuple[int, ...]], np.ndarray]:
            v = self.view(x, grid, trips, rank)
            if not fmt:
                return lambda it: v[it].astype(F32, copy=False)
            sv = self.view(sc, grid, trips, rank) if sc is not None else None

            def decode(it: tuple[int, ...]) -> np.ndarray:
                raw, s = v[it], None if sv is None else sv[it]
                # tiles a DMA broadcast to hold the same bytes: decode those once
                same = None if raw.size < _DEDUPE_MIN_ELEMENTS else shared_grid_axes(
                    [raw] if s is None else [raw, s], len(trips) - len(it), len(grid))
                if same is not None:
                    raw, s = raw[same], None if s is None else s[same]
                return decode_operand(raw, fmt, n_el, s, k_axis, ts)
            return self._decode_cache.wrap(v, sv, decode) if cached else decode

        get_a = operand(instr.a, instr.a_fmt, instr.a_scale, instr.a_tensor_scale, k, -1,
                        cached=False)
        # the weight side: packed constants the program DMAs into TSRAM
        get_b = operand(instr.b, instr.b_fmt, instr.b_scale, instr.b_tensor_scale, n, -2,
                        cached=True)

        split = _matmul_splitter(instr, len(trips), len(grid))
        if instr.c.dtype == "f32":  # straight into the TSRAM view, as in _matmul
            fn = _mm_acc if acc else _mm
        else:
            def fn(av: np.ndarray, bv: np.ndarray, cv: np.ndarray) -> None:
                r = np.matmul(av, bv)
                if acc:
                    r += cv
                store(cv, r)

        def step(it: tuple[int, ...]) -> None:
            cv = c[it]
            run_split(fn, [get_a(it), get_b(it), cv], split(cv, it))
        return step

    def _vec(self, instr: Vec, grid: tuple[int, ...], trips: tuple[int, ...]) -> Step:
        mode, fn = _FNS[instr.fn]
        rank = len(instr.out.shape)
        ins = [self.view(a, grid, trips, rank) for a in instr.ins]
        out = self.view(instr.out, grid, trips)
        casts = _caster([a.dtype for a in instr.ins], "num" if mode == "cmp" else mode)
        store = _storer(instr.out.dtype)
        attrs = dict(instr.attrs)
        ufunc = _F32_UFUNCS.get(instr.fn)
        if ufunc is not None and instr.out.dtype == "f32" and all(
                a.dtype == "f32" for a in instr.ins):
            # the same fp32 ufunc the lambda would call, written straight into the view
            extra = (np.float32(attrs.get("scale", 1.0)),) if instr.fn == "scale" else ()
            if not trips:
                args = (*ins, *extra)

                def step(it: tuple[int, ...]) -> None:
                    ufunc(*args, out=out)
            else:
                def step(it: tuple[int, ...]) -> None:
                    ufunc(*[v[it] for v in ins], *extra, out=out[it])
            return step
        if instr.fn in _DEDUPE_FNS and math.prod(grid) > 1:
            # costly per element: compute once per group of tiles holding the same bytes
            n_trips, n_grid = len(trips), len(grid)

            def step(it: tuple[int, ...]) -> None:
                xs = [v[it] for v in ins]
                same = None if xs[0].size < _DEDUPE_MIN_ELEMENTS else shared_grid_axes(
                    xs, n_trips - len(it), n_grid)
                if same is not None:
                    xs = [x[same] for x in xs]
                store(out[it], fn(*[c(x) for x, c in zip(xs, casts, strict=True)], attrs))
        elif len(ins) == 1:
            (x,), (cx,) = ins, casts

            def step(it: tuple[int, ...]) -> None:
                store(out[it], fn(cx(x[it]), attrs))
        else:
            pairs = list(zip(ins, casts, strict=True))

            def step(it: tuple[int, ...]) -> None:
                store(out[it], fn(*[c(v[it]) for v, c in pairs], attrs))
        return step


def _mm(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.matmul(a, b, out=c)


def _mm_acc(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.add(np.matmul(a, b), c, out=c)


Splitter = Callable[[np.ndarray, tuple[int, ...]], int | None]


def _matmul_splitter(instr: MatMul, n_trips: int, n_grid: int) -> Splitter:
    """The grid axis to split a matmul call on (runtime/parallel.py), None if too small.

    Compute touches only each tile's own TSRAM, so chunks of tiles are disjoint.
    """
    flops_per_out = 2 * instr.logical_ab()[0][-1]

    def split(cv: np.ndarray, it: tuple[int, ...]) -> int | None:
        if cv.size * flops_per_out < MIN_SPLIT_FLOPS:
            return None
        return split_axis(cv.shape, n_trips - len(it), n_grid)
    return split


def _dma_splitter(instr: Dma, dst: np.ndarray, n_trips: int, n_grid: int) -> Splitter | None:
    """How to split a DMA over tiles, or None: only DMAs into TSRAM (tiles own disjoint
    memory there) from another level (so no chunk reads what another writes), whose
    destination has no byte written twice, and only along axes that are still grid axes
    after ``_as_rows`` fused the contiguous tail."""
    if instr.dst.level != "tsram" or instr.src.level == "tsram" or dst.nbytes < MIN_SPLIT_BYTES:
        return None
    if _may_self_overlap(dst.shape[n_trips:], dst.strides[n_trips:], dst.itemsize):
        return None
    kept = min(n_grid, dst.ndim - n_trips - 1) if dst.dtype.kind == "V" else n_grid

    def split(dv: np.ndarray, it: tuple[int, ...]) -> int | None:
        if dv.nbytes < MIN_SPLIT_BYTES:
            return None
        return split_axis(dv.shape, n_trips - len(it), kept)
    return split


class _DecodeCache:
    """Decoded fp32 values of quantized matmul weight blocks, reused while their bytes stay.

    DESIGN §2 allows decoding constant weights once per program. Rather than trusting
    that a TSRAM block holds a constant, each entry keeps a copy of the packed codes and
    scales it was decoded from and is used only when the TSRAM bytes still equal them
    (one byte compare, far cheaper than the decode), so the result is always the decode
    of what is in memory now. An operand whose bytes change between runs twice stops
    being cached; the cache holds at most ``limit`` bytes.
    """

    def __init__(self, limit: int = 512 << 20) -> None:
        self.limit = limit
        self.used = 0
        self.hits = 0

    def wrap(self, raw: np.ndarray, scales: np.ndarray | None,
             decode: Callable[[tuple[int, ...]], np.ndarray]
             ) -> Callable[[tuple[int, ...]], np.ndarray]:
        """``decode`` with a per-iteration cache validated against ``raw`` / ``scales``."""
        entries: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
        misses = [0]

        def get(it: tuple[int, ...]) -> np.ndarray:
            rv = raw[it]
            sv = None if scales is None else scales[it]
            hit = entries.get(it)
            if hit is not None and np.array_equal(hit[0], rv) and (
                    sv is None or np.array_equal(hit[1], sv)):
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


def _broadcast_copies(dst: np.ndarray, src: np.ndarray, first: int, instr: Dma,
                      grid: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """A transposing (element-strided) DMA into TSRAM whose source block is the same for
    every tile along some grid axes (tile stride 0), as a list of (dst, src) copies: the
    strided gather once, into the tiles at index 0 of those axes, then whole contiguous
    blocks from their TSRAM to the other tiles'. Every tile's TSRAM still receives every
    byte of its block. None when that does not apply (a loop, no broadcast axis, rows
    that already copy as wide elements, or destination overlapping the source)."""
    if first or instr.dst.level != "tsram" or instr.src.level == "tsram" or dst.size == 0:
        return None
    ts = tuple(instr.src.tile_strides) or (0,) * len(grid)
    axes = [g for g, (n, st) in enumerate(zip(grid, ts, strict=True)) if n > 1 and st == 0]
    if not axes or _as_rows(dst, src, 0)[0].itemsize >= 64 or np.shares_memory(dst, src):
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
    pairs = [(sub(head), src[tuple(head)])]
    for j, g in enumerate(axes):
        sel = list(full)
        for h in axes[j + 1:]:
            sel[h] = slice(0, 1)
        to, frm = list(sel), list(sel)
        to[g], frm[g] = slice(1, None), slice(0, 1)
        pairs.append(_as_rows(sub(to), sub(frm, g, grid[g] - 1), 0))
    return pairs


def _contiguous_tail(v: np.ndarray, first: int) -> int:
    """Smallest axis ``k >= first`` such that axes ``k..`` of ``v`` are one contiguous run."""
    expect = v.itemsize
    k = v.ndim
    while k > first and (v.shape[k - 1] == 1 or v.strides[k - 1] == expect):
        expect *= v.shape[k - 1]
        k -= 1
    return k


def _as_rows(dst: np.ndarray, src: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of the same bytes with the trailing axes that are contiguous in both
    ``dst`` and ``src`` fused into one ``void`` element (a copy of it is a memcpy), so
    numpy's copy loop runs over rows instead of single elements. Axes before
    ``first`` (loop iterations) are kept."""
    k = max(_contiguous_tail(dst, first), _contiguous_tail(src, first))
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


def _may_self_overlap(shape: tuple[int, ...], strides: tuple[int, ...], isz: int) -> bool:
    """Conservative: False only if no two elements of the strided view share a byte."""
    reach = isz
    for stride, n in sorted((abs(s), n) for n, s in zip(shape, strides, strict=True) if n > 1):
        if stride < reach:
            return True
        reach += (n - 1) * stride
    return False


def _storer(dtype: str) -> Callable[[np.ndarray, np.ndarray], None]:
    """How to store a computed block into a ``dtype`` view (round; saturate narrow floats)."""
    if dtype in _SATURATE:
        lim = _SATURATE[dtype]

        def store(dst: np.ndarray, value: np.ndarray) -> None:
            v = np.asarray(value)
            if v.dtype != F32:
                v = v.astype(F32)
            np.copyto(dst, np.clip(v, -lim, lim), casting="unsafe")
        return store

    def plain(dst: np.ndarray, value: np.ndarray) -> None:
        np.copyto(dst, value, casting="unsafe")
    return plain


def _machine(program: Program) -> _Machine:
    """The cached machine of ``program`` (rebuilt if its lists were replaced or resized)."""
    key = (id(program.instructions), len(program.instructions), id(program.buffers),
           len(program.buffers), id(program.constants), len(program.constants))
    cache = program.runtime_cache
    if cache.get("machine_key") != key:
        cache.pop("machine", None)
        check_runnable(program)  # host memory and run length, before allocating
        cache["machine"] = _Machine(program)
        cache["machine_key"] = key
    return cache["machine"]


def _check_inputs(program: Program, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inputs converted to their spec dtype; MaiacError naming a missing/bad input."""
    expected = {s.name: s for s in program.inputs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise MaiacError(f"unknown input {unknown[0]!r}; the program takes "
                         f"{', '.join(expected) or 'no inputs'}")
    out = {}
    for name, spec in expected.items():
        want = f"shape {list(spec.shape)} dtype {spec.dtype}"
        if name not in inputs:
            raise MaiacError(f"missing input {name!r} ({want})")
        arr = np.asarray(inputs[name])
        if tuple(arr.shape) != tuple(spec.shape):
            raise MaiacError(f"input {name!r} has shape {list(arr.shape)}, expected {want}")
        arr = convert_input(name, arr, np_dtype(spec.dtype), spec.dtype)
        out[name] = np.ascontiguousarray(arr)
    return out


def run_program(program: Program, inputs: dict[str, np.ndarray], *,
                trace: str | os.PathLike[str] | list[dict[str, Any]] | None = None,
                stats: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run ``program`` on ``inputs`` (name -> array) and return its outputs (name -> array).

    ``trace``: a path writes the timing model's Chrome trace of the program there; a list
    receives one ``{"index", "op", "kind", "wall_s"}`` record per top-level instruction
    (measured interpreter time, for profiling the model itself). ``stats``: a dict that
    receives ``nonfinite_quantized``, the NaN/Inf values TVP quantize rows encoded.
    """
    machine = _machine(program)
    arrays = _check_inputs(program, inputs)
    machine.reset()
    for spec in program.inputs:
        b = program.buffer(spec.buffer)
        machine._write_bytes(b.level, b.addr, arrays[spec.name])
    records = trace if isinstance(trace, list) else None
    with (np.errstate(all="ignore"), single_threaded_blas(machine.blas_limit),
          count_nonfinite() as nonfinite):
        i = 0
        try:
            for i, (_, step) in enumerate(machine.steps):
                t0 = time.perf_counter() if records is not None else 0.0
                step(())
                if records is not None:
                    ins = program.instructions[i]
                    records.append({"index": i, "op": ins.op, "kind": ins.kind,
                                    "wall_s": time.perf_counter() - t0})
        except MachineError:
            raise
        except Exception as err:
            raise MachineError(f"{machine.steps[i][0]}: {type(err).__name__}: {err}") from err
    if stats is not None:
        stats["nonfinite_quantized"] = nonfinite[0]
    result = {}
    for spec in program.outputs:
        b = program.buffer(spec.buffer)
        result[spec.name] = machine.read(b.level, b.addr, spec.dtype, tuple(spec.shape))
    if trace is not None and records is None:
        from maiac.runtime.timing import simulate
        from maiac.runtime.trace import write_chrome_trace
        write_chrome_trace(simulate(program), trace)
    return result
