"""Casts to and from the narrow ONNX element types (int4/uint4/int2/uint2, float4 E2M1,
fp8 FNUZ, E8M0, fp8 with saturate=0): maiac's bytes equal the ONNX reference's
(onnx.reference, whose Cast is the specification's rule) on values that exercise the
rounding edges (ties, overflow, NaN/Inf, subnormals), compiled and run on the machine."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.numpy_helper import to_float8e8m0
from onnx.reference import ReferenceEvaluator

import maiac
from maiac.runtime.errors import MaiacError
from maiac.runtime.narrow_store import e8m0_bits

F, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
EDGES = np.array([0.0, -0.0, 0.25, 0.5, 0.75, 1.25, 1.5, 2.5, -2.5, 3.5, 5.0, 6.0, 7.0,
                  -8.0, 9.0, 15.5, 16.0, 240.0, 250.0, 448.0, 464.0, 57344.0, 61440.0,
                  1e6, -1e6, 1e-7, 2.0 ** -130, 2.0 ** 127 * 1.5, np.inf, -np.inf, np.nan],
                 dtype=np.float32)
NARROW = [TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2,
          TensorProto.FLOAT4E2M1, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2FNUZ,
          TensorProto.FLOAT8E8M0, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2]


def _cast_model(src: int, dst: int, shape: list[int], **attrs: object) -> onnx.ModelProto:
    node = helper.make_node("Cast", ["x"], ["y"], to=dst, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", src, shape)],
                              [helper.make_tensor_value_info("y", dst, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    model.ir_version = 11
    return model


def _same_bytes(have: np.ndarray, want: np.ndarray) -> None:
    """Byte for byte, except that any NaN encoding equals any other."""
    assert have.dtype == want.dtype and have.shape == want.shape
    if have.dtype.itemsize != 1:
        assert np.array_equal(have, want, equal_nan=have.dtype.kind == "f"), (have, want)
        return
    nan = np.isnan(have.astype(np.float32)) & np.isnan(want.astype(np.float32))
    assert np.array_equal(have.view(np.uint8)[~nan], want.view(np.uint8)[~nan]), (have, want)


def _check(model: onnx.ModelProto, x: np.ndarray) -> None:
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    have = maiac.compile(model).run({"x": x})["y"]
    _same_bytes(have, want)


@pytest.mark.parametrize("to", NARROW, ids=TensorProto.DataType.Name)
def test_float_to_narrow_matches_reference(to: int) -> None:
    x = EDGES
    if to in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2):
        x = np.concatenate([np.arange(-9, 17, dtype=np.float32), [-1.5, 1.7, 7.9, -8.9]])
    _check(_cast_model(F, to, [x.size]), x.astype(np.float32))


@pytest.mark.parametrize("src", NARROW, ids=TensorProto.DataType.Name)
def test_narrow_to_float_and_back(src: int) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(src)
    codes = np.arange(256 if np.dtype(dtype).itemsize == 1 and src in (
        TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2FNUZ, TensorProto.FLOAT8E8M0,
        TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2) else 16, dtype=np.uint8)
    if src in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2):
        info = ml_dtypes.iinfo(dtype)
        x = np.arange(info.min, info.max + 1).astype(dtype)
    elif src == TensorProto.FLOAT4E2M1:
        x = codes.view(dtype)
    else:
        x = codes.view(dtype)
    _check(_cast_model(src, F, [x.size]), x)
    _check(_cast_model(src, F16, [x.size]), x)


@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2,
                                TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2FNUZ],
                         ids=TensorProto.DataType.Name)
def test_fp8_saturate_false_overflows_like_the_spec(to: int) -> None:
    model = _cast_model(F, to, [EDGES.size], saturate=0)
    _check(model, EDGES)
    have = maiac.compile(model).run({"x": np.array([1e6], np.float32).repeat(EDGES.size)})["y"]
    assert not np.isfinite(have.astype(np.float32)).any()  # Inf or NaN, not the max


@pytest.mark.parametrize("round_mode", ["up", "nearest", "down"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_e8m0_round_modes(round_mode: str, saturate: int) -> None:
    x = np.abs(EDGES)
    _check(_cast_model(F, TensorProto.FLOAT8E8M0, [x.size], saturate=saturate,
                       round_mode=round_mode), x)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True),
                min_size=1, max_size=64),
       st.sampled_from(["up", "nearest", "down"]), st.booleans())
def test_e8m0_bits_equal_onnx_helper(values: list[float], round_mode: str,
                                     saturate: bool) -> None:
    x = np.array(values, np.float32)
    want = to_float8e8m0(x, saturate, round_mode).view(np.uint8)
    assert np.array_equal(e8m0_bits(x, saturate, round_mode), want)


def test_bad_e8m0_round_mode_is_one_error() -> None:
    with pytest.raises(MaiacError, match="round_mode 'sideways'"):
        maiac.compile(_cast_model(F, TensorProto.FLOAT8E8M0, [4], round_mode="sideways"))
