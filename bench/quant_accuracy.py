"""Accuracy of maiac's quantization formats: a table of format x model.

For every model (the tests/data transformers, plus maiac.models builders) and every
format: cosine similarity and top-1 agreement of the output against the fp32
onnxruntime reference, the weight bytes relative to fp32 (packed payload + scales), and
the interpreter time of the quantized program relative to the fp32 one (best of
``--repeat`` warm runs).

    python bench/quant_accuracy.py                    # all models, all formats (markdown)
    python bench/quant_accuracy.py --models llama_torchscript --formats mxfp4,fp8 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import maiac
import maiac.models as M
from maiac.verify import cosine, top1_agreement

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FORMATS = ["bf16", "fp8", "mxfp8", "mxfp6", "w4a8", "nvfp4", "mxfp4", "mxfp4,scale=ceil",
           "mxfp4,scale=rceil", "w=mxfp4"]
DATA_MODELS = ["gpt2_torchscript", "gpt2_dynamo", "llama_torchscript", "llama_dynamo",
               "qwen2_torchscript", "bert_torchscript", "vit_torchscript"]
BUILT_MODELS = ["maiac.transformer", "maiac.llama_tiny"]


def load_model(name: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(model path or proto, inputs) for a tests/data name or a maiac.models builder."""
    if name == "maiac.transformer":
        ids = np.random.default_rng(0).integers(0, 256, (1, 32))
        return M.transformer(layers=2, seq=32, d_model=128, heads=4, vocab=256), \
            {"input_ids": ids}
    if name == "maiac.llama_tiny":
        model = M.llama_decoder()
        from maiac.inputs import random_inputs

        return model, random_inputs(model, None, 0)
    path = DATA / f"{name}.onnx"
    with np.load(DATA / f"{name}.inputs.npz") as npz:
        inputs = {k: npz[k] for k in npz.files}
    return str(path), inputs


def reference(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


def timed_run(prog: Any, inputs: dict[str, np.ndarray], repeat: int) -> tuple[np.ndarray, float]:
    out = prog.run(inputs)  # first run builds the machine (views, decoded constants)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = prog.run(inputs)
        best = min(best, time.perf_counter() - t0)
    return next(iter(out.values())), best


def bench_model(name: str, formats: list[str], repeat: int) -> list[dict[str, Any]]:
    model, inputs = load_model(name)
    shapes = {k: v.shape for k, v in inputs.items()}
    ref = reference(model, inputs)
    base = maiac.compile(model, shapes=shapes)
    out32, t32 = timed_run(base, inputs, repeat)
    w32 = base.report()["weight_bytes"]
    rows = [{"model": name, "format": "fp32", "cosine": cosine(out32, ref),
             "top1": top1_agreement(out32, ref), "weight_bytes": w32, "weight_ratio": 1.0,
             "run_s": t32, "time_ratio": 1.0,
             "modeled_s": base.report()["modeled_time_s"]}]
    for fmt in formats:
        try:
            prog = maiac.compile(model, shapes=shapes, quant=fmt)
            out, t = timed_run(prog, inputs, repeat)
        except Exception as err:  # a row per failure, the table goes on
            rows.append({"model": name, "format": fmt, "error": f"{type(err).__name__}: {err}"})
            continue
        rep = prog.report()
        rows.append({"model": name, "format": fmt, "cosine": cosine(out, ref),
                     "top1": top1_agreement(out, ref), "weight_bytes": rep["weight_bytes"],
                     "weight_ratio": rep["weight_bytes"] / w32,
                     "matmul_weight_ratio": matmul_weight_ratio(prog), "run_s": t,
                     "time_ratio": t / t32, "modeled_s": rep["modeled_time_s"]})
    return rows


def matmul_weight_ratio(prog: Any) -> float | None:
    """Bytes of the quantized matmul weights (payload + scales) / their fp32 bytes."""
    from maiac.runtime import formats as F

    stored = fp32 = 0
    for b in prog.program.buffers:
        if b.kind != "const":
            continue
        n = len(prog.program.constants.get(b.name, b""))
        if b.name.endswith(".w_scales"):
            stored += n
        elif ".w." in b.name and b.name.rsplit(".w.", 1)[1] in F.FORMATS:
            stored += n
            fp32 += n * 32 // F.get_format(b.name.rsplit(".w.", 1)[1]).bits
    return stored / fp32 if fp32 else None


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | format | cosine | top-1 | weight bytes | vs fp32 | matmul weights "
             "vs fp32 | interp. time | vs fp32 | modeled time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['format']} | error: {r['error'][:80]} "
                         "| | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['format']} | {r['cosine']:.5f} | {r['top1']:.3f} "
            f"| {r['weight_bytes']:,} | {r['weight_ratio']:.3f} "
            f"| {_ratio(r.get('matmul_weight_ratio', 1.0))} | {r['run_s'] * 1e3:.1f} ms "
            f"| {r['time_ratio']:.2f}x | {r['modeled_s'] * 1e6:.1f} us |")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DATA_MODELS + BUILT_MODELS),
                    help="comma-separated tests/data names and/or maiac.transformer, "
                         "maiac.llama_tiny")
    ap.add_argument("--formats", default=";".join(FORMATS),
                    help="';'-separated --quant specs (default: all presets and modes)")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs timed per program")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of markdown")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        try:
            rows += bench_model(name, [f for f in args.formats.split(";") if f], args.repeat)
        except Exception as err:
            rows.append({"model": name, "format": "fp32", "error": f"{type(err).__name__}: {err}"})
        print(f"{name} done", file=sys.stderr)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
