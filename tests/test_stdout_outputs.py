"""``-`` names stdout for every text output of every command (IR, traces, HTML pages),
and is refused, before any work, for the binary ones (.maia, .npz). The table below
classifies every output option of every command: a new one fails
``test_every_output_option_is_classified`` until it is added here and handled."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from test_cli import assert_user_error, invoke, tiny_model

from maiac.cli import main
from maiac.runtime.trace import validate_trace

OUTPUT_OPTIONS = ("-o", "--output", "--html", "--trace")
# (command, option) -> "text" (``-`` is stdout) or "binary" (``-`` refused)
KINDS = {("compile", "-o"): "text with --emit, binary otherwise", ("opt", "-o"): "text",
         ("report", "--html"): "text", ("report", "--trace"): "text",
         ("run", "--trace"): "text", ("run", "-o"): "binary", ("perf", "--html"): "text"}


def test_every_output_option_is_classified() -> None:
    found = {(name, next(o for o in p.opts if o in OUTPUT_OPTIONS or o == p.opts[0]))
             for name, cmd in main.commands.items() for p in cmd.params
             if isinstance(p, click.Option) and set(p.opts) & set(OUTPUT_OPTIONS)}
    assert found == set(KINDS), found ^ set(KINDS)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("stdout")
    model = tiny_model(tmp / "m.onnx")
    r = invoke("compile", str(model), "-o", str(tmp / "m.maia"))
    assert r.exit_code == 0, r.output
    return model, tmp / "m.maia"


def stdout_of(*args: str) -> str:
    r = invoke(*args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout


def test_ir_goes_to_stdout(program: tuple[Path, Path]) -> None:
    model, _ = program
    ir = stdout_of("compile", str(model), "--emit", "maia", "-o", "-")
    assert ir.startswith("builtin.module") and "maia.matmul" in ir
    path = model.parent / "m.mlir"
    path.write_text(ir)
    out = stdout_of("opt", str(path), "-p", "canonicalize", "-o", "-")
    assert out.startswith("builtin.module") and out.endswith("}\n")


@pytest.mark.parametrize("command", ["report", "run"])
def test_trace_goes_to_stdout_alone(program: tuple[Path, Path], command: str) -> None:
    """The trace is all of stdout (the command's own lines go to stderr): it parses."""
    _, maia = program
    r = invoke(command, str(maia), "--trace", "-")
    assert r.exit_code == 0, r.output
    trace = json.loads(r.stdout)
    assert validate_trace(trace) == []
    assert trace["traceEvents"]
    assert ("modeled" in r.stderr) or ("outputs" in r.stderr)  # the summary moved to stderr


def test_report_html_goes_to_stdout(program: tuple[Path, Path]) -> None:
    _, maia = program
    page = stdout_of("report", str(maia), "--html", "-")
    assert page.lstrip().lower().startswith("<!doctype html") and page.rstrip().endswith("</html>")


def test_perf_html_goes_to_stdout(tmp_path: Path) -> None:
    page = stdout_of("perf", "llama-tiny", "--batch", "1", "--context", "64", "--quant", "fp8",
                     "--kv-cache", "fp8", "--jobs", "1", "--cache-dir", str(tmp_path / "c"),
                     "--html", "-")
    assert page.startswith("<!doctype html>") and page.endswith("</html>")


def test_binary_outputs_and_two_claims_on_stdout_are_refused(program: tuple[Path, Path]
                                                             ) -> None:
    model, maia = program
    assert_user_error(invoke("compile", str(model), "-o", "-"), "-o -", "binary")
    assert_user_error(invoke("run", str(maia), "-o", "-"), "-o -", "binary")
    assert_user_error(invoke("report", str(maia), "--html", "-", "--trace", "-"),
                      "--html -", "--trace")
    assert_user_error(invoke("report", str(maia), "--trace", "-", "--json"),
                      "--trace -", "--json")
    assert_user_error(invoke("run", str(maia), "--trace", "-", "--json"), "--trace -")
