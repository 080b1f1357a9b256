"""The command line's contract on bad input (maiac/cli_errors.py, maiac/outputs.py):
exit 2 and one line for bad input or options, 3 and one line for an internal error
(traceback only with --debug / MAIAC_DEBUG=1), 130/143 on SIGINT/SIGTERM, and no file
written, replaced or left behind on failure."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from maiac import models
from maiac.cli import main


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def assert_one_error(r, code: int = 2, text: str = "") -> None:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    if text:
        assert text in r.output, r.output


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = d / "tfm.onnx"
    onnx.save(models.transformer(layers=1, d_model=32, heads=2, vocab=64, seq=8), model)
    block = d / "block.onnx"
    onnx.save(models.transformer_block(seq=4, d_model=32, heads=2), block)
    r = invoke("compile", str(model), "-o", str(d / "tfm.maia"))
    assert r.exit_code == 0, r.output
    r = invoke("compile", str(block), "-o", str(d / "block.maia"))
    assert r.exit_code == 0, r.output
    return d


def _save(path: Path, nodes, inits, inputs) -> str:
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _x(*shape: int):
    return [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]


def test_internal_error_is_one_line_exit_3(work, monkeypatch):
    import maiac.driver

    def broken(*a, **k):
        raise RuntimeError("something inside maiac broke")

    monkeypatch.setattr(maiac.driver, "compile", broken)
    args = ("compile", str(work / "tfm.onnx"), "-o", str(work / "x.maia"))
    r = invoke(*args)
    assert r.exit_code == 3
    assert "internal error" in r.output and "RuntimeError: something inside maiac broke" \
        in r.output and "--debug" in r.output
    assert "Traceback" not in r.output
    for res in (invoke("--debug", *args), invoke(*args, env={"MAIAC_DEBUG": "1"})):
        assert res.exit_code == 3 and "Traceback" in res.output
    assert not (work / "x.maia").exists()


@pytest.mark.parametrize("case", ["conv_group0", "gather_oob", "reshape", "expand", "negdims",
                                  "arity"])
def test_bad_models_fail_at_compile_naming_the_cause(tmp_path, case):
    if case == "conv_group0":
        w = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
        m = _save(tmp_path / "m.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], group=0)],
                  [w], _x(1, 4, 8, 8))
        text = "group=0"
    elif case == "gather_oob":
        t = numpy_helper.from_array(np.ones((3, 4), np.float32), "t")
        i = numpy_helper.from_array(np.array([5], np.int64), "i")
        m = _save(tmp_path / "m.onnx", [helper.make_node("Gather", ["t", "i"], ["g"]),
                                        helper.make_node("Add", ["g", "x"], ["y"])],
                  [t, i], _x(1, 4))
        text = "op 'Gather'"
    elif case == "reshape":
        s = numpy_helper.from_array(np.array([3, 5], np.int64), "s")
        m = _save(tmp_path / "m.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"])], [s],
                  _x(4, 4))
        text = "cannot reshape [4, 4] (16 elements) to [3, 5]"
    elif case == "expand":
        s = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "s")
        m = _save(tmp_path / "m.onnx", [helper.make_node("Expand", ["x", "s"], ["y"])], [s],
                  _x(1, 1))
        text = "is outside hbm"
    elif case == "arity":  # found by tests/test_fuzz.py: an xDSL VerifyException before
        m = _save(tmp_path / "m.onnx", [helper.make_node("Exp", ["x", "x"], ["y"], name="n0")],
                  [], _x(1))
        text = "node 'n0' (Exp): onnx.Exp takes 1 inputs, got 2"
    else:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-3, 4])
        m = _save(tmp_path / "m.onnx", [helper.make_node("Add", ["x", "w"], ["y"])], [w],
                  _x(3, 4))
        text = "initializer 'w': negative dimension"
    out = tmp_path / "o.maia"
    assert_one_error(invoke("compile", m, "-o", str(out)), 2, text)
    assert not out.exists()


def test_pipeline_without_tiling_is_an_error(work):
    out = work / "p.maia"
    r = invoke("compile", str(work / "tfm.onnx"), "-o", str(out), "--pipeline", "canonicalize")
    assert_one_error(r, 2, "was not tiled")
    assert not out.exists()


def test_plugin_shadowing_a_builtin_pass(work, tmp_path):
    plug = tmp_path / "plug.py"
    plug.write_text("from maiac.passes.registry import register_pass\n"
                    "from xdsl.passes import ModulePass\n@register_pass\n"
                    "class P(ModulePass):\n    name = 'canonicalize'\n"
                    "    def apply(self, ctx, op):\n        pass\n")
    r = invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "o.maia"),
               "--load-pass-plugin", str(plug))
    assert_one_error(r, 2, "registered twice")


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_calibration_arrays_of_the_wrong_shape_or_dtype(work, tmp_path, bad):
    data = np.zeros((3, 5), np.int64) if bad == "shape" else np.full((1, 8), 0.5, np.float32)
    np.savez(tmp_path / "c.npz", input_ids=data)
    r = invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "o.maia"), "--quant",
               "fp8", "--calib", str(tmp_path / "c.npz"))
    assert_one_error(r, 2, "--calib: array 'input_ids'")


def test_bad_options(work, tmp_path):
    prog = str(work / "tfm.maia")
    assert_one_error(invoke("run", prog, "--seed", "-1"), 2, "--seed")
    assert_one_error(invoke("run", prog, "--max-memory", "lots"), 2, "--max-memory")
    assert_one_error(invoke("report", prog, "--top", "-3"), 2, "--top")
    assert_one_error(invoke("verify", str(work / "tfm.onnx"), "--rtol", "-1"), 2, "--rtol")
    assert_one_error(invoke("run", prog, "--max-memory", "1KiB"), 2, "over the bound of 1024")
    assert_one_error(invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "o.maia"),
                            "--shape", "input_ids=1x999999999999"), 2, "do not fit")


def test_opt_on_non_utf8_or_deeply_nested_ir(tmp_path):
    (tmp_path / "bin.mlir").write_bytes(b"\xff\xfe\x00 not text")
    assert_one_error(invoke("opt", str(tmp_path / "bin.mlir")), 2, "not UTF-8")
    deep = "builtin.module {" + '"test.op"() ({' * 3000 + "})" * 3000 + "}"
    (tmp_path / "deep.mlir").write_text(deep)
    assert_one_error(invoke("opt", str(tmp_path / "deep.mlir")), 2)


# ----------------------------------------------------------------------------- outputs


def test_output_equal_to_an_input_is_refused(work):
    model = work / "tfm.onnx"
    before = model.read_bytes()
    assert_one_error(invoke("compile", str(model), "-o", str(model)), 2, "is the input")
    assert_one_error(invoke("compile", str(model), "--emit", "onnx", "-o", str(model)), 2,
                     "is the input")
    prog = work / "tfm.maia"
    assert_one_error(invoke("run", str(prog), "-o", str(prog)), 2, "is the input")
    assert model.read_bytes() == before


def test_directory_or_device_is_never_replaced(work, tmp_path):
    (tmp_path / "d").mkdir()
    r = invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "d"))
    assert_one_error(r, 2, "is a directory")
    assert (tmp_path / "d").is_dir()
    r = invoke("report", str(work / "tfm.maia"), "--html", "/dev/null")
    assert_one_error(r, 2, "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_read_only_directory(work, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert_one_error(invoke("compile", str(work / "tfm.onnx"), "-o", str(ro / "o.maia")), 2,
                     "not writable")


def test_files_follow_the_umask(work, tmp_path):
    old = os.umask(0o027)
    try:
        assert invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "a.maia")
                      ).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.maia").st_mode) == 0o640


def test_run_with_a_bad_trace_path_writes_nothing(work, tmp_path):
    out = tmp_path / "out.npz"
    r = invoke("run", str(work / "tfm.maia"), "-o", str(out), "--trace",
               str(tmp_path / "no" / "t.json"))
    assert_one_error(r, 2, "--trace")
    assert list(tmp_path.iterdir()) == []


def test_compile_checks_the_output_before_compiling(work, tmp_path, monkeypatch):
    import maiac.driver

    called = []
    monkeypatch.setattr(maiac.driver, "compile", lambda *a, **k: called.append(1))
    r = invoke("compile", str(work / "tfm.onnx"), "-o", str(tmp_path / "no" / "o.maia"))
    assert_one_error(r, 2, "does not exist")
    assert not called


_SLOW_SAVE = """
import signal, sys, time
# a child of a background job inherits SIGINT ignored (POSIX): restore what an
# interactive terminal gives, so the test sends what a user's Ctrl-C does
signal.signal(signal.SIGINT, signal.default_int_handler)
import maiac.driver
def slow_save(self, path):
    with open(path, "wb") as f:
        f.write(b"partial")
        f.flush()
    time.sleep(60)
