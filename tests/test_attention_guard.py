"""fuse-attention absorbs the exporters' NaN guard ``where(isnan(softmax(s)), 0, ...)``.

optimum's exports (torch SDPA) guard the softmax so that a query row whose keys are all
masked (-inf everywhere) gives 0 instead of NaN. The fused attention reproduces that
(``empty_rows = "zero"``: its denominator is ``max(l, 1)``, and ``l >= 1`` on every row
with a visible key), so the guarded chain fuses into one ``maia.attention`` with the
same outputs as onnxruntime, fully masked rows included, in the flash (prefill) and the
split-K (decode) kernels.
"""

from __future__ import annotations

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

FUSE = f"{STAGES['onnx']},{STAGES['maia']},{STAGES['fuse']}"


def _guarded_attention(b: int, h: int, sq: int, sk: int, d: int, guard: bool = True
                       ) -> onnx.ModelProto:
    """q [B, H, Sq, D], k/v [B, H, Sk, D], a run-time bool mask [B, 1, Sq, Sk] made
    additive as optimum does (``where(m, 0, -inf)``), softmax, the guard, ``· v``."""
    inits = [numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([-np.inf], np.float32), "neg_inf"),
             numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale")]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]),
             helper.make_node("Mul", ["s0", "scale"], ["s1"]),
             helper.make_node("Where", ["mask", "zero", "neg_inf"], ["bias"]),
             helper.make_node("Add", ["s1", "bias"], ["s2"]),
             helper.make_node("Softmax", ["s2"], ["p"], axis=-1)]
    if guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["nan"]),
                  helper.make_node("Where", ["nan", "zero", "p"], ["pg"])]
    nodes.append(helper.make_node("MatMul", ["pg" if guard else "p", "v"], ["o"]))
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "guarded_attention",
        [helper.make_tensor_value_info("q", f, [b, h, sq, d]),
         helper.make_tensor_value_info("k", f, [b, h, sk, d]),
         helper.make_tensor_value_info("v", f, [b, h, sk, d]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [b, 1, sq, sk])],
        [helper.make_tensor_value_info("o", f, [b, h, sq, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _fused(model: onnx.ModelProto) -> list:
    module = import_model(model)
    for p in parse_pipeline(FUSE):
        p.apply(make_context(), module)
    module.verify()
    names = [op.name + (f"{{{maia.attr(op, 'fn')}}}" if maia.attr(op, "fn") else "")
             for op in module.walk() if op.name.startswith("maia.")]
    assert "maia.unary{isnan}" not in names and "maia.softmax{softmax}" not in names
    return [op for op in module.walk() if op.name == "maia.attention"]


@pytest.mark.parametrize(("sq", "sk"), [(16, 16), (1, 1536)])
def test_guarded_attention_fuses_and_zeroes_fully_masked_rows(sq: int, sk: int) -> None:
    """Prefill (flash kernel) and one decode row (split-K kernel, several key chunks):
    batch 0 is left-padded (its first key chunk has no visible key, later ones do),
    batch 1 has a query row with every key masked: onnxruntime's guard makes it 0."""
    b, h, d = 2, 2, 16
    model = _guarded_attention(b, h, sq, sk, d)
    (attention,) = _fused(model)
    assert maia.attr(attention, "empty_rows") == "zero"
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((b, h, s, d)).astype(np.float32)
             for n, s in (("q", sq), ("k", sk), ("v", sk))}
    mask = np.ones((b, 1, sq, sk), bool)
    mask[0, :, :, : sk * 2 // 3] = False          # padding on the left of sequence 0
    mask[1, :, sq // 2] = False                    # one query row sees no key at all
    feeds["mask"] = mask
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert np.all(ref[1, :, sq // 2] == 0) and np.isfinite(ref).all()
    got = maiac.compile(model).run(feeds)["o"]
    assert np.all(got[1, :, sq // 2] == 0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_unguarded_attention_keeps_nan_rows() -> None:
    """Without the guard a fully masked row is NaN (as in onnxruntime): no empty_rows."""
    model = _guarded_attention(1, 1, 4, 8, 8, guard=False)
    (attention,) = _fused(model)
    assert "empty_rows" not in attention.attributes
    feeds = {"q": np.ones((1, 1, 4, 8), np.float32), "k": np.ones((1, 1, 8, 8), np.float32),
             "v": np.ones((1, 1, 8, 8), np.float32), "mask": np.ones((1, 1, 4, 8), bool)}
    feeds["mask"][0, 0, 2] = False
    got = maiac.compile(model).run(feeds)["o"]
    assert np.isnan(got[0, 0, 2]).all() and np.isfinite(np.delete(got[0, 0], 2, 0)).all()
