"""Verify metrics on synthetic arrays, and seeded random inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from maiac.inputs import infer_int_ranges, random_inputs, random_inputs_for_specs
from maiac.runtime.errors import MaiacError
from maiac.verify import compare_output, cosine, format_table, rel_err, top1_agreement

# ----------------------------------------------------------------------------- metrics


def test_cosine_basic() -> None:
    a = np.array([1.0, 0.0, 0.0])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), a) == 0.0
    b = np.array([1.0, 1.0, 0.0])
    assert cosine(a, b) == pytest.approx(1 / np.sqrt(2))


def test_rel_err_floor() -> None:
    b = np.array([100.0, 1.0, 0.0])
    a = np.array([101.0, 1.5, 0.01])
    r = rel_err(a, b)
    assert r[0] == pytest.approx(0.01)
    assert r[1] == pytest.approx(0.5)
    # zero reference: measured against 1e-3 * max|b| = 0.1, not blown up to infinity
    assert r[2] == pytest.approx(0.1)


def test_top1_agreement() -> None:
    ref = np.array([[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], [[0.0, 0.0, 1.0], [0.3, 0.3, 0.4]]])
    got = ref.copy()
    assert top1_agreement(got, ref) == 1.0
    got[1, 1] = [0.9, 0.0, 0.1]
    assert top1_agreement(got, ref) == 0.75


def test_compare_output_fp32_allclose() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 8)).astype(np.float32)
    ok = compare_output("y", ref + 1e-6, ref, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert ok["ok"] and ok["mismatch_count"] == 0
    assert ok["top1_agreement"] is None  # fp32, not named like logits
    assert ok["max_abs_err"] == pytest.approx(1e-6, rel=0.1)
    assert set(ok) >= {"name", "shape", "max_abs_err", "max_rel_err", "cosine",
                       "top1_agreement", "mean_abs_err"}
    bad = ref.copy()
    bad[2, 3] += 1e-2
    res = compare_output("y", bad, ref, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert not res["ok"] and res["mismatch_count"] == 1
    assert res["max_abs_err"] == pytest.approx(1e-2, rel=1e-3)
    assert res["shape"] == [4, 8]


def test_compare_output_quant_uses_cosine() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 5, 16)).astype(np.float32)
    noisy = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    res = compare_output("hidden", noisy, ref, quant="mxfp4", rtol=1e-4, atol=1e-5,
                         min_cosine=0.99)
    assert res["ok"]  # far outside rtol, but cosine ~0.9988
    assert res["cosine"] > 0.99 and res["mismatch_count"] > 0
    assert res["top1_agreement"] is not None  # rank 3, last dim 16, quantized
    res = compare_output("hidden", noisy, ref, quant="mxfp4", rtol=1e-4, atol=1e-5,
                         min_cosine=0.9999)
    assert not res["ok"]


def test_compare_output_logits_top1_fp32() -> None:
    ref = np.eye(4, dtype=np.float32)[None]
    res = compare_output("logits", ref, ref, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert res["top1_agreement"] == 1.0


def test_compare_output_shape_mismatch_and_nan() -> None:
    ref = np.ones((2, 3), np.float32)
    res = compare_output("y", np.ones((3, 2), np.float32), ref, quant=None, rtol=1e-4,
                         atol=1e-5, min_cosine=0.99)
    assert not res["ok"] and "shape" in res["error"]
    got = ref.copy()
    got[0, 0] = np.nan
    res = compare_output("y", got, ref, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert not res["ok"] and res["max_abs_err"] is None and res["cosine"] is None
    both = ref.copy()
    both[0, 0] = np.nan
    res = compare_output("y", both, both, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert res["ok"]


def test_format_table() -> None:
    ref = np.ones((2, 3), np.float32)
    out = compare_output("y", ref, ref, quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    text = format_table({"ok": True, "model": "m.onnx", "quant": "fp32", "outputs": [out],
                         "layers": [], "compile_s": 0.1, "run_s": 0.01, "onnxruntime_s": 0.001,
                         "rtol": 1e-4, "atol": 1e-5})
    assert "m.onnx" in text and "2x3" in text and text.rstrip().endswith("PASS")


# ----------------------------------------------------------------------------- inputs


def lm_model(vocab: int = 37, seq: int | str = "seq") -> onnx.ModelProto:
    """input_ids -> Cast -> Gather(embedding) + position embedding, masked by attention_mask."""
    emb = numpy_helper.from_array(np.zeros((vocab, 8), np.float32), "wte")
    pos = numpy_helper.from_array(np.zeros((64, 8), np.float32), "wpe")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["wte", "ids32"], ["tok"]),
        helper.make_node("Gather", ["wpe", "position_ids"], ["p"]),
        helper.make_node("Add", ["tok", "p"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["y"]),
    ]
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, 8])],
        [emb, pos, axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_infer_int_ranges() -> None:
    assert infer_int_ranges(lm_model(37)) == {"input_ids": 37, "position_ids": 64}


def test_random_inputs_lm() -> None:
    model = lm_model(vocab=37)
    onnx.checker.check_model(model)
    feeds = random_inputs(model, {"input_ids": (1, 500), "attention_mask": (1, 500),
                                  "position_ids": (1, 500)}, seed=3)
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (1, 500)
    assert ids.min() >= 0 and ids.max() < 37 and len(np.unique(ids)) > 20
    assert feeds["attention_mask"].dtype == np.int64
    assert (feeds["attention_mask"] == 1).all()
    assert (feeds["position_ids"] == np.arange(500)).all()
    again = random_inputs(model, {"input_ids": (1, 500), "attention_mask": (1, 500),
                                  "position_ids": (1, 500)}, seed=3)
    assert all((again[k] == feeds[k]).all() for k in feeds)
    other = random_inputs(model, {"input_ids": (1, 500), "attention_mask": (1, 500),
                                  "position_ids": (1, 500)}, seed=4)
    assert not (other["input_ids"] == ids).all()


def test_random_inputs_mask_pad_and_static_shape() -> None:
    model = lm_model(vocab=37, seq=6)
    feeds = random_inputs(model, None, seed=0, mask_pad=2)
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]


def test_random_inputs_symbolic_dim_error() -> None:
    with pytest.raises(MaiacError, match="input_ids.*--shape"):
        random_inputs(lm_model(), None, seed=0)
    with pytest.raises(MaiacError, match="has no input 'nope'"):
        random_inputs(lm_model(seq=4), {"nope": (1, 2)}, seed=0)


def test_random_inputs_float_and_bool() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Not", ["flag"], ["nf"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1000]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1000]),
         helper.make_tensor_value_info("nf", TensorProto.BOOL, [3])],
    )
    feeds = random_inputs(helper.make_model(graph), None, seed=0)
    x = feeds["x"]
    assert x.dtype == np.float32 and abs(x.mean()) < 0.1 and 0.9 < x.std() < 1.1
    assert feeds["flag"].dtype == np.bool_ and feeds["flag"].all()


def test_random_inputs_for_specs() -> None:
    class Spec:
        def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
            self.name, self.dtype, self.shape = name, dtype, shape

    feeds = random_inputs_for_specs(
        [Spec("input_ids", "i64", (2, 5)), Spec("attention_mask", "i64", (2, 5)),
         Spec("x", "bf16", (3,))], seed=1, int_ranges={"input_ids": 7})
    assert feeds["input_ids"].max() < 7 and feeds["input_ids"].dtype == np.int64
    assert (feeds["attention_mask"] == 1).all()
    assert feeds["x"].dtype.name == "bfloat16"
