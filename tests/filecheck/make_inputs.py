"""Regenerate the small ONNX inputs of the FileCheck tests: ``python make_inputs.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent / "inputs"


def mlp() -> onnx.ModelProto:
    """x[batch,8] → MatMul → Add bias → Gelu → MatMul → y[batch,4] (opset 20 Gelu)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "fc1.bias"),
        numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "fc2.weight"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1/MatMul"),
        helper.make_node("Add", ["h", "fc1.bias"], ["hb"], name="fc1/Add"),
        helper.make_node("Gelu", ["hb"], ["g"], name="act/Gelu"),
        helper.make_node("MatMul", ["g", "fc2.weight"], ["y"], name="fc2/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def shape_chain() -> onnx.ModelProto:
    """The exporters' reshape: Shape → Gather → Unsqueeze → Concat → Reshape(x, [b, s, 2, 2])."""
    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], name=name, value=numpy_helper.from_array(value)
        )

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="Shape_0"),
        const("c0", np.array(0, np.int64)),
        const("c1", np.array(1, np.int64)),
        const("axes", np.array([0], np.int64)),
        const("heads", np.array([2, 2], np.int64)),
        helper.make_node("Gather", ["shape", "c0"], ["b"], name="Gather_0", axis=0),
        helper.make_node("Gather", ["shape", "c1"], ["s"], name="Gather_1", axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"], name="Unsqueeze_0"),
        helper.make_node("Unsqueeze", ["s", "axes"], ["s1"], name="Unsqueeze_1"),
        helper.make_node("Concat", ["b1", "s1", "heads"], ["new_shape"], name="Concat_0", axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["r"], name="Reshape_0"),
        helper.make_node("Identity", ["r"], ["y"], name="Identity_0"),
    ]
    graph = helper.make_graph(
        nodes, "shape_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MODELS = {"mlp": mlp, "shape_chain": shape_chain}


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, build in MODELS.items():
        onnx.save(build(), HERE / f"{name}.onnx")
