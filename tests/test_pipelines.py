"""Pipelines a user prints, edits and passes back; a pass plugin through every
instrumentation flag (the example in examples/my_passes.py and docs/pass-authors.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from maiac import models
from maiac.cli import main
from maiac.driver import default_pipeline

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "my_passes.py"
WITH_GELU = "fold-constants,canonicalize,lower-onnx-to-maia,fuse-erf-gelu,tile,plan-memory"
NO_FUSION = "fold-constants,canonicalize,lower-onnx-to-maia,tile,plan-memory"

BROKEN_PLUGIN = '''
from dataclasses import dataclass
from xdsl.dialects import func
from xdsl.passes import ModulePass
from maiac.passes import register_pass

@register_pass
class BreakIt(ModulePass):
    """Drops the operands of func.return (so the IR no longer verifies)."""
    name = "break-it"

    def apply(self, ctx, op):
        for ret in op.walk():
            if isinstance(ret, func.ReturnOp):
                ret.operands = ()
'''


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def assert_user_error(result: Any, *needles: str) -> None:
    """Exit 2 and one ``error: ...`` line on stderr naming each of ``needles``."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def transformer_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipelines") / "transformer.onnx"
    onnx.save(models.transformer(layers=1), path)
    return path


def test_passes_prints_the_default_pipeline_per_quant() -> None:
    r = invoke("passes", "--pipeline")
    assert r.exit_code == 0 and r.stdout.strip() == default_pipeline()
    r = invoke("passes", "--pipeline", "--quant", "w=mxfp4,a=mxfp8e4m3")
    assert r.exit_code == 0 and r.stdout.strip() == default_pipeline("w=mxfp4,a=mxfp8e4m3")
    assert 'spec="w=mxfp4,a=mxfp8e4m3"' in r.stdout


def test_printed_pipeline_is_accepted_back(transformer_onnx: Path, tmp_path: Path) -> None:
    text = invoke("passes", "--pipeline").stdout.strip()
    r = invoke("compile", str(transformer_onnx), "-o", str(tmp_path / "m.maia"),
               "--pipeline", text.replace("fold-constants", "fold-constants{size-limit=4096}"))
    assert r.exit_code == 0, r.output


def test_pass_list_shows_typed_options_with_defaults() -> None:
    r = invoke("passes")
    assert r.exit_code == 0
    assert "fold-constants" in r.stdout and "size-limit: int = 16777216" in r.stdout


@pytest.mark.parametrize(("pipeline", "needles"), [
    ("fold-constants,no-such-pass", ("unknown pass 'no-such-pass'", "known passes")),
    ("fold-constants{nope=1}", ("has no option 'nope'", "size-limit: int")),
    ("fold-constants{size-limit=abc}", ("fold-constants", "size-limit: int")),
    ("fold-constants{", ("pipeline 'fold-constants{'",)),
])
def test_pipeline_errors_name_the_pass_and_option(transformer_onnx: Path, tmp_path: Path,
                                                  pipeline: str, needles: tuple[str, ...]) -> None:
    r = invoke("compile", str(transformer_onnx), "-o", str(tmp_path / "m.maia"),
               "--pipeline", pipeline)
    assert_user_error(r, *needles)
    assert not (tmp_path / "m.maia").exists()


def test_plugin_pass_listed_with_its_option() -> None:
    r = invoke("passes", "--load-pass-plugin", str(PLUGIN))
    assert r.exit_code == 0
    assert "fuse-erf-gelu" in r.stdout and "tol: float = 1e-06" in r.stdout


def test_plugin_pass_with_every_instrumentation_flag(transformer_onnx: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "m.maia"
    r = invoke("compile", str(transformer_onnx), "-o", str(out), "--load-pass-plugin",
               str(PLUGIN), "--pipeline", WITH_GELU, "--print-ir-after=fuse-erf-gelu",
               "--verify-each", "--pass-timing")
    assert r.exit_code == 0, r.output
    assert out.is_file()
    assert r.stderr.count("IR Dump After") == 1
    dump = r.stderr.split("IR Dump After fuse-erf-gelu")[1]
    assert 'fn = "gelu"' in dump and '"erf"' not in dump
    timing = [line.split()[0] for line in r.stderr.splitlines() if line.endswith("%")]
    assert sorted(timing) == sorted(p.split("{")[0] for p in WITH_GELU.split(","))


def test_plugin_pass_in_print_ir_after_all(transformer_onnx: Path) -> None:
    r = invoke("compile", str(transformer_onnx), "--emit", "maia", "--load-pass-plugin",
               str(PLUGIN), "--pipeline", WITH_GELU, "--print-ir-after-all")
    assert r.exit_code == 0, r.output
    assert "IR Dump After fuse-erf-gelu" in r.stderr
    assert 'fn = "gelu"' in r.stdout  # --emit maia includes passes added after lowering


def test_verify_each_names_the_plugin_pass_that_broke_the_ir(transformer_onnx: Path,
                                                            tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PLUGIN)
    r = invoke("compile", str(transformer_onnx), "-o", str(tmp_path / "m.maia"),
               "--load-pass-plugin", str(plugin), "--pipeline",
               "fold-constants,break-it,lower-onnx-to-maia", "--verify-each")
    assert_user_error(r, "after pass 'break-it'")


def test_plugin_pass_through_the_python_api() -> None:
    import maiac
    from maiac.passes.registry import load_pass_plugin

    load_pass_plugin(PLUGIN)
    model = models.transformer(layers=1)
    plain = maiac.compile(model, pipeline=NO_FUSION)
    fused = maiac.compile(model, pipeline=WITH_GELU)
    assert len(fused.program.instructions) < len(plain.program.instructions)


def test_plugin_pass_in_opt(transformer_onnx: Path, tmp_path: Path) -> None:
    mlir = tmp_path / "t.mlir"
    r = invoke("compile", str(transformer_onnx), "--emit", "maia", "-o", str(mlir),
               "--pipeline", NO_FUSION)
    assert r.exit_code == 0, r.output
    r = invoke("opt", str(mlir), "--load-pass-plugin", str(PLUGIN), "-p", "fuse-erf-gelu")
    assert r.exit_code == 0, r.output
    assert 'fn = "gelu"' in r.stdout and 'fn = "erf"' not in r.stdout
