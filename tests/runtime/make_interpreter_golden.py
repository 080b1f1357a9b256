"""Writes tests/data/interpreter_golden/: compiled programs, their inputs and the sha256 of
every output's bytes as the interpreter of the commit named in golden.json gives them.

tests/runtime/test_interpreter_golden.py reruns the stored programs and asserts the same
bytes, so a change to the interpreter's speed cannot change its numerics. The programs are
stored (not recompiled) so that tiler changes do not move the reference.
Usage: python tests/runtime/make_interpreter_golden.py [CASE ...]   (from the repository root;
       with cases, only those are rewritten and added)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
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
    # weight-stationary matmuls (issue 12: all of M in each block, the activation
    # broadcast, each weight block on one tile): the gated MLP's gate/up projection
    ws = models.llama_decoder(models.LlamaConfig("llama-ws", 32, 1, 4, 2, 1024, 256), seq=128)
    rows.append(("llama_weight_stationary_fp32", ws, random_inputs(ws, {}, seed=0), {}))
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


def entry(name: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], opts: dict
          ) -> dict:
    """Compile, store and run one case; its golden.json entry."""
    compiled = maiac.compile(model, **opts)
    path = OUT / f"{name}.maia"
    compiled.save(path)
    program = load_program(path)  # run exactly what the test will load
    outs = run_program(program, feeds)
    np.savez_compressed(OUT / f"{name}.inputs.npz", **feeds)
    print(name, path.stat().st_size, {k: v.shape for k, v in outs.items()})
    return {"options": {k: v for k, v in opts.items() if v},
            "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape),
                            "sha256": digest(v)} for k, v in outs.items()}}


def main(argv: list[str]) -> None:
    """All cases; with names, only those are (re)written and added to the index (their
    entry records the commit that wrote them; the others keep theirs)."""
    OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    if argv:
        known = {row[0] for row in cases()}
        unknown = sorted(set(argv) - known)
        if unknown:
            raise SystemExit(f"unknown case {unknown[0]!r} (cases: {', '.join(sorted(known))})")
        index = json.loads((OUT / "golden.json").read_text())
        for name, model, feeds, opts in cases():
            if name in argv:
                index["programs"][name] = {**entry(name, model, feeds, opts),
                                           "interpreter_commit": commit}
        (OUT / "golden.json").write_text(json.dumps(index, indent=1) + "\n")
        return
    programs = {name: entry(name, model, feeds, opts) for name, model, feeds, opts in cases()}
    (OUT / "golden.json").write_text(json.dumps(
        {"interpreter_commit": commit, "programs": programs}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
