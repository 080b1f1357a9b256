"""Compare number formats on one model: accuracy, weight bytes and modeled time.

Two tables:

1. per quantization preset (``maiac compile --quant PRESET``): cosine of the logits
   against onnxruntime fp32, weight bytes in the program, modeled time on maia200. A
   preset the compiler cannot run yet (no ``quantize`` pass registered, or the preset
   unknown to it) is skipped with a note.
2. per element format of runtime/formats.py (DESIGN §3), weights only: what the model's
   matmul weights cost in bytes and how close they stay (cosine, max relative error)
   after a quantize/dequantize round trip, for each MX scale rule where it applies.

    python examples/compare_formats.py [--model PATH.onnx] [--presets fp8,mxfp4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import maiac
from maiac.runtime import formats
from maiac.runtime.errors import MaiacError
from maiac.verify import verify

DESIGN_PRESETS = ("fp8", "mxfp8", "mxfp6", "mxfp4", "nvfp4", "w4a8")


def available_presets() -> tuple[str, ...]:
    """The quantize pass's presets when it defines them, else DESIGN §3's list."""
    try:
        from maiac.passes import quantize
    except ImportError:
        return DESIGN_PRESETS
    presets = getattr(quantize, "PRESETS", None)
    return tuple(presets) if presets else DESIGN_PRESETS


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def preset_row(path: Path, quant: str | None) -> str:
    """One line of table 1, or why the preset was skipped."""
    label = quant or "fp32"
    try:
        compiled = maiac.compile(str(path), quant=quant)
        result = verify(str(path), quant=quant, seed=0)
    except MaiacError as err:
        why = str(err).splitlines()[0]
        if "unknown pass 'quantize'" in why:
            why = "the quantize pass is not available yet"
        return f"{label:<10} skipped: {why[:100]}"
    rep = compiled.report()
    cos = min(o["cosine"] for o in result["outputs"])
    return (f"{label:<10} {cos:>10.6f} {rep['weight_bytes'] / 1024:>11.1f} "
            f"{rep['modeled_time_s'] * 1e6:>13.2f}")


def weight_rows(model: onnx.ModelProto) -> list[str]:
    """Table 2: every format of runtime/formats.py on the model's 2-D weights."""
    weights = [numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer
               if len(t.dims) == 2 and min(t.dims) >= 16]
    n = sum(w.size for w in weights)
    rows = []
    for name, fmt in formats.FORMATS.items():
        modes = formats.SCALE_MODES if fmt.is_mx else ("-",)
        nbytes = sum(formats.qtensor_nbytes(w.shape, name, axis=0) for w in weights)
        for mode in modes:
            kw = {"scale_mode": mode} if fmt.is_mx else {}
            back = [formats.fake_quantize(w, name, axis=0, **kw) for w in weights]
            cos = cosine(np.concatenate([w.ravel() for w in weights]),
                         np.concatenate([b.ravel() for b in back]))
            rel = max(float(np.max(np.abs(b - w)) / np.max(np.abs(w)))
                      for w, b in zip(weights, back, strict=True))
            rows.append(f"{name:<10} {mode:<6} {8 * nbytes / n:>9.2f} {nbytes / 1024:>10.1f} "
                        f"{cos:>10.6f} {rel:>10.2e}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an .onnx model (default: maiac.models)")
    ap.add_argument("--presets", default=None, help="comma-separated quant presets")
    args = ap.parse_args()

    if args.model:
        path = Path(args.model)
    else:
        from maiac import models

        path = Path(tempfile.mkdtemp(prefix="maiac-formats-")) / "transformer.onnx"
        onnx.save(models.transformer(layers=2, d_model=128, heads=4, vocab=256), path)
    print(f"model: {path}\n")

    presets = args.presets.split(",") if args.presets else available_presets()
    from maiac.passes.registry import PASSES

    if "quantize" not in PASSES:
        print("note: no `quantize` pass is registered yet, so only fp32 compiles; the "
              "presets below are skipped (table 2 still compares the formats)\n")
    print("1. compiled per preset (cosine of outputs vs onnxruntime fp32)\n")
    print(f"{'quant':<10} {'cosine':>10} {'weights KiB':>11} {'modeled us':>13}")
    for quant in (None, *presets):
        print(preset_row(path, quant))

    print("\n2. weights only, per format and MX scale rule (runtime/formats.py)\n")
    print(f"{'format':<10} {'scale':<6} {'bits/elem':>9} {'KiB':>10} {'cosine':>10} "
          f"{'max rel':>10}")
    for row in weight_rows(onnx.load(path)):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
