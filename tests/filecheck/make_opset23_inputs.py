"""A Llama-style block written with the opset-23 transformer ops, for the FileCheck tests
of their lowering (RMSNormalization, RotaryEmbedding, Attention with GQA + causal mask).
Random weights, fixed seed. Run from the repository root::

    python tests/filecheck/make_opset23_inputs.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "inputs"
B, S, D, HQ, HKV, HD, MAX_POS = 2, 8, 64, 4, 2, 16, 32


def opset23_block() -> onnx.ModelProto:
    rng = np.random.default_rng(23)

    def weight(name: str, *shape: int, scale: float = 0.1) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    angles = np.arange(MAX_POS)[:, None] / 10000 ** (np.arange(HD // 2) * 2 / HD)
    inits = [
        weight("norm.weight", D, scale=1.0), weight("wq", D, HQ * HD), weight("wk", D, HKV * HD),
        weight("wv", D, HKV * HD), weight("wo", HQ * HD, D),
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos_cache"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin_cache"),
        numpy_helper.from_array(np.array([B, S, HQ, HD], np.int64), "q_shape"),
        numpy_helper.from_array(np.array([B, S, HKV, HD], np.int64), "kv_shape"),
        numpy_helper.from_array(np.array([B, S, HQ * HD], np.int64), "o_shape"),
    ]
    nodes = [
        helper.make_node("RMSNormalization", ["x", "norm.weight"], ["h"], name="/norm",
                         epsilon=1e-6),
        helper.make_node("MatMul", ["h", "wq"], ["q2"], name="/q_proj"),
        helper.make_node("MatMul", ["h", "wk"], ["k2"], name="/k_proj"),
        helper.make_node("MatMul", ["h", "wv"], ["v2"], name="/v_proj"),
        helper.make_node("Reshape", ["q2", "q_shape"], ["q3"], name="/q_split"),
        helper.make_node("Reshape", ["k2", "kv_shape"], ["k3"], name="/k_split"),
        helper.make_node("Reshape", ["v2", "kv_shape"], ["v3"], name="/v_split"),
        helper.make_node("Transpose", ["q3"], ["q"], name="/q_heads", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k3"], ["k"], name="/k_heads", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["v3"], ["v"], name="/v_heads", perm=[0, 2, 1, 3]),
        helper.make_node("RotaryEmbedding", ["q", "cos_cache", "sin_cache", "position_ids"],
                         ["q_rot"], name="/q_rope"),
        helper.make_node("RotaryEmbedding", ["k", "cos_cache", "sin_cache", "position_ids"],
                         ["k_rot"], name="/k_rope"),
        helper.make_node("Attention", ["q_rot", "k_rot", "v"], ["attn"], name="/attention",
                         is_causal=1),
        helper.make_node("Transpose", ["attn"], ["attn_t"], name="/o_heads", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["attn_t", "o_shape"], ["attn2"], name="/o_merge"),
        helper.make_node("MatMul", ["attn2", "wo"], ["o"], name="/o_proj"),
        helper.make_node("Add", ["x", "o"], ["y"], name="/residual"),
    ]
    graph = helper.make_graph(
        nodes, "opset23_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [B, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    onnx.save(opset23_block(), str(OUT / "opset23_block.onnx"))


if __name__ == "__main__":
    main()
