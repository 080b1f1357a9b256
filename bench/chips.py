"""Decode TPOT and tokens/s per chip count: Llama-3-8B / 70B shapes, tensor parallel.

For every model, batch and chip count N the shape-only decode step (one new token per
sequence at position ``--context``) is compiled with ``--chips N`` (ranks 0 and 1, which
time the whole group: runtime/multichip.py) and timed on the machine model with the
network of runtime/network.py. Layers are identical, so ``--sim-layers a,b`` layers are
compiled and the per-layer increment between them extrapolates to the model's depth
(exact for a periodic schedule; compiling 80 layers 12 times would take an hour).

Columns: TPOT (modeled time of one decode step), tokens/s (batch / TPOT), per chip, the
speedup over one chip, the scaling efficiency (speedup / N), the share of the step the
network engine is busy, and whether weights + KV cache fit one chip's 216 GB of HBM
(the KV cache is fp32 as maiac's decode attention reads it today).

    python bench/chips.py [--models 8b,70b] [--chips 1,2,4,8,16,32] [--batch 1,32]
                          [--context 8192] [--quant fp8] [--json]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from maiac import progress
from maiac.chips import compile_chips
from maiac.models import LLAMA3_8B, LLAMA3_70B, LlamaConfig, llama_decoder
from maiac.runtime.errors import MaiacError

MODELS = {"8b": LLAMA3_8B, "70b": LLAMA3_70B}
HBM_BYTES = 216e9


def step(cfg: LlamaConfig, layers: int, chips: int, batch: int, context: int,
         quant: str) -> dict[str, float]:
    model = llama_decoder(cfg, mode="decode", batch=batch, context=context,
                          weights="shape_only", layers=layers)
    group = compile_chips(model, chips, quant=quant, shape_only=True, ranks="timing")
    r = group.report()
    prog = group.programs[-1]
    return {"time_s": r["modeled_time_s"], "net_s": max(c["net_busy_s"] for c in r["per_chip"]),
            "weights": max(c["weight_bytes"] for c in r["per_chip"]),
            "inputs": float(sum(s.nbytes for s in prog.inputs)),
            "compile_s": group.compile_s}


def row(cfg: LlamaConfig, chips: int, batch: int, context: int, quant: str,
        sim: tuple[int, int]) -> dict[str, Any]:
    a, b = (step(cfg, n, chips, batch, context, quant) for n in sim)
    per_layer = {k: (b[k] - a[k]) / (sim[1] - sim[0]) for k in a}
    full = {k: b[k] + (cfg.layers - sim[1]) * per_layer[k] for k in a}
    tpot = full["time_s"]
    need = full["weights"] + full["inputs"]
    return {"model": cfg.name, "chips": chips, "batch": batch, "context": context,
            "quant": quant, "tpot_s": tpot, "tokens_per_s": batch / tpot,
            "tokens_per_s_per_chip": batch / tpot / chips,
            "collective_share": full["net_s"] / tpot, "hbm_bytes_per_chip": need,
            "fits": need <= HBM_BYTES, "compile_s": a["compile_s"] + b["compile_s"],
            "simulated_layers": list(sim)}


def main(argv: list[str] | None = None) -> int:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--chips", default="1,2,4,8,16,32")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--quant", default="fp8")
    ap.add_argument("--sim-layers", default="2,4")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--functional", action="store_true",
                    help="Instead: wall time of the functional N-chip run against one chip.")
    args = ap.parse_args(argv)
    if args.functional:
        return functional([int(x) for x in args.chips.split(",")], args.json)
    sim = tuple(int(x) for x in args.sim_layers.split(","))
    assert len(sim) == 2 and 0 < sim[0] < sim[1]
    rows = []
    t0 = time.perf_counter()
    total = len(args.models.split(",")) * len(args.batch.split(",")) * len(args.chips.split(","))
    done = 0
    with progress.step("chips", total=total) as bar:
        for key in args.models.split(","):
            cfg = MODELS[key]
            for batch in (int(x) for x in args.batch.split(",")):
                base = None
                for chips in (int(x) for x in args.chips.split(",")):
                    bar.update(f"chips: {cfg.name}, batch {batch}, {chips} chips", completed=done)
                    done += 1
                    try:
                        r = row(cfg, chips, batch, args.context, args.quant, sim)
                    except MaiacError as err:  # a compile limit of this shape: say so, go on
                        rows.append({"model": cfg.name, "chips": chips, "batch": batch,
                                     "error": str(err)})
                        if not args.json:
                            print(f"{cfg.name:<11} {batch:>5} {chips:>5}  compile error: {err}")
                        continue
                    base = base or (r if chips == 1 else None)
                    if base is not None:
                        r["speedup"] = base["tpot_s"] / r["tpot_s"]
                        r["scaling_efficiency"] = r["speedup"] / chips
                    rows.append(r)
                    if not args.json:
                        print(_line(r), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"({time.perf_counter() - t0:.0f} s; layers extrapolated from {sim[0]} and "
              f"{sim[1]} simulated; TPOT = one decode step at context {args.context})")
    return 0


def functional(chip_counts: list[int], as_json: bool) -> int:
    """Wall time of running a small Llama (real weights, prefill of 64 tokens) on N
    simulated chips in this process (and on Ray if installed) against one chip, with the
    largest difference from onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    import maiac

    cfg = LlamaConfig("llama-small", 256, 4, 8, 4, 1024, 1024)
    model = llama_decoder(cfg, seq=64)
    feeds = {"input_ids": np.random.default_rng(0).integers(0, cfg.vocab, (1, 64))}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    rows = []
    for chips in progress.track(chip_counts, "chips --functional", label=lambda n: f"{n} chips"):
        compiled = maiac.compile(model, chips=chips)
        backends = ["local"] if chips == 1 else ["local", "ray"]
        for backend in backends:
            if backend == "ray":
                try:
                    import ray
                except ImportError:
                    continue
                if not ray.is_initialized():  # the cluster's start is not the chips' time
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
            kw = {} if chips == 1 else {"backend": backend}
            compiled.run(feeds, **kw)  # first run builds the machines
            t0 = time.perf_counter()
            out = compiled.run(feeds, **kw)["logits"]
            wall = time.perf_counter() - t0
            rows.append({"chips": chips, "backend": backend, "run_s": wall,
                         "max_abs_err_vs_onnxruntime": float(np.abs(out - ref).max())})
    one = rows[0]["run_s"]
    for r in rows:
        r["vs_one_chip"] = r["run_s"] / one
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{cfg.name}: hidden {cfg.hidden}, {cfg.layers} layers, prefill 64 tokens, fp32")
    print(f"{'chips':>5} {'backend':<8} {'run s':>8} {'vs 1 chip':>10} {'max |err|':>10}")
    for r in rows:
        print(f"{r['chips']:>5} {r['backend']:<8} {r['run_s']:>8.3f} {r['vs_one_chip']:>9.2f}x "
              f"{r['max_abs_err_vs_onnxruntime']:>10.2e}")
    return 0


HEADER = (f"{'model':<11} {'batch':>5} {'chips':>5} {'TPOT ms':>9} {'tok/s':>9} "
          f"{'tok/s/chip':>10} {'speedup':>8} {'eff':>6} {'net':>6} {'GB/chip':>8} fits")


def _line(r: dict[str, Any]) -> str:
    head = HEADER + "\n" if r["chips"] == 1 else ""
    sp = r.get("speedup")
    speedup = f"{sp:.2f}x" if sp else "-"
    eff = f"{r['scaling_efficiency']:.0%}" if sp else "-"
    return head + (f"{r['model']:<11} {r['batch']:>5} {r['chips']:>5} {r['tpot_s'] * 1e3:>9.3f} "
                   f"{r['tokens_per_s']:>9.1f} {r['tokens_per_s_per_chip']:>10.1f} "
                   f"{speedup:>8} {eff:>6} {r['collective_share']:>6.1%} "
                   f"{r['hbm_bytes_per_chip'] / 1e9:>8.1f} {'yes' if r['fits'] else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
