"""Tests of maiac.runtime.formats against ml_dtypes, OCP MX v1.0 and an independent reference.

The reference MX quantizer below works block by block in Python floats (math.frexp), and
rounds to the element grid with its own nearest-even search, so scale bytes and element
codes are checked one for one without reusing the vectorized code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from maiac.runtime import formats as F

MX = ["mxfp8e4m3", "mxfp8e5m2", "mxfp6e2m3", "mxfp6e3m2", "mxfp4"]
ELEMS = {
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "float6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
}


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as float32 values, NaN == NaN, and +0 / -0 distinguished."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(nan | (a.view(np.uint32) == b.view(np.uint32))))


def ml_cast_sat(x: np.ndarray, elem) -> np.ndarray:
    """The oracle: ml_dtypes cast after clipping to ±max finite."""
    m = np.float32(ml_dtypes.finfo(elem).max)
    return np.clip(np.asarray(x, np.float32), -m, m).astype(elem)


# --------------------------------------------------------------------------- registry


def test_registry_fields():
    f = F.get_format("mxfp4")
    assert (f.bits, f.block_size, f.scale_kind, f.emax, f.max_finite) == (4, 32, "e8m0", 2, 6.0)
    assert f.elem is ml_dtypes.float4_e2m1fn
    # emax / max normal of OCP MX v1.0 §5.3 tables
    expect = {
        "mxfp8e4m3": (8, 448.0), "mxfp8e5m2": (15, 57344.0), "mxfp6e2m3": (2, 7.5),
        "mxfp6e3m2": (4, 28.0), "mxfp4": (2, 6.0), "fp8e4m3": (8, 448.0), "nvfp4": (2, 6.0),
    }
    for name, (emax, mx) in expect.items():
        g = F.get_format(name)
        assert (g.emax, g.max_finite) == (emax, mx), name
    assert F.get_format("nvfp4").block_size == 16
    assert F.get_format("nvfp4").scale_kind == "e4m3+fp32"
    assert F.get_format("fp8e5m2").has_inf and not F.get_format("fp8e4m3").has_inf
    assert F.get_format("bf16").bits == 16 and F.get_format("fp32").bits == 32


def test_unknown_format_lists_names():
    with pytest.raises(ValueError, match="mxfp4") as e:
        F.get_format("mxfp3")
    for name in F.FORMATS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="scale_mode"):
        F.quantize(np.ones(4), "mxfp4", scale_mode="round")


# --------------------------------------------------------------------------- element casts


@pytest.mark.parametrize("name", list(ELEMS))
def test_exhaustive_codes(name):
    """Every code decodes as ml_dtypes decodes it and encodes back to itself."""
    elem = ELEMS[name]
    bits = ml_dtypes.finfo(elem).bits
    codes = np.arange(1 << bits, dtype=np.uint8)
    ref = codes.view(elem).astype(np.float32)
    vals = F.decode(codes, elem)
    assert bits_equal(vals, ref)
    back = F.encode(vals, elem, allow_nonfinite=True)
    finite = np.isfinite(ref)
    assert np.array_equal(back[finite], codes[finite])
    # non-finite codes (E4M3FN: 0x7F/0xFF NaN; E5M2: Inf and NaNs) re-encode to non-finite
    assert np.all(~np.isfinite(F.decode(back[~finite], elem)))


@pytest.mark.parametrize("name", list(ELEMS))
def test_encode_table_equals_cast_on_every_bit_class(name):
    """encode's table lookup gives cast's code for every fp32 input class it tells apart
    (all upper 16 bits, with the lower 16 zero, 1, half, all ones or random): every
    rounding boundary, tie, saturation point, subnormal, Inf and NaN payload."""
    elem = ELEMS[name]
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF]
    lows += list(np.random.default_rng(0).integers(0, 1 << 16, 4))
    bits = (hi[:, None] | np.array(lows, np.uint32)[None, :]).reshape(-1)
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        want = F.cast(x, elem, allow_nonfinite=True).view(np.uint8)
    assert np.array_equal(F.encode(x, elem, allow_nonfinite=True), want)
    with pytest.raises(ValueError, match="non-finite"):
        F.encode(x, elem)


def _grid_probe(elem) -> np.ndarray:
    """Grid points, halfway points between neighbours and their fp32 neighbours, ±."""
    tab = np.arange(1 << ml_dtypes.finfo(elem).bits, dtype=np.uint8).view(elem).astype(np.float64)
    g = np.unique(tab[np.isfinite(tab) & (tab >= 0)])
    mid = ((g[1:] + g[:-1]) / 2).astype(np.float32)  # exact in fp32
    mx = g[-1]
    beyond = np.array([mx * 1.01, mx * 1.5, mx * 2, mx * 1e3, 3.4e38], np.float32)
    pts = np.concatenate([g.astype(np.float32), mid, beyond, g[1:2].astype(np.float32) / 4])
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)),
                          np.nextafter(pts, np.float32(0))])
    return np.concatenate([pts, -pts]).astype(np.float32)


@pytest.mark.parametrize("name", list(ELEMS) + ["bfloat16"])
def test_cast_equals_ml_dtypes(name):
    elem = ELEMS.get(name, ml_dtypes.bfloat16)
    rng = np.random.default_rng(1)
    x = np.concatenate([
        _grid_probe(elem) if name != "bfloat16" else np.zeros(0, np.float32),
        (rng.standard_normal(4000) * 10.0 ** rng.integers(-12, 12, 4000)).astype(np.float32),
        np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38], np.float32),
        rng.integers(0, 2**31 - 2**23, 2000, dtype=np.uint32).view(np.float32),  # all exponents
    ])
    got = F.cast(x, elem)
    assert got.dtype == np.dtype(elem)
    u = np.uint8 if got.itemsize == 1 else np.uint16
    assert np.array_equal(got.view(u), ml_cast_sat(x, elem).view(u))
    assert np.all(np.isfinite(got.astype(np.float32)))  # saturating: never Inf/NaN


def test_saturation_examples():
    assert float(F.cast(np.float32(500.0), ml_dtypes.float8_e4m3fn)) == 448.0
    assert float(F.cast(np.float32(-1e6), ml_dtypes.float8_e4m3fn)) == -448.0
    assert float(F.cast(np.float32(1e6), ml_dtypes.float8_e5m2)) == 57344.0  # ml_dtypes: inf
    assert float(F.cast(np.float32(464.0), ml_dtypes.float8_e4m3fn)) == 448.0  # halfway 448/480
    assert float(F.cast(np.float32(7.0), ml_dtypes.float4_e2m1fn)) == 6.0
    assert float(F.cast(np.float32(5.0), ml_dtypes.float4_e2m1fn)) == 4.0  # tie → even
    assert float(F.cast(np.float32(3.4e38), ml_dtypes.bfloat16)) == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def test_nonfinite_reported():
    x = np.array([1.0, np.nan, np.inf, -np.inf, 2.0], np.float32)
    with pytest.raises(ValueError, match="3 non-finite"):
        F.cast(x, ml_dtypes.float8_e4m3fn)
    for fmt in F.FORMATS:
        with pytest.raises(ValueError, match="3 non-finite"):
            F.quantize(x, fmt)
        with pytest.raises(ValueError, match="3 non-finite"):
            F.fake_quantize(x, fmt)
    y = F.cast(x, ml_dtypes.float8_e5m2, allow_nonfinite=True).astype(np.float32)
    assert np.isnan(y[1]) and y[2] == np.inf and y[3] == -np.inf
    y = F.cast(x, ml_dtypes.float8_e4m3fn, allow_nonfinite=True).astype(np.float32)
    assert np.isnan(y[1:4]).all() and y[4] == 2.0


# --------------------------------------------------------------------------- reference MX


def ref_grid_code(s: float, f: F.Format) -> int:
    """Independent RNE + saturation onto the element grid (ties to the even code)."""
    tab = F.decode(np.arange(1 << f.bits, dtype=np.uint8), f).astype(np.float64)
    sign = 1 << (f.bits - 1)
    pos = tab[:sign]  # codes 0..sign-1 are the non-negative values, increasing
    n_fin = int(np.sum(np.isfinite(pos)))
    a = min(abs(s), pos[n_fin - 1])
    i = int(np.searchsorted(pos[:n_fin], a))
    if i < n_fin and pos[i] == a:
        c = i
    else:
        lo, hi = i - 1, i
        dl, dh = a - pos[lo], pos[hi] - a
        c = lo if dl < dh else hi if dh < dl else (lo if lo % 2 == 0 else hi)
    return c | (sign if math.copysign(1.0, s) < 0 else 0)


def ref_shared_exp(amax: float, f: F.Format, mode: str) -> int | None:
    """Unbiased shared exponent X (None = NaN scale), per the rules cited in formats.py."""
    if not math.isfinite(amax):
        return None
    if mode == "rceil":  # smallest X with 2^X * max >= amax, in exact rationals
        if amax == 0:
            return -127
        x = -127
        while Fraction(2) ** x * Fraction(f.max_finite) < Fraction(amax) and x < 127:
            x += 1
        return x
    if amax == 0:
        return -127
    m, e = math.frexp(amax)
    fl = e - 1  # floor(log2(amax))
    if mode == "ceil":
        fl += m != 0.5
    elif mode == "even":
        sig = math.floor(2 * m * 2**f.mbits + 0.5) / 2**f.mbits  # round half up to mbits
        fl += sig >= 2
    return max(-127, min(127, fl - f.emax))


def ref_mx(x2d: np.ndarray, fmt: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Scale bytes and element codes, block by block, along the last axis."""
    f = F.get_format(fmt)
    rows, n = x2d.shape
    nb = -(-n // f.block_size)
    sb = np.zeros((rows, nb), np.uint8)
    codes = np.zeros((rows, n), np.uint8)
    for r in range(rows):
        for b in range(nb):
            blk = [float(v) for v in x2d[r, b * f.block_size:(b + 1) * f.block_size]]
            amax = max(abs(v) if not math.isnan(v) else math.inf for v in blk)
            X = ref_shared_exp(amax, f, mode)
            if X is None:
                sb[r, b] = 0xFF
                continue
            sb[r, b] = X + 127
            for j, v in enumerate(blk):
                s = float(np.float32(v / 2.0**X))  # exact in double, one fp32 rounding
                codes[r, b * f.block_size + j] = ref_grid_code(s, f)
    return sb, codes


def _mx_test_data(rng: np.random.Generator, rows: int = 48, n: int = 64) -> np.ndarray:
    mags = 2.0 ** rng.integers(-140, 120, (rows, 1))
    x = rng.standard_normal((rows, n)) * mags
    x[0] = 0.0                                          # all-zero blocks
    x[1, :32] = 2.0 ** 5                                # amax exactly a power of two
    x[2:4, :32] = rng.uniform(-1, 1, (2, 32))
    x[2, 7] = 480.0 / 256                                       # E4M3 scales into [448, 512)
    x[3, 7] = -1.99                                             # just below a power of two
    x[4] = rng.standard_normal(n) * 1e-39                       # fp32 subnormals
    x[5] = rng.uniform(-1, 1, n) * 3.4e38                       # near fp32 max
    x[6, :32] = 7.0 * 2.0**-3                                   # FP4: 7 scales into (6, 8)
    x[7] = np.float32(448.0) * 2.0 ** rng.integers(-20, 20, n)  # rceil: exact max multiples
    x[8] = 6.0 * 2.0 ** rng.integers(-20, 20, n)
    return np.asarray(x, np.float32)


@pytest.mark.parametrize("mode", F.SCALE_MODES)
@pytest.mark.parametrize("fmt", MX)
def test_mx_bytes_match_reference(fmt, mode):
    x = _mx_test_data(np.random.default_rng(hash((fmt, mode)) % 2**32))
    q = F.quantize(x, fmt, scale_mode=mode)
    sb, codes = ref_mx(x, fmt, mode)
    assert np.array_equal(q.scales, sb)
    f = F.get_format(fmt)
    assert np.array_equal(F.unpack(q.payload, f.bits, x.size).reshape(x.shape), codes)
    # scales by mx_scale_bytes directly
    amax = np.max(np.abs(x.reshape(x.shape[0], -1, 32)), axis=-1)
    assert np.array_equal(F.mx_scale_bytes(amax, fmt, mode), sb)


def test_mx_padding_and_axis():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 40)).astype(np.float32)  # 40 = 32 + 8: last block padded
    q = F.quantize(x, "mxfp6e2m3")
    assert q.scales.shape == (5, 2)
    sb, codes = ref_mx(x, "mxfp6e2m3", "floor")
    assert np.array_equal(q.scales, sb)
    assert np.array_equal(F.unpack(q.payload, 6, x.size).reshape(x.shape), codes)
    assert q.payload.nbytes == 5 * 40 * 6 // 8
    # blocks along axis 0 equal blocks along the last axis of the transpose
    y = rng.standard_normal((70, 3, 4)).astype(np.float32)
    a = F.fake_quantize(y, "mxfp4", axis=0)
    b = np.moveaxis(F.fake_quantize(np.moveaxis(y, 0, -1), "mxfp4"), -1, 0)
    assert bits_equal(a, b)
    qa = F.quantize(y, "mxfp4", axis=0)
    assert qa.scales.shape == (3, 3, 4) and qa.axis == 0
    assert bits_equal(F.dequantize(qa), a)


