"""Interpreter speed: `maiac run` vs onnxruntime on the same model, in one process.

Prints, per model: compile time, median run time of maiac's machine model and of
onnxruntime (CPU, same inputs), their ratio, the instruction count and the largest
absolute difference of the outputs. Rows: an MLP and a 2-layer transformer built here,
the tests/data exports (GPT-2, Llama, BERT; fp32, with their stored inputs), and the
transformer quantized to mxfp4 (onnxruntime runs its fp32 model, so that row's ratio
is the cost of quantized execution against the fp32 reference, and its error is the
quantization error).
Usage: python bench/interpreter.py [--repeat N] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import maiac
from maiac import models
from maiac.inputs import random_inputs

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
EXPORTS = ("gpt2_dynamo", "llama_dynamo", "bert_dynamo")


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: caches, lazy constant decode
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_instructions(instrs: list) -> int:
    return sum(1 + (count_instructions(i.body) if i.kind == "loop" else 0) for i in instrs)


def bench(name: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int, *,
          quant: str | None = None, shapes: dict[str, tuple[int, ...]] | None = None
          ) -> dict[str, float | str]:
    start = time.perf_counter()
    compiled = maiac.compile(model, quant=quant, shapes=shapes)
    compile_s = time.perf_counter() - start
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = compiled.run(feeds)
    theirs = session.run(None, feeds)
    err = max(float(np.max(np.abs(ours[o.name] - t)))
              for o, t in zip(session.get_outputs(), theirs, strict=True))
    maia_s = median_time(lambda: compiled.run(feeds), repeat)
    ort_s = median_time(lambda: session.run(None, feeds), repeat)
    return {"model": name, "compile_s": compile_s, "maiac_run_s": maia_s, "ort_s": ort_s,
            "ratio": maia_s / ort_s, "instructions": count_instructions(compiled.program.instructions),
            "max_abs_err": err}


def cases() -> list[tuple[str, onnx.ModelProto, dict[str, np.ndarray], dict]]:
    """(name, model, inputs, compile options) of every benchmark row."""
    tfm = models.transformer(layers=2, batch=1, seq=128, d_model=256, heads=4, vocab=1000)
    mlp = models.mlp(batch=128, width=1024, layers=2)
    rows = [("mlp w1024 b128 x2", mlp, random_inputs(mlp, {}, seed=0), {}),
            ("transformer 2L d256 s128", tfm, random_inputs(tfm, {}, seed=0), {})]
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    for name in EXPORTS:
        with np.load(DATA / f"{name}.inputs.npz") as npz:
            feeds = {k: npz[k] for k in npz.files}
        shapes = {k: tuple(v) for k, v in (manifest[name].get("shapes") or {}).items()}
        rows.append((f"{name} (tests/data)", onnx.load(str(DATA / f"{name}.onnx")), feeds,
                     {"shapes": shapes or None}))
    rows.append(("transformer ... mxfp4", tfm, random_inputs(tfm, {}, seed=0),
                 {"quant": "mxfp4"}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", default="", help="run only rows whose name contains this")
    args = parser.parse_args()
    print(f"{'model':<28} {'compile s':>9} {'maiac ms':>9} {'ort ms':>8} {'ratio':>6} "
          f"{'instrs':>6} {'max err':>9}")
    for name, model, feeds, options in cases():
        if args.only not in name:
            continue
        r = bench(name, model, feeds, args.repeat, **options)
        print(f"{r['model']:<28} {r['compile_s']:>9.2f} {r['maiac_run_s'] * 1e3:>9.2f} "
              f"{r['ort_s'] * 1e3:>8.2f} {r['ratio']:>6.2f} {r['instructions']:>6} "
              f"{r['max_abs_err']:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
