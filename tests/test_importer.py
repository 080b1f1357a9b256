"""The importer, the onnx dialect helpers, the resource store and the node evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType

from maiac.importer import SUPPORTED_OPS, import_model
from maiac.ir import resources
from maiac.ir.onnx import (
    ONNX_OPS,
    describe,
    get_attr,
    input_at,
    make_context,
    parse_module,
)
from maiac.passes.node_eval import NUMPY_RULES, evaluate, evaluate_reference
from maiac.passes.registry import PASSES, parse_pipeline
from maiac.runtime.errors import MaiacError

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops(module: ModuleOp, name: str | None = None) -> list:
    return [op for op in module.walk() if name is None or op.name == name]


def _mlp() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8), "w")
    b = numpy_helper.from_array(np.ones(8, np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
        helper.make_node("Gelu", ["hb"], ["y"], name="gelu"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["batch", 4])],
        [helper.make_tensor_value_info("y", F, ["batch", 8])],
        [w, b],
        opset=20,
    )


# -- import --------------------------------------------------------------------------


def test_mlp_imports_one_op_per_node_with_static_types():
    module = import_model(_mlp(), {"x": (3, 4)})
    names = [op.name for op in _ops(module) if op.name.startswith("onnx.")]
    assert names == ["onnx.Constant"] * 2 + ["onnx.MatMul", "onnx.Add", "onnx.Gelu"]
    for op in _ops(module):
        for result in op.results:
            assert isinstance(result.type, TensorType)
            assert all(d >= 0 for d in result.type.get_shape())
    gelu = _ops(module, "onnx.Gelu")[0]
    assert gelu.results[0].type.get_shape() == (3, 8)
    assert describe(gelu) == "node 'gelu': op 'Gelu' (opset 20)"


def test_printed_ir_reparses_and_keeps_weight_handles():
    module = import_model(_mlp(), {"x": (1, 4)})
    text = str(module)
    for _ in range(2):  # twice: the second parse must not rename the handles
        again = parse_module(text, make_context())
        again.verify()
        assert str(again) == text
    weight = _ops(again, "onnx.Constant")[0]
    np.testing.assert_array_equal(
        resources.constant_value(weight), np.arange(32, dtype=np.float32).reshape(4, 8)
    )


def test_symbolic_dims_shared_between_inputs_bind_once():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("a", F, ["batch", "seq"]),
         helper.make_tensor_value_info("b", F, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", F, ["batch", "seq"])],
    )
    module = import_model(model, {"a": (2, 5)})
    assert _ops(module, "onnx.Add")[0].results[0].type.get_shape() == (2, 5)


def test_shapes_onnx_inference_misses_are_evaluated():
    """Where/Equal on a Shape (the exporters' mask logic) defeats ONNX data propagation."""
    inits = [numpy_helper.from_array(np.array([-1, -1, -1], np.int64), "neg"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "ones"),
             numpy_helper.from_array(np.ones(4, np.float32), "bias")]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Equal", ["s", "neg"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "s"], ["shape"]),
        helper.make_node("Expand", ["bias", "shape"], ["e"]),
        helper.make_node("ConstantOfShape", ["shape"], ["z"],
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["e", "z"], ["y"]),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, ["b", "s", 4])],
                   [helper.make_tensor_value_info("y", F, None)], inits)
    module = import_model(model, {"x": (2, 3, 4)})
    assert _ops(module, "onnx.Mul")[0].results[0].type.get_shape() == (2, 3, 4)


def test_absent_optional_inputs_and_outputs_keep_their_positions():
    nodes = [
        # Slice(x, starts, ends, <no axes>, steps): the gap is an onnx.NoValue
        helper.make_node("Slice", ["x", "st", "en", "", "sp"], ["s"], name="slice"),
        # LayerNormalization(Y, <no Mean>, InvStdDev): the unnamed output is still typed
        helper.make_node("LayerNormalization", ["s", "scale"], ["y", "", "inv"], name="ln"),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "st"),
             numpy_helper.from_array(np.array([4], np.int64), "en"),
             numpy_helper.from_array(np.array([2], np.int64), "sp"),
             numpy_helper.from_array(np.ones(4, np.float32), "scale")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [3, 4])],
                   [helper.make_tensor_value_info("y", F, None),
                    helper.make_tensor_value_info("inv", F, None)], inits)
    module = import_model(model)
    slice_op = _ops(module, "onnx.Slice")[0]
    assert len(slice_op.operands) == 5 and input_at(slice_op, 3) is None
    assert input_at(slice_op, 4) is not None
    ln = _ops(module, "onnx.LayerNormalization")[0]
    assert len(ln.results) == 3
    assert ln.results[0].type.get_shape() == (2, 4)  # rows 0 and 2


