"""Golden tests on models as deployment toolchains write them (tests/data/toolchain).

Every model there was written by a real toolchain (optimum-onnx, onnxruntime-genai's model
builder, onnxruntime's optimizer and quantizers, AMD Quark) from a random-weight transformers
config by scripts/export_toolchain_models.py, with onnxruntime's outputs stored beside it.
maiac compiles each (symbolic dims bound from the stored inputs) and must match onnxruntime
within rtol 1e-4 / atol 1e-5 on every output (logits and the present KV cache; AMD Quark's MX
models run in native MX formats and are compared with onnxruntime + Quark's custom-op
library), except where
onnxruntime's kernel computes in another precision than the graph says
(MatMulNBits ``accuracy_level=4`` quantizes activations to int8): those by cosine >= 0.999
and top-1 agreement of the logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import maiac
from maiac.verify import cosine

DATA = Path(__file__).parent / "data" / "toolchain"
MODELS: dict[str, dict[str, Any]] = json.loads((DATA / "MANIFEST.json").read_text())["models"]
RTOL, ATOL = 1e-4, 1e-5
MIN_COSINE = 0.999

# name -> why maiac cannot import it yet (xfail(strict): a fix shows up as XPASS)
NOT_YET: dict[str, str] = {}
# element-level reference data, not a model to compile (test_quark_mx_elements_bit_exact)
NOT_A_MODEL = ("quark_mx_elements",)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def int8_activations(name: str) -> bool:
    """Whether onnxruntime runs the model's int4 matmuls with int8 activations.

    MatMulNBits with ``accuracy_level=4`` does; so does a blocked int4 DequantizeLinear
    feeding a MatMul, which onnxruntime's graph optimizer fuses into such a MatMulNBits
    (session option ``session.qdq_matmulnbits_accuracy_level``, default 4).
    """
    model = onnx.load(str(DATA / f"{name}.onnx"), load_external_data=False)
    return any(
        (n.op_type == "MatMulNBits" and any(a.name == "accuracy_level" and a.i == 4
                                            for a in n.attribute))
        or (n.op_type == "DequantizeLinear" and any(a.name == "block_size" and a.i > 0
                                                    for a in n.attribute))
        for n in model.graph.node)


def cases() -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=NOT_YET[name])]
                         if name in NOT_YET else []) for name in sorted(MODELS)
            if name not in NOT_A_MODEL]


def check(name: str, got: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> None:
    assert set(got) == set(refs)
    approximate = int8_activations(name)
    for output, ref in refs.items():
        if approximate:
            assert cosine(got[output], ref) >= MIN_COSINE, output
            if output == "logits":
                agree = np.mean(got[output].argmax(-1) == ref.argmax(-1))
                assert agree == 1.0, f"top-1 agreement {agree}"
        else:
            np.testing.assert_allclose(got[output], ref, rtol=RTOL, atol=ATOL, err_msg=output)


@pytest.mark.parametrize("name", cases())
def test_toolchain_model_matches_onnxruntime(name: str) -> None:
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    refs = load_npz(DATA / f"{name}.ref.npz")
    program = maiac.compile(DATA / f"{name}.onnx", shapes={k: v.shape for k, v in feeds.items()})
    check(name, program.run(feeds), refs)


def _genai_prefill(name: str) -> dict[str, np.ndarray]:
    """A first prompt of 5 tokens, row 1 right-padded to 3: GQA's first-prompt path."""
    model = onnx.load(str(DATA / f"{name}.onnx"), load_external_data=False)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)
    feeds: dict[str, np.ndarray] = {
        "input_ids": np.random.default_rng(5).integers(1, 256, (2, 5)) * mask,
        "attention_mask": mask}
    kv_heads = MODELS[name]["genai_config"]["num_key_value_heads"]
    head = MODELS[name]["genai_config"]["head_size"]
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            feeds[value.name] = np.zeros((2, kv_heads, 0, head), np.float32)
    return feeds


