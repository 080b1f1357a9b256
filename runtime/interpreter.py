"""The functional Maia 200 machine model: runs a ``Program`` on numpy arrays.

The TVP functions live in runtime/interpreter_fns.py, the DMA copy helpers in
runtime/interpreter_dma.py and the matmul helpers in runtime/interpreter_matmul.py; this
module builds the memory and one step per instruction and runs them.

Memory is real bytes: HBM one ``uint8`` array, CSRAM one array spanning all clusters,
TSRAM one array holding every tile's private SRAM in segments (runtime/tsram_layout.py:
a small kernel's block over its tiles is one contiguous run); HBM and CSRAM are cut off
after the highest buffer end of their level. Every instruction runs for all ``prod(grid)`` tiles in one
numpy call on strided views of those arrays: an access becomes a view of shape
``(*loop_trips, *grid, *block)``, indexed by the loop iteration at run time.

Before each run, every byte the run reads before writing it (runtime/liveness.py) is
filled with 0xFF (NaN for floats, -1 for ints), so a read of data that was never written
gives wrong numbers instead of a stale right answer. Views, decoded constants and the
memory arrays are built once per program and cached in ``program.runtime_cache``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from maiac.runtime import isa
from maiac.runtime.conversions import convert_input
from maiac.runtime.dead_copies import Copies, MatmulPlan, elided_dma_axes, forwarded_copies
from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.hazards import check_program
from maiac.runtime.interpreter_dma import (
    as_rows,
    broadcast_copies,
    dma_splitter,
    grid_index,
    may_self_overlap,
    row_indices,
)
from maiac.runtime.interpreter_fns import (
    DEDUPE_FNS,
    DEDUPE_MIN_ELEMENTS,
    ELEMENTWISE_FNS,
    F32,
    F32_UFUNCS,
    FNS,
    INTO_FNS,
    ROW_FNS,
    caster,
    coalesce,
    storer,
)
from maiac.runtime.interpreter_matmul import (
    MERGE_MIN_MNK,
    DecodeCache,
    head_tiles,
    matmul_splitter,
    mm,
    mm_acc,
    row_major,
    stacked_matmul,
)
from maiac.runtime.isa import Access, Collective, Dma, Gather, Instr, Loop, MatMul, Scatter, Vec
from maiac.runtime.limits import check_runnable
from maiac.runtime.liveness import first_reads
from maiac.runtime.memory import access_extent, np_dtype, share_constant, zeroed_memory
from maiac.runtime.parallel import (
    BLAS_THREADED_MNK,
    MIN_SPLIT_BYTES,
    MIN_SPLIT_ELEMENTS,
    MIN_SPLIT_FLOPS,
    run_split,
    single_threaded_blas,
    split_axis,
    vec_splitter,
)
from maiac.runtime.program import (
    Program,
    ZipBlob,
    _program_target,
    instr_label,
    validate_program,
)
from maiac.runtime.quant_ops import count_nonfinite, decode_operand
from maiac.runtime.tile_dedupe import shared_grid_axes
from maiac.runtime.tile_uniform import uniform_operands
from maiac.runtime.tsram_layout import tsram_layout

Step = Callable[[tuple[int, ...]], None]


# --------------------------------------------------------------------------- the machine

class _Machine:
    """Memory arrays plus one compiled step per instruction, for one program."""

    def __init__(self, program: Program) -> None:
        validate_program(program, MachineError)
        # asynchronous programs: every DMA/compute conflict must be ordered by waits
        # (checked once per program, from addresses and waits alone)
        check_program(program)
        # the constants, not the program: the program caches this machine, and a cycle
        # would keep both (weights and memory) alive until the collector runs
        self.constants = program.constants
        self.target = _program_target(program, MachineError)
        # before any memory is allocated: a shape-only 70B program would ask for its HBM
        self.consts = [b for b in program.buffers if b.kind == "const"]
        missing = [b.name for b in self.consts if b.name not in program.constants]
        if missing:
            raise MaiacError(f"program has no data for constant {missing[0]!r} (and "
                             f"{len(missing) - 1} more): it is shape-only; it can be timed "
                             f"(maiac report, --trace) but not run")
        by_level: dict[str, list[Any]] = {lv: [] for lv in isa.LEVELS}
        for b in program.buffers:
            by_level[b.level].append(b)
        # Each level is allocated up to its highest buffer end (validate_program checked
        # the capacities), so memory and first-touch cost follow what the program uses.
        end = {lv: -(-max((b.addr + b.nbytes for b in bs), default=0) // 64) * 64 + 64
               for lv, bs in by_level.items()}
        # TSRAM: every tile's bytes in one flat array, in segments (runtime/tsram_layout.py)
        self.layout = tsram_layout(program, self.target.n_tiles)
        self.mem = {  # pages resident once written (runtime/memory.py)
            "hbm": zeroed_memory((end["hbm"],)),
            "csram": zeroed_memory((end["csram"],)),
            "tsram": zeroed_memory((self.layout.nbytes,)),
        }
        self.vectorized_loops = 0
        self.blas_limit = False  # set when a per-tile GEMM is large enough to be threaded
        self._decode_cache = DecodeCache()
        # grid axes along which a matmul's operands / a Vec's inputs are equal on all tiles
        found = uniform_operands(program.instructions)
        self.uniform_b, self.uniform_vec, self.uniform_a = found.b, found.vec, found.a
        self.stacked_calls = 0  # matmul calls run as stacked GEMMs (tests, profiling)
        # DMAs whose bytes only fp32 matmuls read (they read the DMA's source instead),
        # how each fp32 matmul reads its operands, then the broadcast DMA copies to tiles
        # that no instruction reads before they are overwritten (runtime/dead_copies.py)
        self.plans: dict[str, MatmulPlan] = {}
        matmuls: dict[str, tuple[MatMul, tuple[int, ...]]] = {}
        self._matmuls(program.instructions, "", (), matmuls)
        skip = os.environ.get("MAIAC_ALL_COPIES", "") != "1"
        self.copies = forwarded_copies(program.instructions, {
            p for p, (mm_, _) in matmuls.items() if not (mm_.a_fmt or mm_.b_fmt)}) \
            if skip else Copies(set(), {}, {})
        for p, (mm_, trips_) in matmuls.items():
            self.plans[p] = self._matmul_plan(mm_, p, tuple(mm_.grid), trips_)
        self.elided = elided_dma_axes(program.instructions, self.plans, self.copies) \
            if skip else {}
        self.steps = [(instr_label(str(i), ins), self._compile(ins, str(i), ()))
                      for i, ins in enumerate(program.instructions)]
        self.run_io: _RunIO | None = None  # run_program's views and steps (_plain_io)
        # What reset() poisons: the bytes some run reads before writing them (exact, from
        # the access pattern; runtime/liveness.py, which uses the memory as its scratch).
        # Constants are written once, here, and again before each run only if an
        # instruction writes over them.
        self.poison, clobbered = first_reads(program, self.mem, self._independent,
                                             layout=self.layout)
        self._poison_views = [
            self.layout.rows(self.mem[level], a, b) if level == "tsram" else
            self.mem[level][a:b] for level, ranges in self.poison.items() for lo, hi in ranges
            for a, b in (self.layout.pieces(lo, hi) if level == "tsram" else [(lo, hi)])]
        self.rewrite = [b for b in self.consts if b.name in clobbered]
        for b in self.consts:
            self._write_bytes(b.level, b.addr, program.constants[b.name])
            if b.name not in clobbered:  # one copy of the weights, not two (memory.py)
                share_constant(program.constants, b, self.mem)

    # -- memory ----------------------------------------------------------------
    def _write_bytes(self, level: str, addr: int, data: Any) -> None:
        mem = self.mem[level]
        if isinstance(data, ZipBlob):  # inflated in place: no copy of the weights
            if level == "tsram":
                rows = self.layout.rows(mem, addr, addr + data.nbytes)
                data.read_into(rows[0])
                rows[1:] = rows[0]
            else:
                data.read_into(mem[addr:addr + data.nbytes])
            return
        raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if level == "tsram":
            self.layout.rows(mem, addr, addr + raw.size)[...] = raw
        else:
            mem[addr:addr + raw.size] = raw

    def reset(self) -> None:
        """Poison (0xFF) every byte a run reads before writing it, on every tile; rewrite
        constants the previous run wrote over."""
        for v in self._poison_views:
            v[...] = 0xFF
        for b in self.rewrite:
            self._write_bytes(b.level, b.addr, self.constants[b.name])

    def read(self, level: str, addr: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of a contiguous tensor stored at ``addr`` (tile 0's copy for TSRAM)."""
        dt = np_dtype(dtype)
        n = math.prod(shape) * dt.itemsize
        return self.tile0(level, addr, n).view(dt).reshape(shape).copy()

    def tile0(self, level: str, addr: int, n: int) -> np.ndarray:
        """Bytes ``[addr, addr + n)`` of ``level`` (tile 0's for TSRAM), a view."""
        mem = self.mem[level]
        if level == "tsram" and n:
            off, _ = self.layout.locate(addr, addr + n)
            return mem[off:off + n]
        return mem[addr:addr + n]

    # -- views -----------------------------------------------------------------
    def view(self, acc: Access, grid: tuple[int, ...], trips: tuple[int, ...],
             rank: int | None = None) -> np.ndarray:
        """``acc`` as a strided view of shape ``(*trips, *grid, *block)``.

        ``rank`` left-pads the block with size-1 dims (numpy broadcasting against an
        operand of higher rank, e.g. a Vec bias row against a [rows, cols] block).
        """
        dt = np_dtype(acc.dtype)
        isz = dt.itemsize
        shape, strides = tuple(acc.shape), tuple(s * isz for s in acc.strides)
        if rank is not None and len(shape) < rank:
            pad = rank - len(shape)
            shape, strides = (1,) * pad + shape, (0,) * pad + strides
        mem = self.mem[acc.level]
        offset = acc.addr
        if acc.level == "tsram":
            # the segment holding the access (runtime/tsram_layout.py): its tile stride
            offset, row = self.layout.locate(acc.addr) if math.prod(shape) else (0, 0)
            gstr = tuple(s * row for s in isa.contiguous_strides(grid))
        else:
            gstr = tuple(s * isz for s in acc.tile_strides) or (0,) * len(grid)
        lstr = tuple(s * isz for s in acc.loop_strides) or (0,) * len(trips)
        return np.ndarray(trips + grid + shape, dt, buffer=mem, offset=offset,
                          strides=lstr + gstr + strides)

    # -- matmul operand plans --------------------------------------------------
    def _matmuls(self, body: list[Instr], path: str, trips: tuple[int, ...],
                 found: dict[str, tuple[MatMul, tuple[int, ...]]]) -> None:
        """Every matmul of ``body``: path -> (instruction, trips of its loops)."""
        for k, ins in enumerate(body):
            here = f"{path}.{k}" if path else str(k)
            if isinstance(ins, Loop):
                self._matmuls(ins.body, here, trips + tuple(ins.trips), found)
            elif isinstance(ins, MatMul):
                found[here] = (ins, trips)

    def _operand(self, instr: MatMul, role: str, path: str, grid: tuple[int, ...],
                 trips: tuple[int, ...]) -> np.ndarray:
        """An fp32 matmul's ``a``/``b`` view: of the forwarded DMA's source if the DMA
        into it was skipped (runtime/dead_copies.py), else of TSRAM."""
        acc = self.copies.sources.get((path, role), getattr(instr, role))
        return self.view(acc, grid, trips, len(instr.c.shape))

    def _matmul_plan(self, instr: MatMul, path: str, grid: tuple[int, ...],
                     trips: tuple[int, ...]) -> MatmulPlan:
        """Which operand tiles an fp32 matmul reads (``MatmulPlan``).

        ``b`` the same on all tiles along grid axes (tile_uniform.py): the stacked ``a``
        rows of the longest such axis through one GEMM (``stacked_matmul``), when that
        gives the per-tile GEMMs' bytes (large enough, row-major operands). An operand
        the same along an axis is read from its tile at index 0 there and broadcast by
        np.matmul: the same per-tile GEMMs on the same bytes, read once. ``a`` is read
        whole along ``b``'s axes, so the result has every tile's shape."""
        if instr.a_fmt or instr.b_fmt:
            return MatmulPlan()
        (*_, rows, depth), cols = instr.logical_ab()[0], instr.c.shape[-1]
        b_head = frozenset(g for g in self.uniform_b.get(path, ()) if grid[g] > 1)
        a_head = frozenset(g for g in self.uniform_a.get(path, ()) if grid[g] > 1) - b_head
        stackable = rows > 1 and cols > 1 and depth > 1 and rows * depth * cols > MERGE_MIN_MNK
        a, b = (self._operand(instr, r, path, grid, trips) for r in ("a", "b"))
        c = self.view(instr.c, grid, trips)
        direct = instr.a.dtype == instr.b.dtype == instr.c.dtype == "f32"
        stack = None
        if stackable and b_head and (instr.a.dtype != "f32" or row_major(a, depth)) and (
                instr.b.dtype != "f32" or row_major(b, cols)) and (
                not direct or row_major(c, cols)):
            stack = max(sorted(b_head), key=lambda x: grid[x])
        return MatmulPlan(a_head, b_head, stack)

    # -- compile instructions to steps -----------------------------------------
    def _compile(self, instr: Instr, path: str, trips: tuple[int, ...]) -> Step:
        if isinstance(instr, Loop):
            return self._loop(instr, path, trips)
        grid = tuple(instr.grid)
        if isinstance(instr, Collective):
            return self._collective(instr, path)
        if isinstance(instr, Dma):
            return self._dma(instr, path, grid, trips)
        if isinstance(instr, Gather):
            return self._gather(instr, path, grid, trips)
        if isinstance(instr, Scatter):
            return self._scatter(instr, path, grid, trips)
        if isinstance(instr, MatMul):
            return self._matmul(instr, path, grid, trips)
        return self._vec(instr, path, grid, trips) if isinstance(instr, Vec) else lambda it: None

    def _loop(self, loop: Loop, path: str, trips: tuple[int, ...]) -> Step:
        inner = trips + tuple(loop.trips)
        work = [(k, ins) for k, ins in enumerate(loop.body) if not isinstance(ins, isa.Sync)]
        if len(work) == 1 and self._independent(work[0][1], trips, inner):
            # one numpy call over (*loop.trips, *grid, *block) instead of a Python loop
            self.vectorized_loops += 1
            return self._compile(work[0][1], f"{path}.{work[0][0]}", inner)
        body = [(instr_label(f"{path}.{k}", ins), self._compile(ins, f"{path}.{k}", inner))
                for k, ins in enumerate(loop.body)]
        ranges = [range(t) for t in loop.trips]

        def step(it: tuple[int, ...]) -> None:
            for inner in itertools.product(*ranges):
                full = it + inner
                for label, sub in body:
                    try:
                        sub(full)
                    except MachineError:
                        raise
                    except Exception as err:  # numpy error inside a loop body
                        raise MachineError(f"{label} at iteration {full}: {err}") from err
        return step

    def _independent(self, instr: Instr, outer: tuple[int, ...],
                     inner: tuple[int, ...]) -> bool:
        """True if running every iteration of the innermost loop at once gives the same bytes.

        Holds when the written block never overlaps itself across iterations and tiles,
        and every read either is the identical access (in place: each iteration reads
        only what it alone writes) or does not touch the written bytes at all.
        """
        if isinstance(instr, Dma):
            reads, out = [instr.src], instr.dst
        elif isinstance(instr, Vec):
            reads, out = list(instr.ins), instr.out
        elif isinstance(instr, MatMul):
            reads, out = [instr.a, instr.b] + ([instr.c] if instr.accumulate else []), instr.c
            reads += [acc for _, acc in instr.scale_accesses()]
        else:
            return False
        grid = tuple(instr.grid)
        view = self.view(out, grid, inner)
        own = len(outer)
        if may_self_overlap(view.shape[own:], view.strides[own:], view.itemsize):
            return False
        lo, hi = access_extent(out, grid, inner)
        for acc in reads:
            if acc == out:
                continue
            rlo, rhi = access_extent(acc, grid, inner)
            if acc.level == out.level and rlo < hi and lo < rhi:
                return False
        return True

    def _collective(self, instr: Collective, path: str) -> Step:
        """A group of one chip is a copy; larger groups need every chip's memory
        (runtime/multichip.py runs them between the steps of all chips)."""
        def step(it: tuple[int, ...]) -> None:
            if instr.peer >= 0:
                raise MachineError(f"{instr_label(path, instr)}: a {instr.collective} between "
                                   f"pipeline stages runs only in a pipeline run "
                                   f"(maiac.runtime.pipeline.run_pipeline)")
            if instr.chips != 1:
                raise MachineError(f"{instr_label(path, instr)}: a {instr.collective} over "
                                   f"{instr.chips} chips runs only in a multi-chip run "
                                   f"(maiac.runtime.multichip.run_chips)")
            from maiac.runtime.multichip import apply_collective

            apply_collective([instr], [self])
        return step

    def _dma(self, instr: Dma, path: str, grid: tuple[int, ...], trips: tuple[int, ...]
             ) -> Step:
        """A DMA's step; skipped (forwarded) or to the head tiles only (elided) where no
        instruction reads the bytes it leaves out (runtime/dead_copies.py), in a loop in
        every iteration but the last."""
        forwarded, elided = path in self.copies.forwarded, self.elided.get(path)
        if not (forwarded or elided):
            return self._copy(instr, grid, trips)
        if forwarded:  # its readers read its source
            def skipped(it: tuple[int, ...]) -> None:
                return None
        else:  # the copies to the other tiles along these axes are never read
            n_trips = len(trips)
            dst, src = as_rows(head_tiles(self.view(instr.dst, grid, trips), elided, n_trips),
                               head_tiles(self.view(instr.src, grid, trips), elided, n_trips),
                               n_trips)
            split = dma_splitter(instr, dst, n_trips, len(grid))

            def skipped(it: tuple[int, ...]) -> None:
                d = dst[it]
                run_split(np.copyto, [d, src[it]], split and split(d, it))
        last = self.copies.last.get(path)
        if last is None:
            return skipped
        full = self._copy(instr, grid, trips)

        def step(it: tuple[int, ...]) -> None:
            # a run of the whole loop at once (_loop vectorized it) or its last iteration
            (full if len(it) < len(last) or it == last else skipped)(it)
        return step

    def _copy(self, instr: Dma, grid: tuple[int, ...], trips: tuple[int, ...]) -> Step:
        """A DMA's step, every byte to every tile."""
        src, dst = self.view(instr.src, grid, trips), self.view(instr.dst, grid, trips)
        store = storer(instr.dst.dtype)
        if instr.src.dtype == instr.dst.dtype:
            # a byte copy: trailing dims contiguous on both sides move as one wide element
            pairs = broadcast_copies(dst, src, len(trips), instr, grid)
            if pairs is not None:
                if dma_splitter(instr, dst, len(trips), len(grid)) is None:
                    if not trips:  # the views themselves: no per-run indexing
                        def step(it: tuple[int, ...]) -> None:
                            for d, s_ in pairs:  # same dtype: item assignment is
                                d[...] = s_  # np.copyto without its dispatch (~0.3 us)
                        return step

                    def step(it: tuple[int, ...]) -> None:
                        for d, s_ in pairs:
                            d[it] = s_[it]
                    return step
                # large: each copy split over the workers along a grid axis (chunks write
                # disjoint tiles; the tile-to-tile copies read tiles none of them writes)
                n_trips = len(trips)
                kept = [min(len(grid), d.ndim - n_trips - 1) if d.dtype.kind == "V"
                        else len(grid) for d, _ in pairs]

                def step(it: tuple[int, ...]) -> None:
                    for (d, s_), n_kept in zip(pairs, kept, strict=True):
                        dv = d[it]
                        axis = split_axis(dv.shape, n_trips - len(it), n_kept) \
                            if dv.nbytes >= MIN_SPLIT_BYTES else None
                        run_split(np.copyto, [dv, s_[it]], axis)
                return step
            dst, src = as_rows(dst, src, len(trips))
            split = dma_splitter(instr, dst, len(trips), len(grid))
            if split is None and not trips:
                def step(it: tuple[int, ...]) -> None:
                    dst[...] = src  # as np.copyto (same dtype), ~0.3 us less per call
            else:
                def step(it: tuple[int, ...]) -> None:
                    d = dst[it]
                    run_split(np.copyto, [d, src[it]], split and split(d, it))
        else:
            split = dma_splitter(instr, dst, len(trips), len(grid))

            def step(it: tuple[int, ...]) -> None:
                d = dst[it]
                run_split(store, [d, src[it]], split and split(d, it))
        return step

    def _gather(self, instr: Gather, path: str, grid: tuple[int, ...],
                trips: tuple[int, ...]) -> Step:
        table = self.view(instr.table, grid, trips)
        idx = self.view(instr.indices, grid, trips)
        dst = self.view(instr.dst, grid, trips)
        store = storer(instr.dst.dtype)
        rows = instr.table.shape[0]
        gidx = grid_index(grid, len(instr.indices.shape))
        label = instr_label(path, instr)
        if not trips and not any(table.strides[:len(grid)]):
            # one table for every tile (no tile stride): index it once with all tiles'
            # rows, the same elements as the per-tile fancy index
            shared = table[(0,) * len(grid)]

            def step(it: tuple[int, ...]) -> None:
                store(dst, shared[row_indices(idx, rows, f"{label}: gather")])
            return step

        def step(it: tuple[int, ...]) -> None:
            ix = row_indices(idx[it], rows, f"{label}: gather")
            store(dst[it], table[it][(*gidx, ix)])
        return step

    def _scatter(self, instr: Scatter, path: str, grid: tuple[int, ...],
                 trips: tuple[int, ...]) -> Step:
        table = self.view(instr.table, grid, trips)
        idx = self.view(instr.indices, grid, trips)
        src = self.view(instr.src, grid, trips)
        store = storer(instr.table.dtype)
        rows = instr.table.shape[0]
        gidx = grid_index(grid, len(instr.indices.shape))
        label = instr_label(path, instr)

        def step(it: tuple[int, ...]) -> None:
            ix = row_indices(idx[it], rows, f"{label}: scatter")
            converted = np.empty(src[it].shape, table.dtype)
            store(converted, src[it])
            table[it][(*gidx, ix)] = converted
        return step

    def _matmul(self, instr: MatMul, path: str, grid: tuple[int, ...],
                trips: tuple[int, ...]) -> Step:
        (*_, rows, depth), cols = instr.logical_ab()[0], instr.c.shape[-1]
        if rows * depth * cols >= BLAS_THREADED_MNK:
            self.blas_limit = True
        if instr.a_fmt or instr.b_fmt:
            stackable = rows > 1 and cols > 1 and depth > 1 and \
                rows * depth * cols > MERGE_MIN_MNK
            return self._qmatmul(instr, grid, trips, stackable, self.uniform_b.get(path))
        plan, n_trips = self.plans[path], len(trips)
        # operands the same along grid axes are read from their head tiles (MatmulPlan)
        a = head_tiles(self._operand(instr, "a", path, grid, trips), plan.a_head, n_trips)
        b = head_tiles(self._operand(instr, "b", path, grid, trips), plan.b_head, n_trips)
        c = self.view(instr.c, grid, trips)
        ca = instr.a.dtype != "f32"
        cb = instr.b.dtype != "f32"
        store = storer(instr.c.dtype)
        acc = instr.accumulate
        split = matmul_splitter(instr, len(trips), len(grid))
        direct = not (ca or cb) and instr.c.dtype == "f32"
        if direct:
            # fp32 throughout: the TTU result goes straight into the TSRAM view (numpy
            # buffers it if it overlaps an operand), the K-step partial sum likewise
            fn = mm_acc if acc else mm
        else:
            def fn(av: np.ndarray, bv: np.ndarray, cv: np.ndarray) -> None:
                r = np.matmul(av.astype(F32) if ca else av, bv.astype(F32) if cb else bv)
                if acc:
                    r += cv
                store(cv, r)

        if plan.stack is not None:
            # every tile along grid axis g holds the same b bytes (tile_uniform.py): one
            # GEMM over the stacked a rows of those tiles instead of one per tile
            g, n_grid = plan.stack, len(grid)
            # the workers write c while others still read a and b: only if c overlaps
            # neither (else the whole product first, then c)
            fused = direct and not any(
                self._overlap(instr.c, self.copies.sources.get((path, r), getattr(instr, r)),
                              grid, trips) for r in ("a", "b"))

            def step(it: tuple[int, ...]) -> None:
                first = n_trips - len(it)
                av, bv = a[it], b[it]
                self.stacked_calls += 1
                cv = c[it]
                if fused:  # each worker adds its rows of the product into the view
                    stacked_matmul(av, bv, first + g, (first, n_grid - 1), cv, acc)
                    return
                r = stacked_matmul(av.astype(F32) if ca else av, bv.astype(F32) if cb else bv,
                                   first + g, (first, n_grid - 1))
                if direct:
                    if acc:
                        np.add(r, cv, out=cv)
                    else:
                        np.copyto(cv, r)
                    return
                if acc:
                    r += cv
                store(cv, r)
            return step

        if c.size * 2 * instr.logical_ab()[0][-1] < MIN_SPLIT_FLOPS:
            if not trips:
                def step(it: tuple[int, ...]) -> None:
                    fn(a, b, c)
                return step

            def step(it: tuple[int, ...]) -> None:
                fn(a[it], b[it], c[it])
            return step

        def step(it: tuple[int, ...]) -> None:
            cv = c[it]
            run_split(fn, [a[it], b[it], cv], split(cv, it))
        return step

    @staticmethod
    def _overlap(x: Access, y: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> bool:
        """True if two accesses may touch the same bytes (same level, extents intersect)."""
        if x.level != y.level:
            return False
        (xlo, xhi), (ylo, yhi) = access_extent(x, grid, trips), access_extent(y, grid, trips)
        return xlo < yhi and ylo < xhi

    def _qmatmul(self, instr: MatMul, grid: tuple[int, ...], trips: tuple[int, ...],
                 stackable: bool, b_axes: frozenset[int] | None) -> Step:
        """A matmul with quantized operands: decode blocks to fp32 (runtime/quant_ops.py,
        bit-exact with formats.dequantize), multiply, accumulate in fp32. Where the
        decode found the weight block the same on all tiles of a grid axis (one decoded
        copy), the stacked rows of those tiles go through one GEMM (``stacked_matmul``)."""
        rank = len(instr.c.shape)
        c = self.view(instr.c, grid, trips)
        store = storer(instr.c.dtype)
        acc = instr.accumulate
        k = instr.logical_ab()[0][-1]
        n = instr.c.shape[-1]

        def operand(x: Access, fmt: str, sc: Access | None, ts: float | None, n_el: int,
                    k_axis: int, known: frozenset[int] | None
                    ) -> Callable[[tuple[int, ...]], np.ndarray]:
            v = self.view(x, grid, trips, rank)
            if not fmt:
                return lambda it: v[it].astype(F32, copy=False)
            sv = self.view(sc, grid, trips, rank) if sc is not None else None

            def decode(it: tuple[int, ...]) -> np.ndarray:
                raw, s = v[it], None if sv is None else sv[it]
                # tiles a DMA broadcast to hold the same bytes: decode those once
                same = None if raw.size < DEDUPE_MIN_ELEMENTS else shared_grid_axes(
                    [raw] if s is None else [raw, s], len(trips) - len(it), len(grid),
                    known or frozenset())
                if same is not None:
                    raw, s = raw[same], None if s is None else s[same]
                return decode_operand(raw, fmt, n_el, s, k_axis, ts)
            # cached: the weight side, packed constants the program DMAs into TSRAM
            return decode if known is None else self._decode_cache.wrap(
                v, sv, decode, (len(trips), known))

        get_a = operand(instr.a, instr.a_fmt, instr.a_scale, instr.a_tensor_scale, k, -1, None)
        get_b = operand(instr.b, instr.b_fmt, instr.b_scale, instr.b_tensor_scale, n, -2,
                        b_axes or frozenset())

        split = matmul_splitter(instr, len(trips), len(grid))
        if instr.c.dtype == "f32":  # straight into the TSRAM view, as in _matmul
            fn = mm_acc if acc else mm
        else:
            def fn(av: np.ndarray, bv: np.ndarray, cv: np.ndarray) -> None:
                r = np.matmul(av, bv)
                if acc:
                    r += cv
                store(cv, r)

        n_trips, n_grid = len(trips), len(grid)
        direct = instr.c.dtype == "f32"
        fused = direct and not any(self._overlap(instr.c, x, grid, trips)
                                   for x in (instr.a, instr.b))

        def step(it: tuple[int, ...]) -> None:
            cv = c[it]
            av, bv = get_a(it), get_b(it)
            first = n_trips - len(it)
            shared = [x for x in range(first, first + n_grid)
                      if bv.shape[x] == 1 and av.shape[x] > 1] if stackable else []
            if shared and row_major(av, k) and row_major(bv, n) and (
                    not direct or row_major(cv, n)):
                self.stacked_calls += 1
                axis = max(shared, key=lambda x: av.shape[x])
                if fused:  # decoded operands are new arrays: c overlaps them only via a
                    stacked_matmul(av, bv, axis, (first, n_grid - 1), cv, acc)
                    return
                r = stacked_matmul(av, bv, axis, (first, n_grid - 1))
                if direct:
                    if acc:
                        np.add(r, cv, out=cv)
                    else:
                        np.copyto(cv, r)
                    return
                if acc:
                    r += cv
                store(cv, r)
                return
            run_split(fn, [av, bv, cv], split(cv, it))
        return step

    def _vec(self, instr: Vec, path: str, grid: tuple[int, ...], trips: tuple[int, ...]
             ) -> Step:
        mode, fn = FNS[instr.fn]
        rank = len(instr.out.shape)
        ins = [self.view(a, grid, trips, rank) for a in instr.ins]
        out = self.view(instr.out, grid, trips)
        casts = caster([a.dtype for a in instr.ins], "num" if mode == "cmp" else mode)
        attrs = dict(instr.attrs)
        store = storer(instr.out.dtype, attrs)
        ufunc = F32_UFUNCS.get(instr.fn)
        dedupe = instr.fn in DEDUPE_FNS and math.prod(grid) > 1 and \
            ins[0].size >= min(DEDUPE_MIN_ELEMENTS, MIN_SPLIT_ELEMENTS)
        if not dedupe and out.size and (instr.fn in ELEMENTWISE_FNS or instr.fn in ROW_FNS):
            # the same elements as views with fewer axes (a block that is its whole
            # TSRAM segment: one flat run over the tiles, runtime/tsram_layout.py)
            flat = coalesce(out, ins, len(trips), instr.fn in ROW_FNS)
            if flat is not None:
                out, ins = flat
        if ufunc is not None and instr.out.dtype == "f32" and all(
                a.dtype == "f32" for a in instr.ins):
            # the same fp32 ufunc the lambda would call, written straight into the view
            extra = (np.float32(attrs.get("scale", 1.0)),) if instr.fn == "scale" else ()
            if not trips:
                args = (*ins, *extra)

                def step(it: tuple[int, ...]) -> None:
                    ufunc(*args, out=out)
            else:
                def step(it: tuple[int, ...]) -> None:
                    ufunc(*[v[it] for v in ins], *extra, out=out[it])
            return step
        if dedupe:
            # costly per element: compute once per group of tiles holding the same bytes,
            # the rest split over the workers (row-wise functions: tiles are independent)
            n_trips, n_grid, known = len(trips), len(grid), self.uniform_vec.get(path, frozenset())
            split = vec_splitter(instr, n_trips, n_grid)

            def compute(o: np.ndarray, *xs: np.ndarray) -> None:
                store(o, fn(*[c(x) for x, c in zip(xs, casts, strict=True)], attrs))

            def step(it: tuple[int, ...]) -> None:
                xs = [v[it] for v in ins]
                same = None if xs[0].size < DEDUPE_MIN_ELEMENTS else shared_grid_axes(
                    xs, n_trips - len(it), n_grid, known)
                if same is not None:
                    xs = [x[same] for x in xs]
                run_split(compute, [out[it], *xs], split(xs[0], it))
            return step
        # (a view smaller than those thresholds in all iterations: neither deduped nor split)
        into = INTO_FNS.get(instr.fn)
        if into is not None and _into_ok(instr, out, ins, into[1]):
            put = into[0]
            if not trips:
                args = (out, *ins, attrs)

                def step(it: tuple[int, ...]) -> None:
                    put(*args)
            else:
                def step(it: tuple[int, ...]) -> None:
                    put(out[it], *[v[it] for v in ins], attrs)
            return step
        if not trips and len(ins) == 1:
            (x,), (cx,) = ins, casts

            def step(it: tuple[int, ...]) -> None:
                store(out, fn(cx(x), attrs))
        elif not trips:
            pairs = list(zip(ins, casts, strict=True))

            def step(it: tuple[int, ...]) -> None:
                store(out, fn(*[c(v) for v, c in pairs], attrs))
        elif len(ins) == 1:
            (x,), (cx,) = ins, casts

            def step(it: tuple[int, ...]) -> None:
                store(out[it], fn(cx(x[it]), attrs))
        else:
            pairs = list(zip(ins, casts, strict=True))

            def step(it: tuple[int, ...]) -> None:
                store(out[it], fn(*[c(v[it]) for v, c in pairs], attrs))
        return step


def _into_ok(instr: Vec, out: np.ndarray, ins: list[np.ndarray], overlap: str) -> bool:
    """Whether an ``INTO_FNS`` function may write ``instr``'s result into ``out``: fp32
    throughout, inputs of the output's shape (a reduction: but the last axis), the last
    axis contiguous as the temporaries the FNS entry computes in (numpy then runs the
    same inner loops), and ``out`` overlapping the inputs only as ``overlap`` allows."""
    if instr.out.dtype != "f32" or any(a.dtype != "f32" for a in instr.ins) or not out.ndim:
        return False
    if out.shape[-1] != 1 and out.strides[-1] != out.itemsize:
        return False
    row = instr.fn.startswith("reduce_")
    if any(v.shape[:-1] != out.shape[:-1] if row else v.shape != out.shape for v in ins):
        return False
    if row and any(v.shape[-1] != 1 and v.strides[-1] != v.itemsize for v in ins):
        return False  # the reduced axis the inner loop, whatever the output's strides

    def same(v: np.ndarray) -> bool:
        return v.shape == out.shape and v.strides == out.strides and \
            v.__array_interface__["data"][0] == out.__array_interface__["data"][0]
    return overlap == "any" or all(
        not np.may_share_memory(out, v) or (overlap == "same" and k == 0 and same(v))
        for k, v in enumerate(ins))


def _machine(program: Program) -> _Machine:
    """The cached machine of ``program`` (rebuilt if its lists were replaced or resized)."""
    key = (id(program.instructions), len(program.instructions), id(program.buffers),
           len(program.buffers), id(program.constants), len(program.constants))
    cache = program.runtime_cache
    if cache.get("machine_key") != key:
        cache.pop("machine", None)
        check_runnable(program)  # host memory and run length, before allocating
        cache["machine"] = _Machine(program)
        cache["machine_key"] = key
    return cache["machine"]


def _check_inputs(program: Program, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inputs converted to their spec dtype; MaiacError naming a missing/bad input."""
    expected = {s.name: s for s in program.inputs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise MaiacError(f"unknown input {unknown[0]!r}; the program takes "
                         f"{', '.join(expected) or 'no inputs'}")
    out = {}
    for name, spec in expected.items():
        want = f"shape {list(spec.shape)} dtype {spec.dtype}"
        if name not in inputs:
            raise MaiacError(f"missing input {name!r} ({want})")
        arr = np.asarray(inputs[name])
        if tuple(arr.shape) != tuple(spec.shape):
            raise MaiacError(f"input {name!r} has shape {list(arr.shape)}, expected {want}")
        arr = convert_input(name, arr, np_dtype(spec.dtype), spec.dtype)
        out[name] = np.ascontiguousarray(arr)
    return out


class _RunIO:
    """A machine's plain-run plumbing, built once per program: the typed view each input
    is written into (HBM/CSRAM inputs of a plain numpy dtype; None: ``_write_bytes``), the
    view each output is copied from (tile 0's for TSRAM, as ``_Machine.read``), the steps
    a plain run calls (syncs, which do nothing in the interpreter, left out) and whether
    it needs the quantize non-finite counter."""

    def __init__(self, program: Program, machine: _Machine) -> None:
        self.key = _io_key(program)
        self.names = frozenset(s.name for s in program.inputs)
        self.inputs: list[tuple[str, np.dtype, tuple[int, ...], np.ndarray | None]] = []
        for spec in program.inputs:
            b, dt, shape = program.buffer(spec.buffer), np_dtype(spec.dtype), tuple(spec.shape)
            view = None
            if b.level != "tsram" and dt.kind in "biuf":
                n = math.prod(shape) * dt.itemsize
                view = machine.mem[b.level][b.addr:b.addr + n].view(dt).reshape(shape)
            self.inputs.append((spec.name, dt, shape, view))
        self.outputs = []
        for spec in program.outputs:
            b, dt = program.buffer(spec.buffer), np_dtype(spec.dtype)
            n = math.prod(spec.shape) * dt.itemsize
            self.outputs.append(
                (spec.name, machine.tile0(b.level, b.addr, n).view(dt).reshape(spec.shape)))
        self.steps = [step for ins, (_, step) in zip(program.instructions, machine.steps,
                                                     strict=True) if not isinstance(ins, isa.Sync)]
        self.quantizes = _has_quantize(program.instructions)


def _io_key(program: Program) -> tuple:
    return (id(program.inputs), len(program.inputs), id(program.outputs), len(program.outputs))


def _has_quantize(body: list[Instr]) -> bool:
    return any(_has_quantize(i.body) if isinstance(i, Loop) else
               isinstance(i, Vec) and i.fn == "quantize" for i in body)


def _plain_io(program: Program, machine: _Machine) -> _RunIO:
    io = machine.run_io
    if io is None or io.key != _io_key(program):
        io = machine.run_io = _RunIO(program, machine)
    return io


def _write_plain_inputs(io: _RunIO, inputs: dict[str, Any]) -> bool:
    """Write ``inputs`` through the prebuilt views if every one is an ndarray of its
    spec's dtype and shape into such a view (the bytes ``_check_inputs`` + ``_write_bytes``
    write: no conversion); False (nothing written) otherwise."""
    if inputs.keys() != io.names:
        return False
    for name, dt, shape, view in io.inputs:
        arr = inputs[name]
        if view is None or type(arr) is not np.ndarray or arr.dtype != dt or arr.shape != shape:
            return False
    for name, _, _, view in io.inputs:
        view[...] = inputs[name]
    return True


def run_program(program: Program, inputs: dict[str, np.ndarray], *,
                trace: str | os.PathLike[str] | list[dict[str, Any]] | None = None,
                stats: dict[str, Any] | None = None,
                on_step: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Run ``program`` on ``inputs`` (name -> array) and return its outputs (name -> array).

    ``trace``: a path writes the timing model's Chrome trace of the program there; a list
    receives one ``{"index", "op", "kind", "wall_s"}`` record per top-level instruction
    (measured interpreter time, for profiling the model itself). ``stats``: a dict that
    receives ``nonfinite_quantized``, the NaN/Inf values TVP quantize rows encoded.
    ``on_step(done, total)``: called after each top-level instruction (progress bars).
    """
    machine = _machine(program)
    io = _plain_io(program, machine)
    machine.reset()
    if not _write_plain_inputs(io, inputs):
        arrays = _check_inputs(program, inputs)
        for spec in program.inputs:
            b = program.buffer(spec.buffer)
            machine._write_bytes(b.level, b.addr, arrays[spec.name])
    records = trace if isinstance(trace, list) else None
    plain = records is None and on_step is None
    if plain and stats is None and not io.quantizes and not machine.blas_limit:
        # nothing to count or limit: the steps alone (no context but the error state)
        with np.errstate(all="ignore"):
            step = None
            try:
                for step in io.steps:
                    step(())
            except MachineError:
                raise
            except Exception as err:
                i = next(k for k, (_, s) in enumerate(machine.steps) if s is step)
                raise MachineError(f"{machine.steps[i][0]}: {type(err).__name__}: {err}") \
                    from err
        return {name: view.copy() for name, view in io.outputs}
    with (np.errstate(all="ignore"), single_threaded_blas(machine.blas_limit),
          count_nonfinite() as nonfinite):
        i = 0
        try:
            if plain:  # nothing per step
                for i, (_, step) in enumerate(machine.steps):  # noqa: B007 (i: the error)
                    step(())
            else:
                for i, (_, step) in enumerate(machine.steps):
                    t0 = time.perf_counter() if records is not None else 0.0
                    step(())
                    if on_step is not None:
                        on_step(i + 1, len(machine.steps))
                    if records is not None:
                        ins = program.instructions[i]
                        records.append({"index": i, "op": ins.op, "kind": ins.kind,
                                        "wall_s": time.perf_counter() - t0})
        except MachineError:
            raise
        except Exception as err:
            raise MachineError(f"{machine.steps[i][0]}: {type(err).__name__}: {err}") from err
    if stats is not None:
        stats["nonfinite_quantized"] = nonfinite[0]
    result = {name: view.copy() for name, view in io.outputs}
    if trace is not None and records is None:
        from maiac.runtime.timing import simulate
        from maiac.runtime.trace import write_chrome_trace
        write_chrome_trace(simulate(program), trace)
    return result

