"""Numeric formats of DESIGN §3: element casts, MX / NVFP4 / FP8 scaling, bit packing.

Everything here is vectorized numpy + ml_dtypes; the interpreter, the quantize pass and the
program writer all call it, so it is the single definition of maiac's numerics.

References (cited per function):

* OCP Microscaling Formats (MX) v1.0 ("MX §x"): §5.3 element types (FP8 E4M3/E5M2,
  FP6 E2M3/E3M2, FP4 E2M1, their emax and max normal), §5.4.1 E8M0 scale (bias 127,
  exponents -127..127, 0xFF = NaN, no zero/Inf), §6.3 conversion from a vector of floats:
  ``X = 2^(floor(log2(max|V_i|)) - emax_elem)``, ``P_i = quantize_to_element(V_i / X)`` with
  normal values clamped (saturated) to the element's max normal. A NaN scale makes the
  whole block NaN (MX v1.0 §5, special values).
* OCP 8-bit Floating Point (OFP8) v1.0: E4M3 ("FN": no Inf, NaN = S.1111.111) and E5M2
  (IEEE-like, has Inf), round to nearest even, saturating conversion.
* microsoft/microxcaling ``mx/mx_ops.py`` ``_shared_exponents``/``_quantize_mx``: the
  floor rule, an all-zero block gets ``floor(log2(FP32_MIN_NORMAL)) - emax`` clamped to
  -127, i.e. scale byte 0 (2^-127); shared exponents clamped to [-127, 127].
* pytorch/ao ``torchao/prototype/mx_formats/mx_tensor.py`` ``to_mx`` with
  ``ScaleCalculationMode`` FLOOR / CEIL / EVEN / RCEIL (exact rules in `mx_scale_bytes`),
  and ``nvfp4_tensor.py`` ``nvfp4_quantize`` / ``per_tensor_amax_to_scale`` for NVFP4.

Packing convention: sub-byte element codes form one little-endian, LSB-first bit stream.
FP4: element 2i in the low nibble of byte i, element 2i+1 in the high nibble (the ONNX
FLOAT4E2M1 / PyTorch ``float4_e2m1fn_x2`` order). FP6: four elements c0..c3 in three
bytes as the 24-bit little-endian word ``c0 | c1<<6 | c2<<12 | c3<<18``.

Blocks run along ``axis``; when its length is not a multiple of the block size the last
block is padded with zeros for the scale computation (zeros never raise a block's amax)
and the padding is not stored: the payload holds exactly ``prod(shape)`` codes in C order
of the original shape, packed. Scales keep the tensor's rank: MX/NVFP4 scales have shape
``shape`` with ``shape[axis]`` replaced by the number of blocks; FP8 scales are float32
of shape ``(1,)*ndim`` (per tensor) or ones except ``shape[axis]`` (per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "FORMATS",
    "Format",
    "QTensor",
    "SCALE_MODES",
    "cast",
    "decode",
    "dequantize",
    "e8m0_to_float",
    "encode",
    "fake_quantize",
    "from_bytes",
    "get_format",
    "mx_scale_bytes",
    "pack",
    "qtensor_nbytes",
    "quantize",
    "to_bytes",
    "unpack",
]

SCALE_MODES: tuple[str, ...] = ("floor", "ceil", "even", "rceil")
"""MX shared-exponent rules; "floor" is the OCP MX v1.0 §6.3 rule (see `mx_scale_bytes`)."""

E8M0_BIAS = 127
E8M0_NAN = 0xFF
_F32_MBITS = 23


@dataclass(frozen=True)
class Format:
    """One tensor format of DESIGN §3.

    ``scale_kind``: "none" (fp32/bf16), "fp32" (FP8: fp32 scale per tensor or channel),
    "e8m0" (MX: one E8M0 byte per ``block_size`` elements, MX §5.4.1) or "e4m3+fp32"
    (NVFP4: one E4M3 byte per 16 elements plus one fp32 per-tensor scale).
    """

    name: str
    elem: Any  # numpy / ml_dtypes scalar type of the elements
    bits: int
    block_size: int  # 0: no blocks
    scale_kind: str
    mbits: int
    emax: int  # exponent of the largest normal power of two (MX §5.3 tables)
    max_finite: float
    has_inf: bool
    has_nan: bool

    @property
    def is_mx(self) -> bool:
        return self.scale_kind == "e8m0"

    @property
    def is_blocked(self) -> bool:
        return self.block_size > 0

    @property
    def elem_name(self) -> str:
        return np.dtype(self.elem).name

    def nbytes(self, n: int) -> int:
        """Bytes of a 1-D tensor of ``n`` elements (packed payload + scales), per-tensor."""
        return qtensor_nbytes((n,), self.name)


def _fmt(name: str, elem: Any, block: int, scale_kind: str) -> Format:
    fi = ml_dtypes.finfo(elem) if elem is not np.float32 else np.finfo(np.float32)
    dt = np.dtype(elem)
    probe = np.array([np.inf, np.nan], np.float32).astype(dt).astype(np.float32)
    return Format(
        name=name,
        elem=elem,
        bits=int(fi.bits),
        block_size=block,
        scale_kind=scale_kind,
        mbits=int(fi.nmant),
        emax=int(fi.maxexp) - 1,
        max_finite=float(fi.max),
        has_inf=bool(np.isinf(probe[0])),
        has_nan=bool(np.isnan(probe[1])),
    )


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _fmt("fp32", np.float32, 0, "none"),
        _fmt("bf16", ml_dtypes.bfloat16, 0, "none"),
        _fmt("fp8e4m3", ml_dtypes.float8_e4m3fn, 0, "fp32"),
        _fmt("fp8e5m2", ml_dtypes.float8_e5m2, 0, "fp32"),
        _fmt("mxfp8e4m3", ml_dtypes.float8_e4m3fn, 32, "e8m0"),
        _fmt("mxfp8e5m2", ml_dtypes.float8_e5m2, 32, "e8m0"),
        _fmt("mxfp6e2m3", ml_dtypes.float6_e2m3fn, 32, "e8m0"),
        _fmt("mxfp6e3m2", ml_dtypes.float6_e3m2fn, 32, "e8m0"),
        _fmt("mxfp4", ml_dtypes.float4_e2m1fn, 32, "e8m0"),
        _fmt("nvfp4", ml_dtypes.float4_e2m1fn, 16, "e4m3+fp32"),
    )
}

_ELEMS: dict[str, Format] = {f.elem_name: f for f in FORMATS.values()}
_E4M3 = FORMATS["fp8e4m3"]


def get_format(name: str | Format) -> Format:
    """The `Format` called ``name``; ValueError listing the valid names otherwise."""
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown format {name!r}; valid formats: {', '.join(FORMATS)}"
        ) from None


def _elem_format(elem: Any) -> Format:
    """Format describing an element type given as a format name, dtype or ml_dtypes type."""
    if isinstance(elem, Format):
        return elem
    if isinstance(elem, str) and elem in FORMATS:
        return FORMATS[elem]
    try:
        return _ELEMS[np.dtype(elem).name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown element type {elem!r}; valid: {', '.join(_ELEMS)} or a format name"
        ) from None


# ----------------------------------------------------------------------------------------
# element casts
# ----------------------------------------------------------------------------------------


def _check_finite(x: np.ndarray, what: str, allow_nonfinite: bool) -> None:
    if allow_nonfinite:
        return
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(
            f"{what}: {bad} non-finite value(s) (NaN/Inf) in the input; "
            "pass allow_nonfinite=True to encode them"
        )


def _as_f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def cast(x: Any, elem: Any, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Round ``x`` (as float32) to the element type, nearest-even with saturation.

    Equals the ml_dtypes cast of ``clip(x, -max, max)`` bit for bit: OFP8 v1.0 / MX §6.3
    "conversion with saturation" (finite values beyond max finite become ±max; ml_dtypes
    alone would give NaN for E4M3FN and Inf for E5M2). NaN/Inf raise ValueError unless
    ``allow_nonfinite``; then they map as ml_dtypes maps them (E4M3FN: NaN; E5M2, bf16:
    NaN/±Inf kept; FP6/FP4 have no such codes and must only appear in NaN-scaled blocks).
    """
    f = _elem_format(elem)
    x = _as_f32(x)
    _check_finite(x, f"cast to {f.elem_name}", allow_nonfinite)
    if f.elem is np.float32:
        return x.copy()
    m = np.float32(f.max_finite)
    y = np.clip(x, -m, m)
    if allow_nonfinite:
        y = np.where(np.isnan(x), x, y)  # clip keeps NaN, but be explicit
        if f.has_inf:
            y = np.where(np.isinf(x), x, y)
        elif f.has_nan:  # no Inf code: ±Inf -> NaN keeping the sign (ml_dtypes: -Inf -> 0xFF)
            y = np.where(np.isinf(x), np.copysign(np.float32(np.nan), x), y)
    # ml_dtypes' own cast rounds to nearest even; with 0.7 it is faster than the 128K-entry
    # rounding table maiac used before (that ran at 0.4-0.8x of it: bench/formats.py)
    return y.astype(f.elem)


