"""How long a run at the interpreter's instruction limit takes (runtime/limits.MAX_RUN_STEPS).

A hostile `.maia` can make ``maiac run`` execute up to MAX_RUN_STEPS instructions before
anything stops it; one step past is refused before the run starts. This script builds
the worst case the limit allows — a loop of tiny dependent Vec instructions that cannot
run as one vectorized call, MAX_RUN_STEPS executions in all — times one run, and times the
refusal of a program one loop iteration over the limit.

    python bench/run_limit.py [--steps N]   # N < MAX_RUN_STEPS for a quick look
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np

from maiac import progress
from maiac.runtime import limits
from maiac.runtime.errors import ProgramError
from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Loop, Vec
from maiac.runtime.program import ProgramBuilder


def program(body_trips: int):
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (16,))
    y = pb.output("y", "f32", (16,))
    t = pb.alloc("t", "tsram", 64)
    acc = pb.access
    add = Vec("add", [acc(t, "f32", (16,)), acc(t, "f32", (16,))], acc(t, "f32", (16,)))
    pb.emit(Dma(acc(x, "f32", (16,)), acc(t, "f32", (16,))),
            Loop((body_trips,), [add, copy.deepcopy(add)]),
            Dma(acc(t, "f32", (16,)), acc(y, "f32", (16,))))
    return pb.build()


def main() -> None:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=limits.MAX_RUN_STEPS)
    args = ap.parse_args()
    trips = (args.steps - 2) // 2
    feeds = {"x": np.zeros(16, np.float32)}
    with progress.step(f"run_limit: a run of {2 * trips + 2} instructions"):
        t0 = time.perf_counter()
        run_program(program(trips), feeds)
        run_s = time.perf_counter() - t0
    over = program((limits.MAX_RUN_STEPS - 2) // 2 + 1)
    t0 = time.perf_counter()
    try:
        run_program(over, feeds)
        refused = "not refused"
    except ProgramError as err:
        refused = str(err)
    refuse_s = time.perf_counter() - t0
    steps = 2 * trips + 2
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"run of {steps} instructions: {run_s:.1f} s ({run_s / steps * 1e6:.2f} us each)")
    print(f"one iteration past {limits.MAX_RUN_STEPS}: refused in {refuse_s * 1e3:.1f} ms "
          f"({refused})")


if __name__ == "__main__":
    main()
