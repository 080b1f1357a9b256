"""``maiac compile FILE.mlir`` with the weights ``--emit-weights DIR`` wrote (maiac/ir_file.py):
the round trip gives the program compiling the ONNX model gives; IR without its weights, and
a hostile weights folder, are refused with one error naming the weight or the folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error, invoke, tiny_model

from maiac.runtime.program import load_program, program_to_manifest

TILED_REST = "tile,double-buffer,prefetch,plan-memory{resident=true},sync"


def ok(*args: str) -> Any:
    r = invoke(*args)
    assert r.exit_code == 0, (r.exit_code, r.output)
    return r


def program_parts(path: Path, keep_meta: bool = True) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A program's manifest (without constants) and constant bytes: what differs, when two
    programs do."""
    program = load_program(path)
    manifest = program_to_manifest(program, [])
    if not keep_meta:
        manifest.pop("meta")
    return manifest, {k: bytes(v) for k, v in program.constants.items()}


def emitted(tmp_path: Path, model: Path, emit: str, *extra: str) -> tuple[Path, Path]:
    ir, weights = tmp_path / f"{emit}.mlir", tmp_path / f"w_{emit}"
    ok("compile", str(model), "--emit", emit, "-o", str(ir), "--emit-weights", str(weights),
       *extra)
    return ir, weights


@pytest.mark.parametrize(("emit", "quant"), [("onnx", None), ("maia", None), ("tiled", None),
                                             ("onnx", "fp8"), ("maia", "mxfp4")])