def test_mx_corner_cases():
    f = F.get_format("mxfp8e4m3")
    # all-zero block: scale byte 0 (2^-127), elements 0 (microxcaling / torchao)
    z = np.zeros(32, np.float32)
    for mode in F.SCALE_MODES:
        q = F.quantize(z, "mxfp8e4m3", scale_mode=mode)
        assert q.scales.tolist() == [0] and not q.payload.any()
        assert bits_equal(F.dequantize(q), z)
    # amax exactly 2^k: X = k - emax, amax encodes as 2^emax exactly
    x = np.full(32, 0.01, np.float32)
    x[3] = 2.0**-4
    for mode in ("floor", "ceil", "even"):
        q = F.quantize(x, "mxfp8e4m3", scale_mode=mode)
        assert int(q.scales[0]) - 127 == -4 - 8
        assert float(F.dequantize(q)[3]) == 2.0**-4
    # block max scaling into [448, 512) under floor: clipped to 448; ceil / rceil keep it
    x = np.full(32, 0.01, np.float32)
    x[0] = 480.0 * 2.0**-10
    assert float(F.fake_quantize(x, "mxfp8e4m3")[0]) == 448.0 * 2.0**-10
    assert float(F.fake_quantize(x, "mxfp8e4m3", scale_mode="even")[0]) == 448.0 * 2.0**-10
    for mode in ("ceil", "rceil"):
        q = F.quantize(x, "mxfp8e4m3", scale_mode=mode)
        assert int(q.scales[0]) - 127 == -10 + 9 - 8  # 2^(ceil(log2(480 * 2^-10)) - 8)
        assert float(F.dequantize(q)[0]) == 480.0 * 2.0**-10
    x[0] = 500.0 * 2.0**-10  # even rounds amax's mantissa up to the next power of two
    assert float(F.fake_quantize(x, "mxfp8e4m3", scale_mode="even")[0]) == 512.0 * 2.0**-10
    # NaN / Inf in a block: scale 0xFF, whole block NaN, other blocks unaffected
    y = np.ones(96, np.float32)
    y[40], y[70] = np.nan, -np.inf
    q = F.quantize(y, "mxfp8e4m3", allow_nonfinite=True)
    assert q.scales.tolist() == [127 - 8, 0xFF, 0xFF]  # ones: 2^(0 - emax)
    d = F.dequantize(q)
    assert np.all(d[:32] == 1.0) and np.isnan(d[32:]).all()
    assert bits_equal(d, F.fake_quantize(y, "mxfp8e4m3", allow_nonfinite=True))
    assert np.isnan(F.e8m0_to_float(np.uint8(255))) and F.e8m0_to_float(np.uint8(0)) == 2.0**-127
    assert f.emax == 8