@pytest.mark.parametrize("name", ["genai_llama_fp32", "genai_phi3_fp32"])
def test_genai_first_prompt_with_padding_matches_onnxruntime(name: str) -> None:
    """The prefill (empty past, padded row): positions and masks from the real seqlens_k."""
    feeds = _genai_prefill(name)
    session = ort.InferenceSession(str(DATA / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    refs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                    strict=True))
    program = maiac.compile(DATA / f"{name}.onnx", shapes={k: v.shape for k, v in feeds.items()})
    got = program.run(feeds)
    valid = feeds["attention_mask"].astype(bool)  # padded query rows are don't-care
    for output, ref in refs.items():
        if output == "logits":
            np.testing.assert_allclose(got[output][valid], ref[valid], rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_allclose(got[output], ref, rtol=RTOL, atol=ATOL, err_msg=output)


def test_cli_verify_against_stored_reference_and_custom_op_lib(tmp_path: Path) -> None:
    """`verify --reference OUT.npz` compares to stored outputs (no onnxruntime run); a
    corrupted reference fails; a missing custom-op library is one clear error."""
    from click.testing import CliRunner

    from maiac.cli import main

    name = "onnxqdq_llama_mxfp8"  # onnxruntime cannot run it: the stored reference is needed
    model, inputs = str(DATA / f"{name}.onnx"), str(DATA / f"{name}.inputs.npz")
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", model, "--inputs", inputs, "--reference",
                              str(DATA / f"{name}.ref.npz"), "--atol", "0.01", "--json"])
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)
    assert result["reference"] == "stored" and result["onnxruntime_s"] is None
    refs = load_npz(DATA / f"{name}.ref.npz")
    refs["logits"] = refs["logits"] + 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, **refs)
    failed = runner.invoke(main, ["verify", model, "--inputs", inputs, "--reference", str(bad),
                                  "--atol", "0.01"])
    assert failed.exit_code == 1, failed.output
    missing = runner.invoke(main, ["verify", model, "--inputs", inputs,
                                   "--ort-custom-op-lib", str(tmp_path / "nope.so")])
    assert missing.exit_code == 2 and "nope.so: no such --ort-custom-op-lib" in missing.output


# -- AMD Quark MX ------------------------------------------------------------------------

def test_quark_mx_elements_bit_exact() -> None:
    """maiac's MX quantization (runtime.formats, floor scale rule) equals Quark's
    MXQuantizeDequantize kernel (run by onnxruntime with Quark's library) value for value
    on edge cases (ties, saturation, zero blocks, 2^+-100 scales), along both axes, for
    every element dtype; bit for bit except Quark's +0 for a negative value rounding to 0."""
    from maiac.importers.quark import ELEMENT_FORMATS
    from maiac.runtime import formats

    x = load_npz(DATA / "quark_mx_elements.inputs.npz")["x"]
    refs = load_npz(DATA / "quark_mx_elements.ref.npz")
    assert len(refs) == 2 * len(ELEMENT_FORMATS)
    for name, ref in refs.items():
        dtype, axis = name.rsplit("_axis", 1)
        got = formats.fake_quantize(x, ELEMENT_FORMATS[dtype], axis=-1 if axis == "1" else 0,
                                    scale_mode="floor")
        np.testing.assert_array_equal(got, ref, err_msg=name)
        nonzero = ref != 0
        assert np.array_equal(got[nonzero].view(np.uint32), ref[nonzero].view(np.uint32)), name
        assert np.count_nonzero(ref) > 128, name  # not a vacuous comparison


def test_quark_mx_model_runs_native_mx_formats() -> None:
    """A Quark MXFP4 model compiles with no --quant into MX matmuls (weights stored as
    codes + E8M0 scales, activations quantized on the TVP) named by its nodes, equals
    the reference, and differs from the same graph run without its MX (--quant none)."""
    from maiac.driver import compile_module

    name = "quark_llama_mxfp4"
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    ref = load_npz(DATA / f"{name}.ref.npz")["logits"]
    module = compile_module(DATA / f"{name}.onnx")
    summary = json.loads(module.attributes["maia.quant"].data)
    assert summary["spec"] == "model"
    assert len(summary["ops"]) == 15 and set(summary["ops"].values()) == {"w=mxfp4,a=mxfp4"}
    assert set(summary["attention"].values()) == {"f32"}  # Quark left attention unquantized
    program = maiac.compile(DATA / f"{name}.onnx")
    assert program.program.meta["quant"] == "model"
    np.testing.assert_allclose(program.run(feeds)["logits"], ref, rtol=RTOL, atol=ATOL)
    plain = maiac.compile(DATA / f"{name}.onnx", quant="none").run(feeds)["logits"]
    assert cosine(plain, ref) < 0.99  # the MX is what makes the outputs agree


