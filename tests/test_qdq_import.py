"""QDQ / integer ops on hand-built graphs against onnxruntime: every element type and
granularity the importer claims (per tensor, per axis, per block; int8, uint8, int4, uint4,
fp8), the weight-only ``Cast(int8) -> Mul(scale)`` pattern, and activation fake-quant."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.importers import expand_model
from maiac.runtime.errors import MaiacError

RNG = np.random.default_rng(0)
K, N = 64, 32


def _run_both(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    onnx.checker.check_model(model)
    options = ort.SessionOptions()  # no DQ+MatMul -> MatMulNBits fusion (int8 activations)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    ref = session.run(None, {"x": x})[0]
    got = maiac.compile(model).run({"x": x})["y"]
    return got, ref


def _matmul_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                  opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weight(dtype: np.dtype, lo: int, hi: int) -> np.ndarray:
    return RNG.integers(lo, hi + 1, (K, N)).astype(dtype)


CASES = {
    # name: (onnx type, numpy dtype, range, scale shape, zero point?, attrs)
    "int8_per_tensor": (TensorProto.INT8, np.int8, (-128, 127), (), True, {}),
    "uint8_per_axis": (TensorProto.UINT8, np.uint8, (0, 255), (N,), True, {"axis": 1}),
    "int4_block32": (TensorProto.INT4, ml_dtypes.int4, (-8, 7), (K // 32, N), False,
                     {"axis": 0, "block_size": 32}),
    "uint4_block16_zp": (TensorProto.UINT4, ml_dtypes.uint4, (0, 15), (K // 16, N), True,
                         {"axis": 0, "block_size": 16}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dequantized_weight_matches_onnxruntime(case: str) -> None:
    onnx_type, dtype, (lo, hi), scale_shape, with_zp, attrs = CASES[case]
    w = _weight(dtype, lo, hi)
    scale = (RNG.random(scale_shape) * 0.02 + 0.001).astype(np.float32)
    inits = [helper.make_tensor("w", onnx_type, w.shape, w.astype(np.int32).flatten().tolist()),
             numpy_helper.from_array(scale, "s")]
    inputs = ["w", "s"]
    if with_zp:
        zp = RNG.integers(lo, hi + 1, scale_shape).astype(np.int32)
        inits.append(helper.make_tensor("zp", onnx_type, list(scale_shape),
                                        zp.flatten().tolist()))
        inputs.append("zp")
    nodes = [helper.make_node("DequantizeLinear", inputs, ["wf"], **attrs),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    x = RNG.standard_normal((4, K)).astype(np.float32)
    got, ref = _run_both(_matmul_model(nodes, inits), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fp8_weight_and_saturating_quantize_match_onnxruntime() -> None:
    w = (RNG.standard_normal((K, N)) * 3).astype(np.float32)
    scale = np.float32(0.01)  # x / 0.01 reaches far past 448: saturate=1 clips
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], saturate=1),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wf"]),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(scale), "s"),
             helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])]
    x = RNG.standard_normal((4, K)).astype(np.float32)
    got, ref = _run_both(_matmul_model(nodes, inits, opset=19), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_weight_only_cast_mul_pattern_matches_onnxruntime() -> None:
    w = _weight(np.int8, -127, 127)
    scale = (RNG.random(N) * 0.01).astype(np.float32)
    nodes = [helper.make_node("Cast", ["w"], ["wc"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wc", "s"], ["wf"]),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s")]
    x = RNG.standard_normal((4, K)).astype(np.float32)
    got, ref = _run_both(_matmul_model(nodes, inits, opset=17), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero_point", [0, 3])
def test_activation_fake_quant_rounds_half_to_even_like_onnxruntime(zero_point: int) -> None:
    """x / s lands exactly on .5 ties: round half to even, then saturation."""
    x = (np.arange(-300, 300, 0.5, dtype=np.float32)[:4 * K]).reshape(4, K) * np.float32(0.5)
    scale = np.float32(0.5)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["xq"]),
             helper.make_node("MatMul", ["xq", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp"),
             numpy_helper.from_array(np.eye(K, N, dtype=np.float32), "w")]
    got, ref = _run_both(_matmul_model(nodes, inits, opset=17), x)
    np.testing.assert_array_equal(got, ref)


def test_unsupported_runtime_block_quantize_is_one_clear_error() -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=32,
                              output_dtype=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["q", "s"], ["xq"], axis=1, block_size=32),
             helper.make_node("MatMul", ["xq", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((4, K // 32), np.float32), "s"),
             numpy_helper.from_array(np.ones((K, N), np.float32), "w")]
    with pytest.raises(MaiacError, match="QuantizeLinear.*blocked quantization"):
        expand_model(_matmul_model(nodes, inits))