def test_mx_floor_clipping_vs_ceil_fp4():
    x = np.zeros(32, np.float32)
    x[:2] = 7.0, 0.5
    assert float(F.fake_quantize(x, "mxfp4")[0]) == 6.0           # floor: X = 0, 7 → 6
    assert float(F.fake_quantize(x, "mxfp4", scale_mode="ceil")[0]) == 8.0   # 7/2 = 3.5 → 4
    assert float(F.fake_quantize(x, "mxfp4", scale_mode="rceil")[0]) == 8.0  # 7/6 → 2^1


# --------------------------------------------------------------------------- NVFP4


def fl32(q: Fraction) -> Fraction:
    """``q`` rounded to the nearest fp32 (ties to even, subnormals, no overflow here)."""
    if q == 0:
        return Fraction(0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 23)
    m, r = divmod(a, ulp)
    if r > ulp / 2 or (r == ulp / 2 and m % 2):
        m += 1
    return (m * ulp) if q > 0 else -(m * ulp)


def ref_nvfp4(x: np.ndarray, ts: float | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """NVIDIA Transformer Engine's NVFP4 recipe (core_nvfp4.cuh), in exact rationals with an
    explicit fp32 rounding after every operation the kernels perform."""
    f4 = F.get_format("nvfp4")
    if ts is None:
        s_enc = fl32(Fraction(448 * 6) / Fraction(float(np.max(np.abs(x)))))
        ts_q = fl32(1 / s_enc)
    else:
        ts_q = Fraction(float(np.float32(ts)))
        s_enc = fl32(1 / ts_q)
    enc_over_6 = fl32(s_enc * fl32(Fraction(1, 6)))
    rows, n = x.shape
    sb = np.zeros((rows, n // 16), np.uint8)
    codes = np.zeros((rows, n), np.uint8)
    for r in range(rows):
        for b in range(n // 16):
            blk = [Fraction(float(v)) for v in x[r, b * 16:(b + 1) * 16]]
            sbs = min(fl32(max(abs(v) for v in blk) * enc_over_6), Fraction(448))
            s8 = np.float32(float(sbs)).astype(ml_dtypes.float8_e4m3fn)  # sbs is an fp32
            sb[r, b] = s8.view(np.uint8)
            s8_q = Fraction(float(s8))
            rcp = fl32(1 / fl32(s8_q * ts_q)) if s8_q else Fraction(float(np.finfo(np.float32).max))
            for j, v in enumerate(blk):
                codes[r, b * 16 + j] = ref_grid_code(float(fl32(v * rcp)), f4)
    return sb, float(ts_q), codes


def test_nvfp4_two_level():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 64)) * 2.0 ** rng.integers(-8, 8, (8, 1))).astype(np.float32)
    x[0, :16] = 0.0
    q = F.quantize(x, "nvfp4")
    sb, ts, codes = ref_nvfp4(x)
    assert q.tensor_scale == ts
    assert np.array_equal(q.scales, sb)
    assert np.array_equal(F.unpack(q.payload, 4, x.size).reshape(x.shape), codes)
    assert q.scales.max() <= 0x7E  # E4M3 448, never NaN
    r, c = np.unravel_index(np.abs(x).argmax(), x.shape)
    assert q.scales[r, c // 16] == 0x7E  # the tensor amax block uses the top of E4M3
    assert q.scales[0, 0] == 0x00  # zero block: scale 0 (NVIDIA's kernels), zeros out
    d = F.dequantize(q)
    assert bits_equal(d, F.fake_quantize(x, "nvfp4"))
    total = np.repeat(ts * q.scales.view(ml_dtypes.float8_e4m3fn).astype(np.float64), 16, axis=1)
    with np.errstate(invalid="ignore"):  # the zero block has scale 0
        s = np.where(total > 0, np.abs(x) / np.where(total > 0, total, 1), 0)
    half_ulp = np.where(s >= 4, 1.0, np.where(s >= 2, 0.5, 0.25))  # E2M1 grid 0, .5, ..., 6
    assert np.all(np.abs(d - x) <= half_ulp * total * (1 + 1e-6))
    # all-zero tensor: tensor scale 1, zeros out
    qz = F.quantize(np.zeros((2, 16), np.float32), "nvfp4")
    assert qz.tensor_scale == 1.0 and not F.dequantize(qz).any()
    # static (calibrated) tensor scale
    qs = F.quantize(x, "nvfp4", tensor_scale=ts * 2)
    assert qs.tensor_scale == np.float32(ts * 2)


# --------------------------------------------------------------------------- FP8 scaled


def test_fp8_per_tensor_and_channel():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((16, 24)) * np.arange(1, 17)[:, None]).astype(np.float32)
    q = F.quantize(w, "fp8e4m3")
    s = np.float32(np.abs(w).max() / np.float32(448.0))
    assert q.scales.shape == (1, 1) and q.scales.dtype == np.float32 and q.scales[0, 0] == s
    assert np.array_equal(q.payload, ml_cast_sat(w / s, ml_dtypes.float8_e4m3fn).view(np.uint8).ravel())
    assert bits_equal(F.dequantize(q), ml_cast_sat(w / s, ml_dtypes.float8_e4m3fn).astype(np.float32) * s)
    qc = F.quantize(w, "fp8e5m2", granularity="channel", axis=0)
    sc = (np.abs(w).max(axis=1, keepdims=True) / np.float32(57344.0)).astype(np.float32)
    assert qc.scales.shape == (16, 1) and np.array_equal(qc.scales, sc)
    assert bits_equal(F.dequantize(qc), F.fake_quantize(w, "fp8e5m2", granularity="channel", axis=0))
    # static scale from calibration; values beyond it saturate
    qs = F.quantize(w, "fp8e4m3", scale=0.01)
    assert float(np.abs(F.dequantize(qs)).max()) == np.float32(448.0) * np.float32(0.01)
    assert F.quantize(np.zeros(3), "fp8e4m3").scales.item() == 1.0
    assert bits_equal(F.fake_quantize(w, "bf16"), w.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert bits_equal(F.dequantize(F.quantize(w, "fp32")), w)


# --------------------------------------------------------------------------- properties

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 70)), elements=finite32),
       fmt=st.sampled_from(MX), mode=st.sampled_from(F.SCALE_MODES))
