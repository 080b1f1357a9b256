"""Golden tests against onnxruntime for the op families of passes/lower_{math,norms,
index,transformer}.py on runtime data (the node tests check every op against the ONNX
reference; these use onnxruntime, transformer-sized shapes and non-constant inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import maiac

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(10)


def _model(node: onnx.NodeProto, inputs: list[tuple[str, int, list[int]]],
           outputs: list[tuple[str, int]], opset: int = 21,
           inits: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _golden(model: onnx.ModelProto, feeds: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    got = maiac.compile(model).run(feeds)
    for out, ref in zip(model.graph.output, want, strict=True):
        have = got[out.name]
        assert have.shape == ref.shape and have.dtype == ref.dtype, (out.name, have.shape)
        np.testing.assert_allclose(have, ref, rtol=1e-5, atol=atol, err_msg=out.name)


def _c(name: str, value: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(value, name)


def test_cumsum_position_ids_from_mask() -> None:
    """The exporters' ``cumsum(mask) * mask - 1`` position ids: int64 CumSum on data."""
    mask = (RNG.random((2, 37)) > 0.3).astype(np.int64)
    for exclusive, reverse in ((0, 0), (1, 0), (0, 1), (1, 1)):
        node = helper.make_node("CumSum", ["m", "axis"], ["y"], exclusive=exclusive,
                                reverse=reverse)
        _golden(_model(node, [("m", I64, [2, 37])], [("y", I64)],
                       inits=[_c("axis", np.array(1, np.int64))]), {"m": mask})


def test_scatter_nd_kv_cache_update() -> None:
    """A KV cache [B, H, S, D] updated at runtime positions (one new token per batch)."""
    cache = RNG.standard_normal((2, 4, 16, 8)).astype(np.float32)
    new = RNG.standard_normal((2, 4, 1, 8)).astype(np.float32)
    pos = np.array([5, 11])
    idx = np.stack(np.meshgrid(np.arange(2), np.arange(4), [0], indexing="ij"), -1)
    idx[..., 2] = pos[:, None, None]
    node = helper.make_node("ScatterND", ["cache", "idx", "new"], ["y"])
    _golden(_model(node, [("cache", F, [2, 4, 16, 8]), ("idx", I64, [2, 4, 1, 3]),
                          ("new", F, [2, 4, 1, 8])], [("y", F)]),
            {"cache": cache, "idx": idx.astype(np.int64), "new": new})


@pytest.mark.parametrize("reduction", ["none", "add", "max"])
def test_scatter_elements(reduction: str) -> None:
    data = RNG.standard_normal((3, 9)).astype(np.float32)
    idx = np.array([[1, 4], [0, 8], [7, 2]], np.int64)
    upd = RNG.standard_normal((3, 2)).astype(np.float32)
    node = helper.make_node("ScatterElements", ["d", "i", "u"], ["y"], axis=1,
                            reduction=reduction)
    _golden(_model(node, [("d", F, [3, 9]), ("i", I64, [3, 2]), ("u", F, [3, 2])], [("y", F)],
                   opset=18), {"d": data, "i": idx, "u": upd})


def test_einsum_attention_scores() -> None:
    q = RNG.standard_normal((2, 3, 5, 8)).astype(np.float32)
    k = RNG.standard_normal((2, 3, 7, 8)).astype(np.float32)
    node = helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhqd,bhkd->bhqk")
    _golden(_model(node, [("q", F, [2, 3, 5, 8]), ("k", F, [2, 3, 7, 8])], [("s", F)]),
            {"q": q, "k": k}, atol=1e-4)


@pytest.mark.parametrize("opset", [6, 11, 13])
def test_clip_with_one_bound(opset: int) -> None:
    x = RNG.standard_normal((4, 33)).astype(np.float32) * 3
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], max=1.5)
        model = _model(node, [("x", F, [4, 33])], [("y", F)], opset=opset)
    else:
        node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
        model = _model(node, [("x", F, [4, 33])], [("y", F)], opset=opset,
                       inits=[_c("hi", np.array(1.5, np.float32))])
    _golden(model, {"x": x})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_modes(mode: str) -> None:
    x = RNG.standard_normal((1, 3, 6, 7)).astype(np.float32)
    node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode=mode)
    inits = [_c("pads", np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)),
             _c("v", np.array(0.5, np.float32))]
    _golden(_model(node, [("x", F, [1, 3, 6, 7])], [("y", F)], inits=inits), {"x": x})


