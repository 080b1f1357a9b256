"""Every unsupported op of a model in one error, and ``maiac ops [MODEL]``."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from maiac.cli import main
from maiac.conformance import node_cases, run_case
from maiac.importer import import_model
from maiac.runtime.errors import MaiacError

F = TensorProto.FLOAT


def _gap_model() -> onnx.ModelProto:
    """Two Unique nodes, one Det and a supported Relu: two unsupported op types."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="/act/Relu"),
        helper.make_node("Unique", ["r"], ["u"], name="/a/Unique"),
        helper.make_node("Det", ["m"], ["d"], name="/b/Det"),
        helper.make_node("Unique", ["u"], ["u2"], name="/c/Unique"),
    ]
    graph = helper.make_graph(
        nodes, "gap", [helper.make_tensor_value_info("x", F, [4]),
                       helper.make_tensor_value_info("m", F, [2, 2])],
        [helper.make_tensor_value_info("u2", F, None), helper.make_tensor_value_info("d", F, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_unsupported_op_type_in_one_error() -> None:
    with pytest.raises(MaiacError) as info:
        import_model(_gap_model())
    assert str(info.value) == ("2 unsupported op types: Unique (2, first '/a/Unique'), "
                               "Det (1, first '/b/Det') (in gap)")


def test_cli_compile_names_the_whole_gap(tmp_path) -> None:
    path = tmp_path / "gap.onnx"
    onnx.save(_gap_model(), path)
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "g.maia")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: 2 unsupported op types: Unique (2, first")
    assert not (tmp_path / "g.maia").exists()


def test_ops_lists_supported_ops_with_opsets() -> None:
    result = CliRunner().invoke(main, ["ops", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["op"]: r for r in json.loads(result.output)["ops"]}
    assert rows["CumSum"]["how"] == "lowered" and 14 in rows["CumSum"]["opsets"]
    assert rows["Attention"]["how"] == "lowered" and 23 in rows["Attention"]["opsets"]
    assert rows["Clip"]["opsets"][:3] == [1, 6, 11]
    assert rows["Size"]["how"] == "folded"
    assert "Unique" not in rows


def test_ops_of_a_model(tmp_path) -> None:
    path = tmp_path / "gap.onnx"
    onnx.save(_gap_model(), path)
    result = CliRunner().invoke(main, ["ops", str(path), "--json"])
    assert result.exit_code == 1
    table = json.loads(result.output)
    assert not table["ok"]
    rows = {r["op"]: r for r in table["ops"]}
    assert rows["Relu"]["supported"] and rows["Relu"]["count"] == 1
    assert not rows["Unique"]["supported"] and rows["Unique"]["count"] == 2
    assert rows["Unique"]["first"] == "/a/Unique"
    text = CliRunner().invoke(main, ["ops", str(path)]).output
    assert "2 unsupported (Unique, Det)" in text


def test_ops_of_a_missing_model_is_a_user_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["ops", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2
    assert "no such ONNX model file" in result.stderr


def test_harness_never_raises_on_sequence_cases() -> None:
    cases = [c for c in node_cases() if c.model is not None and any(
        not v.type.HasField("tensor_type") for v in [*c.model.graph.input, *c.model.graph.output])]
    assert len(cases) > 20
    statuses = {run_case(c).status for c in cases}
    assert statuses <= {"error", "unsupported", "skip"}