def test_constant_node_forms_become_value():
    nodes = [
        helper.make_node("Constant", [], ["a"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["b"], value_int=3),
        helper.make_node("Cast", ["b"], ["bf"], to=F),
        helper.make_node("Mul", ["a", "bf"], ["y"]),
    ]
    model = _model(nodes, [], [helper.make_tensor_value_info("y", F, None)])
    module = import_model(model)
    a, b = _ops(module, "onnx.Constant")
    np.testing.assert_array_equal(get_attr(a, "value"), np.array([1.0, 2.0], np.float32))
    assert get_attr(b, "value").dtype == np.int64 and get_attr(b, "value") == 3


def test_get_attr_returns_python_values():
    node = helper.make_node(
        "Transpose", ["x"], ["y"], name="t", perm=[1, 0],
    )
    model = _model([node], [helper.make_tensor_value_info("x", F, [2, 3])],
                   [helper.make_tensor_value_info("y", F, None)])
    op = _ops(import_model(model), "onnx.Transpose")[0]
    assert get_attr(op, "perm") == [1, 0]
    assert get_attr(op, "missing", 7) == 7
    softmax = ONNX_OPS["Softmax"].create(attributes={"axis": resources_attr(-1)})
    assert get_attr(softmax, "axis") == -1


def resources_attr(value):
    from maiac.ir.onnx import to_attribute

    return to_attribute(value)


# -- errors ----------------------------------------------------------------------------


def test_malformed_protobuf_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    with pytest.raises(MaiacError, match=r"bad\.onnx: not a valid ONNX model"):
        import_model(bad)
    with pytest.raises(MaiacError, match=r"missing\.onnx: no such ONNX model file"):
        import_model(tmp_path / "missing.onnx")


def test_unsupported_op_names_node_op_and_opset():
    node = helper.make_node("Unique", ["x"], ["y"], name="uniq_3")
    model = _model([node], [helper.make_tensor_value_info("x", F, [4])],
                   [helper.make_tensor_value_info("y", F, None)], opset=17)
    assert "Unique" not in SUPPORTED_OPS
    with pytest.raises(MaiacError) as info:
        import_model(model)
    assert str(info.value) == ("1 unsupported op type: Unique (1, first 'uniq_3') "
                               "(in g)")
    assert "\n" not in str(info.value)


def test_subgraph_ops_are_rejected_clearly():
    body = helper.make_graph([], "body", [], [helper.make_tensor_value_info("c", F, [1])])
    node = helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=body, else_branch=body)
    model = _model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("y", F, None)])
    with pytest.raises(MaiacError, match=r"If \(1, first 'if0', has subgraphs \(control flow\)\)"):
        import_model(model)


def test_missing_shape_names_input_and_dim():
    with pytest.raises(MaiacError, match=r"input 'x' has symbolic dim 'batch' \(dim 0") as info:
        import_model(_mlp())
    assert "--shape x=1x4" in str(info.value)


def test_unknown_shape_name_lists_the_inputs():
    with pytest.raises(MaiacError, match=r"--shape y: .* has no input 'y' \(its inputs: x\)"):
        import_model(_mlp(), {"x": (1, 4), "y": (1, 8)})
    with pytest.raises(MaiacError, match=r"input 'x' has rank 2"):
        import_model(_mlp(), {"x": (1, 4, 1)})


# -- external data -----------------------------------------------------------------------


def _save_external(tmp_path: Path) -> tuple[Path, np.ndarray]:
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 64])],
                   [helper.make_tensor_value_info("y", F, None)],
                   [numpy_helper.from_array(w, "w")])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    return path, w


def test_external_data_is_mapped_lazily(tmp_path: Path, monkeypatch):
    path, w = _save_external(tmp_path)
    calls = []
    real_memmap = np.memmap

    def counting_memmap(*args, **kwargs):
        calls.append(args)
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", counting_memmap)
    module = import_model(path)
    assert calls == []  # importing reads no weight
    const = _ops(module, "onnx.Constant")[0]
    np.testing.assert_array_equal(resources.constant_value(const), w)
    np.testing.assert_array_equal(resources.constant_value(const), w)
    assert len(calls) == 1  # mapped once, then cached


