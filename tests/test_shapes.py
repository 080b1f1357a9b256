"""Symbolic dims bound from data (issue 10 item 4) and the fp32 criterion that allows for
onnxruntime's own noise (item 5): maiac/shapes.py, maiac/verify.py, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from maiac.cli import main
from maiac.runtime.errors import MaiacError
from maiac.shapes import bind_input_shapes, model_input_shapes
from maiac.verify import NOISE_FACTOR, compare_output, format_table, verify


def _masked_model() -> onnx.ModelProto:
    """y = (x @ W) * mask[..., None]: x [batch, sequence, 8], mask [batch, sequence]."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["mf", "axes"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["h", "m3"], ["y"], name="apply_mask"),
    ]
    graph = helper.make_graph(
        nodes, "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1]), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return list(model.graph.input)


def test_dim_name_binds_every_input() -> None:
    got = bind_input_shapes(_inputs(_masked_model()), {"batch": (2,), "sequence": 5})
    assert got == {"x": (2, 5, 8), "mask": (2, 5)}
    # one input's shape binds the dims it shares with the other
    assert bind_input_shapes(_inputs(_masked_model()), {"mask": (3, 7)}) == \
        {"x": (3, 7, 8), "mask": (3, 7)}


def test_arrays_give_the_shapes() -> None:
    arrays = {"x": np.zeros((2, 6, 8), np.float32), "mask": np.ones((2, 6), np.int64)}
    assert bind_input_shapes(_inputs(_masked_model()), None, arrays=arrays) == \
        {"x": (2, 6, 8), "mask": (2, 6)}


@pytest.mark.parametrize("shapes, arrays, needle", [
    ({"sequence": 5}, None, r"symbolic dim 'batch' \(dim 0 of batchxsequencex8\).*--shape batch=N"),
    ({"seq": 5}, None, r"no input 'seq' \(its inputs: x, mask\) nor a symbolic dim 'seq' "
                       r"\(its symbolic dims: batch, sequence\)"),
    ({"batch": (2, 3)}, None, r"'batch' is a symbolic dim; give one size"),
    ({"batch": 2}, {"x": np.zeros((3, 4, 8))}, r"'batch' is 2 from --shape batch=2 but 3 from "
                                               r"the array for 'x'"),
    (None, {"x": np.zeros((2, 4, 8)), "mask": np.zeros((2, 5))}, r"'sequence' is 4 .* but 5"),
    (None, {"x": np.zeros((2, 4, 9)), "mask": np.zeros((2, 4))}, r"static shape "
                                                                 r"batchxsequencex8 \(dim 2 is 8\)"),
    (None, {"x": np.zeros((2, 4)), "mask": np.zeros((2, 4))}, r"input 'x' has rank 3"),
    ({"x": (2, 4, 8)}, {"x": np.zeros((2, 5, 8))}, r"--shape gives 2x4x8 but the array"),
])
def test_disagreements_are_clear_errors(shapes, arrays, needle: str) -> None:
    with pytest.raises(MaiacError, match=needle):
        bind_input_shapes(_inputs(_masked_model()), shapes, arrays=arrays)


def test_verify_takes_shapes_from_inputs_and_reports_noise() -> None:
    model = _masked_model()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 11, 8)).astype(np.float32),
             "mask": (np.arange(11) < np.array([[11], [4], [7]])).astype(np.int64)}
    result = verify(model, inputs=feeds)  # no shapes given: the arrays fix batch and sequence
    assert result["ok"], result
    assert result["shapes"] == {"x": [3, 11, 8], "mask": [3, 11]}
    out = result["outputs"][0]
    assert out["shape"] == [3, 11, 4]
    assert out["ort_noise"] is not None and out["ort_noise"] >= 0.0
    assert out["noise_bound"] == NOISE_FACTOR * out["ort_noise"]
    assert "ort_noise" in format_table(result)
    quant = verify(model, inputs=feeds, quant="mxfp8", layers=False)
    assert quant["outputs"][0]["ort_noise"] is None and quant["noise_factor"] is None


def test_fp32_criterion_allows_four_times_onnxruntime_noise() -> None:
    ref = np.linspace(-1, 1, 64, dtype=np.float32)
    got = ref.copy()
    got[7] += 3e-4  # beyond atol 1e-5 + rtol 1e-4 * |b| (<= 1.1e-4)
    kw = dict(quant=None, rtol=1e-4, atol=1e-5, min_cosine=0.99)
    assert not compare_output("y", got, ref, **kw)["ok"]
    assert not compare_output("y", got, ref, ort_noise=5e-5, **kw)["ok"]  # 4 x 5e-5 < 3e-4
    passed = compare_output("y", got, ref, ort_noise=1e-4, **kw)  # 4 x 1e-4 >= 3e-4
    assert passed["ok"] and passed["ort_noise"] == 1e-4 and passed["noise_bound"] == 4e-4
    # tiny noise never tightens the tolerance
    assert compare_output("y", ref + 1e-6, ref, ort_noise=0.0, **kw)["ok"]


def test_cli_compile_and_verify_bind_dims(tmp_path: Path) -> None:
    path = tmp_path / "masked.onnx"
    onnx.save(_masked_model(), path)
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((2, 9, 8), np.float32), mask=np.ones((2, 9), np.int64))
    runner = CliRunner()
    r = runner.invoke(main, ["verify", str(path), "--inputs", str(npz), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"][0]["shape"] == [2, 9, 4]
    r = runner.invoke(main, ["verify", str(path), "--shape", "batch=1", "--shape",
                             "sequence=13", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"][0]["shape"] == [1, 13, 4]
    out = tmp_path / "m.maia"
    r = runner.invoke(main, ["compile", str(path), "--inputs", str(npz), "-o", str(out)])
    assert r.exit_code == 0 and out.exists(), r.output
    r = runner.invoke(main, ["compile", str(path), "--inputs", str(npz), "--shape", "batch=4",
                             "-o", str(tmp_path / "bad.maia")])
    assert r.exit_code == 2 and "'batch' is 4 from --shape batch=4 but 2" in r.stderr
    assert not (tmp_path / "bad.maia").exists()
    assert model_input_shapes(path, {"sequence": 3}, {"mask": np.ones((5, 3))}) == \
        {"x": (5, 3, 8), "mask": (5, 3)}
