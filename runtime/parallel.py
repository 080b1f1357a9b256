"""How the interpreter uses the host's cores: one BLAS thread per worker, tiles split
across a few workers.

The machine model runs every instruction as one numpy call over all tiles, so a matmul
is dozens of small per-tile GEMMs. A multithreaded BLAS synchronises its threads inside
each of those small calls; with more runnable threads than cores (a shared machine)
every synchronisation waits for a descheduled thread, and a 4-layer d768 Llama took
15-43 s instead of 1.1 s (issue 12). So a run holds BLAS at one thread
(``threadpoolctl``) and gets its parallelism from splitting large instructions along a
grid axis over ``workers()`` Python threads (numpy releases the GIL in matmul and copies),
one synchronisation per instruction instead of one per tile GEMM.

Splitting along tiles never changes bytes: compute reads and writes only the tile's own
TSRAM, and the DMAs split here write TSRAM, so chunks touch disjoint memory and each
element is computed by the same single-threaded call as before.
``MAIAC_THREADS=1`` turns the splitting off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from maiac.runtime.isa import Vec

# Below this much work a split costs more (thread hand-off, ~20 us) than it saves.
MIN_SPLIT_FLOPS = 4_000_000
MIN_SPLIT_BYTES = 2_000_000

_lock = threading.Lock()
_state: dict[str, Any] = {}


def workers() -> int:
    """Worker threads for one run: ``MAIAC_THREADS`` or the cores this process may use."""
    env = os.environ.get("MAIAC_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # not Linux
        return max(1, min(os.cpu_count() or 1, 8))


def _pool() -> ThreadPoolExecutor | None:
    n = workers()
    with _lock:
        if _state.get("n") != n:
            old = _state.get("pool")
            if old is not None:
                old.shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(n - 1, "maiac-tile") if n > 1 else None
            _state["n"] = n
        return _state["pool"]


# OpenBLAS runs a GEMM on one thread below m*n*k = 4 * 65536 anyway
# (GEMM_MULTITHREAD_THRESHOLD * SMP_THRESHOLD_MIN), so programs whose per-tile GEMMs are
# all smaller skip the limit (setting it costs ~0.1-0.4 ms, much of a tiny model's run).
BLAS_THREADED_MNK = 4 * 65536


@contextlib.contextmanager
def single_threaded_blas(needed: bool = True) -> Iterator[None]:
    """BLAS (OpenBLAS/MKL behind numpy) at one thread while the block runs.

    Reference-counted, so runs on several threads at once (runtime/multichip.py) set the
    limit once and restore the caller's setting when the last one ends. ``needed=False``
    leaves BLAS alone (a program without GEMMs large enough to be threaded).
    """
    if not needed:
        yield
        return
    with _lock:
        if _state.get("blas_users", 0) == 0:
            ctl = _state.get("controller")
            if ctl is None:
                from threadpoolctl import ThreadpoolController

                ctl = _state["controller"] = ThreadpoolController()
            _state["blas_limit"] = ctl.limit(limits=1, user_api="blas")
        _state["blas_users"] = _state.get("blas_users", 0) + 1
    try:
        yield
    finally:
        with _lock:
            _state["blas_users"] -= 1
            if _state["blas_users"] == 0:
                _state.pop("blas_limit").restore_original_limits()


def split_axis(shape: tuple[int, ...], first: int, n_grid: int) -> int | None:
    """The grid axis (of ``shape[first:first + n_grid]``) to split on: the longest, if > 1."""
    if n_grid == 0:
        return None
    sizes = shape[first:first + n_grid]
    k = max(range(n_grid), key=lambda i: sizes[i])
    return first + k if sizes[k] > 1 else None


# Below this many elements a Vec call's chunks cost more to hand off than they save.
MIN_SPLIT_ELEMENTS = 65536


def vec_splitter(instr: Vec, n_trips: int, n_grid: int
                 ) -> Callable[[np.ndarray, tuple[int, ...]], int | None]:
    """The grid axis to split a row-wise Vec call on (``split(input, it)``), None if too
    small. The costly TVP functions (interpreter_fns.DEDUPE_FNS) compute each row of each
    tile from that row alone, so chunks of tiles give the same bytes; an NVFP4 quantize
    without a calibrated tensor scale is not split (its scale is the whole call's amax)."""
    attrs = dict(instr.attrs)
    whole = instr.fn == "quantize" and attrs.get("fmt") == "nvfp4" and \
        attrs.get("tensor_scale") is None

    def split(x: np.ndarray, it: tuple[int, ...]) -> int | None:
        if whole or x.size < MIN_SPLIT_ELEMENTS:
            return None
        return split_axis(x.shape, n_trips - len(it), n_grid)
    return split


def run_split(fn: Callable[..., Any], arrays: list[np.ndarray], axis: int | None) -> None:
    """``fn(*arrays)``, or ``fn`` on chunks of every array along ``axis`` on the workers.

    Every array has the same length on ``axis`` (the grid axis) or length 1 (broadcast);
    the caller guarantees the chunks touch disjoint memory.
    """
    pool = _pool() if axis is not None else None
    if pool is None:
        fn(*arrays)
        return
    size = max(a.shape[axis] for a in arrays)
    n = min(workers(), size)
    bounds = [size * i // n for i in range(n + 1)]
    head = (slice(None),) * axis

    def chunk(i: int) -> list[np.ndarray]:
        sel = (*head, slice(bounds[i], bounds[i + 1]))
        # an operand of length 1 there broadcasts (runtime/tile_dedupe.py): whole to each
        return [a if a.shape[axis] == 1 else a[sel] for a in arrays]
    errstate = np.geterr()  # numpy's error state is per thread: the workers take the run's

    def work(*chunk_arrays: np.ndarray) -> None:
        with np.errstate(**errstate):
            fn(*chunk_arrays)
    futures: list[Future[Any]] = [pool.submit(work, *chunk(i)) for i in range(1, n)]
    errors: list[BaseException] = []
    try:
        fn(*chunk(0))
    except Exception as err:  # wait for the other chunks before reporting
        errors.append(err)
    for f in futures:
        err = f.exception()
        if err is not None:
            errors.append(err)
    if errors:
        raise errors[0]
