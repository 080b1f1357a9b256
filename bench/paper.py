"""maiac's model of the experiments of the Maia 200 paper, beside the published figures.

arXiv 2608.24664 (Xu et al., "Maia 200: A Software Defined Dataflow System for
Large-scale AI Acceleration", 2026) measured, on 36 tiles at 2 GHz:

* BF16 GEMM over 6,143 shapes: up to 99.69 % of peak when compute-bound, > 90 % above
  58 TFLOP per GEMM; up to 51.4 % of HBM bandwidth when memory-bound, above 50 % only
  once input + output operands exceed 113.5 MiB;
* FP8 GEMM: up to 96 % compute-bound, 56 % memory-bound; ridge points 169 (BF16) and
  674 (FP8) FLOP/byte;
* Qwen2.5-7B decode (BF16 weights, 16,384-token KV cache) on one chip: 2,434 tokens/s,
  "> 70 % of the estimated maximum", batch not stated (modeled as maiac generate runs a
  decode step: the bf16 cache resident in HBM and updated in place).

Every GEMM is compiled by maiac (ONNX MatMul of two bf16 / f8e4m3 inputs -> tile ->
schedule) and timed by the timing model, like any user program. Efficiency is the
paper's: FLOPs / (peak x time) for compute-bound shapes (arithmetic intensity over
input + output bytes at least the ridge point), operand bytes / (7 TB/s x time) for
memory-bound ones. The two thresholds read the paper's wording literally:

* "> 90 % above 58 TFLOP": every compute-bound GEMM of more FLOPs passes 90 %, so the
  row is placed after the *largest failing* shape. The shapes that fail at tens of
  TFLOP are the near-ridge ones (intensity ~170-300 FLOP/B: compute-bound by the ridge,
  but HBM-limited at the sustained rate), and the largest of those the chip can hold
  fill its HBM: F = intensity x operand bytes <= ~290 x 216 GB. The sweep therefore
  has near-ridge GEMMs ``[m, D] @ [D, D]`` with D as large as HBM allows
  (``ridge_shapes``).
* "above 50 % only when operands exceed 113.5 MiB": no memory-bound shape below it
  passes 50 %, so the row is placed before the *smallest passing* shape.

Qwen2.5-7B decode is compiled for batch 1..16 and 20..32 (``--batches``), weights and KV
cache in bf16, as maiac perf does it (1 and 2 layers compiled, every additive figure
extrapolated to 28 layers; ``--layers all`` compiles all 28; results cached on disk
like perf's, keyed by the compiler source); the row compares the batch whose modeled
tokens/s is nearest the published figure, and the table lists them all.

    python bench/paper.py [--target maia200] [--target-param k=v ...] [--quick] [--json]
                          [--batches 1,8,16] [--layers extrapolate|all] [--no-cache]

``--quick``: fewer GEMM shapes and batches (the fit script uses it). The fitted
parameters of ``maia200`` come from ``bench/fit_paper.py`` (runtime/maia200_fit.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from onnx import TensorProto, helper

import maiac
from maiac import models, progress
from maiac.perf import (
    ModelShape,
    Task,
    TaskCache,
    _code_fingerprint,
    _combine,
    batch_reaching,
    run_tasks,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.target import Target, get_target
from maiac.runtime.timing import simulate

MIB = 2**20
QWEN_SHAPE = ModelShape("qwen2.5-7b", models.QWEN2_5_7B.layers, models.QWEN2_5_7B.kv_heads,
                        models.QWEN2_5_7B.hidden // models.QWEN2_5_7B.heads,
                        preset="qwen2.5-7b")
PAPER = {
    "bf16_compute_peak": 0.9969, "bf16_90pct_flop": 58e12, "bf16_memory_peak": 0.514,
    "bf16_50pct_bytes": 113.5 * MIB, "fp8_compute_peak": 0.96, "fp8_memory_peak": 0.56,
    "bf16_ridge": 169.0, "fp8_ridge": 674.0, "qwen_tokens_per_s": 2434.0,
    # Allgather, 8 chips over two trays, of SoL = max(4 us, R / 1.4 TiB/s)
    "allgather_latency_fraction": 0.78, "allgather_bandwidth_fraction": 0.94,
}
# (M, K, N) compute-bound: squares and rectangles from 2 GFLOP up past the paper's 58 TFLOP
# (a sweep that stops below it cannot place the "> 90 % above 58 TFLOP" threshold there)
GEMMS_COMPUTE = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096),
                 (8192, 8192, 8192), (4096, 8192, 2048), (2048, 4096, 14336),
                 (6144, 6144, 6144), (3072, 3072, 3072), (16384, 16384, 16384),
                 (32768, 16384, 32768), (32768, 32768, 32768)]
QUICK_COMPUTE = [(2048, 2048, 2048), (8192, 8192, 8192), (4096, 4096, 4096)]
# rows m of the near-ridge GEMMs [m, D] @ [D, D] (intensity ~m FLOP/B; multiples of the
# TTU's 32 rows), and the fractions of the largest D that fits HBM they run at
RIDGE_ROWS = (192, 224, 256, 288, 320, 352, 384)
QUICK_RIDGE_ROWS = (256, 288, 320)
RIDGE_SCALES = (1.0, 0.9)
QWEN_BATCHES = [*range(1, 17), 20, 24, 28, 32]
QUICK_BATCHES = [8, 16, 24, 32]


def ridge_shapes(target: Target, rows: tuple[int, ...] = RIDGE_ROWS,
                 scales: tuple[float, ...] = RIDGE_SCALES) -> list[tuple[int, int, int]]:
    """Near-ridge BF16 GEMMs as large as the chip holds: ``[m, D] @ [D, D]`` with D (a
    multiple of 32,768: 2^15, so the blocks divide it as well as they divide the
    paper-sized squares) the largest whose three operands fit ``target.hbm_bytes``, and
    ``D x scale`` beside it (their FLOPs fall between two rows' at the largest D). Their
    intensity is ~m FLOP/B, so the ones under the sustained-HBM ridge stay below 90 % of
    peak however many FLOPs they have: these place the paper's "> 90 % above 58 TFLOP"."""
    unit = 32768
    out = []
    for scale in scales:
        for m in rows:
            d = int((target.hbm_bytes / 2) ** 0.5) // unit * unit
            while d > unit and 2 * (d * d + 2 * m * d) > target.hbm_bytes:
                d -= unit
            d = max(unit, int(d * scale) // unit * unit)
            out.append((m, d, d))
    return out


def memory_shapes(step: float, lo_mib: float = 16.0, hi_mib: float = 1024.0
                  ) -> list[tuple[int, int, int]]:
    """Memory-bound (M, K, N): operand sizes on a geometric grid (``step`` per point) from
    ``lo_mib`` to ``hi_mib`` (bf16 bytes), two aspect ratios each — A tall (M = 4 K,
    N = 32) and A square (M = K, N = 64) — so the size where the curve passes 50 % of HBM
    is resolved to about ``step``, as the paper's 6,143 shapes resolve it."""
    out = []
    size = lo_mib * MIB
    while size <= hi_mib * MIB * 1.0001:
        for ratio, n in ((4, 32), (1, 64)):
            k = max(32, round((size / 2 / ratio) ** 0.5 / 32) * 32)
            out.append((ratio * k, k, n))
        size *= step
    return out


GEMMS_MEMORY = memory_shapes(2 ** (1 / 8))
QUICK_MEMORY = memory_shapes(2 ** (1 / 4), 32.0, 512.0)


def gemm_model(m: int, k: int, n: int, dtype: int) -> Any:
    """C[M, N] = A[M, K] @ B[K, N], both operands program inputs of ``dtype``."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="gemm")], "gemm",
        [helper.make_tensor_value_info("a", dtype, [m, k]),
         helper.make_tensor_value_info("b", dtype, [k, n])],
        [helper.make_tensor_value_info("c", dtype, [m, n])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _compile(model: Any, target: Target, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return maiac.compile(model, shape_only=True, target=target.name,
                             target_params=_overrides(target), **kw)


def _overrides(target: Target) -> dict[str, str]:
    """The target's values that differ from its named defaults, as --target-param."""
    base = get_target(target.name)
    out = {}
    for key, value in target.to_json().items():
        if key in ("name", "ttu_flops", "tvp_flops", "n_tiles"):
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": repr(v) for k, v in value.items()
                        if getattr(base, key).get(k) != v})
        elif getattr(base, key) != value:
            out[key] = repr(value)
    return out


