"""Quantized operands on the machine: TVP ``quantize`` rows and TTU operand decode.

Both are vectorized over any leading dims (loop iterations, tiles, batch), so one numpy
call covers an instruction for all tiles. Bit-exact with runtime.formats: a row
quantized here holds the bytes of ``formats.quantize(row, fmt, axis=-1)``, and a decoded
operand equals ``formats.dequantize`` of the same codes and scales.

Layouts (DESIGN §3; isa.MatMul):

* A quantized activation row (``Vec(fn="quantize")`` output, dtype u8) is
  ``packed codes ‖ block scale bytes`` of that row: ``row_bytes(fmt, k)`` bytes for
  ``k`` elements. FP8 with a static per-tensor scale instead stores f8 elements.
* A matmul operand in a narrow format is a u8 access of packed codes (rows packed
  along the last axis), or f8e4m3/f8e5m2 elements; its scales a separate access,
  blocks running along the reduction axis K (last axis of ``a``, axis -2 of ``b``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from maiac.runtime import formats as F

F32 = np.dtype(np.float32)


# Non-finite values a TVP quantize met during the current run (the hardware encodes them,
# it cannot raise): NaN/Inf in an MX or NVFP4 block give that block the NaN scale, in FP8
# they map as formats.cast maps them. `count_nonfinite` collects them for run/verify, once
# per quantize instruction that meets one (a row quantized for several N blocks counts
# each time).
_NONFINITE: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "maiac_nonfinite_quantized", default=None)


@contextlib.contextmanager
def count_nonfinite() -> Iterator[list[int]]:
    """Within the block, ``counter[0]`` sums the non-finite values quantize rows met."""
    counter = [0]
    token = _NONFINITE.set(counter)
    try:
        yield counter
    finally:
        _NONFINITE.reset(token)


def _note_nonfinite(x: np.ndarray) -> None:
    counter = _NONFINITE.get()
    if counter is not None:
        finite = np.isfinite(x)
        if not finite.all():
            counter[0] += int(finite.size - np.count_nonzero(finite))


def payload_bytes(fmt: str, n: int) -> int:
    """Packed bytes of ``n`` elements of ``fmt``."""
    return (n * F.get_format(fmt).bits + 7) // 8


def n_blocks(fmt: str, n: int) -> int:
    f = F.get_format(fmt)
    return -(-n // f.block_size) if f.is_blocked else 0


def row_bytes(fmt: str, k: int) -> int:
    """Bytes of one quantized activation row of ``k`` elements: payload + scale bytes."""
    return payload_bytes(fmt, k) + n_blocks(fmt, k)


def pack_unit(fmt: str) -> int:
    """Elements per whole number of bytes (FP4: 2, FP6: 4, else 1)."""
    bits = F.get_format(fmt).bits
    return 8 // math.gcd(8, bits)


def quantize_rows(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """TVP ``quantize``: each row (last axis) of fp32 ``x`` → its quantized bytes.

    ``attrs``: ``fmt``; ``scale_mode`` (MX); ``tensor_scale`` (NVFP4, fp32 per-tensor
    scale from calibration); ``scale`` (FP8: static per-tensor scale; output is the f8
    elements, float32-typed here and stored by the caller into an f8 access). NaN/Inf are
    encoded (formats' ``allow_nonfinite`` mapping) and counted (`count_nonfinite`).
    """
    fmt = attrs["fmt"]
    f = F.get_format(fmt)
    x = np.asarray(x, F32)
    if f.scale_kind == "fp32":
        _note_nonfinite(x)
        s = np.float32(attrs["scale"])
        return F.cast((x / s).astype(F32), f, allow_nonfinite=True).astype(F32)
    if f.scale_kind == "none":
        _note_nonfinite(x)
        return F.cast(x, f, allow_nonfinite=True).astype(F32)
    lead, k = x.shape[:-1], x.shape[-1]
    if (k * f.bits) % 8:
        raise ValueError(f"quantize {fmt}: a row of {k} elements is not a whole number of bytes")
    q = F.quantize(x, fmt, axis=-1, scale_mode=attrs.get("scale_mode", "floor"),
                   tensor_scale=attrs.get("tensor_scale"), allow_nonfinite=True)
    payload = q.payload.reshape(*lead, payload_bytes(fmt, k))
    scales = q.scales.reshape(*lead, n_blocks(fmt, k))
    # a block holding NaN/Inf, and only such a block, gets the NaN scale byte (MX 0xFF,
    # NVFP4 0x7F: its finite scales saturate at 448 = 0x7E), so x is counted only then
    if _NONFINITE.get() is not None and np.any(scales == _NAN_SCALE[f.scale_kind]):
        _note_nonfinite(x)
    out = np.empty((*lead, payload.shape[-1] + scales.shape[-1]), np.uint8)
    out[..., :payload.shape[-1]] = payload
    out[..., payload.shape[-1]:] = scales
    return out


_NAN_SCALE = {"e8m0": F.E8M0_NAN, "e4m3+fp32": 0x7F}


_PAIR_LUT: dict[str, np.ndarray] = {}


def _pair_lut(fmt: str) -> np.ndarray:
    """FP4: both nibbles' float32 values of every byte as one uint64 (low nibble first)."""
    lut = _PAIR_LUT.get(fmt)
    if lut is None:
        t = F.decode(np.arange(16, dtype=np.uint8), F.get_format(fmt))
        b = np.arange(256)
        pairs = np.ascontiguousarray(np.stack([t[b & 15], t[b >> 4]], axis=1), F32)
        lut = pairs.view(np.uint64).reshape(256)
        lut.setflags(write=False)
        _PAIR_LUT[fmt] = lut
    return lut


def decode_elements(raw: np.ndarray, fmt: str, n: int) -> np.ndarray:
    """float32 element values of rows of packed codes (u8, last axis) → (..., n)."""
    f = F.get_format(fmt)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:  # f8 elements stored in their own dtype
        return raw.astype(F32)
    lead = raw.shape[:-1]
    if f.bits == 8:
        return np.take(F._table(f), raw)[..., :n]
    if f.bits == 4:  # one 8-byte gather per byte yields both elements
        return np.take(_pair_lut(fmt), raw).view(F32).reshape(*lead, -1)[..., :n]
    # FP6: three bytes → four 6-bit codes
    nb = raw.shape[-1]
    d = raw
    if nb % 3:
        d = np.concatenate([d, np.zeros((*lead, -nb % 3), np.uint8)], axis=-1)
    d = d.reshape(*lead, -1, 3).astype(np.uint32)
    w = d[..., 0] | (d[..., 1] << 8) | (d[..., 2] << 16)
    codes = np.stack([w & 63, (w >> 6) & 63, (w >> 12) & 63, w >> 18], axis=-1)
    return F.decode(codes.astype(np.uint8).reshape(*lead, -1)[..., :n], f)


def block_scale_values(scales: np.ndarray, fmt: str, tensor_scale: float | None) -> np.ndarray:
    """float32 per-block scale factors as formats.dequantize computes them."""
    f = F.get_format(fmt)
    if f.scale_kind == "e8m0":
        return F.e8m0_to_float(scales)
    if f.scale_kind == "e4m3+fp32":
        s8 = np.ascontiguousarray(scales, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
        return (np.float32(tensor_scale) * s8.astype(F32)).astype(F32)
    return np.asarray(scales, F32)


def decode_operand(raw: np.ndarray, fmt: str, n: int, scales: np.ndarray | None,
                   k_axis: int, tensor_scale: float | None = None) -> np.ndarray:
    """float32 values of a quantized matmul operand block.

    ``raw``: (..., rows, bytes) packed codes (or f8 elements); ``n``: logical elements
    per row; ``scales``: MX/NVFP4 block scales with the K axis blocked (rank of the
    block), FP8 per-channel fp32 scales broadcastable to the block, or None (FP8
    per-tensor: ``tensor_scale`` multiplies); ``k_axis``: -1 (``a``) or -2 (``b``).
    """
    f = F.get_format(fmt)
    vals = decode_elements(raw, fmt, n)
    if f.is_blocked:
        s = block_scale_values(scales, fmt, tensor_scale)
        axis = vals.ndim + k_axis
        k = vals.shape[axis]
        if k % f.block_size == 0:  # whole blocks: no padding or axis moves
            nb, blk = k // f.block_size, f.block_size
            with np.errstate(over="ignore"):  # beyond fp32: ±Inf, as formats.dequantize
                if k_axis == -1:
                    out = vals.reshape(*vals.shape[:-1], nb, blk) * s[..., None]
                else:
                    out = (vals.reshape(*vals.shape[:-2], nb, blk, vals.shape[-1])
                           * s[..., :, None, :])
            return out.reshape(vals.shape)
        vb, moved = F._blocks(vals, axis, f.block_size)
        return F._unblocks(F._scale_blocks(vb, np.moveaxis(s, axis, -1)), moved, axis)
    if f.scale_kind == "fp32":
        if scales is not None:
            vals = (vals * np.asarray(scales, F32)).astype(F32)
        if tensor_scale is not None:
            vals = (vals * np.float32(tensor_scale)).astype(F32)
        return vals
    return vals


def logical_shape(acc: Any, fmt: str) -> tuple[int, ...]:
    """Shape in elements of a matmul operand access in format ``fmt`` ("" = as stored)."""
    shape = tuple(acc.shape)
    if not fmt or acc.dtype != "u8" or not shape:
        return shape
    bits = F.get_format(fmt).bits
    return shape[:-1] + (shape[-1] * 8 // bits,)