def test_shape_only_import_without_weight_files(tmp_path: Path):
    path, _ = _save_external(tmp_path)
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(MaiacError, match=r"initializer 'w': external data file .*ext\.bin"):
        import_model(path)
    module = import_model(path, shape_only=True)
    const = _ops(module, "onnx.Constant")[0]
    assert const.results[0].type.get_shape() == (64, 32)
    handle = const.attributes["value"].resource_handle.data
    assert not resources.is_materializable(handle)
    assert resources.constant_value(const) is None
    with pytest.raises(MaiacError, match="shape-only"):
        resources.get_array(handle)


# -- passes -------------------------------------------------------------------------------


def test_registry_knows_the_graph_passes_and_names_unknown_ones():
    assert {"fold-constants", "canonicalize", "dce"} <= set(PASSES)
    with pytest.raises(MaiacError, match=r"unknown pass 'nope' \(known passes: .*fold-constants"):
        parse_pipeline("fold-constants,nope")
    with pytest.raises(MaiacError, match=r"pass 'fold-constants' has no option 'bogus'.*size-limit"):
        parse_pipeline("fold-constants{bogus=1}")
    (p,) = parse_pipeline("fold-constants{size-limit=5}")
    assert p.size_limit == 5


def test_fold_keeps_shape_only_weights_symbolic(tmp_path: Path):
    path, _ = _save_external(tmp_path)
    (tmp_path / "ext.bin").unlink()
    module = import_model(path, shape_only=True)
    for p in parse_pipeline("fold-constants,canonicalize"):
        p.apply(Context(), module)
    assert len(_ops(module, "onnx.MatMul")) == 1


# -- the evaluator: numpy rules agree with ONNX's reference ------------------------------

_RULE_CASES = [
    ("Gather", {"axis": 0}, [np.array([5, 6, 7], np.int64), np.array(-1, np.int64)]),
    ("Unsqueeze", {}, [np.arange(6).reshape(2, 3), np.array([0, -1], np.int64)]),
    ("Squeeze", {}, [np.zeros((1, 3, 1)), np.array([2], np.int64)]),
    ("Concat", {"axis": 0}, [np.array([1], np.int64), np.array([2, 3], np.int64)]),
    ("Reshape", {}, [np.arange(12.0).reshape(3, 4), np.array([0, -1, 2], np.int64)]),
    ("Slice", {}, [np.arange(10), np.array([8]), np.array([-100]), np.array([0]),
                   np.array([-3])]),
    ("Slice", {}, [np.arange(20).reshape(4, 5), np.array([1, 1]), np.array([100, -1])]),
    ("Cast", {"to": TensorProto.INT64}, [np.array([-1.7, 2.5], np.float32)]),
    ("Div", {}, [np.array([-7, 7], np.int64), np.array([2, -2], np.int64)]),
    ("Range", {}, [np.array(0, np.int64), np.array(5, np.int64), np.array(2, np.int64)]),
    ("Expand", {}, [np.array([[1.0], [2.0]]), np.array([2, 3], np.int64)]),
    ("Where", {}, [np.array([True, False]), np.array([1, 2]), np.array([3, 4])]),
    ("ConstantOfShape", {"value": np.array([3], np.int64)}, [np.array([2, 2], np.int64)]),
    ("Transpose", {"perm": [1, 0]}, [np.arange(6).reshape(2, 3)]),
]


@pytest.mark.parametrize("op_type,attrs,inputs", _RULE_CASES,
                         ids=[c[0] + str(i) for i, c in enumerate(_RULE_CASES)])
def test_numpy_rules_match_reference(op_type, attrs, inputs):
    assert op_type in NUMPY_RULES
    ours = evaluate(op_type, attrs, inputs, 1, {"": 17})
    reference = evaluate_reference(op_type, attrs, inputs, 1, {"": 17})
    assert ours[0].dtype == reference[0].dtype
    np.testing.assert_array_equal(ours[0], reference[0])


def test_every_supported_op_has_a_dialect_op():
    assert SUPPORTED_OPS <= set(ONNX_OPS)


def test_exporter_value_names_print_and_reparse():
    nodes = [helper.make_node("Relu", ["/model/in"], ["/model/layers.0/Relu_output_0"],
                              name="/model/layers.0/Relu"),
             helper.make_node("Neg", ["/model/layers.0/Relu_output_0"], ["0"], name="n")]
    model = _model(nodes, [helper.make_tensor_value_info("/model/in", F, [2])],
                   [helper.make_tensor_value_info("0", F, None)])
    module = import_model(model)
    text = str(module)
    assert "%model_layers.0_Relu_output = " in text and '{onnx.name = "/model/in"}' in text
    assert str(parse_module(text)) == text
