"""RoPE in the q/k projections' epilogue (passes/tile.py `FunctionTiler._rope_epilogue`,
passes/tiling/matmul.py `RopeEpilogue`): the rope kernels go, the outputs stay byte for
byte those of the separate rope kernels (and onnxruntime's), and the schedule is
modeled faster."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import maiac
from maiac import models
from maiac.driver import CompiledModel
from maiac.passes import tile
from maiac.runtime import isa

EXPORTS = Path(__file__).parent / "data"


def _kinds(compiled: CompiledModel) -> list[str]:
    return [op["kind"] for op in compiled.report()["ops"]]


def _rope_vecs(instrs: list[isa.Instr]) -> int:
    n = 0
    for i in instrs:
        if isinstance(i, isa.Loop):
            n += _rope_vecs(i.body)
        elif isinstance(i, isa.Vec) and i.fn == "rope":
            n += 1
    return n


def _both(model: object, monkeypatch: pytest.MonkeyPatch, **kw: object
          ) -> tuple[CompiledModel, CompiledModel]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = maiac.compile(model, **kw)
        monkeypatch.setattr(tile, "ROPE_EPILOGUE", False)
        separate = maiac.compile(model, **kw)
    monkeypatch.setattr(tile, "ROPE_EPILOGUE", True)
    return fused, separate


@pytest.mark.parametrize("name", ["llama_dynamo", "qwen2_dynamo"])  # qwen2: q/k biases
def test_exports_rope_in_epilogue_identical(name: str, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    entry = json.loads((EXPORTS / "MANIFEST.json").read_text())["models"][name]
    shapes = {i["name"]: tuple(i["stored_shape"]) for i in entry["inputs"]}
    feeds = dict(np.load(EXPORTS / f"{name}.inputs.npz"))
    ref = dict(np.load(EXPORTS / f"{name}.ref.npz"))
    fused, separate = _both(EXPORTS / f"{name}.onnx", monkeypatch, shapes=shapes)
    assert _kinds(separate).count("rope") == 4  # q and k of 2 layers, batch 2
    assert _kinds(fused).count("rope") == 0
    assert _rope_vecs(fused.program.instructions) > 0
    out, base = fused.run(feeds), separate.run(feeds)
    for key, value in out.items():
        assert value.dtype == base[key].dtype and np.array_equal(value, base[key]), key
        np.testing.assert_allclose(value, ref[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quant", [None, "mxfp4"])
def test_tiny_llama_prefill_identical(quant: str | None, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    """Batch 2 (row blocks never straddle sequences), GQA, quantized projections."""
    model = models.llama_decoder(models.LLAMA_TINY, batch=2, seq=64)
    fused, separate = _both(model, monkeypatch, quant=quant)
    assert "rope" not in _kinds(fused) and _kinds(separate).count("rope") == 4
    ids = np.random.default_rng(0).integers(0, models.LLAMA_TINY.vocab, (2, 64))
    out, base = fused.run({"input_ids": ids}), separate.run({"input_ids": ids})
    assert np.array_equal(out["logits"], base["logits"])


def test_prefill_modeled_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1024-wide layer at seq 512: the rope kernels' loads, stores and kernel
    boundaries go; the projections' epilogues rotate their blocks instead."""
    config = models.LlamaConfig("llama-1k", 1024, 1, 8, 2, 2048, 1024)
    model = models.llama_decoder(config, seq=512, weights="shape_only")
    fused, separate = _both(model, monkeypatch, quant="fp8", shape_only=True)
    t_fused = fused.report()["modeled_time_s"]
    t_separate = separate.report()["modeled_time_s"]
    assert t_fused < t_separate