def test_quark_mx_model_keeps_its_formats_on_two_chips() -> None:
    """--chips 2 applies the model's own MX formats as one chip does (the group compile
    used to quantize nothing without --quant), and the group equals the reference."""
    from maiac.chips import compile_chips

    name = "quark_llama_mxfp4"
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    ref = load_npz(DATA / f"{name}.ref.npz")["logits"]
    group = compile_chips(DATA / f"{name}.onnx", 2)
    assert {p.meta["quant"] for p in group.programs} == {"model"}
    np.testing.assert_allclose(group.run(feeds)["logits"], ref, rtol=RTOL, atol=ATOL)


def _mx_matmul(element_dtype: str, block_size: int = 32, reader: str = "MatMul"
               ) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    mx = helper.make_node("MXQuantizeDequantize", ["x"], ["xq"], "mx_x", domain="com.amd.quark",
                          element_dtype=element_dtype, axis=-1, block_size=block_size,
                          rounding_mode=2)
    if reader == "MatMul":
        nodes = [mx, helper.make_node("MatMul", ["xq", "w"], ["y"], "mm")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])
    else:
        nodes = [mx, helper.make_node("Add", ["xq", "x"], ["y"], "add")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])
    graph = helper.make_graph(nodes, "mx", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, 64])], [out], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.amd.quark", 1)])


def test_quark_mx_attributes_without_a_maia_format_are_one_error() -> None:
    from maiac.runtime.errors import MaiacError

    with pytest.raises(MaiacError, match="node 'mx_x'.*element_dtype 'int8' has no Maia MX"):
        maiac.compile(_mx_matmul("int8"))
    with pytest.raises(MaiacError, match="node 'mx_x'.*block_size 16 is not supported"):
        maiac.compile(_mx_matmul("fp4_e2m1", block_size=16))


def test_quark_mx_on_a_non_matmul_operand_warns_and_runs_fp32() -> None:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match="1 MX quantization node.*mx_x \\(read by Add\\)"):
        program = maiac.compile(_mx_matmul("fp8_e4m3", reader="Add"))
    np.testing.assert_allclose(program.run({"x": x})["y"], 2 * x, rtol=1e-6)


