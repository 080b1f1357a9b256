"""Writes tests/data/interpreter_golden/: compiled programs, their inputs and the sha256 of
every output's bytes as the interpreter of the commit named in golden.json gives them.

tests/runtime/test_interpreter_golden.py reruns the stored programs and asserts the same
bytes, so a change to the interpreter's speed cannot change its numerics. The programs are
stored (not recompiled) so that tiler changes do not move the reference.
Usage: python tests/runtime/make_interpreter_golden.py   (from the repository root)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx

import maiac
from maiac import models
from maiac.inputs import random_inputs
from maiac.runtime.interpreter import run_program
from maiac.runtime.program import load_program

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
OUT = DATA / "interpreter_golden"


def odd_shapes() -> onnx.ModelProto:
    """Prime/odd sizes through matmul, bias, GELU, LayerNorm, softmax."""
    b = models.GraphBuilder(seed=3)
    y = b.linear("x", 53, 41, "fc1")
    y = b.gelu_erf(y)
    y = b.layer_norm(y, 41, "ln")
    y = b.op("Softmax", [b.linear(y, 41, 29, "fc2")], axis=-1)
    b.op("Identity", [y], name="out")
    return b.model("odd_shapes", [models._input("x", onnx.TensorProto.FLOAT, [1, 37, 53])],
                   [models._input("out", onnx.TensorProto.FLOAT, [1, 37, 29])])


def cases() -> list[tuple[str, onnx.ModelProto, dict[str, np.ndarray], dict]]:
    tfm = models.transformer(layers=1, batch=1, seq=32, d_model=64, heads=4, vocab=96)
    llama = models.llama_decoder(models.LLAMA_TINY, seq=24)
    odd = odd_shapes()
    rows = [("odd_shapes", odd, random_inputs(odd, {}, seed=0), {}),
            ("transformer_fp32", tfm, random_inputs(tfm, {}, seed=0), {}),
            ("llama_tiny_fp32", llama, random_inputs(llama, {}, seed=0), {})]
    for q in ("mxfp8", "mxfp4", "nvfp4", "bf16", "fp8"):
        rows.append((f"transformer_{q}", tfm, random_inputs(tfm, {}, seed=0), {"quant": q}))
    rows.append(("llama_tiny_mxfp4", llama, random_inputs(llama, {}, seed=0),
                 {"quant": "mxfp4"}))
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    for name in ("gpt2_dynamo", "bert_torchscript", "vit_dynamo", "qwen2_dynamo"):
        with np.load(DATA / f"{name}.inputs.npz") as npz:
            feeds = {k: npz[k] for k in npz.files}
        shapes = {k: tuple(v) for k, v in (manifest[name].get("shapes") or {}).items()}
        rows.append((name, onnx.load(str(DATA / f"{name}.onnx")), feeds,
                     {"shapes": shapes or None}))
    return rows


def digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    index: dict[str, dict] = {}
    for name, model, feeds, opts in cases():
        compiled = maiac.compile(model, **opts)
        path = OUT / f"{name}.maia"
        compiled.save(path)
        program = load_program(path)  # run exactly what the test will load
        outs = run_program(program, feeds)
        np.savez_compressed(OUT / f"{name}.inputs.npz", **feeds)
        index[name] = {"options": {k: v for k, v in opts.items() if v},
                       "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape),
                                       "sha256": digest(v)} for k, v in outs.items()}}
        print(name, path.stat().st_size, {k: v.shape for k, v in outs.items()})
    (OUT / "golden.json").write_text(json.dumps(
        {"interpreter_commit": commit, "programs": index}, indent=1) + "\n")


if __name__ == "__main__":
    main()