def test_round_trip_gives_the_same_program_and_outputs(tmp_path: Path, emit: str,
                                                       quant: str | None) -> None:
    model = tiny_model(tmp_path / "m.onnx", hidden=32)
    q = ("--quant", quant) if quant else ()
    ok("compile", str(model), "-o", str(tmp_path / "direct.maia"), *q)
    ir, weights = emitted(tmp_path, model, emit, *q)
    index = json.loads((weights / "weights.json").read_text())
    assert index["format"] == "maiac-weights" and index["weights"]
    ok("compile", str(ir), "-o", str(tmp_path / "from_ir.maia"))
    assert program_parts(tmp_path / "from_ir.maia") == program_parts(tmp_path / "direct.maia")
    assert (tmp_path / "from_ir.maia").read_bytes() == (tmp_path / "direct.maia").read_bytes()
    for name in ("direct", "from_ir"):
        ok("run", str(tmp_path / f"{name}.maia"), "-o", str(tmp_path / f"{name}.npz"))
    with np.load(tmp_path / "direct.npz") as a, np.load(tmp_path / "from_ir.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_narrow_weights_are_stored_as_plain_npy(tmp_path: Path) -> None:
    """fp8 weights (ml_dtypes, which .npy cannot name) are stored as uint8 and come back
    as fp8: the quantized program from the IR equals the direct one."""
    model = tiny_model(tmp_path / "m.onnx", hidden=32)
    _, weights = emitted(tmp_path, model, "maia", "--quant", "fp8")
    entries = json.loads((weights / "weights.json").read_text())["weights"]
    fp8 = [e for e in entries if e["dtype"] == "float8_e4m3fn"]
    assert fp8, entries
    stored = np.load(weights / fp8[0]["file"], allow_pickle=False)
    assert stored.dtype == np.uint8 and list(stored.shape) == fp8[0]["shape"]


def test_ir_without_weights_is_refused_naming_the_weight(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    ir = tmp_path / "x.mlir"
    ok("compile", str(model), "--emit", "maia", "-o", str(ir))
    out = str(tmp_path / "x.maia")
    assert_user_error(invoke("compile", str(ir), "-o", out), "x.mlir", "'W",
                      "names no weights folder", "--emit-weights")
    assert not Path(out).exists()
    ok("compile", str(ir), "-o", out, "--shape-only")  # timing only: no values needed
    assert load_program(out).meta.get("shape_only")


def test_missing_weights_folder_is_named(tmp_path: Path) -> None:
    ir, weights = emitted(tmp_path, tiny_model(tmp_path / "m.onnx"), "maia")
    moved = tmp_path / "elsewhere"
    weights.rename(moved)
    out = str(tmp_path / "x.maia")
    assert_user_error(invoke("compile", str(ir), "-o", out), str(weights), "no such directory")
    ok("compile", str(ir), "-o", out, "--weights", str(moved))  # named by hand
    # the folder is found relative to the IR file, wherever the IR is compiled from
    sub = tmp_path / "sub"
    sub.mkdir()
    moved.rename(sub / weights.name)
    ir.rename(sub / ir.name)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        ok("compile", f"sub/{ir.name}", "-o", "y.maia")
    finally:
        os.chdir(cwd)


def _hostile(weights: Path, tmp_path: Path, how: str) -> None:
    """Corrupt the weights folder one way."""
    index_path = weights / "weights.json"
    index = json.loads(index_path.read_text())
    first = index["weights"][0]  # W: the only weight over DENSE_LIMIT elements
    if how == "escape":
        (tmp_path / "evil.npy").write_bytes((weights / first["file"]).read_bytes())
        first["file"] = "../evil.npy"
    elif how == "absolute":
        first["file"] = str((weights / first["file"]).resolve())
    elif how == "symlink":
        target = tmp_path / "outside.npy"
        target.write_bytes((weights / first["file"]).read_bytes())
        (weights / "link.npy").symlink_to(target)
        first["file"] = "link.npy"
    elif how == "sha256":
        path = weights / first["file"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "shape":
        np.save(weights / first["file"], np.zeros((2, 2), np.float32), allow_pickle=False)
        first["sha256"] = _sha(weights / first["file"])
    elif how == "dtype":
        first["dtype"] = "float64"
    elif how == "pickle":
        np.save(weights / first["file"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
        first["sha256"] = _sha(weights / first["file"])
    elif how == "missing":
        index["weights"].remove(first)
    elif how == "twice":
        index["weights"].append(dict(first))
    elif how == "format":
        index["format"] = "something-else"
    if how == "json":
        index_path.write_text("{not json")
    else:
        index_path.write_text(json.dumps(index))


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("how", "needle"), [
    ("escape", "not a plain .npy name"), ("absolute", "not a plain .npy name"),
    ("symlink", "not a regular file inside"), ("sha256", "sha256"),
    ("shape", "expected float32[8, 8]"), ("dtype", "the IR float32[8, 8]"),
    ("pickle", "not a readable .npy"), ("missing", "no weight 'W"),
    ("twice", "listed twice"), ("format", "not a maiac-weights index"),
    ("json", "not a readable JSON index")])
def test_hostile_weights_folder_is_refused(tmp_path: Path, how: str, needle: str) -> None:
    ir, weights = emitted(tmp_path, tiny_model(tmp_path / "m.onnx"), "maia")
    _hostile(weights, tmp_path, how)
    out = tmp_path / "x.maia"
    assert_user_error(invoke("compile", str(ir), "-o", str(out)), needle)
    assert not out.exists()


def test_options_of_an_onnx_import_are_refused_for_ir(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    ir, _ = emitted(tmp_path, model, "maia")
    out = str(tmp_path / "x.maia")
    for extra in (("--quant", "fp8"), ("--shape", "x=4x8"), ("--emit", "tiled"),
                  ("--chips", "2")):
        r = invoke("compile", str(ir), "-o", out, *extra)
        assert r.exit_code == 2 and extra[0] in r.stderr, r.output
    r = invoke("compile", str(model), "-o", out, "--emit-weights", str(tmp_path / "w"))
    assert r.exit_code == 2 and "--emit-weights goes with --emit" in r.stderr
    r = invoke("compile", str(model), "-o", out, "--weights", str(tmp_path / "w"))
    assert r.exit_code == 2 and "--weights" in r.stderr
    assert_user_error(invoke("compile", str(model), "--emit", "asm", "--emit-weights",
                             str(tmp_path / "w")), "not with --emit asm")
    # hand-written IR (no maia.emitted): the passes left must be given
    bare = tmp_path / "bare.mlir"
    bare.write_text("builtin.module {\n}\n")
    assert_user_error(invoke("compile", str(bare), "-o", out), "--pipeline")


def test_opt_loads_the_weights_and_writes_the_new_ones(tmp_path: Path) -> None:
    """opt quantizes IR with its weights (not placeholders); its output with
    --emit-weights compiles to the program `compile --quant` gives."""
    model = tiny_model(tmp_path / "m.onnx", hidden=32)
    ir, _ = emitted(tmp_path, model, "maia")
    quantized = tmp_path / "q.mlir"
    ok("opt", str(ir), "-p", "quantize{spec=mxfp4}", "-o", str(quantized), "--emit-weights",
       str(tmp_path / "wq"))
    ok("compile", str(quantized), "-o", str(tmp_path / "q.maia"))
    ok("compile", str(model), "--quant", "mxfp4", "-o", str(tmp_path / "direct.maia"))
    assert program_parts(tmp_path / "q.maia", keep_meta=False) == \
        program_parts(tmp_path / "direct.maia", keep_meta=False)
    # a pass that leaves the weights alone keeps their names: the output IR still
    # compiles with the original folder
    same = tmp_path / "same.mlir"
    ok("opt", str(ir), "-p", "canonicalize", "-o", str(same))
    handles = re.compile(r"dense_resource<([^>]+)>")
    assert set(handles.findall(same.read_text())) == set(handles.findall(ir.read_text()))
    ok("compile", str(same), "-o", str(tmp_path / "same.maia"))
    ok("compile", str(ir), "-o", str(tmp_path / "base.maia"))
    assert program_parts(tmp_path / "same.maia") == program_parts(tmp_path / "base.maia")


def transpose_model(path: Path) -> Path:
    """y = x @ transpose(W): fold-constants folds the transpose only with W's values."""
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "W")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "Wt"], ["y"])],
        "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_opt_refuses_any_pass_that_read_an_absent_weight(tmp_path: Path) -> None:
    model = transpose_model(tmp_path / "t.onnx")
    ir = tmp_path / "t.mlir"
    pipe = "canonicalize,lower-onnx-to-maia," + TILED_REST  # no fold-constants before --emit
    ok("compile", str(model), "--pipeline", pipe, "--emit", "onnx", "-o", str(ir))
    assert "onnx.Transpose" in ir.read_text()
    assert_user_error(invoke("opt", str(ir), "-p", "fold-constants"), "fold-constants",
                      "'W", "have no data")
    r = ok("opt", str(ir), "-p", "fold-constants", "--shape-only")
    assert "onnx.Transpose" in r.stdout  # nothing to fold without values
    with_w, _ = emitted(tmp_path, model, "onnx", "--pipeline", pipe)
    r = ok("opt", str(with_w), "-p", "fold-constants")
    assert "onnx.Transpose" not in r.stdout
