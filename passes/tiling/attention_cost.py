"""What the prefill attention streams cost the TTU and the TVP, per key step and per job.

One function for both tilers (`attention`'s block split and `striped_attention`'s plan):
the instructions `attention._Stream.scores` and `_Stream.softmax` emit for one key step
(of ``keys`` keys for ``rows`` query rows), at the costs runtime/timing_costs.py charges
them:

* TTU: the score product ``[rows, d] x [d, keys]`` and ``P V`` (``[rows, keys] x
  [keys, d]``), each in whole native ``32 x K x 32`` blocks at the format's peak, plus
  one issue overhead (``instr_latency_s``) each;
* TVP: the online softmax of a step after the first (8 Vec instructions: row max, new
  max, rescale, ``exp(S - m)``, row sum, the denominator's rescale and add, O's
  rescale), the mask add of a mask operand (1), the causal mask of the keys crossing a
  diagonal (1: its key positions' DMA runs on a DMA queue, not the TVP), each element
  at its `VEC_OPS` count plus one issue overhead.

A job adds Q's scale and ``O / l`` (2 instructions) and saves what its peeled first
step skips (5 instructions and the row and O updates: `common.online_softmax`). DMAs
run on the DMA queues and are not counted. tests/test_attention_cost.py checks both
against the timing model's cost of the emitted kernels.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from maiac.passes.tiling.common import Budget
from maiac.runtime.timing_costs import VEC_OPS

N = TypeVar("N", int, np.ndarray)

# TVP ops per score element of a step: row max, exp(s - m), row sum
SOFTMAX_OPS = VEC_OPS["reduce_max"] + VEC_OPS["exp_sub"] + VEC_OPS["reduce_sum"]
# ... per row: the new max, its rescale exp(m - m'), l's rescale and add
ROW_OPS = VEC_OPS["max"] + VEC_OPS["exp_sub"] + VEC_OPS["mul"] + VEC_OPS["add"]
SOFTMAX_INSTRS = 8  # TVP instructions of a (not first) step's online softmax
FIRST_INSTRS = 3  # ... of a job's first step (row max, exp, row sum)


def _pad(x: N, granule: int) -> N:
    return -(-x // granule) * granule


def step_cost(rows: int, keys: N, d: int, crossing: N, budget: Budget, fmt: str,
              masked: bool = False) -> tuple[N, N]:
    """(TTU, TVP) seconds of one key step after a job's first: ``keys`` keys (ints or
    arrays of them), ``crossing`` of them masked from positions (0: none), ``masked``:
    a mask operand added to the scores; products in ``fmt`` (``f32`` or ``bf16``)."""
    speedup = dict(budget.fmt_speedup).get(fmt, 1.0)
    flops = budget.tile_flops * speedup
    vec_rate = budget.tile_vec or float("inf")
    over = budget.instr_overhead_s
    nm, nn, nk = budget.native_m, budget.native_n, budget.native_k(fmt)
    r = _pad(rows, nm)
    macs = r * _pad(keys, nn) * _pad(d, nk) + r * _pad(d, nn) * _pad(keys, nk)
    ttu = 2.0 * macs / flops + 2 * over
    tvp = ((rows * keys * SOFTMAX_OPS + rows * d * VEC_OPS["mul"] + rows * ROW_OPS) / vec_rate
           + SOFTMAX_INSTRS * over)
    if masked:
        tvp = tvp + (rows * keys * VEC_OPS["add"] / vec_rate + over)
    tvp = tvp + (crossing > 0) * (rows * crossing * VEC_OPS["causal_mask"] / vec_rate + over)
    return ttu, tvp


def job_cost(rows: int, d: int, budget: Budget) -> float:
    """TVP seconds a job adds to its steps costed as `step_cost`'s: Q's scale and
    ``O / l``, less the instructions and row and O updates its first step skips."""
    vec_rate = budget.tile_vec or float("inf")
    over = budget.instr_overhead_s
    own = rows * d * (VEC_OPS["scale"] + VEC_OPS["div"]) / vec_rate + 2 * over
    skipped = ((rows * d * VEC_OPS["mul"] + rows * ROW_OPS) / vec_rate
               + (SOFTMAX_INSTRS - FIRST_INSTRS) * over)
    return own - skipped
