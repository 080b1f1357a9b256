"""verify's depth-fair fp32 criterion: an output that fails the per-element tolerance
passes when maiac is at most FP64_FACTOR x as far from the float64 answer as onnxruntime's
own fp32 result; a perturbed weight (a real bug) still fails it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import maiac.driver
from maiac.fp64_reference import double_model, max_distance
from maiac.models import LlamaConfig, llama_decoder
from maiac.verify import verify

DEEP = LlamaConfig("deep", 64, 6, 4, 2, 128, 256)


@pytest.fixture(scope="module")
def deep_model() -> onnx.ModelProto:
    return llama_decoder(DEEP)


def test_zero_tolerance_passes_by_the_fp64_criterion(deep_model: onnx.ModelProto) -> None:
    # rtol = atol = 0: any rounding difference from onnxruntime fails per element, so the
    # verdict is the float64 criterion's
    res = verify(deep_model, rtol=0.0, atol=0.0)
    (out,) = res["outputs"]
    assert res["ok"] and out["criterion"] == "fp64", out
    assert res["fp64_reference"] == "onnxruntime-fp64" and res["fp64_factor"] == 4.0
    assert 0 < out["fp64_err_maiac"] <= out["fp64_bound"] == 4.0 * out["fp64_err_ort"]


def test_a_perturbed_weight_still_fails(deep_model: onnx.ModelProto,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = maiac.driver.compile

    def compile_with_a_bug(model, **options):  # noqa: ANN001, ANN003, ANN202
        proto = onnx.ModelProto()
        proto.CopyFrom(getattr(model, "proto", model))
        weight = next(t for t in proto.graph.initializer if "layers.3" in t.name
                      and "down" in t.name)
        value = numpy_helper.to_array(weight).copy()
        value.flat[7] *= 1.01  # one weight of one layer 1 % off
        weight.CopyFrom(numpy_helper.from_array(value, weight.name))
        return original(proto, **options)

    monkeypatch.setattr(maiac.driver, "compile", compile_with_a_bug)
    res = verify(deep_model)
    (out,) = res["outputs"]
    assert not res["ok"] and out["criterion"] is None
    assert out["fp64_err_maiac"] > out["fp64_bound"]


def test_double_model_widens_every_float() -> None:
    node_c = helper.make_node("Constant", [], ["c"], value_float=2.0)
    node_m = helper.make_node("Mul", ["x", "c"], ["y"])
    node_cast = helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [node_c, node_m, node_cast], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])])
    wide = double_model(helper.make_model(graph))
    assert wide is not None
    onnx.checker.check_model(wide)
    assert wide.graph.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert wide.graph.node[2].attribute[0].i == TensorProto.DOUBLE


def test_max_distance_counts_a_lost_nan_as_infinite() -> None:
    exact = np.array([1.0, np.nan, 3.0])
    assert max_distance(np.array([1.5, np.nan, 3.0], np.float32), exact) == 0.5
    assert max_distance(np.array([1.0, 2.0, 3.0], np.float32), exact) == float("inf")


def test_a_model_with_external_weights_gets_its_float64_reference(
        deep_model: onnx.ModelProto, tmp_path) -> None:  # noqa: ANN001
    """Weights in an external-data file (as big models ship) are widened from the model's
    folder: verify of such a file meets the criterion as the in-memory graph does."""
    proto = onnx.ModelProto()
    proto.CopyFrom(deep_model)
    path = tmp_path / "deep.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="deep.data")
    res = verify(path, rtol=0.0, atol=0.0)
    (out,) = res["outputs"]
    assert res["ok"] and out["criterion"] == "fp64", out
    assert res["fp64_reference"] == "onnxruntime-fp64"


def test_double_model_needs_the_folder_of_external_weights(tmp_path) -> None:  # noqa: ANN001
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    model = helper.make_model(graph)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    graph_only = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert double_model(graph_only) is None  # no folder: no reference rather than a guess
    wide = double_model(graph_only, base_dir=tmp_path)
    assert wide is not None
    np.testing.assert_array_equal(numpy_helper.to_array(wide.graph.initializer[0]),
                                  np.arange(6, dtype=np.float64).reshape(2, 3))