def test_mx_error_bound(x, fmt, mode):
    """|deq - x| <= half an ulp of the element grid × scale (or the saturation overshoot)."""
    f = F.get_format(fmt)
    q = F.quantize(x, fmt, scale_mode=mode)
    d = F.dequantize(q)
    assert bits_equal(d, F.fake_quantize(x, fmt, scale_mode=mode))
    X = np.repeat(q.scales.astype(np.int64) - 127, 32, axis=-1)[:, : x.shape[1]]
    s = np.abs(x.astype(np.float64)) * 2.0 ** -X
    emin = int(ml_dtypes.finfo(f.elem).minexp)
    e = np.maximum(np.floor(np.log2(np.maximum(s, 2.0**-300))), emin)
    half_ulp = 0.5 * 2.0 ** (e - f.mbits)
    bound = np.maximum(half_ulp, s - f.max_finite) * 2.0**X
    # the exact value (element x 2^X, in float64) rounds to fp32: Inf beyond its range
    codes = F.unpack(q.payload, f.bits, x.size).reshape(x.shape)
    exact = F.decode(codes, f).astype(np.float64) * 2.0**X
    with np.errstate(over="ignore"):
        assert bits_equal(d, exact.astype(np.float32))
    fin = np.isfinite(d)
    err = np.abs(d.astype(np.float64) - x)
    assert np.all(err[fin] <= bound[fin] * (1 + 1e-12))
    if mode in ("ceil", "rceil"):
        assert np.all(s <= f.max_finite)  # these modes never clip
    if mode == "floor":  # floor scales are a fixed point: re-quantizing changes nothing
        assert bits_equal(F.fake_quantize(d, fmt), d)


