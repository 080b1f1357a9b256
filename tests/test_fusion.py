"""Fusion passes against onnxruntime, on exported layers and hand-built attention.

The layers in tests/filecheck/inputs are cut from the committed exports (see
tests/filecheck/make_fusion_inputs.py); the FileCheck tests there pin each pattern,
these tests check the fused programs compute what onnxruntime computes.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.driver import STAGES
from maiac.importer import import_model
from maiac.ir import maia
from maiac.ir.onnx import make_context
from maiac.passes.registry import parse_pipeline

INPUTS = Path(__file__).parent / "filecheck" / "inputs"
LAYERS = ["gpt2_layer0", "bert_layer0", "llama_layer0"]
LOWER = f"{STAGES['onnx']},{STAGES['maia']}"
UNFUSED = f"{LOWER},{STAGES['tiled']}"
NEG = np.float32(np.finfo(np.float32).min)


def maia_ops(model: str | Path | onnx.ModelProto, pipeline: str) -> collections.Counter:
    """``maia.<op>{fn}`` counts at the tensor level after ``pipeline``."""
    module = import_model(model)
    for p in parse_pipeline(pipeline):
        p.apply(make_context(), module)
    module.verify()
    counts: collections.Counter = collections.Counter()
    for op in module.walk():
        if op.name.startswith("maia.") and op.name not in ("maia.constant", "maia.reshape"):
            fn = maia.attr(op, "fn")
            counts[op.name + (f"{{{fn}}}" if fn else "")] += 1
    return counts


def layer_inputs(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Hidden states and an additive causal + padding mask (last 2 keys of batch 1 padded)."""
    model = onnx.load(str(path))
    b, s, d = (x.dim_value for x in model.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.default_rng(seed).standard_normal((b, s, d)).astype(np.float32)
    hidden = np.triu(np.ones((s, s), bool), 1)[None, None].repeat(b, 0)
    hidden[1, ..., -2:] = True
    return {"x": x, "mask": np.where(hidden, NEG, np.float32(0)).astype(np.float32)}


@pytest.mark.parametrize("name", LAYERS)
def test_fused_layer_matches_onnxruntime(name: str) -> None:
    path = INPUTS / f"{name}.onnx"
    feeds = layer_inputs(path)
    ref = ort.InferenceSession(str(path)).run(None, feeds)[0]
    fused = maiac.compile(path)
    unfused = maiac.compile(path, pipeline=UNFUSED)
    np.testing.assert_allclose(fused.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)
    assert len(fused.program.instructions) < len(unfused.program.instructions)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_fuses_to_machine_ops(name: str) -> None:
    """After the fuse stage only matmuls, norms and attention remain (plus RoPE for Llama)."""
    before = maia_ops(INPUTS / f"{name}.onnx", LOWER)
    after = maia_ops(INPUTS / f"{name}.onnx", f"{LOWER},{STAGES['fuse']}")
    assert after["maia.attention"] == 1
    assert not any(k.startswith(("maia.softmax", "maia.reduce")) for k in after)
    assert "maia.unary{gelu}" not in after and "maia.unary{gelu_tanh}" not in after
    assert after["maia.norm{layernorm}"] + after["maia.norm{rmsnorm}"] >= 2
    assert sum(after.values()) < sum(before.values()) / 2
    if name == "llama_layer0":  # q and k: one maia.rope each, no Slice/Neg/Concat left
        assert after["maia.rope"] == 2
        assert not any(k.startswith(("maia.concat", "maia.unary", "maia.binary")) for k in after)


def _rope_model(b: int, s: int, h: int, d: int, tables_as_inputs: bool) -> onnx.ModelProto:
    """x [B, S, H*D] → head split, transpose, rotate-half RoPE as llama_decoder writes it."""
    from maiac.models import GraphBuilder, _rope, _rope_tables

    g = GraphBuilder(0)
    cos_np, sin_np = _rope_tables(np.arange(s), d, 10000.0)
    if tables_as_inputs:
        cos, sin = "cos", "sin"
    else:
        cos, sin = g.const(cos_np, "rope_cos"), g.const(sin_np, "rope_sin")
    x = g.op("Transpose", [g.reshape("x", [b, s, h, d])], perm=[0, 2, 1, 3])
    g.op("Identity", [_rope(g, x, cos, sin, d)], name="y")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, h * d])]
    if tables_as_inputs:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [s, d]) for n in (cos, sin)]
    return g.model("rope", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                  [b, h, s, d])])


