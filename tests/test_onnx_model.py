"""maiac/onnx_model.py: one load per compile, onnxruntime sessions with checked weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import maiac
from maiac import calibrate
from maiac.onnx_model import open_model, ort_session
from maiac.runtime.errors import MaiacError

W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)


def _external_model(folder: Path, location: str = "w.bin") -> Path:
    """y = x @ W with W stored next to the model as external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.bin").write_bytes(W.tobytes())
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(W.shape))
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])], [w])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_compile_loads_the_file_once(tmp_path, monkeypatch):
    path = _external_model(tmp_path / "m")
    loads: list[str] = []
    real_load = onnx.load

    def counting_load(f, *args, **kwargs):
        loads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting_load)
    # static fp8 activations need calibration; gptq needs Hessians: both from one pass
    sessions = []
    real_session = calibrate.ort_session
    monkeypatch.setattr(calibrate, "ort_session",
                        lambda *a, **k: sessions.append(1) or real_session(*a, **k))
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    prog = maiac.compile(path, quant="fp8,method=gptq", calib={"x": x})
    assert loads == [str(path)]
    assert len(sessions) == 1
    got = prog.run({"x": x})["y"]
    cos = float(np.sum(got * (x @ W)) / np.linalg.norm(got) / np.linalg.norm(x @ W))
    assert cos > 0.99


def test_calibration_reads_external_weights_from_the_model_folder(tmp_path, monkeypatch):
    path = _external_model(tmp_path / "m")
    monkeypatch.chdir(tmp_path)  # not the model's folder: onnxruntime must be told it
    amax = calibrate.calibrate(path, {"x": np.ones((8, 64), np.float32)})
    assert amax == {"proj": 1.0}


def test_onnxruntime_session_refuses_weights_outside_the_folder(tmp_path):
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    path = _external_model(tmp_path / "m", location="../secret.bin")
    with pytest.raises(MaiacError, match="calibration: onnxruntime cannot load"):
        ort_session(open_model(path), what="calibration")


def test_open_model_errors_name_the_file(tmp_path):
    with pytest.raises(MaiacError, match="no such ONNX model file"):
        open_model(tmp_path / "missing.onnx")
    with pytest.raises(MaiacError, match="is a directory"):
        open_model(tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xff not protobuf")
    with pytest.raises(MaiacError, match="junk.onnx: not a valid ONNX model"):
        open_model(tmp_path / "junk.onnx")