@settings(max_examples=100, deadline=None)
@given(bits=st.sampled_from([4, 6, 8]), n=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_pack_roundtrip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, n, dtype=np.uint8)
    p = F.pack(codes, bits)
    assert p.dtype == np.uint8 and p.size == (n * bits + 7) // 8
    assert np.array_equal(F.unpack(p, bits, n), codes)
    assert np.array_equal(F.unpack(p.tobytes(), bits, n), codes)


def test_pack_convention():
    assert F.pack(np.array([0x1, 0xA], np.uint8), 4).tolist() == [0xA1]  # low nibble first
    c = np.array([1, 2, 3, 4], np.uint8)
    w = 1 | 2 << 6 | 3 << 12 | 4 << 18
    assert F.pack(c, 6).tolist() == [w & 0xFF, (w >> 8) & 0xFF, w >> 16]
    with pytest.raises(ValueError):
        F.pack(np.array([16], np.uint8), 4)
    with pytest.raises(ValueError):
        F.unpack(np.zeros(2, np.uint8), 6, 4)


# --------------------------------------------------------------------------- bytes


def test_byte_counts():
    assert F.qtensor_nbytes((4096,), "mxfp4") == 2048 + 128
    assert F.get_format("mxfp4").nbytes(4096) == 2176
    assert F.qtensor_nbytes((4096,), "mxfp6e3m2") == 3072 + 128
    assert F.qtensor_nbytes((4096,), "mxfp8e4m3") == 4096 + 128
    assert F.qtensor_nbytes((4096,), "nvfp4") == 2048 + 256 + 4
    assert F.qtensor_nbytes((64, 64), "fp8e4m3") == 4096 + 4
    assert F.qtensor_nbytes((64, 64), "fp8e4m3", granularity="channel", axis=0) == 4096 + 256
    assert F.qtensor_nbytes((64, 64), "bf16") == 8192
    assert F.qtensor_nbytes((64, 64), "fp32") == 16384
    assert F.qtensor_nbytes((3, 40), "mxfp4") == 60 + 6
    x = np.random.default_rng(0).standard_normal((3, 5, 40)).astype(np.float32)
    for fmt in F.FORMATS:
        for gran in ("tensor", "channel"):
            q = F.quantize(x, fmt, axis=1, granularity=gran)
            n = F.qtensor_nbytes(x.shape, fmt, axis=1, granularity=gran)
            blob, meta = F.to_bytes(q)
            assert q.nbytes == n == len(blob), (fmt, gran)
            r = F.from_bytes(blob, meta)
            assert bits_equal(F.dequantize(r), F.dequantize(q))
            assert r.shape == q.shape and r.axis == q.axis and r.tensor_scale == q.tensor_scale
    with pytest.raises(ValueError, match="bytes"):
        F.from_bytes(blob[:-1], meta)