def test_topk_and_argmax_of_logits() -> None:
    logits = RNG.standard_normal((2, 101)).astype(np.float32)
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    _golden(_model(topk, [("x", F, [2, 101])], [("v", F), ("i", I64)],
                   inits=[_c("k", np.array([5], np.int64))]), {"x": logits})
    argmax = helper.make_node("ArgMax", ["x"], ["i"], axis=-1, keepdims=0)
    _golden(_model(argmax, [("x", F, [2, 101])], [("i", I64)]), {"x": logits})


@pytest.mark.parametrize("op", ["Erf", "Round", "Softplus", "Mish", "HardSwish", "LeakyRelu"])
def test_activations(op: str) -> None:
    x = (RNG.standard_normal((3, 50)) * 4).astype(np.float32)
    opset = 22 if op == "Mish" else 21
    _golden(_model(helper.make_node(op, ["x"], ["y"]), [("x", F, [3, 50])], [("y", F)],
                   opset=opset), {"x": x}, atol=1e-5)


def test_group_and_instance_norm() -> None:
    x = RNG.standard_normal((2, 8, 5, 5)).astype(np.float32)
    inits = [_c("s", RNG.standard_normal(8).astype(np.float32)),
             _c("b", RNG.standard_normal(8).astype(np.float32))]
    for node in (helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4),
                 helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])):
        _golden(_model(node, [("x", F, [2, 8, 5, 5])], [("y", F)], inits=inits), {"x": x},
                atol=1e-4)


def test_opset23_block_matches_onnxruntime() -> None:
    """RMSNormalization + RotaryEmbedding (position ids) + GQA causal Attention."""
    path = Path(__file__).parent / "filecheck" / "inputs" / "opset23_block.onnx"
    x = RNG.standard_normal((2, 8, 64)).astype(np.float32)
    pos = np.tile(np.arange(3, 11), (2, 1)).astype(np.int64)
    _golden(onnx.load(str(path)), {"x": x, "position_ids": pos}, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_position_embedding_grid(mode: str) -> None:
    """ViT position-embedding interpolation: a [1, 32, 14, 14] grid resized to 16 x 16."""
    x = RNG.standard_normal((1, 32, 14, 14)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)
    inits = [_c("scales", np.array([1, 1, 16 / 14, 16 / 14], np.float32))]
    _golden(_model(node, [("x", F, [1, 32, 14, 14])], [("y", F)], opset=19, inits=inits),
            {"x": x}, atol=1e-5)


def test_conv_transpose_upsampling() -> None:
    """A stride-2 decoder upsampling (groups 2, padding, output_padding) vs onnxruntime."""
    x = RNG.standard_normal((1, 4, 5, 6)).astype(np.float32)
    inits = [_c("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _c("b", RNG.standard_normal(6).astype(np.float32))]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2],
                            pads=[1, 1, 0, 1], output_padding=[1, 0], group=2)
    _golden(_model(node, [("x", F, [1, 4, 5, 6])], [("y", F)], inits=inits), {"x": x},
            atol=1e-4)


def test_repeated_slices_reuse_probed_views_by_their_constants() -> None:
    """Slices of one shape lower to views found once per (shape, attributes, constants):
    a repeat of a slice reuses its view, a slice with other bounds gets its own."""
    from maiac.passes import lower_layout

    lower_layout._PROBED_VIEWS.clear()
    bounds = [(0, 3), (3, 8), (0, 3)]  # the third repeats the first
    nodes, inits = [], []
    for i, (lo, hi) in enumerate(bounds):
        for name, value in ((f"lo{i}", lo), (f"hi{i}", hi), (f"ax{i}", 1)):
            inits.append(helper.make_tensor(name, I64, [1], [value]))
        nodes.append(helper.make_node("Slice", ["x", f"lo{i}", f"hi{i}", f"ax{i}"], [f"y{i}"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [4, 8])],
                              [helper.make_tensor_value_info(f"y{i}", F, None)
                               for i in range(len(bounds))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    _golden(model, {"x": RNG.standard_normal((4, 8)).astype(np.float32)})
    assert len(lower_layout._PROBED_VIEWS) == 2
