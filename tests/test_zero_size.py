"""Zero-size tensors: an empty Slice/Split piece and a reduce over an empty input compile and
run, matching onnxruntime (fold-constants treats a zero-size value as known: it has no
values, so the machine computes nothing for it)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import maiac

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int]]],
           outputs: list[str], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s)
                                           for n, s in inputs],
                              [helper.make_tensor_value_info(n, F, None) for n in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _golden(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    got = maiac.compile(model).run(feeds)
    for out, ref in zip(model.graph.output, want, strict=True):
        assert got[out.name].shape == ref.shape, out.name
        np.testing.assert_allclose(got[out.name], ref, rtol=1e-6, atol=1e-6)
    return got


def test_empty_split_piece_is_dropped_by_concat() -> None:
    # RotaryEmbedding's expansion: split the rotated part off, rotate, concat the rest
    ints = [helper.make_tensor("split", I64, [2], [8, 0])]
    nodes = [helper.make_node("Split", ["x", "split"], ["a", "b"], axis=-1),
             helper.make_node("Neg", ["a"], ["na"]),
             helper.make_node("Concat", ["na", "b"], ["y"], axis=-1),
             helper.make_node("Identity", ["b"], ["empty"])]
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    got = _golden(_model(nodes, [("x", [2, 3, 8])], ["y", "empty"], ints), {"x": x})
    assert got["empty"].shape == (2, 3, 0)


def test_slice_past_the_end_and_reduce_over_empty() -> None:
    ints = [helper.make_tensor("starts", I64, [1], [10]),
            helper.make_tensor("ends", I64, [1], [20]),
            helper.make_tensor("axes", I64, [1], [1])]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
             helper.make_node("ReduceSum", ["s", "axes"], ["total"], keepdims=1),
             helper.make_node("Add", ["total", "x"], ["y"]),
             helper.make_node("ReduceMax", ["e"], ["m"], keepdims=0)]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    e = np.zeros((2, 0), np.float32)
    got = _golden(_model(nodes, [("x", [3, 4]), ("e", [2, 0])], ["s", "y", "m"],
                         ints), {"x": x, "e": e})
    assert got["s"].shape == (3, 0)
    np.testing.assert_array_equal(got["y"], x)  # the sum over nothing is 0
    assert got["m"].shape == ()  # max over nothing: onnxruntime's value, compared above