def gemm_rows(target: Target, fmt: str, shapes: list[tuple[int, int, int]],
              programs: dict | None = None, use_cache: bool = True) -> list[dict[str, Any]]:
    """Modeled time and the paper's efficiency of each GEMM shape in ``fmt``.

    ``programs``: a cache of compiled programs by (fmt, shape) the fit re-simulates with
    other parameter values (the tiling then stays the one chosen for the first target).
    Without it, each shape's modeled time is cached on disk (``$MAIAC_CACHE_DIR/paper``,
    default ``~/.cache/maiac/paper``) by target parameters, shape and compiler source."""
    dtype, size, key = ((TensorProto.BFLOAT16, 2, "bf16") if fmt == "bf16"
                        else (TensorProto.FLOAT8E4M3FN, 1, "fp8"))
    peak, ridge = target.ttu_flops[key], target.ttu_flops[key] / target.hbm_bw
    disk = TaskCache(str(Path(os.environ.get("MAIAC_CACHE_DIR", Path.home() / ".cache"
                                             / "maiac")) / "paper"),
                     use_cache and programs is None)
    code = _code_fingerprint() if disk.enabled else ""
    rows = []
    for m, k, n in progress.track(shapes, f"paper: {fmt} GEMM",
                                  label=lambda s: "x".join(map(str, s))):
        start = time.perf_counter()
        digest = hashlib.sha256(json.dumps([target.to_json(), fmt, m, k, n, code],
                                           sort_keys=True).encode()).hexdigest()[:24]
        hit = disk.get(digest)
        cached = programs.get((fmt, (m, k, n))) if programs is not None else None
        if hit is not None:
            t, compile_s = hit["time_s"], hit["compile_s"]
        else:
            program = cached or _compile(gemm_model(m, k, n, dtype), target).program
            if programs is not None:
                programs[(fmt, (m, k, n))] = program
            compile_s = 0.0 if cached else time.perf_counter() - start
            t = simulate(program, target).modeled_time_s
            disk.put(digest, {"time_s": t, "compile_s": compile_s})
        flops = 2.0 * m * n * k
        nbytes = float(size * (m * k + k * n + m * n))
        bound = "compute" if flops / nbytes >= ridge else "memory"
        eff = flops / (peak * t) if bound == "compute" else nbytes / (target.hbm_bw * t)
        rows.append({"fmt": fmt, "shape": [m, k, n], "flops": flops, "operand_bytes": nbytes,
                     "bound": bound, "time_s": t, "efficiency": eff, "compile_s": compile_s})
    return rows


