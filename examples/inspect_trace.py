"""Run a program with a trace, load the Chrome/Perfetto JSON, and find where the time goes.

Prints, from the trace file alone (the same JSON ``maiac run --trace`` writes and
chrome://tracing or https://ui.perfetto.dev open): the busiest engine, each engine's busy
time, the ops that take the most engine time, and how much DMA overlaps compute.

    python examples/inspect_trace.py [--model PATH.onnx] [--trace OUT.json]

The same from the command line:

    maiac compile model.onnx -o model.maia && maiac run model.maia --trace trace.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import maiac
from maiac.inputs import random_inputs


def load_trace(path: Path) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """Engine name per track id and the complete ("X") events, times in microseconds."""
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return tracks, [e for e in events if e.get("ph") == "X"]


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an .onnx model (default: maiac.models)")
    ap.add_argument("--trace", default=None, help="where to write the trace JSON")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="maiac-trace-"))
    if args.model:
        model: Any = args.model
    else:
        from maiac import models

        model = models.transformer(layers=2, seq=64, d_model=256, heads=4, vocab=512)
    trace = Path(args.trace or tmp / "trace.json")

    compiled = maiac.compile(model)
    compiled.run(random_inputs(model, None, seed=0), trace=trace)
    tracks, events = load_trace(trace)
    end = max(e["ts"] + e["dur"] for e in events)
    print(f"trace: {trace} ({len(events)} events on {len(tracks)} engines, "
          f"makespan {end:.2f} us)\n")

    per_engine: dict[str, list[tuple[float, float]]] = defaultdict(list)
    per_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        engine = tracks.get(e["tid"], str(e["tid"]))
        per_engine[engine].append((e["ts"], e["ts"] + e["dur"]))
        per_op[e["name"]][engine] += e["dur"]

    busy = {name: busy_us(iv) for name, iv in per_engine.items()}
    top = max(busy, key=busy.__getitem__)
    print(f"busiest engine: {top} ({busy[top]:.2f} us, {busy[top] / end:.0%} of the makespan)\n")
    print(f"{'engine':<10} {'busy us':>10} {'util':>6}")
    for name in tracks.values():
        print(f"{name:<10} {busy.get(name, 0.0):>10.2f} {busy.get(name, 0.0) / end:>6.0%}")

    print(f"\ntop ops by engine time\n{'op':<36} {'us':>8}  {'mostly on':<10}")
    totals = {op: sum(engines.values()) for op, engines in per_op.items()}
    for op in sorted(totals, key=lambda o: -totals[o])[:10]:
        main_engine = max(per_op[op], key=per_op[op].__getitem__)
        print(f"{op[:36]:<36} {totals[op]:>8.2f}  {main_engine:<10}")

    dma = [iv for n, ivs in per_engine.items() if n.startswith("dma") for iv in ivs]
    compute = [iv for n, ivs in per_engine.items() if not n.startswith("dma") for iv in ivs]
    overlap = busy_us(dma) + busy_us(compute) - busy_us(dma + compute)
    print(f"\nDMA busy {busy_us(dma):.2f} us, compute busy {busy_us(compute):.2f} us, "
          f"overlapping {overlap:.2f} us")
    print("open the trace in chrome://tracing or https://ui.perfetto.dev")
    return 0


if __name__ == "__main__":
    sys.exit(main())
