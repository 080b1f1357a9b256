"""rotate-hadamard (QuaRot-style block rotation before quantization)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
import maiac.models as M
from maiac.driver import compile_to_ir, default_pipeline
from maiac.passes.rotate_hadamard import hadamard, rotate_cols, rotate_rows
from maiac.runtime.errors import MaiacError
from maiac.verify import cosine


def two_linear(m: int = 16, k: int = 64, n: int = 96, seed: int = 0,
               outliers: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    """y = (x @ W1 + b1) @ W2, the first matmul's output read only by the second."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((k, k)).astype(np.float32) / 8
    b1 = rng.standard_normal(k).astype(np.float32)
    w2 = rng.standard_normal((k, n)).astype(np.float32) / 8
    x = rng.standard_normal((m, k)).astype(np.float32)
    if outliers:  # a few channels 50x larger, as in LLM activations
        x[:, [3, 17, 40]] *= 50
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "two_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "W2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x


def test_hadamard_is_orthonormal_and_rotations_cancel() -> None:
    h = hadamard(32)
    assert np.allclose(h @ h.T, np.eye(32)) and np.allclose(h, h.T)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5, 64)), rng.standard_normal((64, 7))
    assert np.allclose(rotate_cols(x, h) @ rotate_rows(w, h), x @ w, atol=1e-4)
    with pytest.raises(MaiacError, match="not a power of two"):
        hadamard(24)


def test_fp32_outputs_unchanged_and_merge_into_producer() -> None:
    model, x = two_linear()
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    pipe = default_pipeline(None).replace("fuse-epilogue", "fuse-epilogue,rotate-hadamard")
    out = maiac.compile(model, pipeline=pipe).run({"x": x})["y"]
    assert np.abs(out - ref).max() < 1e-4
    ir = compile_to_ir(model, emit="maia", pipeline=pipe)
    # fc2's input came from fc1 (bias, no activation): merged, no rotation matmul on the
    # machine for it; fc1's own input x is rotated online
    assert 'hadamard_out = 32' in ir
    assert ir.count('rotation = true') == 1


def test_llama_fp32_exact_and_spec_method() -> None:
    m = M.llama_decoder(M.LLAMA_TINY, seq=32)
    ids = np.random.default_rng(0).integers(0, 256, (1, 32))
    ref = ort.InferenceSession(m.SerializeToString()).run(None, {"input_ids": ids})[0]
    pipe = default_pipeline(None).replace("fuse-epilogue", "fuse-epilogue,rotate-hadamard")
    out = maiac.compile(m, pipeline=pipe).run({"input_ids": ids})["logits"]
    assert np.abs(out - ref).max() < 1e-4
    assert "rotate-hadamard,quantize" in default_pipeline("mxfp4,method=hadamard")


def test_rotation_helps_mxfp4_with_outlier_channels() -> None:
    model, x = two_linear(outliers=True)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    plain = maiac.compile(model, quant="mxfp4").run({"x": x})["y"]
    rotated = maiac.compile(model, quant="mxfp4,method=hadamard").run({"x": x})["y"]
    assert cosine(rotated, ref) > cosine(plain, ref)
