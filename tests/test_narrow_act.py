"""A matmul whose result only feeds a quantized matmul stores it in that matmul's
activation format (passes/tiling/narrow_act.py): the same outputs, bit for bit, and the
activation is quantized once, by the producer's epilogue, not by every consumer job."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.passes.tile import FunctionTiler
from maiac.runtime import isa
from maiac.runtime.timing import simulate


def _chain(m: int, k: int, hidden: int, n: int, seed: int) -> onnx.ModelProto:
    """``y = relu(x @ w1) @ w2``: the first matmul's result is the second's activation."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((k, hidden)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, n)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _leaves(instrs: list[Any]) -> list[Any]:
    out = []
    for i in instrs:
        out += _leaves(i.body) if isinstance(i, isa.Loop) else [i]
    return out


TARGET = {"n_clusters": "1", "tiles_per_cluster": "4", "tsram_bytes": "256KiB"}


@pytest.mark.parametrize("quant", ["mxfp4", "fp8"])
def test_narrow_activation_between_matmuls(quant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m, k, hidden, n = 128, 64, 512, 128
    model = _chain(m, k, hidden, n, 0)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    narrow = maiac.compile(model, quant=quant, target_params=TARGET)
    with monkeypatch.context() as patch:  # the consumer quantizes its own blocks
        patch.setattr(FunctionTiler, "_narrow_consumer", lambda self, op: None)
        plain = maiac.compile(model, quant=quant, target_params=TARGET)

    def blocks(compiled: Any) -> set[tuple[Any, ...]]:
        return {(i.op, tuple(i.c.shape), tuple(i.grid)) for i in
                _leaves(compiled.program.instructions) if isinstance(i, isa.MatMul)}

    # same blocks (so the same fp32 sums), so the same outputs bit for bit
    assert blocks(narrow) == blocks(plain)
    np.testing.assert_array_equal(narrow.run({"x": x})["y"], plain.run({"x": x})["y"])

    quantizes = [i for i in _leaves(narrow.program.instructions)
                 if isinstance(i, isa.Vec) and i.fn == "quantize"]
    assert quantizes and all("down" not in i.op for i in quantizes)  # the producer's
    stores = {i.dst.dtype for i in _leaves(narrow.program.instructions)
              if isinstance(i, isa.Dma) and "up" in i.op and i.src.level == "tsram"
              and i.dst.level != "tsram"}
    assert stores == {"u8" if quant == "mxfp4" else "f8e4m3"}  # codes (and scales)

    def tvp_of_down(compiled: Any) -> float:
        ops = simulate(compiled.program).to_json()["ops"]
        return sum(o["busy_s"].get("tvp", 0.0) for o in ops if "down" in o["name"])
    assert tvp_of_down(narrow) == 0.0 < tvp_of_down(plain)


def _two_projections(m: int, k: int, n: int, seed: int) -> onnx.ModelProto:
    """``y = x @ w1 + x @ w2``: two quantized matmuls read the same activation."""
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((k, n)) * 0.1).astype(np.float32) for _ in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["p"], name="first"),
             helper.make_node("MatMul", ["x", "w2"], ["q"], name="second"),
             helper.make_node("Add", ["p", "q"], ["y"], name="sum")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(ws)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _with_and_without(model: Any, quant: str, x: np.ndarray, method: str, disabled: Any,
                      monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """``model`` compiled as is and with ``FunctionTiler.<method>`` replaced by
    ``disabled`` (the tiling before it); both compute the same ``y`` for ``x``, bit for bit."""
    on = maiac.compile(model, quant=quant, target_params=TARGET)
    with monkeypatch.context() as patch:
        patch.setattr(FunctionTiler, method, disabled)
        off = maiac.compile(model, quant=quant, target_params=TARGET)
    np.testing.assert_array_equal(on.run({"x": x})["y"], off.run({"x": x})["y"])
    return on, off


@pytest.mark.parametrize("quant", ["mxfp4", "fp8"])
def test_large_activation_is_quantized_once_for_every_reader(
        quant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An activation of at least a native block of rows per tile (prefill) is quantized by
    a kernel of its own, once, for both matmuls reading it; they load its codes (no
    quantize of their own) and compute the same outputs, bit for bit."""
    m, k, n = 256, 64, 256  # 256 rows >= 4 tiles x 32
    model = _two_projections(m, k, n, 2)
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    narrow, plain = _with_and_without(model, quant, x, "_narrow_activation",
                                      lambda self, op, ins, label: ins, monkeypatch)

    def quantized_elements(instrs: list[Any], trips: int = 1) -> int:
        count = 0
        for i in instrs:
            if isinstance(i, isa.Loop):
                count += quantized_elements(i.body, trips * int(np.prod(i.trips)))
            elif isinstance(i, isa.Vec) and i.fn == "quantize":
                count += trips * int(np.prod(i.ins[0].shape)) * int(np.prod(i.grid))
        return count
    quantizes = [i for i in _leaves(narrow.program.instructions)
                 if isinstance(i, isa.Vec) and i.fn == "quantize"]
    assert len({i.op for i in quantizes}) == 1  # one kernel, named after the first reader
    # every element of x once, where each reader quantized every block it read before
    assert quantized_elements(narrow.program.instructions) == m * k
    assert quantized_elements(plain.program.instructions) >= 2 * m * k


def test_rows_too_long_for_the_quantize_kernel_keep_the_in_loop_quantize() -> None:
    """A row of 16,384 fp32 activations is 64 KiB: more than the quantize kernel may take
    of a 256 KiB TSRAM. The matmul then quantizes its own blocks, as before."""
    m, k, n = 128, 16384, 64
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    compiled = maiac.compile(model, quant="mxfp4", target_params=TARGET)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y, ref = compiled.run({"x": x})["y"], x @ w
    assert float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref)) > 0.98
    assert any(isinstance(i, isa.Vec) and i.fn == "quantize" and i.ins[0].shape[-1] < k
               for i in _leaves(compiled.program.instructions))  # blocks, not whole rows


def _norm_projections(m: int, k: int, n: int, seed: int, residual: bool) -> onnx.ModelProto:
    """``h = layernorm(x)``, ``y = h @ w1 + h @ w2`` (``+ h`` with ``residual``: the norm's
    fp32 rows have a reader besides the quantized matmuls)."""
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((k, n)) * 0.1).astype(np.float32) for _ in range(2)]
    gamma = (1 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(k)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="norm",
                              axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["h", "w1"], ["p"], name="first"),
             helper.make_node("MatMul", ["h", "w2"], ["q"], name="second"),
             helper.make_node("Add", ["p", "q"], ["s" if residual else "y"], name="sum")]
    if residual:
        nodes.append(helper.make_node("Add", ["s", "h"], ["y"], name="res"))
    inits = [numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(ws)]
    inits += [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("quant", ["mxfp4", "fp8"])
@pytest.mark.parametrize("residual", [False, True])
def test_norm_stores_its_rows_in_the_matmuls_format(
        quant: str, residual: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A norm read by quantized matmuls (prefill-sized) quantizes its own normalized rows
    and stores the codes (passes/tiling/norm_quant.py): no quantize kernel of its own, the
    fp32 rows stored only when something else reads them, the same outputs bit for bit."""
    m, k = 256, 64
    model = _norm_projections(m, k, k, 5, residual)
    x = np.random.default_rng(6).standard_normal((m, k)).astype(np.float32)
    fused, plain = _with_and_without(model, quant, x, "_norm_to_narrow",
                                     lambda self, op, ins, label: False, monkeypatch)

    def quantize_ops(compiled: Any) -> set[str]:
        return {i.op for i in _leaves(compiled.program.instructions)
                if isinstance(i, isa.Vec) and i.fn == "quantize"}
    # the quantize kernel, named after its first reader
    assert len(quantize_ops(plain)) == 1 and quantize_ops(plain) <= {"first", "second"}
    assert quantize_ops(fused) == {"norm"}
    stores = {i.dst.dtype for i in _leaves(fused.program.instructions)
              if isinstance(i, isa.Dma) and i.op == "norm" and i.src.level == "tsram"
              and i.dst.level != "tsram"}
    codes = "u8" if quant == "mxfp4" else "f8e4m3"
    assert stores == ({codes, "f32"} if residual else {codes})
    # each job's codes and (blocked formats) scales are laid out as stored: one DMA per job
    code_stores = [i for i in _leaves(fused.program.instructions)
                   if isinstance(i, isa.Dma) and i.op == "norm" and i.dst.dtype == codes
                   and i.src.level == "tsram"]
    jobs = [i for i in _leaves(fused.program.instructions)
            if isinstance(i, isa.Vec) and i.fn == "quantize" and i.op == "norm"]
    assert len(code_stores) == len(jobs)