@pytest.mark.parametrize(("b", "tables_as_inputs"), [(2, False), (2, True), (1, False)])
def test_rope_matches_onnxruntime(b: int, tables_as_inputs: bool) -> None:
    """One maia.rope (constant or run-time cos/sin tables), reading x through its transpose
    (batch 1: the Slice views have stride 0 on the unit batch dim)."""
    from maiac.models import _rope_tables

    s, h, d = 24, 3, 32
    model = _rope_model(b, s, h, d, tables_as_inputs)
    ops = maia_ops(model, f"{LOWER},{STAGES['fuse']}")
    assert ops == {"maia.rope": 1}
    feeds = {"x": np.random.default_rng(0).standard_normal((b, s, h * d)).astype(np.float32)}
    if tables_as_inputs:
        cos, sin = _rope_tables(np.arange(s) + 7, d, 500000.0)
        feeds |= {"cos": cos, "sin": sin}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    compiled = maiac.compile(model)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-5, atol=1e-6)


def _attention_model(b: int, h: int, hkv: int, s: int, d: int, fill: float,
                     seed: int = 0) -> onnx.ModelProto:
    """q/k/v projections, GQA repeat (Unsqueeze/Expand/Reshape), causal Where, Softmax."""
    rng = np.random.default_rng(seed)
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    dm = h * d
    g = h // hkv
    nodes = []
    for t, heads in (("q", h), ("k", hkv), ("v", hkv)):
        w = const(f"W{t}", (rng.standard_normal((dm, heads * d)) * 0.2).astype(np.float32))
        nodes += [helper.make_node("MatMul", ["x", w], [f"{t}0"]),
                  helper.make_node("Reshape", [f"{t}0", const(f"s{t}", np.array(
                      [b, s, heads, d], np.int64))], [f"{t}1"]),
                  helper.make_node("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 1, 3])]
        if t != "q" and g > 1:
            nodes += [helper.make_node("Unsqueeze", [f"{t}2", const(f"u{t}", np.array(
                          [2], np.int64))], [f"{t}3"]),
                      helper.make_node("Expand", [f"{t}3", const(f"e{t}", np.array(
                          [b, hkv, g, s, d], np.int64))], [f"{t}4"]),
                      helper.make_node("Reshape", [f"{t}4", const(f"r{t}", np.array(
                          [b, h, s, d], np.int64))], [f"{t}5"])]
        else:
            nodes.append(helper.make_node("Identity", [f"{t}2"], [f"{t}5"]))
    nodes += [
        helper.make_node("Transpose", ["k5"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q5", "kt"], ["s0"]),
        helper.make_node("Div", ["s0", const("sc", np.array(np.sqrt(d), np.float32))], ["s1"]),
        helper.make_node("Where", [const("causal", np.triu(np.ones((s, s), bool), 1)),
                                   const("neg", np.array(fill, np.float32)), "s1"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v5"], ["o"]),
    ]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, dm])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [b, h, s, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(("b", "h", "hkv", "s", "d", "fill"), [
    (2, 4, 2, 16, 8, -1e9),        # GQA, one key block
    (1, 2, 1, 1024, 16, -np.inf),  # MQA, two key blocks of 512: the online softmax
])
def test_flash_attention_matches_onnxruntime(b: int, h: int, hkv: int, s: int, d: int,
                                             fill: float) -> None:
    model = _attention_model(b, h, hkv, s, d, fill)
    ops = maia_ops(model, f"{LOWER},{STAGES['fuse']}")
    assert ops["maia.attention"] == 1 and "maia.softmax{softmax}" not in ops
    x = np.random.default_rng(1).standard_normal((b, s, h * d)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    compiled = maiac.compile(model)
    np.testing.assert_allclose(compiled.run({"x": x})["o"], ref, rtol=1e-4, atol=1e-5)
    # neither the [S, S] scores nor the repeated K/V are ever stored outside TSRAM
    biggest = max(buf.nbytes for buf in compiled.program.buffers
                  if buf.kind == "act" and buf.level != "tsram")
    assert biggest < b * h * s * s * 4
    assert biggest <= max(b * s * h * d * 4, s * s)


def test_causal_constant_mask_is_recorded() -> None:
    module = import_model(_attention_model(1, 2, 2, 8, 4, -1e9))
    for p in parse_pipeline(f"{LOWER},fuse-attention"):
        p.apply(make_context(), module)
    (attention,) = [op for op in module.walk() if op.name == "maia.attention"]
    assert maia.attr(attention, "causal") is True
    assert maia.attr(attention, "scale") == pytest.approx(0.5)


EXPORTS = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["gpt2_torchscript", "llama_torchscript",
                                  "gpt2_dynamo", "llama_dynamo"])
def test_exported_model_op_counts(name: str) -> None:
    """Whole exports (once the importer takes all their ops): fewer ops, same logits."""
    import json

    from maiac.runtime.errors import MaiacError

    entry = json.loads((EXPORTS / "MANIFEST.json").read_text())["models"][name]
    shapes = {i["name"]: tuple(i["stored_shape"]) for i in entry["inputs"]}
    path = EXPORTS / f"{name}.onnx"
    try:
        import_model(path, shapes)
    except MaiacError as err:
        pytest.skip(f"importer: {err}")
    feeds = dict(np.load(EXPORTS / f"{name}.inputs.npz"))
    ref = dict(np.load(EXPORTS / f"{name}.ref.npz"))
    out = maiac.compile(path, shapes=shapes).run(feeds)
    for key, value in out.items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-4, atol=1e-4)


def _causal_model(b: int, h: int, hkv: int, sq: int, past: int, d: int,
                  masked: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Attention of ``sq`` new tokens over ``past`` cached ones (past_k/past_v inputs,
    Concat), GQA repeat, causal Where mask ``[sq, past + sq]`` (not square with a cache),
    output transposed back to ``[B, S, H*D]`` as exporters do."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    dm, g, sk = h * d, h // hkv, sq + past
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, sq, dm])]
    for t, heads in (("q", h), ("k", hkv), ("v", hkv)):
        w = const(f"W{t}", (rng.standard_normal((dm, heads * d)) * 0.2).astype(np.float32))
        shape = const(f"s{t}", np.array([b, sq, heads, d], np.int64))
        nodes += [helper.make_node("MatMul", ["x", w], [f"{t}0"]),
                  helper.make_node("Reshape", [f"{t}0", shape], [f"{t}1"]),
                  helper.make_node("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 1, 3])]
        cur = f"{t}2"
        if t != "q" and past:
            inputs.append(helper.make_tensor_value_info(f"past_{t}", TensorProto.FLOAT,
                                                        [b, hkv, past, d]))
            nodes.append(helper.make_node("Concat", [f"past_{t}", cur], [f"{t}c"], axis=2))
            cur = f"{t}c"
        if t != "q" and g > 1:
            nodes += [helper.make_node("Unsqueeze", [cur, const(f"u{t}", np.array(
                          [2], np.int64))], [f"{t}3"]),
                      helper.make_node("Expand", [f"{t}3", const(f"e{t}", np.array(
                          [b, hkv, g, sk, d], np.int64))], [f"{t}4"]),
                      helper.make_node("Reshape", [f"{t}4", const(f"r{t}", np.array(
                          [b, h, sk, d], np.int64))], [f"{t}5"])]
        else:
            nodes.append(helper.make_node("Identity", [cur], [f"{t}5"]))
    scores = "s1"
    nodes += [helper.make_node("Transpose", ["k5"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q5", "kt"], ["s0"]),
              helper.make_node("Div", ["s0", const("sc", np.array(np.sqrt(d), np.float32))],
                               ["s1"])]
    if masked:
        hidden = const("causal", np.triu(np.ones((sq, sk), bool), 1 + past))
        nodes.append(helper.make_node("Where", [hidden, const("neg", np.array(-1e9, np.float32)),
                                                "s1"], ["s2"]))
        scores = "s2"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v5"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", const("so", np.array([b, sq, dm], np.int64))],
                               ["y"])]
    graph = helper.make_graph(nodes, "causal", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [b, sq, dm])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(("b", "h", "hkv", "sq", "past", "d"), [
    (1, 2, 1, 1024, 0, 16),   # prefill, query groups over two key blocks of 512
    (2, 4, 2, 200, 0, 8),     # GQA, one block each way
    (1, 2, 1, 1000, 0, 8),    # seq 1000: blocks of 125 queries / 500 keys, off the diagonal
    (1, 4, 2, 96, 160, 16),   # chunked prefill on a KV cache: mask [96, 256]
    (1, 2, 1, 640, 384, 8),   # cache not a multiple of the query block
    (1, 2, 2, 1, 300, 16),    # decode: one query over 301 keys, nothing hidden
])
def test_causal_attention_generates_mask(b: int, h: int, hkv: int, sq: int, past: int,
                                         d: int) -> None:
    """A constant causal mask is never loaded: the TVP makes it per block, hidden key
    blocks are skipped; outputs match onnxruntime."""
    model = _causal_model(b, h, hkv, sq, past, d)
    module = import_model(model)
    for p in parse_pipeline(f"{LOWER},{STAGES['fuse']}"):
        p.apply(make_context(), module)
    (attention,) = [op for op in module.walk() if op.name == "maia.attention"]
    assert maia.attr(attention, "causal") is True and len(attention.operands) == 3
    # written as [B, S, H, D] for the output (one query: the transpose is a reshape)
    assert "out_view" in attention.attributes or sq == 1
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([x.dim_value for x in i.type.tensor_type.shape.dim])
             .astype(np.float32) for i in model.graph.input}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    compiled = maiac.compile(model)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)
    # constants: the projections and one arange of Sk positions, no [Sq, Sk] mask
    consts = {buf.name.split(":", 1)[1]: buf.nbytes for buf in compiled.program.buffers
              if buf.kind == "const"}
    assert set(consts) <= {"Wq", "Wk", "Wv", f"positions{sq + past}"}


def test_causal_attention_skips_hidden_blocks() -> None:
    """Causal prefill costs about half of the same attention without a mask (TTU time)."""
    times = {}
    for masked in (True, False):
        compiled = maiac.compile(_causal_model(1, 8, 8, 2048, 0, 64, masked=masked),
                                 shape_only=True)
        report = compiled.report()
        times[masked] = sum(op["time_s"] for op in report["ops"] if op["kind"] == "attention")
    assert times[True] < 0.7 * times[False]


@pytest.mark.parametrize("quant", [None, "fp8", "mxfp4"])
def test_gate_up_merged_matches_separate(quant: str | None) -> None:
    """fuse-swiglu's merged gate/up matmul ([Wg | Wu], glu = mul) computes what the
    separate gate matmul with the up projection as its epilogue computes, quantized too
    (the weights' blocks run along K, so the concatenation quantizes column for column)."""
    from maiac import models
    from maiac.driver import default_pipeline
    from maiac.inputs import random_inputs

    model = models.llama_decoder(models.LlamaConfig("t", 64, 1, 4, 2, 256, 128), seq=64)
    merged_pipe = default_pipeline(quant)
    assert "fuse-swiglu" in merged_pipe
    separate_pipe = merged_pipe.replace("fuse-swiglu", "fuse-swiglu{merge=false}")
    calib = None if quant != "fp8" else random_inputs(model, {}, seed=1)
    merged = maiac.compile(model, quant=quant, pipeline=merged_pipe, calib=calib)
    separate = maiac.compile(model, quant=quant, pipeline=separate_pipe, calib=calib)
    assert "up_proj" not in " ".join(i.op for i in merged.program.instructions)
    assert "up_proj" in " ".join(i.op for i in separate.program.instructions)
    inputs = random_inputs(model, {}, seed=0)
    a, b = merged.run(inputs)["logits"], separate.run(inputs)["logits"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