def qwen_rows(target: Target, batches: list[int], layers: str = "extrapolate",
              use_cache: bool = True) -> list[dict[str, Any]]:
    """Qwen2.5-7B decode of token 16,385 (16,384 cached, bf16 weights and KV cache), as
    ``maiac perf`` models it (maiac/perf.py): the decode step maiac generate runs, the
    cache resident and updated in place; 1 and 2 layers compiled and extrapolated to 28
    (``layers="all"``: the whole model), results cached by the compiler source."""
    n = models.QWEN2_5_7B.layers
    counts = (1, 2) if layers == "extrapolate" else (n,)
    params = tuple(sorted(_overrides(target).items()))
    tasks = {(b, c): Task(QWEN_SHAPE, "decode", b, 16384, "bf16", "bf16", c, target.name,
                          params, kv_update="in-place") for b in batches for c in counts}
    with progress.step("paper: Qwen2.5-7B decode") as bar:
        done = run_tasks(list(tasks.values()), 0, TaskCache(None, use_cache),
                         lambda done: bar.update(f"paper: Qwen2.5-7B decode, {done}"))
    rows = []
    for batch in batches:
        fig = (_combine(done[tasks[(batch, 1)]], done[tasks[(batch, 2)]], n)
               if layers == "extrapolate" else done[tasks[(batch, n)]])
        if "error" in fig:
            raise SystemExit(f"bench/paper.py: Qwen2.5-7B decode at batch {batch}: "
                             f"{fig['error']}")
        t, hbm = fig["modeled_time_s"], fig["hbm_bytes"]
        rows.append({"batch": batch, "tokens_per_s": batch / t, "modeled_time_s": t,
                     "hbm_bytes": hbm,
                     # memory-bound: the HBM bytes at the physical / the calibrated rate
                     "roofline_fraction": hbm / target.hbm_bw / t,
                     "calibrated_fraction": hbm / target.hbm_sustained_bw / t,
                     "compile_s": fig["compile_s"], "cached": fig.get("cached", False)})
    return rows


