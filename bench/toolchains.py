"""Models as deployment toolchains write them (tests/data/toolchain) through maiac.

Per model: fp32 verify against the stored onnxruntime outputs (max abs error, cosine of
the first output, compile and run time) and the cosine in mxfp8 (weights and activations
MX FP8 E4M3, vs the same reference). Run with the project venv:

    python bench/toolchains.py [--quant mxfp8] [--only NAME ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from maiac.verify import verify

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "toolchain"


def measure(name: str, quant: str | None) -> dict:
    inputs = DATA / f"{name}.inputs.npz"
    result = verify(DATA / f"{name}.onnx", quant=quant, inputs=inputs,
                    reference=DATA / f"{name}.ref.npz", layers=False)
    first = result["outputs"][0]
    return {"ok": result["ok"], "max_abs_err": max(o["max_abs_err"] or 0.0
                                                   for o in result["outputs"]),
            "cosine": first["cosine"], "top1": first.get("top1_agreement"),
            "compile_s": round(result["compile_s"], 2), "run_s": round(result["run_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="mxfp8")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    rows = []
    print(f"{'model':<26} {'fp32 ok':>7} {'max abs':>9} {'cos fp32':>10} {'compile s':>9} "
          f"{'run s':>7} {'cos ' + args.quant:>12} {'top1':>5}")
    for name in sorted(manifest):
        if args.only and name not in args.only:
            continue
        fp32 = measure(name, None)
        quant = measure(name, args.quant)
        rows.append({"model": name, "toolchain": manifest[name]["toolchain"], "fp32": fp32,
                     args.quant: quant})
        top1 = quant["top1"]
        print(f"{name:<26} {str(fp32['ok']):>7} {fp32['max_abs_err']:>9.2e} "
              f"{fp32['cosine']:>10.6f} {fp32['compile_s']:>9.2f} {fp32['run_s']:>7.3f} "
              f"{quant['cosine']:>12.6f} {'' if top1 is None else f'{top1:.2f}':>5}",
              flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0 if all(np.isfinite(r[args.quant]["cosine"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