def test_cli_verify_quark_model_against_stored_reference() -> None:
    from click.testing import CliRunner

    from maiac.cli import main

    name = "quark_llama_mxfp8"
    result = CliRunner().invoke(main, [
        "verify", str(DATA / f"{name}.onnx"), "--inputs", str(DATA / f"{name}.inputs.npz"),
        "--reference", str(DATA / f"{name}.ref.npz"), "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["quant"] == "model" and verdict["ok"]
    assert verdict["outputs"][0]["cosine"] >= 0.99999


# -- the standard-opset MX QDQ form (opset 23/24 DequantizeLinear) ------------------------

def test_standard_mx_qdq_weights_stay_mx() -> None:
    """FLOAT4E2M1 codes with FLOAT8E8M0 block scales through DequantizeLinear (opset 24; no
    onnxruntime CPU kernel, reference from onnx.reference) compile to MXFP4 weights (codes +
    E8M0 scales, not fp32) with the same outputs as the graph's own dequantized semantics."""
    from maiac.driver import compile_module

    name = "onnxqdq_llama_mxfp4"
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    shapes = {k: v.shape for k, v in feeds.items()}
    module = compile_module(DATA / f"{name}.onnx", shapes=shapes)
    summary = json.loads(module.attributes["maia.quant"].data)
    assert len(summary["ops"]) == 15 and set(summary["ops"].values()) == {"w=mxfp4,a=fp32"}
    native = maiac.compile(DATA / f"{name}.onnx", shapes=shapes)
    fp32 = maiac.compile(DATA / f"{name}.onnx", shapes=shapes, quant="none")
    assert native.report()["weight_bytes"] < 0.3 * fp32.report()["weight_bytes"]
    ref = load_npz(DATA / f"{name}.ref.npz")["logits"]
    np.testing.assert_allclose(native.run(feeds)["logits"], ref, rtol=RTOL, atol=ATOL)


def _dq_matmul(codes: np.ndarray, scales: np.ndarray, element_type: int,
               opset: int = 24) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    k, n = codes.shape
    extra = {"output_dtype": TensorProto.FLOAT} if opset >= 24 else {}
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], "dq", axis=0,
                              block_size=32, **extra),
             helper.make_node("MatMul", ["x", "wd"], ["y"], "mm")]
    graph = helper.make_graph(nodes, "mx_qdq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4, n])],
        [numpy_helper.from_array(codes, "w"), numpy_helper.from_array(scales, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weight_formats(model: onnx.ModelProto) -> set[str]:
    from maiac.driver import compile_module

    quant = compile_module(model).attributes.get("maia.quant")  # absent: no quantize pass
    return set(json.loads(quant.data)["ops"].values()) if quant is not None else set()


def test_standard_mx_qdq_mapping_rules() -> None:
    """Power-of-two fp32 scales (opset 23) map onto MX too; a non-power-of-two scale does
    not (it stays the graph's fp32 dequantization); an E4M3 block whose scale is above the
    floor rule's and whose largest element would saturate on requantization keeps fp32,
    with a warning, and every case computes what onnx.reference computes."""
    import ml_dtypes
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    codes = rng.standard_normal((64, 32)).astype(ml_dtypes.float4_e2m1fn)
    pow2 = (2.0 ** rng.integers(-4, 4, (2, 32))).astype(np.float32)
    cases = [
        (_dq_matmul(codes, pow2, TensorProto.FLOAT4E2M1, opset=23), {"w=mxfp4,a=fp32"}),
        (_dq_matmul(codes, pow2 * np.float32(1.5), TensorProto.FLOAT4E2M1, opset=23), set()),
        (_dq_matmul(codes, pow2.astype(ml_dtypes.float8_e8m0fnu), TensorProto.FLOAT4E2M1),
         {"w=mxfp4,a=fp32"}),
    ]
    # 240 = 1.875 * 2^7 is the block's largest E4M3 code: the floor rule's scale is half of
    # the stored one, and 480 does not exist in E4M3
    e4m3 = np.full((64, 32), 1.0, np.float32)
    e4m3[0, :] = 240.0
    saturating = _dq_matmul(e4m3.astype(ml_dtypes.float8_e4m3fn),
                            np.ones((2, 32), ml_dtypes.float8_e8m0fnu), TensorProto.FLOAT8E4M3FN)
    for model, expected in cases:
        assert _weight_formats(model) == expected
        ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(maiac.compile(model).run({"x": x})["y"], ref, rtol=1e-5,
                                   atol=1e-5)
    with pytest.warns(UserWarning, match="node 'dq': mxfp8e4m3 weight not reproducible"):
        assert _weight_formats(saturating) == set()


def test_narrow_weights_requantized_by_quant() -> None:
    """--quant on narrow weights: an MXFP4 weight asked for in MXFP4 or a wider MX format
    keeps its values exactly (no second rounding); an int4 weight asked for in MXFP4 stays
    4-bit (packed codes + scales, not fp32) at the cosine bench/toolchains.py --narrow
    reports for it."""
    import ml_dtypes
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    codes = rng.standard_normal((64, 32)).astype(ml_dtypes.float4_e2m1fn)
    scales = (2.0 ** rng.integers(-4, 4, (2, 32))).astype(ml_dtypes.float8_e8m0fnu)
    model = _dq_matmul(codes, scales, TensorProto.FLOAT4E2M1)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for fmt in ("mxfp4", "mxfp6e2m3", "mxfp8e4m3"):
        got = maiac.compile(model, quant=f"w={fmt}").run({"x": x})["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=fmt)
    name = "genai_qwen2_int4_b16"
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    shapes = {k: v.shape for k, v in feeds.items()}
    own = maiac.compile(DATA / f"{name}.onnx", shapes=shapes)
    four = maiac.compile(DATA / f"{name}.onnx", shapes=shapes, quant="w=mxfp4")
    assert four.report()["weight_bytes"] < 0.45 * own.report()["weight_bytes"]
    assert cosine(four.run(feeds)["logits"], own.run(feeds)["logits"]) >= 0.985
