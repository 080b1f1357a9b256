"""Golden tests: maiac's machine model against onnxruntime on the same fp32 inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import maiac
from maiac import models
from maiac.inputs import random_inputs
from maiac.runtime.errors import MaiacError


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def check(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
          rtol: float = 1e-4, atol: float = 1e-5,
          target_params: dict[str, str] | None = None) -> maiac.driver.CompiledModel:
    compiled = maiac.compile(model, shapes=shapes, target_params=target_params)
    feeds = random_inputs(model, shapes or {}, seed=0)
    got = compiled.run(feeds)
    want = reference(model, feeds)
    assert set(got) == set(want)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol, err_msg=name)
    return compiled


def test_mlp_gelu_layernorm() -> None:
    compiled = check(models.mlp(batch=4, width=64, layers=2))
    kinds = {row["kind"] for row in compiled.program.meta["ops"].values()}
    assert "matmul" in kinds and "norm" in kinds


def test_mlp_symbolic_batch_bound_by_shape() -> None:
    model = models.mlp(batch=4, width=32, layers=1, symbolic=True)
    check(model, shapes={"x": (3, 32)})


def test_transformer_block_causal_attention() -> None:
    check(models.transformer_block(batch=2, seq=16, d_model=64, heads=4))


def test_transformer_with_embeddings_and_logits() -> None:
    check(models.transformer(layers=2))


def test_wide_matmul_uses_every_tile_and_k_loop() -> None:
    """A matmul whose operands exceed TSRAM (256 KiB here) is split over tiles and K."""
    k, n = 2048, 1024
    w = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32) * 0.02
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="big")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, n])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    compiled = check(model, rtol=1e-4, atol=1e-4, target_params={"tsram_bytes": "256KiB"})
    loops = [i for i in compiled.program.instructions if i.kind == "loop"]
    assert loops, "expected a K loop: a 64x2048 fp32 row block cannot sit in 256 KiB"
    def leaves(instrs):
        for i in instrs:
            yield from leaves(i.body) if i.kind == "loop" else [i]
    grids = {i.grid for i in leaves(compiled.program.instructions) if i.kind == "matmul"}
    # a 64-row (memory-bound) product over maia200's 36 tiles: at least 32 of them
    assert any(np.prod(g) >= 32 for g in grids), grids


def test_op_that_fits_no_tiling_is_named() -> None:
    """A softmax row larger than TSRAM cannot be tiled: the error names the node."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1, name="huge_softmax")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1 << 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1 << 20])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(MaiacError, match="huge_softmax.*TSRAM"):
        maiac.compile(model)


def test_smaller_tsram_still_computes_the_same() -> None:
    """`--target-param tsram_bytes=...`: tiles shrink, results do not change."""
    model = models.transformer_block(batch=1, seq=16, d_model=64, heads=4)
    feeds = random_inputs(model, {}, seed=3)
    small = maiac.compile(model, target_params={"tsram_bytes": "16KiB"}).run(feeds)
    want = reference(model, feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(small[name], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_llama_rope_gqa_swiglu(mode: str) -> None:
    """RMSNorm, rotate-half RoPE, GQA by Expand/Reshape, SwiGLU; decode with a KV cache."""
    check(models.llama_decoder(models.LLAMA_TINY, mode=mode, batch=2, seq=8, context=16))


def test_llama_8b_shape_only_compiles_without_weights() -> None:
    model = models.llama_decoder(models.LLAMA3_8B, mode="decode", context=256, layers=2,
                                 weights="shape_only")
    compiled = maiac.compile(model, shape_only=True)
    assert compiled.program.meta["shape_only"]
    # only the small tables the graph itself holds (RoPE, masks, scalars) carry bytes
    assert sum(len(b) for b in compiled.program.constants.values()) < (1 << 20)
    report = compiled.report()
    assert report["weight_bytes"] > 4 * 2 * 4096 * 128256  # embeddings + lm_head at least
    with pytest.raises(MaiacError):
        compiled.run({})


@pytest.mark.parametrize("quant", ["bf16", "fp8", "mxfp4", "nvfp4"])
def test_shape_only_models_quantize_for_timing(quant: str) -> None:
    """Narrow formats apply to weights that have no values: bytes shrink, time drops."""
    model = models.llama_decoder(models.LLAMA3_8B, mode="decode", context=256, layers=1,
                                 weights="shape_only")
    fp32 = maiac.compile(model, shape_only=True).report()
    narrow = maiac.compile(model, shape_only=True, quant=quant).report()
    assert narrow["weight_bytes"] < fp32["weight_bytes"]
    assert narrow["modeled_time_s"] < fp32["modeled_time_s"]
