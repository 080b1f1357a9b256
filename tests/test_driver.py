"""The driver's pipeline handling: lists of passes, verification after each, timing."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.passes import ModulePass

import maiac
from maiac import models
from maiac.driver import default_pipeline
from maiac.runtime.errors import MaiacError


@dataclass(frozen=True)
class BreakReturnPass(ModulePass):
    """Deliberately breaks the IR: the function's return loses its operands."""

    name = "break-return"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for ret in op.walk():
            if isinstance(ret, func.ReturnOp):
                ret.operands = ()


def test_pipeline_as_list_of_names_and_passes() -> None:
    stages = default_pipeline().split(",")
    compiled = maiac.compile(models.mlp(layers=1), pipeline=stages)
    assert [r.name for r in compiled.log.passes] == [s.split("{")[0] for s in stages]
    assert all(r.seconds >= 0 for r in compiled.log.passes)


def test_verify_each_names_the_pass_that_broke_the_ir() -> None:
    with pytest.raises(MaiacError, match="after pass 'break-return'"):
        maiac.compile(models.mlp(layers=1),
                      pipeline=["fold-constants", BreakReturnPass(), "lower-onnx-to-maia"])


def test_print_ir_after_one_pass() -> None:
    out = io.StringIO()
    maiac.compile(models.mlp(layers=1), print_ir_after=["lower-onnx-to-maia"], out=out)
    text = out.getvalue()
    assert "IR Dump After lower-onnx-to-maia" in text and "maia.matmul" in text
    assert "IR Dump After tile" not in text
    with pytest.raises(MaiacError, match="unknown pass"):
        maiac.compile(models.mlp(layers=1), print_ir_after=["no-such-pass"])


def test_print_ir_after_an_unregistered_pass_object() -> None:
    out = io.StringIO()
    stages = default_pipeline().split(",")
    maiac.compile(models.mlp(layers=1), pipeline=[*stages[:3], NoOpPass(), *stages[3:]],
                  print_ir_after=["no-op-object"], out=out)
    assert out.getvalue().count("IR Dump After") == 1


@dataclass(frozen=True)
class NoOpPass(ModulePass):
    """Does nothing; not registered."""

    name = "no-op-object"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        pass


def test_default_pipeline_quotes_specs_with_separators() -> None:
    from xdsl.utils.arg_spec import parse_pipeline

    text = default_pipeline("w=mxfp4,a=mxfp8e4m3")
    specs = list(parse_pipeline(text))
    quant = [s for s in specs if s.name == "quantize"]
    assert len(quant) == 1 and quant[0].parameters["spec"] == ("w=mxfp4,a=mxfp8e4m3",)


def test_run_writes_a_trace(tmp_path) -> None:  # noqa: ANN001
    import json

    from maiac.inputs import random_inputs

    model = models.mlp(layers=1)
    compiled = maiac.compile(model)
    trace = tmp_path / "t.json"
    compiled.run(random_inputs(model, None, seed=0), trace=trace)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" for e in events)
