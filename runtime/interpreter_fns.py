"""The TVP's functions for the interpreter (runtime/interpreter.py): erf/GELU, norms,
softmax, the Vec fn table and how a stored block is cast for compute and stored back.

Every function is vectorized numpy over a whole ``(*trips, *grid, *block)`` view.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from maiac.runtime import isa, tvp_math
from maiac.runtime.memory import strided_view
from maiac.runtime.narrow_store import NARROW_FLOAT_DTYPES, NARROW_INT_DTYPES, narrow_storer
from maiac.runtime.quant_ops import quantize_rows

F32 = np.dtype(np.float32)
FLOAT_DTYPES = ("f32", "bf16", "f16", *NARROW_FLOAT_DTYPES)
INT_DTYPES = ("i64", "i32", "i8", "u8")

_TAYLOR = [(-1.0) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(14)]
_ERFC_NR = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
            -1.13520398, 1.48851587, -0.82215223, 0.17087277)


_BLOCK = 16384  # elements per cache-sized block of the float64 erf/gelu evaluation


def _blocked(fn: Callable[..., np.ndarray], x: np.ndarray, out: np.ndarray | None = None
             ) -> np.ndarray:
    """``fn`` (elementwise, float32 result) over ``x`` in blocks of ``_BLOCK`` elements.

    The float64 polynomial steps then stay in cache (about 2x faster on 1e5 elements);
    each block is one vectorized call and elementwise results do not depend on the
    blocking, so the bytes are the same as one call on the whole array. With ``out``
    (fp32, x's shape; ``fn`` then takes ``out=`` and rounds its last float64 step into
    it) each block's result goes straight into ``out``'s block, unless ``out`` is not
    one contiguous run or overlaps ``x`` other than as ``x`` itself (then one
    temporary, copied in).
    """
    x = np.asarray(x)
    if x.size <= 2 * _BLOCK:
        return fn(x) if out is None else fn(x, out)
    flat = x.reshape(-1)
    if out is None:
        target = np.empty(flat.shape, np.float32)
    elif out.flags.c_contiguous and (not np.may_share_memory(out, flat) or (
            flat.dtype == out.dtype and flat.strides == (out.itemsize,) and
            flat.__array_interface__["data"][0] == out.__array_interface__["data"][0])):
        target = out.reshape(-1)
    else:
        np.copyto(out, _blocked(fn, x))
        return out
    for lo in range(0, flat.size, _BLOCK):
        block = flat[lo:lo + _BLOCK]
        if out is None:
            target[lo:lo + _BLOCK] = fn(block)
        else:  # each block read whole before its result is written (also in place)
            fn(block, target[lo:lo + _BLOCK])
    return target.reshape(x.shape) if out is None else out


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

    Returns a new array; ``ax`` is not modified. Horner's first step is ``t * c9``
    (not a ``c9``-filled buffer times ``t``) and ``-ax² + poly`` is ``poly - ax²``:
    both exact rewrites, so the bytes are those of the textbook form, two calls fewer.
    """
    t = np.multiply(ax, 0.5)
    t += 1.0
    np.divide(1.0, t, out=t)
    poly = np.multiply(t, _ERFC_NR[-1])
    poly += _ERFC_NR[-2]
    for c in reversed(_ERFC_NR[:-2]):
        poly *= t
        poly += c
    e = np.multiply(ax, ax)
    np.subtract(poly, e, out=e)
    np.exp(e, out=e)
    e *= t
    return e


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact (erf) GELU ``0.5 x (1 + erf(x / sqrt 2))`` with relative error < 2e-7.

    ``1 + erf(u)`` is ``erfc(-u)`` for u < 0 and ``2 - erfc(u)`` otherwise, so one
    erfc evaluation (relative error 1.2e-7) gives it to full relative accuracy on both
    sides, also deep in the negative tail. In place, same operations as ``erf``. With
    ``out`` (fp32, x's shape; may be x itself: x is read whole first) the last product
    is rounded to fp32 straight into it, as ``astype`` rounds it.
    """
    x64 = np.array(x, dtype=np.float64)
    u = np.abs(x64)
    u *= 1.0 / math.sqrt(2.0)
    e = _erfc_nr(u)
    # erfc(u) where x < 0, else 2 - erfc(u): |d - e| with d = 0 or 2 picks it without
    # a masked copy (3x slower on a random sign pattern); 0 - e = -e and 2 - e > 0 are
    # exact, so the bytes are those of the select.
    d = np.multiply(np.less(x64, 0.0), -2.0, out=u)
    d += 2.0
    one_plus_erf = np.subtract(d, e, out=u)
    np.abs(one_plus_erf, out=one_plus_erf)
    # 0.5 * x * y, evaluated left to right as before: (0.5 * x) * y
    np.multiply(x64, 0.5, out=x64)
    if out is not None:
        return np.multiply(x64, one_plus_erf, out=out, casting="same_kind")
    x64 *= one_plus_erf
    return x64.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """``0.5 * (tanh(0.5 * x) + 1)`` in x's dtype, each step in place in one buffer."""
    t = np.multiply(x, x.dtype.type(0.5))
    np.tanh(t, out=t)
    t += x.dtype.type(1.0)
    t *= x.dtype.type(0.5)
    return t


def _silu(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(x)
    return np.multiply(x, s, out=s) if s.shape == x.shape else x * s


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (ONNX Div on integers)."""
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + fix


def _mean(x: np.ndarray) -> np.ndarray:
    """``x.mean(-1, keepdims=True)`` by the same two ufunc calls, without its Python wrapper."""
    s = np.add.reduce(x, -1, keepdims=True)
    n = x.shape[-1]
    if s.dtype == F32 and n <= 1 << 24:
        # the fp32 division by n (exact in fp32): numpy divides an fp32 sum by an integer
        # in float64 and rounds to fp32, which gives the same bits (a float64 quotient
        # rounded to fp32 is correctly rounded: 53 >= 2 * 24 + 2, Figueroa 1995) at half
        # the cost of the casting loop
        return np.true_divide(s, np.float32(n), out=s)
    return np.true_divide(s, np.intp(n), out=s, casting="unsafe")


def _layernorm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float,
               out: np.ndarray | None = None) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * scale + bias``, the same fp32 steps in the same
    order, into one buffer where the shapes allow (a small block is mostly call cost):
    ``out`` if given (all shapes equal)."""
    d = np.subtract(x, _mean(x), out=out)
    var = _mean(np.multiply(d, d))
    var += np.float32(eps)
    np.sqrt(var, out=var)
    if not (scale.shape == bias.shape == d.shape):
        return d / var * scale + bias
    np.divide(d, var, out=d)
    d *= scale
    d += bias
    return d


def _rmsnorm(x: np.ndarray, scale: np.ndarray, eps: float,
             out: np.ndarray | None = None) -> np.ndarray:
    """``x / sqrt(mean(x * x) + eps) * scale`` (fp32), in place where the shapes allow
    (in ``out`` if given)."""
    ms = _mean(np.multiply(x, x))
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    r = np.divide(x, ms, out=out)
    if r.shape != scale.shape:
        return r * scale
    r *= scale
    return r


def _exp_sub(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(a - b)``; where ``a == b == -inf`` (a fully masked row so far) it is 0, not NaN.

    The online-softmax step of flash attention (Dao et al. 2022, Alg. 1): both the
    rescale factor ``exp(m_old - m_new)`` and the probabilities ``exp(s - m_new)``.
    """
    d = np.subtract(a, b)
    # a NaN of d where a is -inf needs b -inf or NaN there: a smallest b above -inf (not
    # NaN) rules that out with one reduction over b (a row's max: one value per row)
    if not np.minimum.reduce(b, axis=None, initial=np.inf) > -np.inf:
        nan = np.isnan(d)
        if nan.any():  # rare: only then look for -inf - -inf (exp(-inf) is exactly 0)
            nan &= a == -np.inf
            np.copyto(d, -np.inf, where=nan)
    if out is not None:  # fp32 operands: the exp straight into the output view
        return np.exp(d, out=out)
    np.exp(d, out=d)
    return d.astype(np.float32, copy=False)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE over the last axis: ``x * cos + concat(-x2, x1) * sin``."""
    half = x.shape[-1] // 2
    rotated = np.empty_like(x)
    # not np.negative(..., out=a strided view): numpy 2.4 writes wrong elements for some
    # such layouts (size-1 axes with odd strides)
    rotated[..., :x.shape[-1] - half] = np.negative(x[..., half:])
    rotated[..., x.shape[-1] - half:] = x[..., :half]
    r = np.multiply(x, cos)
    if not (r.shape == rotated.shape and sin.shape == x.shape):
        return r + rotated * sin
    rotated *= sin
    r += rotated
    return r


def _softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    e = np.subtract(x, np.maximum.reduce(x, -1, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= np.add.reduce(e, -1, keepdims=True)
    return e


def _log_softmax(x: np.ndarray) -> np.ndarray:
    s = x - x.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


_SQRT_2_PI = np.float32(math.sqrt(2.0 / math.pi))


def _gelu_tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` in fp32: the steps of the
    textbook expression, left to right, in two buffers (the second ``out`` if given)."""
    u = np.multiply(x, np.float32(0.044715))
    u *= x
    u *= x
    np.add(x, u, out=u)
    u *= _SQRT_2_PI
    np.tanh(u, out=u)
    u += np.float32(1)
    h = np.multiply(x, np.float32(0.5), out=out)
    h *= u
    return h

# fn -> (compute mode, function(args, attrs)). Mode "float": every input upcast to fp32;
# "num": fp32 if any input is a float, else integer arithmetic; "logic": inputs as bool;
# "cmp": like "num", result is bool.
FNS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "copy": ("num", lambda x, at: x),
    "relu": ("num", lambda x, at: np.maximum(x, 0).astype(x.dtype)),
    "gelu": ("float", lambda x, at: _blocked(gelu, x)),
    "gelu_tanh": ("float", lambda x, at: _gelu_tanh(x)),
    "erf": ("float", lambda x, at: _blocked(erf, x)),
    "tanh": ("float", lambda x, at: np.tanh(x)),
    "sigmoid": ("float", lambda x, at: _sigmoid(x)),
    "silu": ("float", lambda x, at: _silu(x)),
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
FNS.update(tvp_math.FNS)  # the op families' functions (round, cumsum, bit ops, ...)
assert set(FNS) == set(isa.VEC_FNS), set(isa.VEC_FNS) ^ set(FNS)


# Vec fns that are one numpy ufunc on fp32 operands (the FNS lambda of the fn computes
# exactly this); with fp32 inputs and output they write into the output view directly.
# Not "neg": numpy 2.4's np.negative into a strided ``out`` writes wrong elements for
# some layouts (size-1 axes with odd strides), so it computes into a new array first.
F32_UFUNCS: dict[str, np.ufunc] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum, "exp": np.exp, "tanh": np.tanh, "sqrt": np.sqrt,
    "abs": np.abs, "log": np.log, "scale": np.multiply,
}


# Vec fns that can write their fp32 result straight into the output view (``out``; of the
# inputs' shape, a reduction's with last extent 1): fn -> (function(out, *inputs, attrs),
# which overlap of ``out`` with the inputs it allows: "any" (every input is read before
# ``out`` is written), "same" (``out`` may be the first input's view itself: each element
# is read before it is written, and not after) or "none"). The same fp32 steps as the FNS
# entry, without the final copy.
INTO_FNS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "layernorm": (lambda o, x, s, b, at: _layernorm(x, s, b, at.get("eps", 1e-5), o), "same"),
    "rmsnorm": (lambda o, x, s, at: _rmsnorm(x, s, at.get("eps", 1e-5), o), "same"),
    "gelu_tanh": (lambda o, x, at: _gelu_tanh(x, o), "same"),
    "gelu": (lambda o, x, at: _blocked(gelu, x, o), "any"),
    "softmax": (lambda o, x, at: _softmax(x, o), "same"),
    "exp_sub": (lambda o, a, b, at: _exp_sub(a, b, o), "any"),
    "reduce_sum": (lambda o, x, at: np.add.reduce(x, -1, keepdims=True, out=o), "none"),
    "reduce_max": (lambda o, x, at: np.maximum.reduce(x, -1, keepdims=True, out=o), "none"),
    "reduce_min": (lambda o, x, at: np.minimum.reduce(x, -1, keepdims=True, out=o), "none"),
}


# Vec fns that compute each element from the elements at the same index of their
# (broadcast) inputs, and those that compute each row (last axis) from the rows at the
# same index: the interpreter may run them on views whose other axes are merged
# (``coalesce``), the same elements in the same order.
ROW_FNS = frozenset({"reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod",
                     "softmax", "log_softmax", "layernorm", "rmsnorm", "rope", "cumsum"})
ELEMENTWISE_FNS = frozenset(FNS) - ROW_FNS - {"quantize"}


def coalesce(out: np.ndarray, ins: list[np.ndarray], keep: int, row: bool
             ) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """``out`` and ``ins`` (of ``out``'s rank, broadcasting to it) as views of the same
    elements with fewer axes: the first ``keep`` axes (loop iterations) stay, inputs
    are broadcast to ``out``'s shape on the others, and of those axes the ones of size
    1 go and neighbours that step through memory as one axis on every operand are
    merged (numpy's fast path for a flat run, a shorter iteration otherwise). ``row``:
    the last axis stays as it is on each operand (row functions). None when an input
    does not broadcast to ``out``."""
    nd = out.ndim
    end = nd - 1 if row else nd
    views = [out, *ins]
    if any(v.ndim != nd for v in ins) or end <= keep:
        return None
    shapes = [list(v.shape) for v in views]
    strides = [list(v.strides) for v in views]
    for sh, st in zip(shapes[1:], strides[1:], strict=True):
        for a in range(keep, end):
            if sh[a] != out.shape[a]:
                if sh[a] != 1:
                    return None
                sh[a], st[a] = out.shape[a], 0
    axes = [a for a in range(keep, end) if out.shape[a] != 1]
    groups: list[list[int]] = []
    for a in axes:  # merge a into the group before it when every operand steps evenly
        if groups and all(st[groups[-1][-1]] == sh[a] * st[a]
                          for sh, st in zip(shapes, strides, strict=True)):
            groups[-1].append(a)
        else:
            groups.append([a])
    tail = list(range(end, nd))
    if not groups and not tail:  # one element per iteration: still an array, not a scalar
        groups = [[nd - 1]]
    merged = []
    for v, sh, st in zip(views, shapes, strides, strict=True):
        new_shape = sh[:keep] + [math.prod(sh[a] for a in g) for g in groups] + \
            [sh[a] for a in tail]
        new_strides = st[:keep] + [st[g[-1]] for g in groups] + [st[a] for a in tail]
        merged.append(strided_view(v, tuple(new_shape), tuple(new_strides),
                                   writeable=v is out))
    return merged[0], merged[1:]


# Vec fns whose cost per element is well above a byte compare of their inputs: for
# these, tiles holding identical inputs (a broadcast) compute once (runtime/tile_dedupe.py).
DEDUPE_MIN_ELEMENTS = 16384  # below this the compare's fixed cost outweighs the saving
DEDUPE_FNS = frozenset({"quantize", "gelu", "gelu_tanh", "erf", "silu", "sigmoid", "tanh",
                         "softmax", "log_softmax", "layernorm", "rmsnorm", "exp_sub", "rope"})


def caster(dtypes: list[str], mode: str) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Per input, how to bring a stored block to the compute type of ``mode``."""
    def ident(x: np.ndarray) -> np.ndarray:
        return x

    def to_f32(x: np.ndarray) -> np.ndarray:
        return x.astype(F32)

    def to_bool(x: np.ndarray) -> np.ndarray:
        return x.astype(np.bool_)

    def to_i32(x: np.ndarray) -> np.ndarray:  # ml_dtypes' int4/int2 have no arithmetic
        return x.astype(np.int32)

    if mode == "where":
        return [to_bool, *caster(dtypes[1:], "num")]
    if mode == "logic":
        return [ident if d == "bool" else to_bool for d in dtypes]
    is_float = mode == "float" or any(d in FLOAT_DTYPES for d in dtypes)
    if is_float:
        return [ident if d == "f32" else to_f32 for d in dtypes]
    return [to_i32 if d in NARROW_INT_DTYPES else ident for d in dtypes]


def storer(dtype: str, attrs: Mapping[str, Any] | None = None
           ) -> Callable[[np.ndarray, np.ndarray], None]:
    """How to store a computed block into a ``dtype`` view: narrow formats round and
    saturate as a Cast does (runtime/narrow_store.py; DESIGN §3: round to nearest even,
    saturate to the largest finite value unless a Cast says ``saturate=0``), the others
    are a plain conversion."""
    narrow = narrow_storer(dtype, attrs or {})
    if narrow is not None:
        return narrow

    def plain(dst: np.ndarray, value: np.ndarray) -> None:
        np.copyto(dst, value, casting="unsafe")
    return plain