maiac.driver.CompiledModel.save = slow_save
from maiac.cli import main
sys.argv = ["maiac"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_signal_leaves_no_file(work, tmp_path, sig, code, word):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, "compile",
                             str(work / "tfm.onnx"), "-o", str(out_dir / "o.maia")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out_dir.iterdir()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(out_dir.iterdir()), "the temporary output never appeared"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == f"maiac: {word}"
    assert list(out_dir.iterdir()) == []


# ----------------------------------------------------------------------------- inputs


def test_uint64_ids_past_int64_are_an_error(work, tmp_path):
    np.savez(tmp_path / "u.npz", input_ids=np.full((1, 8), 2**63 + 5, np.uint64))
    assert_one_error(invoke("run", str(work / "tfm.maia"), "--inputs", str(tmp_path / "u.npz")),
                     2, "9223372036854775813 of dtype uint64 does not fit i64")


def test_ids_outside_the_vocabulary_are_an_error(work, tmp_path):
    np.savez(tmp_path / "v.npz", input_ids=np.full((1, 8), 64, np.int64))
    assert_one_error(invoke("run", str(work / "tfm.maia"), "--inputs", str(tmp_path / "v.npz")),
                     2, "gather index out of range: 64 (table has 64 rows)")


def test_float64_overflowing_float32_is_an_error(work, tmp_path):
    x = np.zeros((1, 4, 32))
    x[0, 0, 0] = 1e300
    np.savez(tmp_path / "f.npz", x=x)
    r = invoke("run", str(work / "block.maia"), "--inputs", str(tmp_path / "f.npz"))
    assert_one_error(r, 2, "value 1e+300 of dtype float64 overflows f32")
    np.savez(tmp_path / "g.npz", x=np.full((1, 4, 32), 0.1))  # rounding is fine
    assert invoke("run", str(work / "block.maia"), "--inputs", str(tmp_path / "g.npz")
                  ).exit_code == 0


def test_node_name_that_is_not_utf8(tmp_path):
    """Found by tests/test_fuzz.py: protobuf hands invalid UTF-8 names back as bytes."""
    m = _save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"], name="zzmarkzz")],
              [], _x(1, 4))
    data = Path(m).read_bytes().replace(b"zzmarkzz", b"zz\x99arkzz")
    Path(m).write_bytes(data)
    assert_one_error(invoke("compile", m, "-o", str(tmp_path / "o.maia")), 2, "not UTF-8 text")


def test_sequence_past_the_position_table_names_the_table_and_the_shape():
    """gpt2_torchscript (symbolic batch x sequence) has 64 positions: 1x65 is one error
    giving the table size and the --shape dim past it, in compile and verify; 1x64 works."""
    model = str(Path(__file__).parent / "data" / "gpt2_torchscript.onnx")
    for cmd in ("compile", "verify"):
        args = [cmd, model, "--shape", "input_ids=1x65", "--shape", "attention_mask=1x65"]
        r = invoke(*args, *(["--emit", "maia"] if cmd == "compile" else []))
        assert_one_error(r, 2, "the table has 64 entries along axis 0")
        assert "--shape input_ids=1x65 (input 'input_ids', dim 1 = 65)" in r.output
    r = invoke("verify", model, "--shape", "batch=1", "--shape", "sequence=65")
    assert_one_error(r, 2, "fewer than --shape sequence=65 needs; use at most 64")
    r = invoke("compile", model, "--shape", "batch=1", "--shape", "sequence=64", "--emit", "maia")
    assert r.exit_code == 0, r.output
