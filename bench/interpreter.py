"""Interpreter speed: `maiac run` vs onnxruntime on the same fp32 model, in one process.

Prints, per model: compile time, median run time of maiac's machine model and of
onnxruntime (CPU, same inputs), their ratio, and the instruction count.
Usage: python bench/interpreter.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

import maiac
from maiac import models
from maiac.inputs import random_inputs


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: caches, lazy constant decode
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_instructions(instrs: list) -> int:
    return sum(1 + (count_instructions(i.body) if i.kind == "loop" else 0) for i in instrs)


def bench(name: str, model: onnx.ModelProto, repeat: int) -> dict[str, float | str]:
    start = time.perf_counter()
    compiled = maiac.compile(model)
    compile_s = time.perf_counter() - start
    feeds = random_inputs(model, {}, seed=0)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = compiled.run(feeds)
    theirs = session.run(None, feeds)
    err = max(float(np.max(np.abs(ours[o.name] - t)))
              for o, t in zip(session.get_outputs(), theirs, strict=True))
    maia_s = median_time(lambda: compiled.run(feeds), repeat)
    ort_s = median_time(lambda: session.run(None, feeds), repeat)
    return {"model": name, "compile_s": compile_s, "maiac_run_s": maia_s, "ort_s": ort_s,
            "ratio": maia_s / ort_s, "instructions": count_instructions(compiled.program.instructions),
            "max_abs_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    cases = [
        ("mlp w1024 b128 x2", models.mlp(batch=128, width=1024, layers=2)),
        ("transformer 2L d256 s128", models.transformer(layers=2, batch=1, seq=128, d_model=256,
                                                        heads=4, vocab=1000)),
    ]
    print(f"{'model':<28} {'compile s':>9} {'maiac ms':>9} {'ort ms':>8} {'ratio':>6} "
          f"{'instrs':>6} {'max err':>9}")
    for name, model in cases:
        r = bench(name, model, args.repeat)
        print(f"{r['model']:<28} {r['compile_s']:>9.2f} {r['maiac_run_s'] * 1e3:>9.2f} "
              f"{r['ort_s'] * 1e3:>8.2f} {r['ratio']:>6.2f} {r['instructions']:>6} "
              f"{r['max_abs_err']:>9.2e}")


if __name__ == "__main__":
    main()
