"""TVP functions of the op families lowered in passes/lower_<family>.py.

The interpreter merges ``FNS`` into its function table, the timing model ``VEC_OPS``
into its per-element costs (ASSUMED: one op per element for bit and rounding ops, as
for the other elementwise ones; transcendental functions cost like ``tanh``). Same
contract as runtime/interpreter_fns.py's table: fn -> (compute mode, function(args, attrs)),
mode "float" (inputs upcast to fp32) or "num" (integers stay integers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

UNARY = ("round", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
         "isinf", "bitwise_not")
BINARY = ("bitshift_left", "bitshift_right", "bitwise_and", "bitwise_or", "bitwise_xor")
ROW = ("cumsum",  # over the last axis of the block; out has the input's shape
       "reduce_prod")  # out has last extent 1, as the other reductions


def _cumsum(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Running sum along the last axis: ``exclusive`` drops the element itself,
    ``reverse`` sums from the end (ONNX CumSum)."""
    if attrs.get("reverse"):
        x = x[..., ::-1]
    y = np.cumsum(x, axis=-1, dtype=x.dtype)
    if attrs.get("exclusive"):
        y = np.concatenate([np.zeros_like(y[..., :1]), y[..., :-1]], axis=-1)
    return y[..., ::-1] if attrs.get("reverse") else y


def _isinf(x: np.ndarray, attrs: dict) -> np.ndarray:
    positive, negative = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    return ((x == np.inf) & bool(positive)) | ((x == -np.inf) & bool(negative))


def _shift(a: np.ndarray, b: np.ndarray, left: bool) -> np.ndarray:
    """ONNX BitShift: logical for unsigned, arithmetic right shift for signed integers;
    a shift by the width or more, or a negative one, gives 0 (left) or the sign fill
    (right)."""
    bits = a.dtype.itemsize * 8
    amount = np.clip(b, 0, bits - 1).astype(a.dtype)
    shifted = np.left_shift(a, amount) if left else np.right_shift(a, amount)
    zero = np.zeros_like(shifted)
    if left or a.dtype.kind == "u":
        over = zero
    else:
        over = np.where(a < 0, np.array(-1, a.dtype), zero)
    return np.where((b < 0) | (b >= bits), over, shifted).astype(a.dtype)


FNS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "round": ("float", lambda x, at: np.round(x)),  # half to even, as ONNX Round
    "tan": ("float", lambda x, at: np.tan(x)),
    "asin": ("float", lambda x, at: np.arcsin(x)),
    "acos": ("float", lambda x, at: np.arccos(x)),
    "atan": ("float", lambda x, at: np.arctan(x)),
    "sinh": ("float", lambda x, at: np.sinh(x)),
    "cosh": ("float", lambda x, at: np.cosh(x)),
    "asinh": ("float", lambda x, at: np.arcsinh(x)),
    "acosh": ("float", lambda x, at: np.arccosh(x)),
    "atanh": ("float", lambda x, at: np.arctanh(x)),
    "isinf": ("float", _isinf),
    "bitwise_not": ("num", lambda x, at: np.invert(x)),
    "bitshift_left": ("num", lambda a, b, at: _shift(a, b, True)),
    "bitshift_right": ("num", lambda a, b, at: _shift(a, b, False)),
    "bitwise_and": ("num", lambda a, b, at: np.bitwise_and(a, b)),
    "bitwise_or": ("num", lambda a, b, at: np.bitwise_or(a, b)),
    "bitwise_xor": ("num", lambda a, b, at: np.bitwise_xor(a, b)),
    "cumsum": ("num", _cumsum),
    "reduce_prod": ("num", lambda x, at: x.prod(-1, keepdims=True, dtype=x.dtype)),
}
assert set(FNS) == set(UNARY + BINARY + ROW)

VEC_OPS: dict[str, int] = {
    "tan": 8, "asin": 8, "acos": 8, "atan": 8, "sinh": 8, "cosh": 8, "asinh": 8, "acosh": 8,
    "atanh": 8,
}