def test_scalar_and_empty():
    for fmt in F.FORMATS:
        assert F.dequantize(F.quantize(np.float32(1.5), fmt)).shape == ()
        assert F.fake_quantize(np.zeros((0, 32), np.float32), fmt).shape == (0, 32)


# --------------------------------------------------------------------------- onnxruntime


def _ort_qdq(x: np.ndarray, scale: np.ndarray, opset: int, **attrs):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, list(scale.shape), [0] * scale.size)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)]
    g = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT8E4M3FN, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        initializer=[numpy_helper.from_array(scale, "s"), zp])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        q, y = sess.run(None, {"x": x})
    except Exception as e:  # provider refuses the op / type
        pytest.skip(f"onnxruntime cannot run this QDQ graph: {str(e)[:120]}")
    return np.asarray(q).view(np.uint8), y


def test_onnxruntime_fp8_per_tensor():
    x = np.random.default_rng(11).standard_normal((4, 256)).astype(np.float32) * 100
    q = F.quantize(x, "fp8e4m3")
    oq, oy = _ort_qdq(x, q.scales.reshape(()).copy(), 19)
    assert np.array_equal(oq.ravel(), q.payload)
    assert bits_equal(oy, F.dequantize(q))


def test_onnxruntime_blocked_mxfp8():
    """opset 21 blocked QDQ with our E8M0 scales as fp32 powers of two = MX elements."""
    x = np.random.default_rng(12).standard_normal((4, 128)).astype(np.float32)
    q = F.quantize(x, "mxfp8e4m3", scale_mode="ceil")
    s = F.e8m0_to_float(q.scales)
    oq, oy = _ort_qdq(x, s, 21, axis=1, block_size=32)
    assert np.array_equal(oq.ravel(), q.payload)
    assert bits_equal(oy, F.dequantize(q))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2"])
