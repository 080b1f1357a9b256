"""Jobs of a short row-wise TVP kernel between two GEMMs: load rows, TVP, store.

The activation quantize (`narrow_act.tile_quantize`) and the quantizing norm
(`norm_quant`) of a prefill load whole rows of an fp32 activation, run one or two TVP
instructions on them and store the codes. Nothing overlaps such a kernel (its first load
waits for the producer's last store, its reader's first load for its own last store), so
its time is the pipeline of its jobs: the first job's load, then the TVP of every job
(the load of the next one under it), then the last job's store. Two things shorten it:

* all the tiles: 2048 rows spread by divisors ran on 32 of 36 tiles (64 rows each);
  here each tile takes ``rows // tiles`` rows and the rest (32 rows) is a job of its own
  on that many tiles (one row each) — run first, where its small load is the pipeline's
  fill;
* a job plan costed as the timing model charges it (`plan_cost`): each DMA its latency,
  then its bytes on the level's shared timeline, loads alternating two queues so one
  load's latency hides under the other's transfer, the TVP its ops plus an issue per
  instruction, the two TSRAM block sets alternating (a load waits for the TVP two jobs
  back to be done with its set).

Jobs are unrolled (no loop): a few per kernel, each with its own row count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from maiac.passes.tiling.common import Budget, align, split_jobs
from maiac.runtime.errors import MaiacError

MAX_JOBS = 8  # per tile, beyond the tail job; more only adds issue overhead


@dataclass(frozen=True)
class RowJob:
    """Rows ``[row0, row0 + tiles * rows)``: tile ``t`` takes ``rows`` of them from
    ``row0 + t * rows``."""

    row0: int
    tiles: int
    rows: int


@lru_cache(maxsize=256)
def plan_row_jobs(rows: int, n: int, set_bytes_per_row: int, fixed_bytes: int,
                  in_bytes: float, out_bytes: float, tvp_ops: float, tvp_instrs: int,
                  budget: Budget) -> tuple[RowJob, ...]:
    """The jobs of ``rows`` rows of ``n`` elements of least `plan_cost`, whose two block
    sets (``set_bytes_per_row`` TSRAM bytes per row of a job's block) and
    ``fixed_bytes`` fit half of TSRAM (room for the prefetch ring); empty when one row
    does not. ``in_bytes``/``out_bytes``: bytes per element loaded and stored,
    ``tvp_ops``: TVP ops per element over ``tvp_instrs`` instructions per job."""
    room = budget.tsram_bytes // 2 - align(fixed_bytes)
    max_rows = room // (2 * set_bytes_per_row) if set_bytes_per_row else rows
    if max_rows < 1:
        return ()
    best: tuple[float, tuple[RowJob, ...]] | None = None
    for tiles in sorted({budget.n_tiles, split_jobs((rows,), budget.n_tiles).n_tiles},
                        reverse=True):
        per_tile, rest = divmod(rows, tiles)
        head: list[RowJob] = []
        if rest:  # the rows left over, one job on as many tiles as divide them, first
            t = split_jobs((rest,), budget.n_tiles).n_tiles
            if rest // t > max_rows:
                continue
            head = [RowJob(per_tile * tiles, t, rest // t)]
        for sizes in _splits(per_tile, max_rows):
            jobs, row0 = list(head), 0
            for r in sizes:
                jobs.append(RowJob(row0, tiles, r))
                row0 += tiles * r
            cost = plan_cost(jobs, n, in_bytes, out_bytes, tvp_ops, tvp_instrs, budget)
            if best is None or cost < best[0] - 1e-15:
                best = (cost, tuple(jobs))
    return best[1] if best else ()


def required_row_jobs(what: str, rows: int, n: int, set_bytes_per_row: int,
                      fixed_bytes: int, in_bytes: float, out_bytes: float, tvp_ops: float,
                      tvp_instrs: int, budget: Budget) -> tuple[RowJob, ...]:
    """`plan_row_jobs`, checked; a clear error naming the kernel ``what`` when one row
    does not fit TSRAM."""
    jobs = plan_row_jobs(rows, n, set_bytes_per_row, fixed_bytes, in_bytes, out_bytes,
                         tvp_ops, tvp_instrs, budget)
    if not jobs:
        raise MaiacError(f"{what}: a row of {n} elements does not fit TSRAM "
                         f"({budget.tsram_bytes} bytes per tile)")
    check(jobs, rows)
    return jobs


def _splits(rows: int, max_rows: int) -> list[list[int]]:
    """Ways to cut a tile's ``rows`` into jobs of at most ``max_rows``: equal jobs (the
    first ones one row longer where they do not divide), and the same with a first job
    of a half or a quarter of them (a short pipeline fill)."""
    if rows == 0:
        return [[]]
    out = []
    fewest = max(1, -(-rows // max_rows))
    for jobs in range(fewest, max(fewest, min(rows, MAX_JOBS)) + 1):
        base, extra = divmod(rows, jobs)
        even = [base + (i < extra) for i in range(jobs)]
        out.append(even)
        for part in (2, 4):
            first = even[0] // part
            if first >= 1:
                left = rows - first
                k = max(1, -(-left // max_rows), jobs)
                b, e = divmod(left, k)
                out.append([first] + [b + (i < e) for i in range(k)])
    return [s for s in out if max(s) <= max_rows and min(s) >= 1]


def plan_cost(jobs: list[RowJob], n: int, in_bytes: float, out_bytes: float, tvp_ops: float,
              tvp_instrs: int, budget: Budget) -> float:
    """Modeled time of ``jobs`` (see the module docstring): loads on two queues by turns,
    every DMA's bytes on one shared timeline (the activation and the codes move through
    the same on-chip level) after its latency, TVP and stores in job order."""
    lat, issue = budget.dma_latency_s, budget.instr_overhead_s
    level = budget.csram_bw or budget.tile_bw * budget.n_tiles
    noc = budget.tile_noc_bw or budget.tile_bw
    vec = budget.tile_vec or 1e12  # ASSUMED where the budget does not say
    queue = [0.0, 0.0]
    shared = tvp = store = 0.0
    tvp_done: list[float] = []
    for j, job in enumerate(jobs):
        elems = job.rows * n
        start = max(queue[j % 2], tvp_done[j - 2] if j >= 2 else 0.0)
        move = max(job.tiles * elems * in_bytes / level, elems * in_bytes / noc)
        shared = max(start + lat, shared) + move
        queue[j % 2] = shared
        tvp = max(tvp, shared) + elems * tvp_ops / vec + tvp_instrs * issue
        tvp_done.append(tvp)
        move = max(job.tiles * elems * out_bytes / level, elems * out_bytes / noc)
        store = max(store, tvp) + lat + move
    return store if jobs else 0.0


def total_rows(jobs: tuple[RowJob, ...]) -> int:
    return sum(j.tiles * j.rows for j in jobs)


def max_rows(jobs: tuple[RowJob, ...]) -> int:
    return max((j.rows for j in jobs), default=0)


def check(jobs: tuple[RowJob, ...], rows: int) -> None:
    """The jobs cover rows ``[0, rows)`` once (an internal invariant)."""
    spans = sorted((j.row0, j.row0 + j.tiles * j.rows) for j in jobs)
    assert spans and spans[0][0] == 0 and spans[-1][1] == rows and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert total_rows(jobs) == rows
