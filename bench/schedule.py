"""Schedule benchmark: Llama-3-8B-shaped decode and prefill, shape-only (no weights).

One run, one table, ratios:

* fraction of the calibrated curve (the TTU at its peak or the program's HBM bytes at
  the fitted sustained rate, ``calibrated_time``: the issue-14 goal is >= 0.9) and of the
  roofline (HBM at its 7 TB/s peak) of decode (batch 1, context 4096) and prefill (seq
  2048) per format (fp8 and mxfp4 are the targets; bf16 and fp32 for reference),
  tokens/s and modeled time;
* the optimized schedule (cost-model tiles, split-K decode attention, double buffering,
  prefetch through a TSRAM ring, inferred waits) vs the naive one (``schedule="naive"``:
  fixed 128-blocks, no overlap, no prefetch, every instruction waits for all engines):
  naive time and speedup;
* compile time of every row, and peak memory (tracemalloc peak of Python allocations
  during the compile, and the process's max RSS) of the 8B-shaped graph;
* with ``--ops``, per op kind (matmul, attention, norm, rope, ...) of the optimized
  schedule: modeled time, the calibrated bound of those ops (`op_bound`: their TTU
  work at the formats' peaks, their TVP work at its peak, or their HBM bytes at the
  sustained rate, whichever is longest; the TTU and TVP overlap) and the share of the
  whole program's gap to its calibrated curve, so the remaining gap is visible;
* the fraction of the **per-op curve** (`per_op_curve_time`): the sum over ops of each
  op's own calibrated bound, as the paper measured GEMMs one at a time. It is never
  below the program-wide curve, which also assumes that one op's HBM traffic hides under
  another's compute (e.g. the prefill LM head's 1 GB of fp32 logits under the layers'
  GEMMs); the two readings bracket what the chip's kernels allow.

Shape-only weights are quantized to stand-in payloads, and ``fp8``'s static activation
scales are placeholders (no calibration data), so every format times as it would with
real weights (``quantized`` says whether the matmuls really run narrow).

    python bench/schedule.py [--formats fp8,mxfp4,bf16,fp32] [--modes decode,prefill]
                             [--layers N] [--ops] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
import warnings
from typing import Any

import maiac
from maiac import models, progress
from maiac.runtime import isa
from maiac.runtime.target import Target, get_target
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


def calibrated_time(rep: dict[str, Any], target: Target) -> float:
    """What the calibrated GEMM curve allows: the TTU/TVP work at the formats' peaks (the
    paper's GEMMs reach 96-99.7 % of them) or the program's HBM bytes at the sustained
    rate the fit gives DMA streams (``hbm_bw x hbm_efficiency``), whichever is longer,
    plus the fitted launch cost every program pays once (``launch_latency_s``: the
    same curve the paper's GEMMs are fitted on)."""
    return (max(rep["compute_time_s"], rep["hbm_bytes"] / target.hbm_sustained_bw)
            + target.launch_latency_s)


def op_bound(op: dict[str, Any], target: Target) -> float:
    """The calibrated bound of one report op row: its TTU work at each format's peak,
    its TVP work at the TVP peak, or its HBM bytes at the sustained rate, whichever is
    longest (the engines run concurrently; the same terms as `calibrated_time`)."""
    ttu = sum(f / target.ttu_flops[k] for k, f in op["fmt_flops"].items())
    return max(ttu, op["tvp_ops"] / target.tvp_flops, op["hbm_bytes"] / target.hbm_sustained_bw)


def per_op_curve_time(rep: dict[str, Any], target: Target) -> float:
    """The per-op curve: every op at its own calibrated bound (`op_bound`), one after
    another. Ops that overlap in the schedule can beat it, so it is a reading beside
    `calibrated_time`, not a physical limit. The program's launch cost is paid once, as
    in `calibrated_time`."""
    return sum(op_bound(op, target) for op in rep["ops"]) + target.launch_latency_s


def op_kinds(rep: dict[str, Any], target: Target) -> list[dict[str, Any]]:
    """Per op kind of a report: ops, modeled time, calibrated bound and their ratio, and
    the kind's share of the program's gap (modeled - calibrated time), slowest first."""
    kinds: dict[str, dict[str, Any]] = {}
    for op in rep["ops"]:
        k = kinds.setdefault(op["kind"] or "other", {"kind": op["kind"] or "other", "ops": 0,
                                                     "time_s": 0.0, "bound_s": 0.0})
        k["ops"] += 1
        k["time_s"] += op["time_s"]
        k["bound_s"] += op_bound(op, target)
    gap = rep["modeled_time_s"] - calibrated_time(rep, target)
    out = sorted(kinds.values(), key=lambda k: -k["time_s"])
    for k in out:
        k["of_bound"] = k["bound_s"] / k["time_s"] if k["time_s"] else 0.0
        k["gap_share"] = (k["time_s"] - k["bound_s"]) / gap if gap > 0 else 0.0
    return out


def run_one(mode: str, quant: str | None, schedule: str, layers: int | None,
            measure_memory: bool = False, target: str = "maia200") -> dict[str, Any]:
    model = models.llama_decoder(models.LLAMA3_8B, weights="shape_only", layers=layers,
                                 **MODES[mode])
    if measure_memory:
        tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = maiac.compile(model, quant=quant, shape_only=True, schedule=schedule,
                                 target=target)
    compile_s = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if measure_memory else None
    if measure_memory:
        tracemalloc.stop()
    start = time.perf_counter()
    rep = simulate(compiled.program).to_json()
    calibrated = calibrated_time(rep, get_target(target))
    kinds = op_kinds(rep, get_target(target))
    return {
        "mode": mode, "quant": quant or "fp32", "schedule": schedule,
        "quantized": _quantized(compiled.program),
        "modeled_time_s": rep["modeled_time_s"], "roofline_time_s": rep["roofline_time_s"],
        "roofline_fraction": rep["roofline_fraction"], "tokens_per_s": rep.get("tokens_per_s"),
        "calibrated_time_s": calibrated,
        "calibrated_fraction": calibrated / rep["modeled_time_s"],
        "per_op_curve_fraction": per_op_curve_time(rep, get_target(target))
        / rep["modeled_time_s"],
        "hbm_bytes": rep["hbm_bytes"], "compile_s": compile_s,
        "report_s": time.perf_counter() - start, "tracemalloc_peak_bytes": peak,
        "instructions": len(compiled.program.instructions), "op_kinds": kinds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp8,mxfp4,bf16,fp32",
                    help="quant presets (fp32 = none)")
    ap.add_argument("--modes", default="decode,prefill", help="decode and/or prefill")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32)")
    ap.add_argument("--ops", action="store_true",
                    help="also print per op kind the time, calibrated bound and gap share")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--target", default="maia200",
                    help="named target (maia200, maia200-ideal, maia200-v0)")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    memory = {}
    for mode in modes:
        for fmt in progress.track(args.formats.split(","), f"schedule: {mode}", label=str):
            quant = None if fmt == "fp32" else fmt
            if mode not in memory:  # tracemalloc slows the compile: a run of its own
                memory[mode] = run_one(mode, quant, "optimized", args.layers,
                                       measure_memory=True, target=args.target)
            opt = run_one(mode, quant, "optimized", args.layers, target=args.target)
            naive = run_one(mode, quant, "naive", args.layers, target=args.target)
            opt["naive_time_s"] = naive["modeled_time_s"]
            opt["naive_roofline_fraction"] = naive["roofline_fraction"]
            opt["naive_compile_s"] = naive["compile_s"]
            opt["speedup_vs_naive"] = naive["modeled_time_s"] / opt["modeled_time_s"]
            rows.append(opt)
            print(f"{mode:8} {opt['quant']:6} done (compile {opt['compile_s']:.1f} s)",
                  file=sys.stderr)
    print(f"target {args.target}")
    print(table(rows))
    if args.ops:
        print(ops_table(rows))
    result = {
        "model": "llama3-8b shape-only", "target": args.target,
        "layers": args.layers or models.LLAMA3_8B.layers,
        "rows": rows,
        "compile": {mode: {"quant": m["quant"],
                           "tracemalloc_peak_bytes": m["tracemalloc_peak_bytes"]}
                    for mode, m in memory.items()},
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print("peak memory: " + ", ".join(
        f"{mode} {m['quant']} compile {m['tracemalloc_peak_bytes'] / 2**20:.0f} MiB "
        "(tracemalloc)"
        for mode, m in memory.items()) + f"; max RSS {result['max_rss_bytes'] / 2**20:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """The bench rows as a markdown table."""
    head = ("| mode | format | of calibrated curve | of per-op curve | roofline fraction "
            "| tokens/s | modeled ms | roofline ms | naive ms | speedup vs naive | compile s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fmt = r["quant"] + ("" if r["quantized"] or r["quant"] == "fp32" else " (not applied)")
        lines.append(
            f"| {r['mode']} | {fmt} | {r['calibrated_fraction']:.3f} "
            f"| {r['per_op_curve_fraction']:.3f} "
            f"| {r['roofline_fraction']:.3f} | {r['tokens_per_s']:.4g} "
            f"| {r['modeled_time_s'] * 1e3:.3f} | {r['roofline_time_s'] * 1e3:.3f} "
            f"| {r['naive_time_s'] * 1e3:.3f} | {r['speedup_vs_naive']:.2f} "
            f"| {r['compile_s']:.1f} |")
    return "\n".join(lines)


def ops_table(rows: list[dict[str, Any]]) -> str:
    """Per op kind of each row (`op_kinds`) as a markdown table; ``of bound`` is the
    kind's calibrated bound over its modeled time, ``of gap`` its share of the row's
    modeled - calibrated time (ops faster than their bound, e.g. overlapped with
    others, give negative shares)."""
    lines = ["| mode | format | op kind | ops | modeled µs | bound µs | of bound | of gap |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k in r["op_kinds"]:
            lines.append(f"| {r['mode']} | {r['quant']} | {k['kind']} | {k['ops']} "
                         f"| {k['time_s'] * 1e6:.1f} | {k['bound_s'] * 1e6:.1f} "
                         f"| {k['of_bound']:.3f} | {k['gap_share']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