def test_cast_is_saturating_ml_dtypes_cast(fmt):
    """cast = ml_dtypes' cast of the value clipped to ±max for every sign/exponent/top
    mantissa pattern with low bits zero, one, half-way, all ones and random."""
    f = F.get_format(fmt)
    top = np.arange(1 << 16, dtype=np.uint32) << 16
    low = np.random.default_rng(1).integers(1, 1 << 16, top.size, dtype=np.uint32)
    bits = np.concatenate([top, top | 1, top | 0x8000, top | 0xFFFF, top | low])
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    m = np.float32(f.max_finite)
    want = np.clip(x, -m, m).astype(f.elem).view(np.uint8)
    assert np.array_equal(F.cast(x, f.elem).view(np.uint8), want)
    big = x[np.abs(x) > m]
    assert np.all(np.abs(F.cast(big, f.elem).astype(np.float32)) == m)  # saturates


# --------------------------------------------------------------------------- spec corners


def test_nonfinite_cast_follows_ml_dtypes():
    """allow_nonfinite: NaN/±Inf map as ml_dtypes maps them, sign included (E4M3FN -Inf)."""
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 1.0, -0.0], np.float32)
    for elem in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.bfloat16):
        got = F.cast(x, elem, allow_nonfinite=True).view(np.uint8 if elem != ml_dtypes.bfloat16
                                                          else np.uint16)
        want = x.astype(elem).view(got.dtype)
        assert np.array_equal(got, want), elem
    assert F.encode(np.float32(-np.inf), ml_dtypes.float8_e4m3fn, allow_nonfinite=True) == 0xFF


def test_rceil_exact_in_the_subnormal_product_range():
    """rceil is the smallest 2^X >= amax / max in exact arithmetic, also where amax / max
    is an fp32 subnormal (the fp32 product rounds 0x04600001 / 448 down onto 2^-127)."""
    assert F.mx_scale_bytes(np.uint32(0x04600001).view(np.float32), "mxfp8e4m3", "rceil") == 1
    rng = np.random.default_rng(3)
    for fmt in ("mxfp8e4m3", "mxfp8e5m2", "mxfp6e2m3", "mxfp6e3m2", "mxfp4"):
        f = F.get_format(fmt)
        # amax around max * 2^-127 .. 2^-120 (products subnormal or barely normal), and
        # exact multiples of max with one ulp either side
        base = (np.float32(f.max_finite) * 2.0 ** rng.integers(-128, -118, 300)).astype(np.float32)
        bits = base.view(np.uint32)[:, None] + np.array([-1, 0, 1], np.int64)
        amax = bits.astype(np.uint32).view(np.float32).reshape(-1)
        got = F.mx_scale_bytes(amax, fmt, "rceil")
        want = [ref_shared_exp(float(a), f, "rceil") + 127 for a in amax]
        assert np.array_equal(got, np.array(want, np.uint8)), fmt


