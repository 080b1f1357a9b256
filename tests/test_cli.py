"""The ``maiac`` command line: error paths, verify plumbing, and compile → run → verify →
report end to end."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from maiac.cli import main, parse_shape
from maiac.runtime.errors import MaiacError

VERIFY_KEYS = {"ok", "model", "quant", "outputs", "layers", "compile_s", "run_s",
               "onnxruntime_s"}
OUTPUT_KEYS = {"name", "shape", "max_abs_err", "max_rel_err", "cosine", "top1_agreement"}
REPORT_KEYS = {"target", "fit", "modeled_time_s", "roofline_time_s", "roofline_fraction", "flops",
               "hbm_bytes", "weight_bytes", "sram_peak_bytes", "engines", "ops"}


def invoke(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input)


def assert_user_error(result: Any, *needles: str) -> None:
    """Exit 2 and exactly one ``error: ...`` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


def need(module: str) -> Any:
    """Import ``module``; skip only while it (or a maiac module it needs) does not exist yet."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("maiac."):
            pytest.skip(f"{module} needs {e.name}, which is not written yet")
        raise


def tiny_model(path: Path, hidden: int = 8) -> Path:
    """y = gelu(x @ W + b) with a static shape, written to ``path``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Add", ["h", "B"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, hidden])],
        [w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# ----------------------------------------------------------------------------- parsing


def test_parse_shape() -> None:
    assert parse_shape("input_ids=1x128") == ("input_ids", (1, 128))
    assert parse_shape("x=7") == ("x", (7,))
    assert parse_shape("s=") == ("s", ())
    for bad in ("1x128", "=1x2", "x=1xq", "x=0x3", "x=1x-2"):
        with pytest.raises(MaiacError, match="--shape"):
            parse_shape(bad)


def test_help_and_version() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("compile", "run", "verify", "report", "opt", "passes"):
        assert cmd in r.output
    assert invoke("--version").exit_code == 0


def test_python_dash_m() -> None:
    r = subprocess.run([sys.executable, "-m", "maiac", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "compile" in r.stdout


# ----------------------------------------------------------------------------- error paths


@pytest.mark.parametrize("cmd", [["compile", "missing.onnx", "-o", "out.maia"],
                                 ["verify", "missing.onnx"],
                                 ["run", "missing.maia"],
                                 ["report", "missing.maia"],
                                 ["opt", "missing.mlir"]])
def test_missing_file(cmd: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke(*cmd), "missing.", "no such")


def test_malformed_onnx_verify(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    assert_user_error(invoke("verify", str(bad)), "bad.onnx", "not a valid ONNX model")


def test_malformed_onnx_compile(tmp_path: Path) -> None:
    need("maiac.driver")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    out = tmp_path / "bad.maia"
    assert_user_error(invoke("compile", str(bad), "-o", str(out)), "bad.onnx")
    assert not out.exists()
    assert not list(tmp_path.glob(".bad.maia*"))  # no temp file left behind


@pytest.mark.parametrize("shape", ["x", "x=1xq", "=4", "x=0"])
def test_bad_shape_syntax(shape: str, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    for cmd in (["compile", str(model), "-o", str(tmp_path / "m.maia")], ["verify", str(model)]):
        assert_user_error(invoke(*cmd, "--shape", shape), "--shape", repr(shape))


def test_bad_target_param_syntax(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    assert_user_error(invoke("compile", str(model), "-o", str(tmp_path / "m.maia"),
                             "--target-param", "tsram_bytes"), "--target-param", "KEY=VALUE")


def test_unknown_target_param(tmp_path: Path) -> None:
    need("maiac.runtime.target")
    model = tiny_model(tmp_path / "m.onnx")
    for cmd in (["compile", str(model), "-o", str(tmp_path / "m.maia")], ["verify", str(model)]):
        assert_user_error(invoke(*cmd, "--target-param", "warp_drive=9"), "warp_drive")
    assert_user_error(invoke("compile", str(model), "-o", str(tmp_path / "m.maia"),
                             "--target", "maia9000"), "maia9000")
    assert not (tmp_path / "m.maia").exists()


def test_usage_error_exit_2(tmp_path: Path) -> None:
    r = invoke("compile", str(tiny_model(tmp_path / "m.onnx")), "--emit", "llvm")
    assert r.exit_code == 2
    r = invoke("frobnicate")
    assert r.exit_code == 2


def test_missing_inputs_file(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    assert_user_error(invoke("verify", str(model), "--inputs", str(tmp_path / "in.npz")),
                      "in.npz")


def test_unknown_pass(tmp_path: Path) -> None:
    need("maiac.passes.registry")
    need("maiac.ir.onnx")
    mlir = tmp_path / "a.mlir"
    mlir.write_text("builtin.module {}\n")
    assert_user_error(invoke("opt", str(mlir), "-p", "no-such-pass"), "no-such-pass")


def test_opt_parse_error(tmp_path: Path) -> None:
    need("maiac.passes.registry")
    need("maiac.ir.onnx")
    mlir = tmp_path / "a.mlir"
    mlir.write_text("builtin.module { this is not ir }\n")
    r = invoke("opt", str(mlir))
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output


def test_opt_roundtrip(tmp_path: Path) -> None:
    need("maiac.passes.registry")
    need("maiac.ir.onnx")
    mlir = tmp_path / "a.mlir"
    mlir.write_text('builtin.module {\n  func.func @f(%a : i32) -> i32 {\n'
                    '    %b = arith.addi %a, %a : i32\n    func.return %b : i32\n  }\n}\n')
    r = invoke("opt", str(mlir))
    assert r.exit_code == 0, r.output
    assert "arith.addi" in r.stdout
    r2 = invoke("opt", "-", input=r.stdout)
    assert r2.exit_code == 0 and r2.stdout == r.stdout


def test_passes_lists_registry() -> None:
    registry = need("maiac.passes.registry")
    r = invoke("passes")
    assert r.exit_code == 0, r.output
    names = list(registry.PASSES) if isinstance(registry.PASSES, dict) else []
    for name in names:
        assert name in r.stdout


# ----------------------------------------------------------------------------- verify plumbing


class _FakeCompiled:
    def __init__(self, model: Any, scale: float) -> None:
        from maiac.onnx_model import open_model, ort_session

        self.sess = ort_session(open_model(model))  # verify hands over the opened model
        self.scale = scale

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.sess.get_outputs()]
        return {n: v * self.scale for n, v in zip(names, self.sess.run(names, inputs),
                                                  strict=True)}


def fake_driver(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    """A stand-in ``maiac.driver`` whose program is onnxruntime times ``scale``."""
    mod = types.ModuleType("maiac.driver")
    mod.compile = lambda model, **kw: _FakeCompiled(model, scale)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "maiac.driver", mod)
    monkeypatch.setattr("maiac.cli_options.check_target", lambda target, params: None)


def test_verify_json_contract_with_stand_in_driver(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    fake_driver(monkeypatch, 1.0)
    r = invoke("verify", str(model), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert VERIFY_KEYS <= set(res) and res["ok"] is True and res["quant"] == "fp32"
    assert res["model"] == str(model)
    assert len(res["outputs"]) == 1 and OUTPUT_KEYS <= set(res["outputs"][0])
    assert res["outputs"][0]["shape"] == [2, 8] and res["outputs"][0]["max_abs_err"] == 0.0

    fake_driver(monkeypatch, 1.01)
    r = invoke("verify", str(model), "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["ok"] is False
    r = invoke("verify", str(model))  # human table
    assert r.exit_code == 1 and "MISMATCH" in r.stdout and "FAIL" in r.stdout
    # quantized: judged by cosine, 1% scale keeps cosine at 1.0
    r = invoke("verify", str(model), "--quant", "fp8", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["quant"] == "fp8"


def test_verify_inputs_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    fake_driver(monkeypatch, 1.0)
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    r = invoke("verify", str(model), "--inputs", str(tmp_path / "in.npz"))
    assert r.exit_code == 0, r.output
    np.savez(tmp_path / "wrong.npz", z=np.ones((2, 8), np.float32))
    assert_user_error(invoke("verify", str(model), "--inputs", str(tmp_path / "wrong.npz")),
                      "'z'")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(params=["matmul-add", "models.mlp"])
def mlp_onnx(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A hand-built MatMul+Add model, and ``maiac.models.mlp()`` saved as mlp.onnx."""
    need("maiac.driver")
    path = tmp_path / "mlp.onnx"
    if request.param == "matmul-add":
        return tiny_model(path)
    models = need("maiac.models")
    model = models.mlp()
    onnx.save(model if isinstance(model, onnx.ModelProto) else onnx.load(model), path)
    return path


def test_e2e_compile_run_verify_report(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.maia"
    r = invoke("compile", str(mlp_onnx), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert out.is_file() and not list(tmp_path.glob(".mlp.maia*"))

    # run with random inputs, then with explicit inputs; outputs and a trace written
    r = invoke("run", str(out))
    assert r.exit_code == 0, r.output
    assert "random inputs" in r.stdout
    from maiac.inputs import random_inputs

    feeds = random_inputs(onnx.load(mlp_onnx), None, seed=5)
    np.savez(tmp_path / "in.npz", **feeds)
    r = invoke("run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o",
               str(tmp_path / "out.npz"), "--trace", str(tmp_path / "trace.json"))
    assert r.exit_code == 0, r.output
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace  # Chrome trace: a list of events or {"traceEvents": [...]}
    import onnxruntime as ort

    sess = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    with np.load(tmp_path / "out.npz") as got:
        for name, want in ref.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)

    # verify: table and JSON
    r = invoke("verify", str(mlp_onnx))
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout
    r = invoke("verify", str(mlp_onnx), "--json", "--inputs", str(tmp_path / "in.npz"))
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert VERIFY_KEYS <= set(res) and res["ok"] is True
    assert all(OUTPUT_KEYS <= set(o) for o in res["outputs"])

    # report: JSON contract, table, self-contained HTML
    r = invoke("report", str(out), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert REPORT_KEYS <= set(rep)
    assert {"csram", "tsram"} <= set(rep["sram_peak_bytes"])
    assert all({"name", "busy_s"} <= set(e) for e in rep["engines"])
    assert rep["ops"] and all({"name", "kind", "time_s", "flops", "hbm_bytes", "bound"}
                              <= set(o) for o in rep["ops"])
    assert rep["modeled_time_s"] > 0
    assert rep["fit"].startswith("fitted to arXiv 2608.24664")  # which fit made the figures
    r = invoke("report", str(out))
    assert r.exit_code == 0 and "modeled time" in r.stdout and "roofline" in r.stdout
    assert "fit                fitted to arXiv" in r.stdout
    page = tmp_path / "report.html"
    r = invoke("report", str(out), "--html", str(page))
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "Plotly.newPlot(" in text
    # self-contained (plotly.js inlined; tests/test_report_browser.py loads it offline)
    assert "<script src" not in text and "<link" not in text


def test_e2e_emit_ir(mlp_onnx: Path, tmp_path: Path) -> None:
    for stage in ("onnx", "maia", "tiled", "asm"):
        r = invoke("compile", str(mlp_onnx), "--emit", stage)
        assert r.exit_code == 0, (stage, r.output)
        assert r.stdout.strip(), stage
    out = tmp_path / "m.mlir"
    r = invoke("compile", str(mlp_onnx), "--emit", "onnx", "-o", str(out))
    assert r.exit_code == 0 and out.read_text().strip()


def test_e2e_unknown_pass_in_pipeline(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.maia"
    assert_user_error(invoke("compile", str(mlp_onnx), "-o", str(out), "--pipeline",
                             "no-such-pass"), "no-such-pass")
    assert not out.exists()


def test_e2e_run_bad_inputs(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.maia"
    assert invoke("compile", str(mlp_onnx), "-o", str(out)).exit_code == 0
    np.savez(tmp_path / "in.npz", nope=np.zeros(3, np.float32))
    assert_user_error(invoke("run", str(out), "--inputs", str(tmp_path / "in.npz")), "nope")
    bad = tmp_path / "bad.maia"
    bad.write_bytes(out.read_bytes()[:100])
    assert_user_error(invoke("run", str(bad)))
    assert_user_error(invoke("report", str(bad)))


def test_e2e_symbolic_shape(tmp_path: Path) -> None:
    need("maiac.driver")
    models = need("maiac.models")
    path = tmp_path / "sym.onnx"
    onnx.save(models.mlp(symbolic=True), path)
    for cmd in (["verify", str(path)], ["compile", str(path), "-o", str(tmp_path / "s.maia")]):
        assert_user_error(invoke(*cmd), "'x'", "--shape")
    assert_user_error(invoke("verify", str(path), "--shape", "nope=1x64"), "nope")
    r = invoke("verify", str(path), "--shape", "x=3x64", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"][0]["shape"][0] == 3
    r = invoke("compile", str(path), "-o", str(tmp_path / "s.maia"), "--shape", "x=3x64")
    assert r.exit_code == 0 and r.stderr == ""  # no progress output when not on a terminal


def test_e2e_transformer_token_ids(tmp_path: Path) -> None:
    """Random token ids stay inside the vocabulary; verify and run agree with onnxruntime."""
    need("maiac.driver")
    models = need("maiac.models")
    path = tmp_path / "gpt.onnx"
    onnx.save(models.transformer(layers=1, vocab=50), path)
    r = invoke("verify", str(path), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["ok"] and res["outputs"][0]["name"] == "logits"
    assert res["outputs"][0]["top1_agreement"] == 1.0


def test_subprocess_error_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "maiac", "compile", str(tmp_path / "nope.onnx"),
                        "-o", str(tmp_path / "x.maia")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.onnx'}: no such model file"]


PLUGIN = '''
from dataclasses import dataclass

from xdsl.passes import ModulePass

from maiac.passes.registry import register_pass


@register_pass
@dataclass(frozen=True)
class CliTestNoop(ModulePass):
    """Does nothing (a CLI test plugin)."""

    name = "cli-test-noop"

    def apply(self, ctx, op):
        pass
'''


def test_pass_plugin_and_timing(mlp_onnx: Path, tmp_path: Path) -> None:
    need("maiac.passes.registry")
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(PLUGIN)
    r = invoke("passes", "--load-pass-plugin", str(plugin))
    assert r.exit_code == 0 and "cli-test-noop" in r.stdout and "CLI test plugin" in r.stdout
    from maiac.driver import default_pipeline

    out = tmp_path / "p.maia"
    r = invoke("compile", str(mlp_onnx), "-o", str(out), "--load-pass-plugin", str(plugin),
               "--pipeline", "cli-test-noop," + default_pipeline(), "--pass-timing")
    assert r.exit_code == 0, r.output
    assert out.is_file() and "cli-test-noop" in r.stderr and "total" in r.stderr
    assert_user_error(invoke("passes", "--load-pass-plugin", str(tmp_path / "nope.py")),
                      "nope.py")


def test_ir_printing_flags(mlp_onnx: Path, tmp_path: Path) -> None:
    r = invoke("compile", str(mlp_onnx), "--emit", "maia", "--print-ir-after",
               "lower-onnx-to-maia")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("IR Dump After") == 1 and "maia." in r.stdout
    out = tmp_path / "m.maia"
    r = invoke("compile", str(mlp_onnx), "-o", str(out), "--print-ir-after-all",
               "--no-verify-each")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("IR Dump After") >= 3 and out.is_file()
    assert_user_error(invoke("compile", str(mlp_onnx), "-o", str(out), "--print-ir-after",
                             "nope"), "nope")