def encode(x: Any, elem: Any, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Element codes (uint8, code in the low ``bits`` bits) of the saturating cast.

    The same codes as ``cast(x, elem).view(np.uint8)``, by table lookup on the fp32 bits
    (`_encode_table`): about 3x faster than the clip + ml_dtypes cast.
    """
    f = _elem_format(elem)
    if f.bits > 8:
        raise ValueError(f"encode: {f.elem_name} is not a narrow (<= 8 bit) element type")
    x = _as_f32(x)
    _check_finite(x, f"cast to {f.elem_name}", allow_nonfinite)
    shift, table = _encode_table(f)
    bits = x.view(np.uint32)
    idx = bits >> np.uint32(shift)
    idx <<= np.uint32(1)
    idx |= (bits & np.uint32((1 << shift) - 1)) != 0
    return np.take(table, idx)


_ENCODE_TABLES: dict[str, tuple[int, np.ndarray]] = {}


def _encode_table(f: Format) -> tuple[int, np.ndarray]:
    """``(shift, table)``: the code of fp32 bits ``b`` is ``table[(b >> shift) << 1 | s]``,
    ``s`` = any bit below ``shift`` set.

    A round-to-nearest-even cast to an element type of ``mbits`` mantissa bits depends on
    the fp32 bits down to its round bit (bit ``22 - mbits`` for a normal result, higher for
    a subnormal one) and on whether any bit below is set (sticky); saturation compares
    with ``max_finite``, whose bits below the round bit are zero, and NaN/Inf are told
    apart by the exponent and mantissa bits kept. So ``cast`` of one representative per
    (kept bits, sticky) class gives the code of every fp32 value in it (checked over all
    2^32 inputs of every narrow type when this was written; tests/test_formats.py checks
    every class boundary).
    """
    hit = _ENCODE_TABLES.get(f.elem_name)
    if hit is None:
        shift = _F32_MBITS - 1 - f.mbits
        kept = (np.arange(1 << (32 - shift), dtype=np.uint64) << shift).astype(np.uint32)
        reps = np.stack([kept, kept | 1], axis=1).reshape(-1)
        with np.errstate(all="ignore"):
            table = np.ascontiguousarray(
                cast(reps.view(np.float32), f, allow_nonfinite=True).view(np.uint8))
        table.setflags(write=False)
        hit = _ENCODE_TABLES[f.elem_name] = (shift, table)
    return hit


_TABLES: dict[str, np.ndarray] = {}


def _table(f: Format) -> np.ndarray:
    """float32 value of every code of a narrow element type (decoded by ml_dtypes)."""
    t = _TABLES.get(f.elem_name)
    if t is None:
        t = np.arange(1 << f.bits, dtype=np.uint8).view(f.elem).astype(np.float32)
        t.setflags(write=False)
        _TABLES[f.elem_name] = t
    return t


def decode(codes: Any, elem: Any) -> np.ndarray:
    """float32 values of element codes (uint8, low ``bits`` bits) by table lookup."""
    f = _elem_format(elem)
    c = np.asarray(codes)
    if c.dtype != np.uint8:
        raise ValueError(f"decode: codes must be uint8, got {c.dtype}")
    if f.bits < 8 and c.size and int(c.max()) >> f.bits:
        raise ValueError(f"decode: code out of range for {f.bits}-bit {f.elem_name}")
    return _table(f)[c]


def e8m0_to_float(b: Any) -> np.ndarray:
    """float32 value of E8M0 bytes: 2^(b-127), 0xFF = NaN (MX §5.4.1)."""
    b = np.asarray(b, dtype=np.uint8)
    v = np.ldexp(np.float32(1.0), np.minimum(b, 254).astype(np.int32) - E8M0_BIAS)
    return np.where(b == E8M0_NAN, np.float32(np.nan), v.astype(np.float32))


# ----------------------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------------------


def pack(codes: Any, bits: int) -> np.ndarray:
    """Pack element codes (uint8, < 2^bits) into ``ceil(n*bits/8)`` bytes, LSB first.

    FP4: low nibble first; FP6: four codes per three bytes (see module docstring).
    """
    c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return c.copy()
    if bits not in (4, 6):
        raise ValueError(f"pack: unsupported width {bits} bits (4, 6 or 8)")
    if c.size and int(c.max()) >> bits:
        raise ValueError(f"pack: code does not fit in {bits} bits")
    n = c.size
    if bits == 4:
        c = np.pad(c, (0, n % 2))
        return (c[0::2] | (c[1::2] << 4)).astype(np.uint8)
    c = np.pad(c, (0, -n % 4)).reshape(-1, 4).astype(np.uint32)
    w = c[:, 0] | (c[:, 1] << 6) | (c[:, 2] << 12) | (c[:, 3] << 18)
    out = np.stack([w & 0xFF, (w >> 8) & 0xFF, w >> 16], axis=1).astype(np.uint8).reshape(-1)
    return out[: (n * 6 + 7) // 8]


def unpack(data: Any, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack`: the first ``n`` codes (uint8) from packed bytes."""
    d = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray | memoryview) \
        else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    need = (n * bits + 7) // 8
    if d.size < need:
        raise ValueError(f"unpack: {d.size} bytes hold fewer than {n} {bits}-bit codes")
    if bits == 8:
        return d[:n].copy()
    if bits == 4:
        d = d[: (n + 1) // 2]
        out = np.empty(d.size * 2, np.uint8)
        out[0::2] = d & 0x0F
        out[1::2] = d >> 4
        return out[:n]
    if bits != 6:
        raise ValueError(f"unpack: unsupported width {bits} bits (4, 6 or 8)")
    d = np.pad(d[:need], (0, -need % 3)).reshape(-1, 3).astype(np.uint32)
    w = d[:, 0] | (d[:, 1] << 8) | (d[:, 2] << 16)
    out = np.stack([w & 63, (w >> 6) & 63, (w >> 12) & 63, w >> 18], axis=1)
    return out.astype(np.uint8).reshape(-1)[:n]


# ----------------------------------------------------------------------------------------
# QTensor and byte counts
# ----------------------------------------------------------------------------------------


@dataclass
class QTensor:
    """A quantized tensor: packed element codes plus its scales (layout: module docstring).

    ``scales``: uint8 E8M0 bytes (MX), uint8 E4M3 bytes (NVFP4), float32 (FP8) or an empty
    float32 array (fp32/bf16). ``tensor_scale``: NVFP4's fp32 per-tensor scale, else None.
    """

    fmt: str
    shape: tuple[int, ...]
    payload: np.ndarray
    scales: np.ndarray
    tensor_scale: float | None
    axis: int
    granularity: str = "tensor"
    scale_mode: str = "floor"

    @property
    def format(self) -> Format:
        return get_format(self.fmt)

    @property
    def nbytes(self) -> int:
        """Stored bytes: payload + scales (+ 4 for an fp32 tensor scale)."""
        return int(self.payload.nbytes + self.scales.nbytes + (4 if self.tensor_scale is not None else 0))


def _norm_axis(axis: int, ndim: int) -> int:
    nd = max(ndim, 1)
    if not -nd <= axis < nd:
        raise ValueError(f"axis {axis} out of range for a tensor of rank {ndim}")
    return axis % nd


def _scale_shape(shape: tuple[int, ...], f: Format, axis: int, granularity: str) -> tuple[int, ...]:
    work = shape if shape else (1,)
    if f.is_blocked:
        s = list(work)
        s[axis] = -(-work[axis] // f.block_size)
        return tuple(s)
    if f.scale_kind == "fp32":
        s = [1] * len(work)
        if granularity == "channel":
            s[axis] = work[axis]
        return tuple(s)
    return (0,)


def _check_granularity(granularity: str) -> None:
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")


def qtensor_nbytes(
    shape: tuple[int, ...] | list[int], fmt: str, *, axis: int = -1, granularity: str = "tensor"
) -> int:
    """Bytes a tensor of ``shape`` takes in ``fmt``: packed payload + scales + tensor scale.

    E.g. mxfp4 of 4096 elements = 2048 + 128 bytes; nvfp4 adds 4 bytes of fp32 tensor scale.
    """
    f = get_format(fmt)
    _check_granularity(granularity)
    shape = tuple(int(s) for s in shape)
    axis = _norm_axis(axis, len(shape))
    n = math.prod(shape)
    payload = (n * f.bits + 7) // 8
    scales = math.prod(_scale_shape(shape, f, axis, granularity))
    if f.scale_kind == "fp32":
        return payload + 4 * scales
    if f.scale_kind == "e4m3+fp32":
        return payload + scales + 4
    if f.scale_kind == "e8m0":
        return payload + scales
    return payload


# ----------------------------------------------------------------------------------------
# MX shared exponents
# ----------------------------------------------------------------------------------------


def mx_scale_bytes(amax: Any, elem: Any, scale_mode: str = "floor") -> np.ndarray:
    """E8M0 scale byte of blocks with absolute maximum ``amax`` (float32), per rule.

    With ``E``/``M`` the biased exponent/mantissa fields of fp32 ``amax``:

    * "floor" (OCP MX v1.0 §6.3, microxcaling ``_shared_exponents``, torchao FLOOR):
      ``X = floor(log2(amax)) - emax_elem`` = ``E - 127 - emax`` (an fp32-subnormal amax
      clamps to -127 either way); may saturate the block's
      largest elements (E4M3: when ``amax / 2^X`` lies in (448, 512)).
    * "ceil" (torchao CEIL): ``X = ceil(log2(amax)) - emax`` (``+1`` when ``M != 0``).
    * "even" (torchao EVEN): ``amax`` first rounded to ``mbits`` mantissa bits (add half an
      ulp, truncate), then floor.
    * "rceil" (torchao RCEIL, cuBLAS "1D block quantization", PTX ``cvt.rp.ue8m0``): the
      smallest ``2^X >= amax / max_finite`` in exact arithmetic; byte 0 for ``<= 2^-127``.
      Never saturates. torchao/PTX round up the fp32 product ``amax * fl32(1/max)``, which
      equals the exact rule for every fp32 ``amax`` except one per element type, where the
      product is an fp32 subnormal and rounds down onto ``2^-127`` (E4M3: amax 0x04600001,
      exact byte 1, fp32 product byte 0); maiac keeps the exact answer there.

    ``X`` is clamped to the E8M0 range [-127, 127] (MX §5.4.1); an all-zero block gets
    byte 0 (2^-127, as microxcaling and torchao). Non-finite ``amax`` gives 0xFF (NaN).
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"unknown scale_mode {scale_mode!r}; valid: {', '.join(SCALE_MODES)}")
    f = _elem_format(elem)
    a = np.abs(_as_f32(amax))
    finite = np.isfinite(a)
    a = np.where(finite, a, np.float32(0))
    if scale_mode == "rceil":
        # Exact in float64: amax (24 bits) and max_finite * 2^X (<= 4 bits) are exact there,
        # so the two comparisons correct frexp's estimate of ceil(log2(amax / max)).
        a64 = a.astype(np.float64)
        mx = float(f.max_finite)
        x = np.frexp(a64 / mx)[1].astype(np.int64)
        x = np.where(np.ldexp(mx, x - 1) >= a64, x - 1, x)
        x = np.where(np.ldexp(mx, x) < a64, x + 1, x)
        b = np.where(a64 == 0, 0, np.clip(x + E8M0_BIAS, 0, 2 * E8M0_BIAS))
    else:
        bits = a.view(np.int32).astype(np.int64)
        if scale_mode == "even":
            bits = bits + (1 << (_F32_MBITS - f.mbits - 1))
        e = bits >> _F32_MBITS
        if scale_mode == "ceil":
            e = e + ((bits & 0x7FFFFF) != 0)
        x = np.clip(e - E8M0_BIAS - f.emax, -E8M0_BIAS, E8M0_BIAS)
        b = x + E8M0_BIAS
    return np.where(finite, b, E8M0_NAN).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# quantize / dequantize
# ----------------------------------------------------------------------------------------


def _blocks(x: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Move ``axis`` last, zero-pad it to a multiple of ``block``; shape (..., nb, block)."""
    xm = np.moveaxis(x, axis, -1)
    moved = xm.shape
    pad = -moved[-1] % block
    if pad:
        xm = np.pad(xm, [(0, 0)] * (xm.ndim - 1) + [(0, pad)])
    nb = xm.shape[-1] // block
    return xm.reshape(*moved[:-1], nb, block), moved


def _unblocks(b: np.ndarray, moved: tuple[int, ...], axis: int) -> np.ndarray:
    """Inverse of `_blocks`: drop padding and move the block axis back."""
    flat = b.reshape(*moved[:-1], b.shape[-2] * b.shape[-1])[..., : moved[-1]]
    return np.moveaxis(flat, -1, axis)


def _block_amax(xb: np.ndarray) -> np.ndarray:
    """``max(|xb|)`` over the last axis (NaN if any is NaN), by halving the block with
    elementwise maxima: the same values as ``np.max(np.abs(xb), axis=-1)``, about twice
    as fast on blocks of 16 or 32 (a short-axis reduction pays per block)."""
    if not xb.size:
        return np.zeros(xb.shape[:-1], np.float32)
    a = np.abs(xb)
    w = a.shape[-1]
    while w % 2 == 0 and w > 1:
        w //= 2
        a = np.maximum(a[..., :w], a[..., w:])
    return a[..., 0] if w == 1 else a.max(axis=-1)


def _work(x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    a = _as_f32(x)
    return (a if a.ndim else a.reshape(1)), a.shape


def _mx_core(xw: np.ndarray, f: Format, axis: int, scale_mode: str) -> tuple[np.ndarray, ...]:
    """MX §6.3 on blocks: (codes (..., nb, block), scale bytes (..., nb), moved shape)."""
    xb, moved = _blocks(xw, axis, f.block_size)
    amax = _block_amax(xb)
    sb = mx_scale_bytes(amax, f, scale_mode)
    bad = sb == E8M0_NAN
    # x / 2^X as a product with 2^-X (X in [-127, 127]: 2^-X is an fp32, 2^-127 a
    # subnormal one): the exact quotient correctly rounded, as ldexp gives it
    inv = _POW2_NEG[np.minimum(sb, E8M0_NAN - 1)]
    scaled = xb * inv[..., None]
    if bad.any():
        scaled = np.where(bad[..., None], np.float32(0), scaled)
    # finite: |x| / 2^X <= 2^(emax + 1), and NaN-scaled blocks are zeros
    return encode(scaled, f, allow_nonfinite=True), sb, moved


# 2^-(b - 127) as fp32 for every E8M0 byte b < 255
_POW2_NEG = np.ldexp(np.float32(1.0), E8M0_BIAS - np.arange(255, dtype=np.int32)).astype(
    np.float32)


def _nvfp4_core(
    xw: np.ndarray, f: Format, axis: int, tensor_scale: float | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], float]:
    """NVFP4 two-level scaling by NVIDIA's recipe, every step an fp32 operation.

    NVIDIA Transformer Engine ``common/cast/nvfp4/core_nvfp4.cuh`` (the kernels of the
    recipe in NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149,
    which its tests match byte for byte), with ``ts`` the fp32 per-tensor decode scale
    maiac stores:

    * global encode scale ``S_enc = fl32(448 * 6 / amax_tensor)`` (1 for an all-zero
      tensor; ``compute_global_encode_scaling_factor_FP4``) and ``ts = fl32(1 / S_enc)``;
      a given ``tensor_scale`` is ``ts`` and ``S_enc = fl32(1 / ts)``;
    * block scale ``s8 = e4m3(block_amax * fl32(S_enc * fl32(1/6)))``, saturating at 448
      (``compute_decoding_scaling_factor``); an all-zero block, or one below 2^-10 / S_enc
      (under ~2e-6 of the tensor amax), gets scale 0 and decodes to zeros, as there;
    * elements ``e2m1(x * fl32(1 / fl32(s8 * ts)))``, saturating (``compute_scaling_coefficient``
      then ``cvt.rn.satfinite.e2m1x2.f32``): a multiply by the rounded reciprocal, not a
      division. It differs from the exactly rounded quotient ``x / (s8 * ts)`` on rare near
      ties (x = -1.3463824, ts = 0.0048085088, s8 byte 114: x * fl32(1 / fl32(160 ts)) is
      -1.75, code 12 (-2.0), where the exact quotient -1.74999989 gives code 11 (-1.5));
      maiac emulates NVIDIA's kernels, so it keeps their rule.

    Non-finite blocks get the E4M3 NaN scale byte (0x7F) and zero elements.
    """
    fin = np.isfinite(xw)
    if tensor_scale is None:
        amax_t = np.float32(np.max(np.abs(np.where(fin, xw, 0)))) if xw.size else np.float32(0)
        with np.errstate(divide="ignore", over="ignore"):
            s_enc = np.minimum(np.float32(_E4M3.max_finite * f.max_finite) / amax_t,
                               np.float32(np.finfo(np.float32).max))
        if amax_t == 0 or s_enc == 0:
            s_enc = np.float32(1.0)
        ts = np.float32(np.float32(1.0) / s_enc)
    else:
        ts = np.float32(tensor_scale)
        if not (np.isfinite(ts) and ts > 0):
            raise ValueError(f"nvfp4: tensor_scale must be finite and > 0, got {tensor_scale}")
        with np.errstate(over="ignore"):
            s_enc = np.minimum(np.float32(1.0) / ts, np.float32(np.finfo(np.float32).max))
    xb, moved = _blocks(xw, axis, f.block_size)
    amax = _block_amax(xb)
    bad = ~np.isfinite(amax)
    amax = np.where(bad, np.float32(0), amax)
    enc_over_max = np.float32(s_enc * np.float32(1.0 / f.max_finite))
    with np.errstate(over="ignore"):
        sbs = (amax * enc_over_max).astype(np.float32)
    s8 = np.minimum(sbs, np.float32(_E4M3.max_finite)).astype(ml_dtypes.float8_e4m3fn)
    with np.errstate(over="ignore", divide="ignore"):
        rcp = (np.float32(1.0) / (s8.astype(np.float32) * ts).astype(np.float32))
        rcp = np.minimum(rcp.astype(np.float32), np.float32(np.finfo(np.float32).max))
        data = (xb * rcp[..., None]).astype(np.float32)
    data = np.where(bad[..., None], np.float32(0), data)
    sbytes = np.where(bad, np.uint8(0x7F), s8.view(np.uint8)).astype(np.uint8)
    return encode(data, f, allow_nonfinite=True), sbytes, moved, float(ts)


def _fp8_scales(
    xw: np.ndarray, f: Format, axis: int, granularity: str, scale: Any
) -> np.ndarray:
    """FP8 scale (float32, keepdims): amax / max_finite per tensor or per channel along axis."""
    shape = _scale_shape(xw.shape, f, axis, granularity)
    if scale is not None:
        s = _as_f32(scale)
        if s.size == 1:
            s = np.full(shape, s.reshape(()), np.float32)
        elif granularity == "channel" and s.size == xw.shape[axis]:
            s = s.reshape(shape)
        else:
            raise ValueError(f"{f.name}: scale of {s.size} values does not fit {granularity} scaling")
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ValueError(f"{f.name}: scales must be finite and > 0")
        return s.astype(np.float32)
    a = np.abs(np.where(np.isfinite(xw), xw, np.float32(0)))
    red = tuple(i for i in range(xw.ndim) if granularity == "tensor" or i != axis)
    amax = np.max(a, axis=red, keepdims=True) if xw.size else np.zeros(shape, np.float32)
    s = (amax / np.float32(f.max_finite)).astype(np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32).reshape(shape)


def quantize(
    x: Any,
    fmt: str,
    *,
    axis: int = -1,
    scale_mode: str = "floor",
    granularity: str = "tensor",
    scale: Any = None,
    tensor_scale: float | None = None,
    allow_nonfinite: bool = False,
) -> QTensor:
    """Quantize ``x`` (rounded to float32 first) to ``fmt``.

    * fp32 / bf16: payload is the raw little-endian values (bf16: saturating RNE cast).
    * fp8e4m3 / fp8e5m2: fp32 scale ``amax / max_finite`` per tensor or, with
      ``granularity="channel"``, per index of ``axis``; or the given static ``scale``
      (calibration). Elements ``cast(x / scale)`` with saturation; amax 0 gives scale 1.
    * MX formats: blocks of 32 along ``axis``, scale byte by `mx_scale_bytes`
      (``scale_mode``), elements ``cast(x / 2^X)`` saturated (OCP MX v1.0 §6.3).
    * nvfp4: blocks of 16 along ``axis``, two-level scales (see `_nvfp4_core`);
      ``tensor_scale`` overrides the per-tensor fp32 scale (e.g. calibrated amax / 2688).

    NaN/Inf in ``x`` raise ValueError naming the count unless ``allow_nonfinite``; then an
    MX block containing one gets scale 0xFF (whole block NaN, MX §6.3).
    """
    f = get_format(fmt)
    _check_granularity(granularity)
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"unknown scale_mode {scale_mode!r}; valid: {', '.join(SCALE_MODES)}")
    xw, shape = _work(x)
    ax = _norm_axis(axis, len(shape))
    _check_finite(xw, f"quantize to {f.name}", allow_nonfinite)
    ts: float | None = None
    if f.scale_kind == "none":
        payload = cast(xw, f, allow_nonfinite=True).reshape(-1).view(np.uint8).copy()
        scales = np.zeros(0, np.float32)
    elif f.scale_kind == "fp32":
        scales = _fp8_scales(xw, f, ax, granularity, scale)
        codes = encode((xw / scales).astype(np.float32), f, allow_nonfinite=True)
        payload = pack(codes, f.bits)
    else:
        if f.scale_kind == "e8m0":
            cb, sb, moved = _mx_core(xw, f, ax, scale_mode)
        else:
            cb, sb, moved, ts = _nvfp4_core(xw, f, ax, tensor_scale)
        payload = pack(_unblocks(cb, moved, ax), f.bits)
        scales = np.moveaxis(sb, -1, ax)
    return QTensor(
        fmt=f.name,
        shape=tuple(shape),
        payload=payload,
        scales=np.ascontiguousarray(scales),
        tensor_scale=ts,
        axis=ax,
        granularity=granularity if f.scale_kind == "fp32" else "tensor",
        scale_mode=scale_mode if f.is_mx else "floor",
    )


def _scale_blocks(vb: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Blocked element values (..., nb, block) × block scales (..., nb), float32.

    One IEEE fp32 multiply, so the result is the exact product rounded to nearest: an
    MX value beyond the fp32 range (e.g. E8M0 2^127 × E4M3 448, which a ceil/rceil scale
    of a block whose amax is near fp32 max produces) is ±Inf, as the exact product rounds
    to. The TTU's operand decode (runtime/quant_ops.py) computes the same products.
    """
    with np.errstate(over="ignore"):
        return (vb * s[..., None]).astype(np.float32)


def _apply_block_scale(vals: np.ndarray, scale: np.ndarray, axis: int, f: Format) -> np.ndarray:
    """vals (working shape) * per-block scale (keepdims along axis) in float32."""
    vb, moved = _blocks(vals, axis, f.block_size)
    return _unblocks(_scale_blocks(vb, np.moveaxis(scale, axis, -1)), moved, axis)


def dequantize(q: QTensor) -> np.ndarray:
    """float32 values of a `QTensor` (elements × scales in fp32; NaN scale → NaN block)."""
    f = get_format(q.fmt)
    shape = tuple(q.shape)
    work = shape if shape else (1,)
    n = math.prod(shape)
    if f.scale_kind == "none":
        raw = np.ascontiguousarray(q.payload, dtype=np.uint8)
        return raw[: n * f.bits // 8].view(f.elem).astype(np.float32).reshape(shape)
    vals = decode(unpack(q.payload, f.bits, n), f).reshape(work)
    if f.scale_kind == "fp32":
        out = (vals * q.scales.astype(np.float32)).astype(np.float32)
    elif f.scale_kind == "e8m0":
        out = _apply_block_scale(vals, e8m0_to_float(q.scales), q.axis, f)
    else:
        s8 = np.ascontiguousarray(q.scales, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
        total = (np.float32(q.tensor_scale) * s8.astype(np.float32)).astype(np.float32)
        out = _apply_block_scale(vals, total, q.axis, f)
    return out.reshape(shape)


def fake_quantize(
    x: Any,
    fmt: str,
    axis: int = -1,
    scale_mode: str = "floor",
    *,
    granularity: str = "tensor",
    scale: Any = None,
    tensor_scale: float | None = None,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """``dequantize(quantize(x, ...))`` without packing: float32, bit-identical to it."""
    f = get_format(fmt)
    _check_granularity(granularity)
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"unknown scale_mode {scale_mode!r}; valid: {', '.join(SCALE_MODES)}")
    xw, shape = _work(x)
    ax = _norm_axis(axis, len(shape))
    _check_finite(xw, f"quantize to {f.name}", allow_nonfinite)
    if f.scale_kind == "none":
        return cast(xw, f, allow_nonfinite=True).astype(np.float32).reshape(shape)
    table = _table(f)
    if f.scale_kind == "fp32":
        s = _fp8_scales(xw, f, ax, granularity, scale)
        v = table[encode((xw / s).astype(np.float32), f, allow_nonfinite=True)]
        return (v * s).astype(np.float32).reshape(shape)
    if f.scale_kind == "e8m0":
        cb, sb, moved = _mx_core(xw, f, ax, scale_mode)
        sf = e8m0_to_float(sb)
    else:
        cb, sb, moved, ts = _nvfp4_core(xw, f, ax, tensor_scale)
        sf = (np.float32(ts) * sb.view(ml_dtypes.float8_e4m3fn).astype(np.float32))
    out = _scale_blocks(table[cb], sf.astype(np.float32))
    return _unblocks(out, moved, ax).reshape(shape)


# ----------------------------------------------------------------------------------------
# raw blobs
# ----------------------------------------------------------------------------------------


def to_bytes(q: QTensor) -> tuple[bytes, dict[str, Any]]:
    """One little-endian blob ``payload ‖ scales ‖ fp32 tensor_scale`` and its JSON metadata.

    ``len(blob) == qtensor_nbytes(q.shape, q.fmt, axis=q.axis, granularity=q.granularity)``.
    """
    f = get_format(q.fmt)
    scales = np.ascontiguousarray(q.scales)
    if scales.dtype == np.float32:
        scales = scales.astype("<f4")
    parts = [np.ascontiguousarray(q.payload, dtype=np.uint8).tobytes(), scales.tobytes()]
    if q.tensor_scale is not None:
        parts.append(np.array([q.tensor_scale], "<f4").tobytes())
    meta = {
        "fmt": f.name,
        "shape": list(q.shape),
        "axis": int(q.axis),
        "granularity": q.granularity,
        "scale_mode": q.scale_mode,
        "payload_nbytes": int(q.payload.nbytes),
        "scales_shape": list(scales.shape),
        "scales_dtype": "uint8" if scales.dtype == np.uint8 else "float32",
        "has_tensor_scale": q.tensor_scale is not None,
    }
    return b"".join(parts), meta


def from_bytes(blob: bytes | memoryview | np.ndarray, meta: dict[str, Any]) -> QTensor:
    """Rebuild a `QTensor` from `to_bytes` output; ValueError if sizes do not match."""
    f = get_format(meta["fmt"])
    shape = tuple(int(s) for s in meta["shape"])
    buf = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob.reshape(-1)
    n_pay = int(meta["payload_nbytes"])
    sdt = np.dtype("<f4") if meta["scales_dtype"] == "float32" else np.dtype(np.uint8)
    s_shape = tuple(int(s) for s in meta["scales_shape"])
    n_sc = math.prod(s_shape) * sdt.itemsize
    n_ts = 4 if meta.get("has_tensor_scale") else 0
    expect = qtensor_nbytes(shape, f.name, axis=int(meta["axis"]), granularity=meta["granularity"])
    if n_pay + n_sc + n_ts != expect or buf.size != expect:
        raise ValueError(
            f"{f.name} blob of shape {shape}: {buf.size} bytes, expected {expect}"
        )
    payload = buf[:n_pay].copy()
    scales = buf[n_pay : n_pay + n_sc].copy().view(sdt).astype(
        np.float32 if sdt.kind == "f" else np.uint8
    ).reshape(s_shape)
    ts = float(buf[n_pay + n_sc :].copy().view("<f4")[0]) if n_ts else None
    return QTensor(
        fmt=f.name,
        shape=shape,
        payload=payload,
        scales=scales,
        tensor_scale=ts,
        axis=int(meta["axis"]),
        granularity=meta["granularity"],
        scale_mode=meta.get("scale_mode", "floor"),
    )