def summarize(target: Target, bf16: list[dict], fp8: list[dict], qwen: list[dict]
              ) -> list[dict[str, Any]]:
    """The paper's table: one row per published figure, maiac's value and the ratio."""
    def peak(rows: list[dict], bound: str) -> float:
        return max((r["efficiency"] for r in rows if r["bound"] == bound), default=0.0)

    def threshold(rows: list[dict], bound: str, key: str, level: float) -> float:
        """Where every ``bound`` row from there on is over ``level`` efficiency: between
        the largest ``key`` still at or below ``level`` and the next row (their geometric
        mean); nan when no row fails or none passes above the last failure."""
        rs = sorted((r for r in rows if r["bound"] == bound), key=lambda r: r[key])
        fails = [i for i, r in enumerate(rs) if r["efficiency"] <= level]
        if not fails or fails[-1] + 1 >= len(rs):
            return float("nan")
        i = fails[-1]
        return (rs[i][key] * rs[i + 1][key]) ** 0.5

    def first_pass(rows: list[dict], bound: str, key: str, level: float) -> float:
        """Below which no ``bound`` row is over ``level`` efficiency: between the smallest
        ``key`` that passes and the row before it (their geometric mean); nan when no row
        passes or the smallest row already does."""
        rs = sorted((r for r in rows if r["bound"] == bound), key=lambda r: r[key])
        passes = [i for i, r in enumerate(rs) if r["efficiency"] > level]
        if not passes or passes[0] == 0:
            return float("nan")
        i = passes[0]
        return (rs[i - 1][key] * rs[i][key]) ** 0.5

    best = min(qwen, key=lambda r: abs(r["tokens_per_s"] - PAPER["qwen_tokens_per_s"]))
    rows = [
        ("BF16 GEMM compute-bound, best fraction of peak", "bf16_compute_peak",
         peak(bf16, "compute"), "fraction"),
        ("BF16 GEMM: GEMM FLOPs above which every compute-bound shape > 90 %",
         "bf16_90pct_flop", threshold(bf16, "compute", "flops", 0.9), "FLOP"),
        ("BF16 GEMM memory-bound, best fraction of HBM", "bf16_memory_peak",
         peak(bf16, "memory"), "fraction"),
        ("BF16 GEMM: operand bytes below which no memory-bound shape > 50 % of HBM",
         "bf16_50pct_bytes", first_pass(bf16, "memory", "operand_bytes", 0.5), "B"),
        ("FP8 GEMM compute-bound, best fraction of peak", "fp8_compute_peak",
         peak(fp8, "compute"), "fraction"),
        ("FP8 GEMM memory-bound, best fraction of HBM", "fp8_memory_peak",
         peak(fp8, "memory"), "fraction"),
        ("BF16 ridge point (peak / HBM)", "bf16_ridge",
         target.ttu_flops["bf16"] / target.hbm_bw, "FLOP/B"),
        ("FP8 ridge point (peak / HBM)", "fp8_ridge",
         target.ttu_flops["fp8"] / target.hbm_bw, "FLOP/B"),
        (f"Qwen2.5-7B decode at 16,384 context, tokens/s (batch {best['batch']}, nearest)",
         "qwen_tokens_per_s", best["tokens_per_s"], "tokens/s"),
        *allgather_summary(),
    ]
    return [{"experiment": name, "key": key, "paper": PAPER[key], "maiac": value,
             "ratio": value / PAPER[key], "unit": unit,
             "within_10pct": abs(value / PAPER[key] - 1) <= 0.10}
            for name, key, value, unit in rows]


def allgather_summary() -> list[tuple[str, str, float, str]]:
    """The network row (runtime/network.py; fitted to it, details: bench/paper_network.py)."""
    from maiac.runtime.network import LARGE_RESULT_BYTES, SMALL_RESULT_BYTES, allgather_rows

    small, large = allgather_rows(sizes=(SMALL_RESULT_BYTES, LARGE_RESULT_BYTES))
    return [("Allgather 8 chips / 2 trays, small R: fraction of the latency bound (fitted)",
             "allgather_latency_fraction", small["fraction_of_sol"], "fraction"),
            ("Allgather 8 chips / 2 trays, R = 1 GiB: fraction of the bandwidth bound (fitted)",
             "allgather_bandwidth_fraction", large["fraction_of_sol"], "fraction")]


