"""Models as deployment toolchains write them (tests/data/toolchain) through maiac.

Per model: fp32 verify against the stored onnxruntime outputs (max abs error, cosine of
the first output, compile and run time) and the cosine in mxfp8 (weights and activations
MX FP8 E4M3, vs the same reference). AMD Quark MX models run in their own formats in the
first column (``--quant model``). ``--narrow``: for the models whose weights are already
narrow (int4/int8/MX), the cosine of weight-only requantization to each Maia format
against the graph's own dequantized semantics (maiac's fp32 run), beside the same format
applied once to the fp32 model the narrow one was made from (where tests/data has it):
what asking ``--quant`` for a Maia format costs on top of the model's own quantization.
Run with the project venv:

    python bench/toolchains.py [--quant mxfp8] [--only NAME ...] [--json OUT.json]
    python bench/toolchains.py --narrow [--json OUT.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import maiac
from maiac import progress
from maiac.verify import cosine, verify

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


NOT_A_MODEL = ("quark_mx_elements",)  # element-level reference data
# narrow-weight model -> the fp32 tests/data export it was quantized from (None: built by
# its toolchain from a transformers checkpoint that is not stored)
NARROW: dict[str, str | None] = {
    "ortquant_llama_int4_zp": "llama_torchscript", "ortquant_llama_int4_qdq": "llama_dynamo",
    "ortquant_llama_qdq_s8": "llama_torchscript", "genai_llama_int4": None,
    "genai_qwen2_int4_b16": None, "genai_llama_int8": None,
    "onnxqdq_llama_mxfp4": "llama_dynamo", "onnxqdq_llama_mxfp8": "llama_dynamo",
}
NARROW_FORMATS = ("mxfp4", "nvfp4", "mxfp6e2m3", "mxfp8e4m3", "fp8e4m3")


def _logits(model: Path, feeds: dict[str, np.ndarray], quant: str) -> np.ndarray:
    shapes = {k: v.shape for k, v in feeds.items()}
    out = maiac.compile(model, quant=quant, shapes=shapes).run(feeds)
    return out["logits"] if "logits" in out else next(iter(out.values()))


def narrow(json_out: str | None) -> int:
    """Weight-only requantization of narrow weights to each Maia format (see the docstring)."""
    rows = []
    print(f"{'model':<26} {'format':<10} {'cos vs own':>10} {'cos fp32 src':>12}")
    for name, source in progress.track(list(NARROW.items()), "toolchains --narrow",
                                       label=lambda item: item[0]):
        with np.load(DATA / f"{name}.inputs.npz") as npz:
            feeds = {k: npz[k] for k in npz.files}
        own = _logits(DATA / f"{name}.onnx", feeds, "none")  # dequantize, then fp32 matmul
        src_ref = None
        if source is not None:
            src = DATA.parent / f"{source}.onnx"
            src_feeds = {k: v for k, v in feeds.items()}
            src_ref = _logits(src, src_feeds, "none")
        for fmt in NARROW_FORMATS:
            got = _logits(DATA / f"{name}.onnx", feeds, f"w={fmt}")
            once = cosine(_logits(src, src_feeds, f"w={fmt}"), src_ref) \
                if src_ref is not None else None
            row = {"model": name, "format": fmt, "cosine_vs_own": cosine(got, own),
                   "cosine_once_from_fp32": once,
                   "cosine_own_vs_fp32_source": cosine(own, src_ref)
                   if src_ref is not None else None}
            rows.append(row)
            print(f"{name:<26} {fmt:<10} {row['cosine_vs_own']:>10.6f} "
                  f"{'' if once is None else f'{once:.6f}':>12}", flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = progress.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quant", default="mxfp8")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--narrow", action="store_true",
                        help="weight-only requantization of narrow weights to Maia formats")
    args = parser.parse_args(argv)
    if args.narrow:
        return narrow(args.json_out)
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    rows = []
    print(f"{'model':<26} {'fp32 ok':>7} {'max abs':>9} {'cos fp32':>10} {'compile s':>9} "
          f"{'run s':>7} {'cos ' + args.quant:>12} {'top1':>5}")
    names = [name for name in sorted(manifest)
             if not (args.only and name not in args.only) and name not in NOT_A_MODEL]
    for name in progress.track(names, "toolchains", label=str):
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