def test_nvfp4_follows_nvidia_recipe_on_near_ties():
    """Elements are e2m1(x * fl32(1 / fl32(s8 * ts))) (NVIDIA TE), checked in exact
    rationals on values within a few ulps of every E2M1 rounding tie."""
    ts = np.float32(0.0048085088)
    # the example: s8 byte 114 (160.0); NVIDIA's rule gives code 12 (-2.0 ... the
    # scaled value is exactly -1.75 after the reciprocal), the exact quotient would give 11
    blk = np.zeros((1, 16), np.float32)
    blk[0, 0], blk[0, 1] = 160.0 * 6 * float(ts), -1.3463824
    q = F.quantize(blk, "nvfp4", tensor_scale=float(ts))
    assert q.scales[0, 0] == 114
    code = int(F.unpack(q.payload, 4, 16)[1])
    assert code == 12
    exact = Fraction(float(np.float32(-1.3463824))) / (Fraction(160) * Fraction(float(ts)))
    assert ref_grid_code(float(exact), F.get_format("nvfp4")) == 11  # documented difference
    # near-tie set: per block, an amax element fixing s8 and 15 values at ties ± k ulps
    rng = np.random.default_rng(11)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    rows = []
    for _ in range(64):
        t = np.float32(2.0 ** rng.uniform(-12, 2))
        amax = np.float32(rng.uniform(0.5, 6.0) * 16 * t)
        row = np.empty(16, np.float32)
        row[0] = amax
        s8 = np.float32(np.float32(amax * np.float32(np.float32(1 / t) * np.float32(1 / 6))))
        s8 = np.float32(np.minimum(s8, 448).astype(ml_dtypes.float8_e4m3fn))
        tie_vals = (rng.choice(ties, 15) * float(s8) * float(t) * rng.choice([-1, 1], 15))
        k = rng.integers(-3, 4, 15).astype(np.int32)
        row[1:] = (tie_vals.astype(np.float32).view(np.int32) + k).view(np.float32)
        rows.append((row, t))
    for row, t in rows:
        x = row[None, :]
        q = F.quantize(x, "nvfp4", tensor_scale=float(t))
        sb, ts_ref, codes = ref_nvfp4(x, float(t))
        assert np.array_equal(q.scales, sb)
        assert np.array_equal(F.unpack(q.payload, 4, 16).reshape(x.shape), codes)
    # and the automatic tensor scale: S_enc = fl32(2688 / amax), ts = fl32(1 / S_enc)
    x = np.concatenate([r for r, _ in rows])[None, :] * np.float32(1.0)
    q = F.quantize(x, "nvfp4")
    sb, ts_ref, codes = ref_nvfp4(x)
    assert q.tensor_scale == ts_ref and np.array_equal(q.scales, sb)
    assert np.array_equal(F.unpack(q.payload, 4, x.size).reshape(x.shape), codes)


def test_dequantize_beyond_fp32_is_inf():
    """An MX value whose exact product exceeds fp32 (E8M0 2^127 × 448) is ±Inf, not ±max,
    in formats.dequantize and in the TTU's operand decode alike."""
    from maiac.runtime.quant_ops import decode_operand
    f = F.get_format("mxfp8e4m3")
    codes = F.encode(np.array([448.0, -448.0, 1.0] + [0.0] * 29, np.float32), f)
    q = F.QTensor("mxfp8e4m3", (32,), codes.copy(), np.array([254], np.uint8), None, 0)
    d = F.dequantize(q)
    assert d[0] == np.inf and d[1] == -np.inf and d[2] == np.float32(2.0**127)
    dec = decode_operand(codes.reshape(1, 32), "mxfp8e4m3", 32,
                         np.array([[254]], np.uint8), -1)
    assert bits_equal(dec.reshape(-1), d)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8e4m3", "nvfp4", "fp8e4m3"])
def test_quantize_rows_counts_every_nonfinite_value(fmt):
    """A TVP quantize counts each NaN/Inf it encodes (found from the NaN scale bytes of
    the blocked formats, so a finite row costs no extra pass) and only those."""
    from maiac.runtime.quant_ops import count_nonfinite, quantize_rows
    attrs = {"fmt": fmt, "scale_mode": "floor", "tensor_scale": 0.01, "scale": 0.05}
    x = np.random.default_rng(5).standard_normal((3, 4, 64)).astype(np.float32)
    with count_nonfinite() as n:
        clean = quantize_rows(x, attrs)
    assert n[0] == 0
    x[0, 1, 3], x[0, 1, 4], x[2, 3, 63], x[1, 0, 17] = np.nan, np.inf, -np.inf, np.nan
    with count_nonfinite() as n:
        dirty = quantize_rows(x, attrs)
    assert n[0] == 4
    same = np.ones(x.shape[:-1], bool)
    same[0, 1] = same[2, 3] = same[1, 0] = False
    assert np.array_equal(dirty[same], clean[same])  # the other rows are untouched
