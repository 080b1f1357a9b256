"""How a computed block is stored into a view of a narrow storage dtype (a cast's rounding).

The machine model keeps every element type one element per byte or more (ml_dtypes' own
layout: int4/uint4/int2/uint2/float4_e2m1fn take one byte each, as numpy arrays of them
do); packing two 4-bit codes per byte is the MX payload's business (runtime/formats.py),
not the storage of a tensor. What differs per dtype is the rounding a store applies, and
it is the one the ONNX Cast specification and its reference (onnx.numpy_helper) define,
so the node tests' expected bytes are reproduced exactly:

- fp8 (E4M3FN, E5M2, E4M3FNUZ, E5M2FNUZ): round to nearest even; ``saturate=1`` (the
  default) clips to the largest finite value first, ``saturate=0`` keeps the plain
  conversion (overflow -> Inf for E5M2, NaN for the formats without Inf).
- float4 E2M1: clipped to +-6 then rounded to nearest even (it has neither Inf nor NaN).
- int4/uint4/int2/uint2: as the spec's fixed-point casts, which is ml_dtypes' conversion
  (the one onnx.reference's Cast calls): from an integer the low bits, reinterpreted in
  two's complement (200 -> int4 -8); from a float truncated toward zero in range, 0 out
  of range (the spec leaves that undefined). So their store is the plain conversion.
- E8M0 (a power of two): the exponent of the float32 value, rounded by ``round_mode``
  ("up" by default: any fraction bit rounds the exponent up; "nearest"; "down"), with
  ``saturate`` keeping 2^127 from overflowing into NaN; Inf/NaN become NaN (0xFF).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from maiac.runtime.memory import np_dtype

F32 = np.dtype(np.float32)
FP8_DTYPES = ("f8e4m3", "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz")
NARROW_FLOAT_DTYPES = (*FP8_DTYPES, "f4e2m1", "f8e8m0")
NARROW_INT_DTYPES = ("i4", "u4", "i2", "u2")
E8M0_ROUND_MODES = ("up", "nearest", "down")

Store = Callable[[np.ndarray, np.ndarray], None]


def _as_f32(value: np.ndarray) -> np.ndarray:
    v = np.asarray(value)
    return v if v.dtype == F32 else v.astype(F32)


def e8m0_bits(x: np.ndarray, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """The E8M0 byte of each float32 value (see the module docstring), as uint8."""
    if round_mode not in E8M0_ROUND_MODES:
        raise ValueError(f"E8M0 round_mode {round_mode!r} is not one of {E8M0_ROUND_MODES}")
    bits = np.ascontiguousarray(_as_f32(x)).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exponent == 0xFF
    if round_mode == "up":
        round_up = (bits & 0x7FFFFF) > 0
    elif round_mode == "nearest":  # the guard bit, and any lower bit or a nonzero exponent
        guard = (bits & 0x400000) > 0
        rest = (bits & 0x3FFFFF) > 0
        round_up = guard & (rest | (exponent > 0))
    else:
        round_up = np.zeros(bits.shape, bool)
    round_up &= ~special
    if saturate:
        round_up &= exponent != 0xFE
    exponent = exponent + round_up
    return np.where(special, 0xFF, exponent).astype(np.uint8)


def _float_store(dtype: str, saturate: bool) -> Store:
    lim = float(ml_dtypes.finfo(np_dtype(dtype)).max)
    clip = saturate or dtype == "f4e2m1"  # E2M1 has no Inf/NaN to overflow into

    def store(dst: np.ndarray, value: np.ndarray) -> None:
        v = _as_f32(value)
        with np.errstate(invalid="ignore", over="ignore"):
            np.copyto(dst, np.clip(v, -lim, lim) if clip else v, casting="unsafe")
    return store


def _e8m0_store(saturate: bool, round_mode: str) -> Store:
    def store(dst: np.ndarray, value: np.ndarray) -> None:
        dst.view(np.uint8)[...] = e8m0_bits(value, saturate, round_mode)
    return store


def narrow_storer(dtype: str, attrs: Mapping[str, Any]) -> Store | None:
    """The store of a narrow ``dtype`` under a cast's ``saturate``/``round_mode`` attrs,
    or None when ``dtype`` is not narrow (a plain unsafe copy then)."""
    saturate = bool(attrs.get("saturate", 1))
    if dtype == "f8e8m0":
        return _e8m0_store(saturate, str(attrs.get("round_mode", "up")))
    if dtype in NARROW_FLOAT_DTYPES:
        return _float_store(dtype, saturate)
    return None  # the others, NARROW_INT_DTYPES included: a plain conversion
