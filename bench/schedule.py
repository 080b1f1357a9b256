"""Schedule benchmark: Llama-3-8B-shaped decode and prefill, shape-only (no weights).

One run, ratios:

* fraction of roofline of decode (batch 1, context 4096) and prefill (seq 2048) per
  format, and tokens/s;
* the optimized schedule (double buffering, prefetch, inferred waits) vs the naive one
  (``schedule="naive"``: no overlap, no prefetch, every instruction waits for all engines);
* compile time and peak memory (tracemalloc peak of Python allocations, and the
  process's max RSS) of the 8B-shaped graph.

Whether a format really took effect is reported (``quantized``): a format whose
weights stayed fp32 (the quantize pass leaves weights without values alone) times
exactly like fp32.

    python bench/schedule.py [--formats fp32,mxfp8,mxfp4] [--layers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
import warnings
from typing import Any

import maiac
from maiac import models
from maiac.runtime import isa
from maiac.runtime.timing import simulate

MODES = {"decode": {"mode": "decode", "context": 4096}, "prefill": {"mode": "prefill", "seq": 2048}}


def _quantized(program: Any) -> bool:
    def leaves(instrs: list[isa.Instr]) -> Any:
        for i in instrs:
            if isinstance(i, isa.Loop):
                yield from leaves(i.body)
            else:
                yield i
    return any(isinstance(i, isa.MatMul) and (getattr(i, "b_fmt", "") or i.fmt != "f32")
               for i in leaves(program.instructions))


def run_one(mode: str, quant: str | None, schedule: str, layers: int | None,
            measure_memory: bool = False) -> dict[str, Any]:
    model = models.llama_decoder(models.LLAMA3_8B, weights="shape_only", layers=layers,
                                 **MODES[mode])
    if measure_memory:
        tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = maiac.compile(model, quant=quant, shape_only=True, schedule=schedule)
    compile_s = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if measure_memory else None
    if measure_memory:
        tracemalloc.stop()
    start = time.perf_counter()
    rep = simulate(compiled.program).to_json()
    return {
        "mode": mode, "quant": quant or "fp32", "schedule": schedule,
        "quantized": _quantized(compiled.program),
        "modeled_time_s": rep["modeled_time_s"], "roofline_time_s": rep["roofline_time_s"],
        "roofline_fraction": rep["roofline_fraction"], "tokens_per_s": rep.get("tokens_per_s"),
        "hbm_bytes": rep["hbm_bytes"], "compile_s": compile_s,
        "report_s": time.perf_counter() - start, "tracemalloc_peak_bytes": peak,
        "instructions": len(compiled.program.instructions),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp32,bf16,mxfp8,mxfp4",
                    help="quant presets (fp32 = none); mxfp8 stands for FP8: the per-tensor "
                         "fp8 preset needs calibration data, which shape-only models lack")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    memory = {}
    for mode in MODES:
        memory[mode] = run_one(mode, None, "optimized", args.layers, measure_memory=True)
        for fmt in args.formats.split(","):
            quant = None if fmt == "fp32" else fmt
            for schedule in ("optimized", "naive"):
                row = run_one(mode, quant, schedule, args.layers)
                rows.append(row)
                print(f"{mode:8} {row['quant']:6} {schedule:9} quantized={row['quantized']!s:5} "
                      f"time {row['modeled_time_s'] * 1e3:9.3f} ms  roofline "
                      f"{row['roofline_fraction']:.3f}  tokens/s {row['tokens_per_s']:10.4g}  "
                      f"compile {row['compile_s']:5.1f} s", file=sys.stderr)
    speedups = []
    for opt in (r for r in rows if r["schedule"] == "optimized"):
        naive = next(r for r in rows if r["schedule"] == "naive" and r["mode"] == opt["mode"]
                     and r["quant"] == opt["quant"])
        speedups.append({"mode": opt["mode"], "quant": opt["quant"],
                         "speedup_vs_naive": naive["modeled_time_s"] / opt["modeled_time_s"]})
    result = {
        "model": "llama3-8b shape-only", "layers": args.layers or models.LLAMA3_8B.layers,
        "rows": rows, "speedups": speedups,
        "compile": {mode: {"compile_s": m["compile_s"],
                           "tracemalloc_peak_bytes": m["tracemalloc_peak_bytes"]}
                    for mode, m in memory.items()},
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
