"""tests/data is intact: every exported model loads, checks, runs in onnxruntime and
reproduces its stored reference; MANIFEST.json describes the files as they are.

Catches a corrupt or half-regenerated commit of scripts/export_test_models.py output.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

DATA = Path(__file__).parent / "data"
MANIFEST: dict[str, Any] = json.loads((DATA / "MANIFEST.json").read_text())
MODELS: dict[str, dict[str, Any]] = MANIFEST["models"]
MAX_TOTAL_BYTES = 6_500_000


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, by name."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_manifest_lists_every_model_file() -> None:
    on_disk = {p.name.removesuffix(".onnx") for p in DATA.glob("*.onnx")}
    assert on_disk == set(MODELS)
    families = {m["family"] for m in MODELS.values()}
    assert {"gpt2", "bert", "llama", "vit"} <= families
    assert {m["exporter"] for m in MODELS.values()} == {"dynamo", "torchscript"}
    assert any(m["symbolic_dims"] for m in MODELS.values()), "one model has symbolic dims"


def test_total_size_is_small() -> None:
    total = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_checks_and_matches_manifest(name: str) -> None:
    entry = MODELS[name]
    path = DATA / f"{name}.onnx"
    for fname, size in entry["files"].items():
        assert (DATA / fname).stat().st_size == size, f"{fname} changed since export"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    opsets = {d.domain or "ai.onnx": d.version for d in model.opset_import}
    assert opsets["ai.onnx"] == entry["opset"]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert dict(ops) == entry["op_histogram"]
    assert entry["torch_vs_ort_max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_reproduces_reference(name: str) -> None:
    entry = MODELS[name]
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    ref = load_npz(DATA / f"{name}.ref.npz")
    assert [i["name"] for i in entry["inputs"]] == list(feeds)
    for spec in entry["inputs"]:
        assert list(feeds[spec["name"]].shape) == spec["stored_shape"]
        assert feeds[spec["name"]].dtype == np.dtype(spec["dtype"])
    session = ort.InferenceSession(str(DATA / f"{name}.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == [o["name"] for o in entry["outputs"]] == list(ref)
    got = dict(zip(names, session.run(None, feeds), strict=True))
    for out, want in ref.items():
        assert np.all(np.isfinite(want)), out
        np.testing.assert_allclose(got[out], want, rtol=1e-4, atol=1e-5, err_msg=f"{name}:{out}")


def test_symbolic_model_binds_declared_dims() -> None:
    for name, entry in MODELS.items():
        if not entry["symbolic_dims"]:
            continue
        model = onnx.load(str(DATA / f"{name}.onnx"), load_external_data=False)
        dims = {d.dim_param for i in model.graph.input
                for d in i.type.tensor_type.shape.dim if d.dim_param}
        assert dims == set(entry["symbolic_dims"])
        assert entry["shapes"], f"{name}: symbolic dims need shapes to bind"


def test_bert_mask_is_padded() -> None:
    for name, entry in MODELS.items():
        if entry["family"] == "bert":
            mask = load_npz(DATA / f"{name}.inputs.npz")["attention_mask"]
            assert (mask == 0).any() and (mask[:, 0] == 1).all()