def run(target: Target, quick: bool = False, batches: list[int] | None = None,
        programs: dict | None = None, qwen_decode: bool = True, layers: str = "extrapolate",
        use_cache: bool = True) -> dict[str, Any]:
    """Every experiment on ``target`` (``qwen_decode=False``: the GEMMs only; the Qwen
    row is then nan)."""
    comp, mem = (QUICK_COMPUTE, QUICK_MEMORY) if quick else (GEMMS_COMPUTE, GEMMS_MEMORY)
    ridge = ridge_shapes(target, QUICK_RIDGE_ROWS if quick else RIDGE_ROWS)
    batches = batches or (QUICK_BATCHES if quick else QWEN_BATCHES)
    bf16 = gemm_rows(target, "bf16", comp + ridge + mem, programs, use_cache)
    fp8 = gemm_rows(target, "fp8", comp + mem, programs, use_cache)
    nan = float("nan")
    qwen = (qwen_rows(target, batches, layers, use_cache) if qwen_decode else
            [{"batch": 0, "tokens_per_s": nan, "modeled_time_s": nan, "roofline_fraction": nan,
              "calibrated_fraction": nan, "hbm_bytes": 0.0, "compile_s": 0.0}])
    return {"target": target.name, "fit": "runtime/maia200_fit.py (bench/fit_paper.py)"
            if target.name == "maia200" else "none (unfitted)",
            "overrides": _overrides(target), "rows": summarize(target, bf16, fp8, qwen),
            "gemms": bf16 + fp8, "qwen_decode": qwen,
            "qwen_implied_batch": implied_batch(qwen)}


def implied_batch(qwen: list[dict[str, Any]]) -> float | None:
    """The decode batch at which maiac's tokens/s reaches the published 2,434 (linear
    between the two batches around it), None when no modeled batch gets there."""
    return batch_reaching(qwen, PAPER["qwen_tokens_per_s"])


def table(result: dict[str, Any]) -> str:
    def fmt(v: float, unit: str) -> str:
        if unit == "fraction":
            return f"{v:.2%}"
        if unit == "B":
            return f"{v / MIB:.1f} MiB"
        if unit == "FLOP":
            return f"{v / 1e12:.3g} TFLOP"
        return f"{v:.4g}"
    lines = [f"target {result['target']}, fit: {result['fit']}"
             + (f", overrides {result['overrides']}" if result["overrides"] else ""),
             "| experiment | paper | maiac | ratio |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['experiment']} | {fmt(r['paper'], r['unit'])} "
                     f"| {fmt(r['maiac'], r['unit'])} | {r['ratio']:.3f} |")
    lines += ["", "Qwen2.5-7B decode, token 16,385 (bf16 weights + KV cache), by batch:",
              "| batch | tokens/s | ms/step | HBM GB/step | of 7 TB/s | of the calibrated "
              "HBM rate |", "|---|---|---|---|---|---|"]
    for q in result["qwen_decode"]:
        lines.append(f"| {q['batch']} | {q['tokens_per_s']:.0f} | {q['modeled_time_s'] * 1e3:.3f} "
                     f"| {q['hbm_bytes'] / 1e9:.2f} | {q['roofline_fraction']:.3f} "
                     f"| {q['calibrated_fraction']:.3f} |")
    b = result.get("qwen_implied_batch")
    lines.append(f"The published 2,434 tokens/s implies batch {b:.1f} on this model."
                 if b is not None else "No modeled batch reaches the published 2,434 tokens/s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--target", default="maia200")
    ap.add_argument("--target-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and batches")
    ap.add_argument("--batches", default=None, help="decode batches, e.g. 1,8,16")
    ap.add_argument("--layers", choices=("extrapolate", "all"), default="extrapolate",
                    help="Qwen decode: 1 and 2 layers extrapolated to 28 (default), or all")
    ap.add_argument("--no-cache", action="store_true",
                    help="recompile every program (no results from the disk cache)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    bad = [p for p in args.target_param if "=" not in p]
    if bad:
        ap.error(f"--target-param {bad[0]!r}: expected KEY=VALUE")
    try:
        target = get_target(args.target, dict(p.split("=", 1) for p in args.target_param))
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    except MaiacError as err:
        ap.error(str(err))
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected positive integers, e.g. 1,8,16")
    if batches is not None and min(batches) < 1:
        ap.error(f"--batches {args.batches!r}: expected positive integers, e.g. 1,8,16")
    start = time.perf_counter()
    result = run(target, args.quick, batches, layers=args.layers,
                 use_cache=not args.no_cache)
    result["bench_s"] = time.perf_counter() - start
    print(json.dumps(result, indent=1) if args.json else table(result))
    print(f"({result['bench_s']:.0f} s)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
