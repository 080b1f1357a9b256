"""gptq: error-compensating weight rounding (Frantar et al. 2023)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.driver import default_pipeline
from maiac.passes.gptq import gptq_round
from maiac.runtime import formats as F


def correlated(m: int = 256, k: int = 128, seed: int = 0) -> np.ndarray:
    """Activations with strongly correlated channels (low rank + noise), as in LLMs."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, 8)) @ rng.standard_normal((8, k))
    return (base + 0.1 * rng.standard_normal((m, k))).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6e2m3", "nvfp4", "fp8e4m3"])
def test_gptq_lowers_the_output_error(fmt: str) -> None:
    x = correlated()
    w = np.random.default_rng(1).standard_normal((128, 64)).astype(np.float32)
    per_col = F.get_format(fmt).scale_kind == "fp32"
    rtn = F.fake_quantize(w, fmt, axis=1 if per_col else 0,
                          granularity="channel" if per_col else "tensor")
    g = gptq_round(w, x.astype(np.float64).T @ x, fmt)
    err_rtn = np.linalg.norm(x @ rtn - x @ w)
    err_gptq = np.linalg.norm(x @ g - x @ w)
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)
    if F.get_format(fmt).is_mx:  # on the grid: quantize re-encodes it exactly
        assert np.array_equal(F.fake_quantize(g, fmt, axis=0), g)


def test_method_gptq_end_to_end() -> None:
    k, n, m = 128, 64, 256
    w = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    both = correlated(m=2 * m, seed=2)  # one distribution: calibrate on half, test on half
    calib, x = {"x": both[:m]}, both[m:]
    ref = x @ w
    plain = maiac.compile(model, quant="w=mxfp4").run({"x": x})["y"]
    gq = maiac.compile(model, quant="w=mxfp4,method=gptq", calib=calib).run({"x": x})["y"]
    assert np.linalg.norm(gq - ref) < 0.8 * np.linalg.norm(plain - ref)
    assert "gptq{spec=" in default_pipeline("mxfp4,method=gptq")
