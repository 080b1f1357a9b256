"""Golden tests on models as deployment toolchains write them (tests/data/toolchain).

Every model there was written by a real toolchain (optimum-onnx, onnxruntime-genai's model
builder, onnxruntime's optimizer and quantizers, AMD Quark) from a random-weight transformers
config by scripts/export_toolchain_models.py, with onnxruntime's outputs stored beside it.
maiac compiles each (symbolic dims bound from the stored inputs) and must match onnxruntime
within rtol 1e-4 / atol 1e-5 on every output (logits and the present KV cache), except where
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
                         if name in NOT_YET else []) for name in sorted(MODELS)]


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

    name = "genai_llama_int4"
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
    assert missing.exit_code == 2 and "nope.so: no such file" in missing.output
