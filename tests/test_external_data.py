"""External data of an ONNX model is read only from inside the model's folder
(maiac/external_data.py); inline tensors hold exactly their elements."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import maiac
from maiac.cli import main
from maiac.runtime.errors import MaiacError

W = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096


def _model(folder: Path, location: str | None = "w.bin", offset: str | None = None,
           length: str | None = None, write: bool = True) -> Path:
    """y = x @ W with W (64x64 f32, 16 KiB) as external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    if write:
        (folder / "w.bin").write_bytes(W.tobytes())
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[64, 64])
    w.data_location = TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", offset), ("length", length)):
        if val is not None:
            e = w.external_data.add()
            e.key, e.value = key, val
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def test_external_data_inside_the_folder_is_read(tmp_path):
    prog = maiac.compile(_model(tmp_path / "m"))
    x = np.ones((4, 64), np.float32)
    np.testing.assert_allclose(prog.run({"x": x})["y"], x @ W, rtol=1e-6)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(b"S" * (64 * 64 * 4))
    return path


def test_a_small_external_shape_tensor_is_read_for_shape_inference(tmp_path):
    """onnx.save(size_threshold=0) puts even a Reshape's 2-element shape in the data
    file: the importer reads it (from inside the folder) as it reads an inline one."""
    shape = numpy_helper.from_array(np.array([2, 8], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)
    assert onnx.load(tmp_path / "m.onnx", load_external_data=False).graph.initializer[
        0].data_location == TensorProto.EXTERNAL
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = maiac.compile(tmp_path / "m.onnx").run({"x": x})["y"]
    np.testing.assert_array_equal(out, x.reshape(2, 8))


@pytest.mark.parametrize("location", ["../secret.txt", "sub/../../secret.txt", "ABS",
                                      "C:\\secret.txt", "..\\secret.txt", ""])
def test_location_escaping_the_folder_is_refused(tmp_path, secret, location):
    location = str(secret) if location == "ABS" else location
    model = _model(tmp_path / "m", location)
    with pytest.raises(MaiacError, match="initializer 'W': external data"):
        maiac.compile(model)
    with pytest.raises(MaiacError, match="initializer 'W'"):
        maiac.compile(model, shape_only=True)  # even when the weights are not needed


def test_symlink_out_of_the_folder_is_refused(tmp_path, secret):
    folder = tmp_path / "m"
    model = _model(folder, "link.bin")
    os.symlink(secret, folder / "link.bin")
    with pytest.raises(MaiacError, match="initializer 'W'.*outside the model's folder"):
        maiac.compile(model)
    os.symlink("/etc", folder / "etc")
    with pytest.raises(MaiacError, match="outside"):
        maiac.compile(_model(folder, "etc/passwd"))


def test_symlink_inside_the_folder_is_fine(tmp_path):
    folder = tmp_path / "m"
    model = _model(folder, "alias.bin")
    os.symlink("w.bin", folder / "alias.bin")
    maiac.compile(model)


def test_directory_or_fifo_location_is_refused(tmp_path):
    folder = tmp_path / "m"
    (folder / "d").mkdir(parents=True)
    with pytest.raises(MaiacError, match="is a directory"):
        maiac.compile(_model(folder, "d"))
    os.mkfifo(folder / "fifo")  # opening it would block forever
    with pytest.raises(MaiacError, match="not a regular file"):
        maiac.compile(_model(folder, "fifo"))


@pytest.mark.parametrize("offset,length,message", [
    ("abc", None, "offset 'abc' is not a non-negative integer"),
    ("-4", None, "offset '-4' is not"),
    ("1e3", None, "offset '1e3' is not"),
    (None, "12", "length 12 does not match"),
    (None, "x", "length 'x' is not"),
    ("4", None, r"\[4, 16388\) is past the end"),
    (str(2**70), None, r"\[1180591620717411303424, .* is past the end"),
])
def test_bad_offset_or_length(tmp_path, offset, length, message):
    with pytest.raises(MaiacError, match="initializer 'W': external data " + message):
        maiac.compile(_model(tmp_path / "m", offset=offset, length=length))


def test_missing_file_is_an_error_unless_shape_only(tmp_path):
    model = _model(tmp_path / "m", write=False)
    with pytest.raises(MaiacError, match="is missing"):
        maiac.compile(model)
    maiac.compile(model, shape_only=True)


def _inline_model(tmp_path: Path, raw: bytes) -> Path:
    w = numpy_helper.from_array(np.zeros((64, 64), np.float32), "W")
    w.raw_data = raw
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [w])
    path = tmp_path / "inline.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("nbytes", [64 * 64 * 4 - 4, 64 * 64 * 4 + 4, 0])
def test_raw_data_of_the_wrong_size(tmp_path, nbytes):
    with pytest.raises(MaiacError, match=f"initializer 'W': raw data holds {nbytes} bytes"):
        maiac.compile(_inline_model(tmp_path, bytes(nbytes)))


def test_cli_exit_2_naming_the_tensor(tmp_path, secret):
    model = _model(tmp_path / "m", "../secret.txt")
    out = tmp_path / "out.maia"
    r = CliRunner().invoke(main, ["compile", str(model), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "initializer 'W'" in r.output and "Traceback" not in r.output
    assert not out.exists()
