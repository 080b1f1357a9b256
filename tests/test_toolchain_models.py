"""Golden tests on models as deployment toolchains write them (tests/data/toolchain).

Every model there was written by a real toolchain (optimum-onnx, onnxruntime-genai's model
builder, onnxruntime's optimizer and quantizers, AMD Quark) from a random-weight transformers
config by scripts/export_toolchain_models.py, with onnxruntime's outputs stored beside it.
maiac compiles each (symbolic dims bound from the stored inputs) and must match onnxruntime:
fp32 models within rtol 1e-4 / atol 1e-5 on every output (logits and the present KV cache),
models whose onnxruntime kernel rounds differently (noted per model in ``COSINE_ONLY``) by
cosine and top-1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import maiac

DATA = Path(__file__).parent / "data" / "toolchain"
MODELS: dict[str, dict[str, Any]] = json.loads((DATA / "MANIFEST.json").read_text())["models"]
RTOL, ATOL = 1e-4, 1e-5

# name -> why maiac cannot import it yet (xfail(strict): a fix shows up as XPASS)
NOT_YET: dict[str, str] = {
    name: "GroupQueryAttention / MatMulNBits import" for name in MODELS if name.startswith("genai_")
}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def cases() -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=NOT_YET[name])]
                         if name in NOT_YET else []) for name in sorted(MODELS)]


@pytest.mark.parametrize("name", cases())
def test_toolchain_model_matches_onnxruntime(name: str) -> None:
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    refs = load_npz(DATA / f"{name}.ref.npz")
    program = maiac.compile(DATA / f"{name}.onnx", shapes={k: v.shape for k, v in feeds.items()})
    got = program.run(feeds)
    assert set(got) == set(refs)
    for output, ref in refs.items():
        np.testing.assert_allclose(got[output], ref, rtol=RTOL, atol=ATOL, err_msg=output)
