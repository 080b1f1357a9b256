"""A matmul of one K step with an fp32 bias starts its accumulator from the bias rows
(passes/tiling/matmul.py, ``bias_init``): no TVP add, the same fl(a @ b + bias)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import maiac


def _linear(m: int, k: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "bias"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return model, x, w, bias


def _leaves(instrs: list) -> list:
    out = []
    for i in instrs:
        out.extend(_leaves(i.body) if i.kind == "loop" else [i])
    return out


def test_one_k_step_bias_is_the_accumulators_start():
    model, x, w, bias = _linear(24, 64, 96)
    compiled = maiac.compile(model)
    leaves = _leaves(compiled.program.instructions)
    (mm,) = [i for i in leaves if i.kind == "matmul"]
    assert mm.accumulate
    assert not [i for i in leaves if i.kind == "vec" and i.fn == "add"]
    into_c = [i for i in leaves if i.kind == "dma" and i.dst.level == "tsram"
              and i.dst.addr == mm.c.addr]
    assert len(into_c) == 1 and tuple(into_c[0].src.strides) == (0, 1)
    got = compiled.run({"x": x})["y"]
    np.testing.assert_allclose(got, x @ w + bias, rtol=1e-5, atol=1e-5)
    assert compiled.run({"x": x})["y"].tobytes() == got.tobytes()


def test_k_loop_keeps_the_bias_add():
    # K deep enough for several K steps: the first step does not accumulate, the bias
    # is added on the TVP after the last
    model, x, w, bias = _linear(64, 8192, 64, seed=1)
    compiled = maiac.compile(model)
    leaves = _leaves(compiled.program.instructions)
    mms = [i for i in leaves if i.kind == "matmul"]
    assert not all(i.accumulate for i in mms)
    assert [i for i in leaves if i.kind == "vec" and i.fn == "add"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], x @ w + bias, rtol=1e-4, atol=1e-3)
