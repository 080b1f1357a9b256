"""Interpreter speed and memory: `maiac run` vs onnxruntime vs onnx.reference (issue 12).

Prints one table, per model: best-of-N warm run time of maiac's machine model, of
onnxruntime (CPU, default threads, same inputs) and of onnx.reference (numpy op by op),
the ratios maiac/ort and maiac/reference, the peak memory of each engine (peak RSS of a
child process that loads the model, compiles or creates the session and runs once, less
the RSS before it; the child first compiles and runs the same model once on that engine
and frees it, so the code and libraries it loads on first use, which do not grow with
the model, are not counted for either engine),
the largest absolute output difference and the instruction count.
Quantized rows (mxfp8, mxfp4, nvfp4) compare against onnxruntime's fp32 run of the same
model. Then a matmul sweep (M, N, K from 1 to 4096, odd and prime sizes): per shape the
CPU time of both engines and the factor by which maiac's time exceeds its own trend
``t0 + flops / rate`` (t0: the smallest shapes' time; rate: the median rate of the shapes
of >= 1e8 flops), and the factor over that trend plus ``bytes / copy rate`` (the bytes
the program copies — inputs into HBM, every DMA block, outputs — at the rate of one
numpy copy measured in the same run: a matrix-vector product moves its 64 MiB weight
through TSRAM, so its floor is a copy, not its FLOPs); the worst factors and the worst
ratio to onnxruntime close the table.

``--baseline REV`` also times the interpreter of git revision REV (its
runtime/interpreter.py, loaded beside today's; the helper modules it imports are today's)
on the same compiled programs in the same process, so before and after (wall and CPU
ratios) come from one run on one machine.
``--profile`` prints the top instruction kinds by time for the largest model.
``cpu x ort`` is the ratio of the two engines' best CPU time (all threads): on a
loaded machine it measures the work each does, where wall time mostly measures the
scheduler's share (the table prints the load average before and after).
Usage: python bench/interpreter.py [--repeat N] [--only SUBSTRING] [--baseline REV]
       [--no-memory] [--no-sweep] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

import maiac
from maiac import models, progress
from maiac.inputs import random_inputs
from maiac.runtime.interpreter import run_program
from maiac.runtime.memory import NP_DTYPES, release_freed_memory

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
EXPORTS = ("gpt2_dynamo", "llama_dynamo", "bert_dynamo")
LARGEST = "llama 4L d768 s128"  # the row --profile breaks down (issue 12's largest model)
LLAMA_D768 = models.LlamaConfig("llama-4l-d768", 768, 4, 12, 4, 2048, 8192)


def encoder(layers: int, seq: int, d: int, heads: int, vocab: int) -> onnx.ModelProto:
    """A BERT-style encoder: token + position embeddings, LayerNorm, bidirectional blocks."""
    b = models.GraphBuilder(0)
    x = b.op("Gather", [b.weight((vocab, d), "word_embeddings", scale=0.02), "input_ids"],
             axis=0, name="embed_tokens")
    x = b.op("Add", [x, b.weight((seq, d), "position_embeddings", scale=0.02)])
    x = b.layer_norm(x, d, "embeddings.LayerNorm")
    for i in range(layers):
        x = models._block(b, x, 1, seq, d, heads, 4 * d, f"encoder.layer.{i}", False)
    b.op("Identity", [x], name="last_hidden_state")
    return b.model("bert-encoder", [models._input("input_ids", TensorProto.INT64, [1, seq])],
                   [models._input("last_hidden_state", TensorProto.FLOAT, [1, seq, d])])


def cases() -> dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], dict]]]:
    """Row name -> () -> (model, inputs, compile options); built lazily, one at a time."""
    def generated(build: Callable[[], onnx.ModelProto], **opts: Any
                  ) -> Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], dict]]:
        def make() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict]:
            model = build()
            return model, random_inputs(model, {}, seed=0), opts
        return make

    def export(name: str) -> Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], dict]]:
        def make() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict]:
            manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
            with np.load(DATA / f"{name}.inputs.npz") as npz:
                feeds = {k: npz[k] for k in npz.files}
            shapes = {k: tuple(v) for k, v in (manifest[name].get("shapes") or {}).items()}
            return onnx.load(str(DATA / f"{name}.onnx")), feeds, {"shapes": shapes or None}
        return make

    def llama() -> onnx.ModelProto:
        return models.llama_decoder(LLAMA_D768, seq=128)

    rows = {
        LARGEST: generated(llama),
        "bert-base 12L d768 s128": generated(lambda: encoder(12, 128, 768, 12, 30522)),
        "gpt2-small 12L d768 s128": generated(lambda: models.transformer(
            layers=12, seq=128, d_model=768, heads=12, vocab=50257)),
    }
    rows.update({f"{name} (tests/data)": export(name) for name in EXPORTS})
    for q in ("mxfp8", "mxfp4", "nvfp4"):
        rows[f"llama 4L d768 s128 {q}"] = generated(llama, quant=q)
    return rows


def best_time(fn: Callable[[], object], repeat: int,
              clock: Callable[[], float] = time.perf_counter, budget_s: float = 0.0) -> float:
    """Best of ``repeat`` timed runs after a warm-up; with ``budget_s``, more runs while
    they fit in it (up to 50): a short run is then timed often enough that one quiet
    moment of a loaded machine is among them."""
    fn()  # warm-up: caches, lazy constant decode
    best = math.inf
    spent, runs = 0.0, 0
    while runs < repeat or (spent < budget_s and runs < 50):
        start = clock()
        fn()
        took = clock() - start
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def interleaved(engines: dict[str, tuple[Callable[[], object], Callable[[], float]]],
                repeat: int) -> dict[str, float]:
    """Best time of each ``name: (fn, clock)`` over ``repeat`` rounds of all of them
    (runs under 50 ms after an untimed run of the same engine, so caches stay warm)."""
    best = {name: math.inf for name in engines}
    for fn, _ in engines.values():
        fn()  # warm-up: caches, lazy constant decode
    for _ in range(repeat):
        for name, (fn, clock) in engines.items():
            if best[name] < 0.05:
                fn()  # a small model's run is timed warm (after one of its own), as alone
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best


def count_instructions(instrs: list) -> int:
    return sum(1 + (count_instructions(i.body) if i.kind == "loop" else 0) for i in instrs)


def load_baseline(rev: str) -> ModuleType:
    """runtime/interpreter.py of git revision ``rev`` as a module beside today's."""
    source = subprocess.run(["git", "show", f"{rev}:runtime/interpreter.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    # an older interpreter predates Vec fns added to isa since: skip its completeness
    # check (the bench programs use fns it knows; one that it lacks fails by name)
    source = source.replace("assert set(_FNS) == set(isa.VEC_FNS)", "assert True or set(_FNS)")
    spec = importlib.util.spec_from_loader("maiac.runtime._baseline_interpreter", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{rev}:runtime/interpreter.py", "exec"), module.__dict__)  # noqa: S102
    return module


def child_peak_mb(name: str, engine: str) -> float:
    """Peak RSS (MiB) a fresh process adds to compile/create + one run of a row's model
    (already in memory as a ModelProto; Linux: the peak is reset before starting)."""
    run = subprocess.run([sys.executable, __file__, "--child", engine, "--only", name],
                         capture_output=True, text=True)
    if run.returncode != 0:
        print(f"  ({engine} memory child of {name!r} failed: {run.stderr.strip()[-200:]})")
        return math.nan
    return float(run.stdout.strip().splitlines()[-1])


def child(engine: str, name: str) -> None:
    model, feeds, opts = cases()[name]()
    # The engine's code first: one compile/session and run of the same model, then
    # freed, so the code and libraries it loads on first use (onnxruntime's kernels;
    # maiac's passes and the modules they import, 2-3 MB, most of a small export's
    # figure) are not counted for either engine; the freed heap goes back to the OS
    # before the baseline, so the measured run cannot reuse its pages.
    run_engine(engine, model, feeds, opts)
    release_freed_memory()
    rss0 = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := current RSS
    run_engine(engine, model, feeds, opts)
    print((_status_kib("VmHWM") - rss0) / 1024)


def run_engine(engine: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray],
               opts: dict[str, Any]) -> None:
    """Compile (maiac) or create a session (onnxruntime), run once, free it all."""
    if engine == "maiac":
        maiac.compile(model, **opts).run(feeds)
    else:
        ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, feeds)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def bench_row(name: str, repeat: int, baseline: ModuleType | None, profile: bool
              ) -> dict[str, Any]:
    model, feeds, opts = cases()[name]()
    start = time.perf_counter()
    compiled = maiac.compile(model, **opts)
    compile_s = time.perf_counter() - start
    program = compiled.program
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = run_program(program, feeds)
    theirs = session.run(None, feeds)
    err = max(float(np.max(np.abs(ours[o.name] - t)))
              for o, t in zip(session.get_outputs(), theirs, strict=True))
    row: dict[str, Any] = {"model": name, "compile_s": compile_s,
                           "instructions": count_instructions(program.instructions),
                           "max_abs_err": err}
    # the engines take turns, round after round, so a change in the machine's load
    # during the row affects all of them alike; best of the rounds for each
    engines: dict[str, tuple[Callable[[], object], Callable[[], float]]] = {
        "maiac_s": (lambda: run_program(program, feeds), time.perf_counter),
        "ort_s": (lambda: session.run(None, feeds), time.perf_counter),
        "maiac_cpu_s": (lambda: run_program(program, feeds), time.process_time),
        "ort_cpu_s": (lambda: session.run(None, feeds), time.process_time)}
    if baseline is not None:  # its own machine: a copy of the program with its own cache
        before = copy.copy(program)
        before.runtime_cache = {}
        engines["before_s"] = (lambda: baseline.run_program(before, feeds), time.perf_counter)
        engines["before_cpu_s"] = (lambda: baseline.run_program(before, feeds),
                                   time.process_time)
    row.update(interleaved(engines, repeat))
    if not opts.get("quant"):
        try:
            ref = ReferenceEvaluator(model)
            row["ref_s"] = best_time(lambda: ref.run(None, feeds), max(1, repeat // 3))
        except Exception as e:  # onnx.reference lacks an op some exports use
            row["ref_s"] = math.nan
            row["ref_error"] = f"{type(e).__name__}: {e}"[:80]
    if profile:
        row["profile"] = profile_kinds(program, feeds)
    return row


def profile_kinds(program: Any, feeds: dict[str, np.ndarray]) -> list[tuple[str, float, int]]:
    """(instruction kind, seconds, count) of the fastest of 3 traced runs, slowest first."""
    best: list[dict[str, Any]] | None = None
    for _ in range(3):
        records: list[dict[str, Any]] = []
        run_program(program, feeds, trace=records)
        if best is None or sum(r["wall_s"] for r in records) < sum(r["wall_s"] for r in best):
            best = records
    by: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in best or []:
        ins = program.instructions[r["index"]]
        kind = r["kind"] if r["kind"] != "vec" else f"vec {ins.fn}"
        if r["kind"] == "matmul" and (ins.a_fmt or ins.b_fmt):
            kind = "matmul (quantized)"
        by[kind][0] += r["wall_s"]
        by[kind][1] += 1
    return sorted(((k, v[0], int(v[1])) for k, v in by.items()), key=lambda x: -x[1])


# --------------------------------------------------------------------------- sweep

SWEEP = ([(n, 256, 256) for n in (1, 7, 31, 64, 97, 127, 128, 257, 509, 1024, 4096)]
         + [(256, n, 256) for n in (1, 13, 67, 197, 383, 1021, 4096)]
         + [(256, 256, n) for n in (1, 3, 61, 251, 1009, 4096)]
         + [(1, 4096, 4096), (4096, 1, 4096), (197, 768, 3072), (1, 1, 1), (2, 3, 5),
            (1021, 1021, 1021), (2048, 2048, 2048)])


SWEEP_BUDGET_S = 0.3  # CPU seconds of timed runs per shape and engine (best of them)


def matmul_model(m: int, n: int, k: int) -> onnx.ModelProto:
    rng = np.random.default_rng(m * 31 + n * 7 + k)
    w = numpy_helper.from_array((rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32),
                                "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [models._input("x", TensorProto.FLOAT, [m, k])],
        [models._input("y", TensorProto.FLOAT, [m, n])], [w])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def moved_bytes(program: Any) -> int:
    """Bytes one run of ``program`` copies: its inputs into HBM, every DMA's destination
    block on every tile and loop iteration, its outputs out of HBM."""
    def dma(instrs: list, trips: int) -> int:
        total = 0
        for ins in instrs:
            if ins.kind == "loop":
                total += dma(ins.body, trips * math.prod(ins.trips))
            elif ins.kind == "dma":
                total += (trips * math.prod(ins.grid) * math.prod(ins.dst.shape)
                          * np.dtype(NP_DTYPES[ins.dst.dtype]).itemsize)
        return total
    specs = [*program.inputs, *program.outputs]
    return dma(program.instructions, 1) + sum(s.nbytes for s in specs)


def copy_rate() -> float:
    """Bytes per CPU second of one numpy copy of 64 MiB on this machine (best of 5)."""
    src, dst = np.ones(64 << 20, np.uint8), np.zeros(64 << 20, np.uint8)
    return src.nbytes / best_time(lambda: np.copyto(dst, src), 5, time.process_time)


def sweep(repeat: int) -> list[dict[str, Any]]:
    """Per shape the CPU time of both engines (the load of a shared machine moves wall
    time far more) and two trends of maiac's time: ``t0 + flops / rate`` and, the
    interpreter moving every byte the program copies (real bytes in SRAM), that plus
    ``bytes / copy_rate``."""
    rows = []
    for m, n, k in progress.track(SWEEP, "interpreter: matmul sweep",
                                  label=lambda s: "x".join(map(str, s))):
        model = matmul_model(m, n, k)
        feeds = {"x": np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)}
        program = maiac.compile(model).program
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        reps = repeat if m * n * k < 1 << 30 else 2
        rows.append({"shape": (m, n, k), "flops": 2 * m * n * k, "bytes": moved_bytes(program),
                     "maiac_s": best_time(lambda: run_program(program, feeds), reps,  # noqa: B023
                                          time.process_time, SWEEP_BUDGET_S),
                     "ort_s": best_time(lambda: session.run(None, feeds), reps,  # noqa: B023
                                        time.process_time, SWEEP_BUDGET_S)})
    t0 = float(np.median([r["maiac_s"] for r in rows if r["flops"] < 1e5]))
    rate = float(np.median([r["flops"] / max(r["maiac_s"] - t0, 1e-9)
                            for r in rows if r["flops"] >= 1e8]))
    bandwidth = copy_rate()
    for r in rows:
        r["trend_s"] = t0 + r["flops"] / rate
        r["factor"] = r["maiac_s"] / r["trend_s"]
        r["bytes_trend_s"] = r["trend_s"] + r["bytes"] / bandwidth
        r["bytes_factor"] = r["maiac_s"] / r["bytes_trend_s"]
    return rows


# --------------------------------------------------------------------------- main

def _ms(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v * 1e3:.1f}"


def main() -> None:
    parser = progress.argument_parser(__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="best of N warm runs")
    parser.add_argument("--only", default="", help="run only rows whose name contains this")
    parser.add_argument("--baseline", default="", help="also time the interpreter of this git rev")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument("--no-sweep", action="store_true", help="skip the matmul sweep")
    parser.add_argument("--profile", action="store_true",
                        help="top instruction kinds by time of the largest model")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, next(n for n in cases() if args.only in n))
        return
    baseline = load_baseline(args.baseline) if args.baseline else None
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)", flush=True)
    head = (f"{'model':<28} {'maiac ms':>9} {'ort ms':>8} {'ref ms':>8} {'x ort':>6} "
            f"{'x ref':>6}")
    if baseline is not None:
        head += f" {'before ms':>9} {'bef x ort':>9} {'bef cpu x':>9}"
    head += f" {'cpu x ort':>9} {'maiac MB':>8} {'ort MB':>7} {'x mem':>5} {'compile s':>9} " \
            f"{'instrs':>6} {'max err':>8}"
    print(head, flush=True)
    profiled = None
    names = [n for n in cases() if args.only in n]
    for name in progress.track(names, "interpreter", label=str):
        r = bench_row(name, args.repeat, baseline, args.profile and name == LARGEST)
        if not args.no_memory:  # after bench_row freed its model, program and session
            r["maiac_mb"], r["ort_mb"] = child_peak_mb(name, "maiac"), child_peak_mb(name, "ort")
        line = (f"{name:<28} {_ms(r['maiac_s']):>9} {_ms(r['ort_s']):>8} "
                f"{_ms(r.get('ref_s')):>8} {r['maiac_s'] / r['ort_s']:>6.2f} "
                f"{r['maiac_s'] / r.get('ref_s', math.nan):>6.2f}")
        if baseline is not None:
            line += (f" {_ms(r['before_s']):>9} {r['before_s'] / r['ort_s']:>9.2f}"
                     f" {r['before_cpu_s'] / max(r['ort_cpu_s'], 1e-9):>9.2f}")
        mem = (r.get("maiac_mb", math.nan), r.get("ort_mb", math.nan))
        line += f" {r['maiac_cpu_s'] / max(r['ort_cpu_s'], 1e-9):>9.2f}"
        line += (f" {mem[0]:>8.0f} {mem[1]:>7.0f} {mem[0] / max(mem[1], 1):>5.2f} "
                 f"{r['compile_s']:>9.2f} {r['instructions']:>6} {r['max_abs_err']:>8.1e}")
        print(line, flush=True)
        if "profile" in r:
            profiled = (name, r["profile"])
    if profiled is not None:
        name, kinds = profiled
        total = sum(s for _, s, _ in kinds)
        print(f"\nprofile of {name} (best of 3 traced runs, {total * 1e3:.0f} ms):")
        for kind, s, n in kinds[:5]:
            print(f"  {kind:<22} {s * 1e3:8.1f} ms {100 * s / total:5.1f} %  ({n} instrs)")
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if not args.no_sweep:
        rows = sweep(args.repeat)
        print(f"\nmatmul sweep (CPU ms) {'M,N,K':>12} {'MFLOP':>9} {'MB moved':>8} "
              f"{'maiac':>8} {'ort':>8} {'x ort':>6} {'trend':>8} {'factor':>6} "
              f"{'+bytes':>8} {'factor':>6}")
        for r in rows:
            print(f"{'':<13}{str(r['shape']):>20} {r['flops'] / 1e6:>9.2f} "
                  f"{r['bytes'] / 2**20:>8.1f} {_ms(r['maiac_s']):>8} {_ms(r['ort_s']):>8} "
                  f"{r['maiac_s'] / r['ort_s']:>6.2f} {_ms(r['trend_s']):>8} "
                  f"{r['factor']:>6.2f} {_ms(r['bytes_trend_s']):>8} {r['bytes_factor']:>6.2f}")
        worst = max(rows, key=lambda r: r["factor"])
        print(f"worst-shape factor {worst['factor']:.2f} at M,N,K = {worst['shape']} "
              f"(FLOP trend)")
        worst = max(rows, key=lambda r: r["bytes_factor"])
        print(f"worst-shape factor {worst['bytes_factor']:.2f} at M,N,K = {worst['shape']} "
              f"(FLOP + copied-bytes trend)")
        worst = max(rows, key=lambda r: r["maiac_s"] / r["ort_s"])
        print(f"worst-shape x ort {worst['maiac_s'] / worst['ort_s']:.2f} at M,N,K = "
              f"{worst['shape']} (maiac CPU time / onnxruntime's, same single-MatMul graph)")
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
