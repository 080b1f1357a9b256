"""Validation of a program: the memory map and every instruction's operands and accesses.

Run on every program the compiler emits and every `.maia` file loaded
(``program_file.load_program``): a fault is one error naming the instruction.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from maiac.runtime import isa, limits
from maiac.runtime.errors import MaiacError, ProgramError
from maiac.runtime.isa import (
    Access,
    Collective,
    Dma,
    Gather,
    Instr,
    Loop,
    MatMul,
    Scatter,
    Sync,
    Vec,
)
from maiac.runtime.memory import access_extent, itemsize
from maiac.runtime.program_types import BUFFER_KINDS, Buffer, Program


def instr_label(path: str, instr: Instr) -> str:
    """How errors name an instruction: its index path (``3.1`` = body[1] of loop 3) and op."""
    return f"instruction {path} ({instr.kind}, op {instr.op!r})"


class _LevelMap:
    """Buffers of one level sorted by address, for 'is [lo, hi) inside some buffer?'."""

    def __init__(self, buffers: list[Buffer]) -> None:
        bufs = sorted(buffers, key=lambda b: b.addr)
        self.starts = [b.addr for b in bufs]
        self.max_end: list[int] = []
        end = -1
        for b in bufs:
            end = max(end, b.addr + b.nbytes)
            self.max_end.append(end)

    def contains(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self.starts, lo) - 1
        return i >= 0 and self.max_end[i] >= hi


def _program_target(program: Program, error: type[MaiacError]) -> Any:
    from maiac.runtime.target import Target

    try:
        target = Target.from_json(program.target or {})
        limits.check_target(target)
    except MaiacError as err:
        raise error(f"bad target parameters: {err}") from None
    return target


def validate_program(program: Program, error: type[MaiacError] = ProgramError) -> None:
    """Check the memory map and every instruction's accesses; raise ``error`` naming the fault.

    Buffers lie inside their level's capacity; inputs/outputs/constants fit their buffers;
    every access is well formed and stays, over all tiles and loop iterations, inside
    one buffer of its level. (Buffers may overlap: TSRAM scratch is reused by liveness.)
    """
    target = _program_target(program, error)
    names: set[str] = set()
    for b in program.buffers:
        if b.name in names:
            raise error(f"buffer {b.name!r} is declared twice")
        names.add(b.name)
        if b.level not in isa.LEVELS:
            raise error(f"buffer {b.name!r}: unknown level {b.level!r}")
        if b.kind not in BUFFER_KINDS:
            raise error(f"buffer {b.name!r}: unknown kind {b.kind!r} (one of {BUFFER_KINDS})")
        if b.addr < 0 or b.nbytes < 0 or b.addr + b.nbytes > target.capacity(b.level):
            raise error(f"buffer {b.name!r} [{b.addr}, {b.addr + b.nbytes}) is outside "
                        f"{b.level} (capacity {target.capacity(b.level)} bytes)")
    by_name = {b.name: b for b in program.buffers}
    for spec in [*program.inputs, *program.outputs]:
        if spec.buffer not in by_name:
            raise error(f"tensor {spec.name!r} lives in unknown buffer {spec.buffer!r}")
        if spec.dtype not in isa.DTYPES:
            raise error(f"tensor {spec.name!r}: unknown dtype {spec.dtype!r}")
        if spec.nbytes > by_name[spec.buffer].nbytes:
            raise error(f"tensor {spec.name!r} ({spec.nbytes} bytes) does not fit buffer "
                        f"{spec.buffer!r} ({by_name[spec.buffer].nbytes} bytes)")
    from maiac.runtime.program_file import ZipBlob  # program_file imports this module

    for name, blob in program.constants.items():
        if name not in by_name:
            raise error(f"constant {name!r} has no buffer")
        size = blob.nbytes if isinstance(blob, ZipBlob) else len(memoryview(blob).cast("B"))
        if size > by_name[name].nbytes:
            raise error(f"constant {name!r} is larger than its buffer")
    maps = {lv: _LevelMap([b for b in program.buffers if b.level == lv]) for lv in isa.LEVELS}
    _validate_instrs(program.instructions, "", (), maps, target, error)


def _validate_instrs(instrs: list[Instr], prefix: str, trips: tuple[int, ...],
                     maps: dict[str, _LevelMap], target: Any, error: type[MaiacError]) -> None:
    n_tiles = target.n_tiles
    for i, instr in enumerate(instrs):
        path = f"{prefix}{i}"
        label = instr_label(path, instr)
        if isinstance(instr, Loop):
            if not instr.trips or any(not isinstance(t, int) or t < 1 for t in instr.trips):
                raise error(f"{label}: trip counts must be positive integers, got {instr.trips}")
            _validate_instrs(instr.body, f"{path}.", trips + tuple(instr.trips), maps,
                             target, error)
            continue
        if not isinstance(instr, Dma | Gather | Scatter | MatMul | Vec | Collective | Sync):
            raise error(f"instruction {path}: not an instruction: {type(instr).__name__}")
        problem = sync_problem(instr, target)
        if problem:
            raise error(f"{label}: {problem}")
        if isinstance(instr, Sync):
            continue
        if isinstance(instr, Collective) and trips:
            raise error(f"{label}: a collective must be at the top level, not inside a loop")
        grid = tuple(instr.grid)
        if not grid or any(not isinstance(g, int) or g < 1 for g in grid):
            raise error(f"{label}: grid must be positive integers, got {grid}")
        if math.prod(grid) > n_tiles:
            raise error(f"{label}: grid {grid} needs {math.prod(grid)} tiles, target has {n_tiles}")
        problem = _operand_problem(instr)
        if problem:
            raise error(f"{label}: {problem}")
        for role, acc in _accesses(instr):
            problem = _access_problem(acc, grid, trips)
            if problem is None:
                lo, hi = access_extent(acc, grid, trips)
                if not maps[acc.level].contains(lo, hi):
                    problem = (f"bytes [{lo}, {hi}) of {acc.level} are not inside any buffer "
                               f"of the memory map")
            if problem:
                raise error(f"{label}: operand {role}: {problem}")


def sync_problem(instr: Instr, target: Any) -> str | None:
    """What breaks the target's semaphore limits in one instruction's waits (or a
    barrier's engine), or None: at most ``max_waits`` waits per instruction (Maia 200:
    2, public). Signals need no check: each instruction posts exactly one (its engine's)."""
    if len(instr.waits) > target.max_waits:
        return (f"{len(instr.waits)} waits ({', '.join(sorted(instr.waits))}); target "
                f"{target.name!r} allows at most {target.max_waits} per instruction "
                f"(max_waits): split them over sync barriers (the sync pass does)")
    names = isa.engines(target.dma_queues)
    if isinstance(instr, Sync) and instr.engine not in names:
        return f"sync on unknown engine {instr.engine!r} (engines: {', '.join(names)})"
    return None


def _accesses(instr: Instr) -> list[tuple[str, Access]]:
    """(role, access) pairs of a non-loop instruction."""
    if isinstance(instr, Sync):
        return []
    if isinstance(instr, Dma | Collective):
        return [("src", instr.src), ("dst", instr.dst)]
    if isinstance(instr, Gather):
        return [("table", instr.table), ("indices", instr.indices), ("dst", instr.dst)]
    if isinstance(instr, Scatter):
        return [("table", instr.table), ("indices", instr.indices), ("src", instr.src)]
    if isinstance(instr, MatMul):
        return [("a", instr.a), ("b", instr.b), ("c", instr.c), *instr.scale_accesses()]
    return [*((f"ins[{k}]", a) for k, a in enumerate(instr.ins)), ("out", instr.out)]


def _access_problem(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> str | None:
    if not isinstance(acc, Access):
        return "not an Access"
    if acc.level not in isa.LEVELS:
        return f"unknown level {acc.level!r}"
    if acc.dtype not in isa.DTYPES:
        return f"unknown dtype {acc.dtype!r}"
    if len(acc.strides) != len(acc.shape):
        return f"shape {acc.shape} and strides {acc.strides} differ in rank"
    if any(not isinstance(n, int) or n < 0 for n in acc.shape):
        return f"bad shape {acc.shape}"
    if acc.tile_strides and len(acc.tile_strides) != len(grid):
        return f"tile_strides {acc.tile_strides} do not match grid {grid}"
    if acc.level == "tsram" and any(acc.tile_strides):
        return "tile_strides must be zero on tsram (each tile has its own array)"
    if acc.loop_strides and len(acc.loop_strides) != len(trips):
        return (f"loop_strides {acc.loop_strides} need one entry per enclosing loop "
                f"dimension {trips}")
    if acc.addr < 0 or acc.addr % itemsize(acc.dtype):
        return f"address {acc.addr} is negative or not aligned to {acc.dtype}"
    return None


def _operand_problem(instr: Instr) -> str | None:
    """Level, arity and shape agreement of an instruction's operands, or None if fine."""
    if isinstance(instr, Dma):
        if tuple(instr.src.shape) != tuple(instr.dst.shape):
            return f"src shape {instr.src.shape} != dst shape {instr.dst.shape}"
        return None
    if isinstance(instr, Collective):
        return collective_problem(instr)
    if isinstance(instr, Gather):
        t, ix, d = instr.table, instr.indices, instr.dst
        if t.level == "tsram" or ix.level != "tsram" or d.level != "tsram":
            return "gather reads a table in hbm/csram with indices into tsram"
        if len(t.shape) != 2:
            return f"table must be 2-D [rows, row_len], got {t.shape}"
        if ix.dtype not in ("i64", "i32", "i8", "u8"):
            return f"indices must be integers, got {ix.dtype}"
        if tuple(d.shape) != tuple(ix.shape) + (t.shape[1],):
            return f"dst shape {d.shape} != indices shape {ix.shape} + ({t.shape[1]},)"
        return None
    if isinstance(instr, Scatter):
        t, ix, s = instr.table, instr.indices, instr.src
        if t.level == "tsram" or ix.level != "tsram" or s.level != "tsram":
            return "scatter writes a table in hbm/csram from rows and indices in tsram"
        if len(t.shape) < 2:
            return f"table must be [rows, *row_shape], got {t.shape}"
        if ix.dtype not in ("i64", "i32", "i8", "u8"):
            return f"indices must be integers, got {ix.dtype}"
        if tuple(s.shape) != tuple(ix.shape) + tuple(t.shape[1:]):
            return f"src shape {s.shape} != indices shape {ix.shape} + {tuple(t.shape[1:])}"
        return None
    accs = _accesses(instr)
    if any(a.level != "tsram" for _, a in accs):
        return "compute operands must be in tsram"
    if isinstance(instr, MatMul):
        (a, b), c = instr.logical_ab(), tuple(instr.c.shape)
        if min(len(a), len(b), len(c)) < 2 or a[-1] != b[-2] or c[-2:] != (a[-2], b[-1]):
            return f"matmul shapes a{a} @ b{b} -> c{c} do not agree"
        try:
            if np.broadcast_shapes(a[:-2], b[:-2], c[:-2]) != c[:-2]:
                raise ValueError
        except ValueError:
            return f"matmul batch dims a{a} b{b} c{c} do not broadcast to c"
        return None
    fn = instr.fn
    if fn not in isa.VEC_FNS:
        return f"unknown vec fn {fn!r}"
    arity = {"layernorm": 3, "rmsnorm": 2}.get(fn, 1 if fn in isa.UNARY_FNS + isa.ROW_FNS
                                               + isa.QUANT_FNS
                                               else 2 if fn in isa.BINARY_FNS else 3)
    if len(instr.ins) != arity:
        return f"{fn} takes {arity} inputs, got {len(instr.ins)}"
    out = tuple(instr.out.shape)
    x = tuple(instr.ins[0].shape)
    if fn in isa.QUANT_FNS:
        if not x or out[:-1] != x[:-1]:
            return f"{fn} of {x} must write rows of shape {x[:-1]} + (bytes,), got {out}"
        return None
    if fn.startswith("reduce_"):
        if not x or out != x[:-1] + (1,):
            return f"{fn} of {x} must write shape {x[:-1] + (1,)}, got {out}"
        return None
    try:
        shapes = [tuple(a.shape) for a in instr.ins]
        if np.broadcast_shapes(*shapes, out) != out:
            raise ValueError
    except ValueError:
        return f"{fn} input shapes {shapes} do not broadcast to out {out}"
    return None


def collective_problem(instr: Collective) -> str | None:
    """What is wrong with a collective's kind, group, levels and shapes (or None)."""
    if instr.collective not in isa.COLLECTIVES:
        return f"unknown collective {instr.collective!r} (one of {', '.join(isa.COLLECTIVES)})"
    if not isinstance(instr.chips, int) or instr.chips < 1 or not 0 <= instr.rank < instr.chips:
        return f"rank {instr.rank} is not in a group of {instr.chips} chips"
    if {instr.src.level, instr.dst.level} - {"hbm", "csram"}:
        return "a collective moves HBM or CSRAM blocks (the network DMA cannot reach TSRAM)"
    src, dst = tuple(instr.src.shape), tuple(instr.dst.shape)
    if instr.collective in isa.POINT_TO_POINT:
        if not isinstance(instr.peer, int) or not 0 <= instr.peer < instr.chips \
                or instr.peer == instr.rank:
            return (f"{instr.collective} from chip {instr.rank} to peer {instr.peer}: the peer "
                    f"must be another chip of the {instr.chips}")
        if instr.src != instr.dst:
            return f"a {instr.collective} names one block (src == dst), got two"
        return None
    if instr.peer != -1:
        return f"a {instr.collective} has no peer (got {instr.peer})"
    want = {"all_reduce": (src, dst), "all_gather": ((instr.chips, *src), dst),
            "reduce_scatter": (src, (instr.chips, *dst))}[instr.collective]
    if want[0] != want[1]:
        return f"{instr.collective} over {instr.chips} chips: src {src} and dst {dst} disagree"
    return None
