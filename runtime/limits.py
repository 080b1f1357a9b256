"""Bounds on an untrusted `.maia` program, checked before anything is allocated or run.

A `.maia` file is something people download and share (DESIGN §4): every size, count and
trip in it is bounded before maiac allocates, inflates, walks or runs anything, and
breaking a bound is one ``ProgramError`` (exit 2) naming the field. The bounds:

* Derived from the target the program names (``Target``): every buffer lies inside its
  level's capacity (HBM size, CSRAM and TSRAM size; ``validate_program``), and the target
  parameters themselves are bounded (``TARGET_BOUNDS``: no 10^9 clusters or DMA queues).
* Derived from the host memory maiac may use, ``max_memory()`` (``--max-memory`` on the
  command line, else ``MAIAC_MAX_MEMORY``, else half the physical memory, at most
  ``DEFAULT_MAX_MEMORY``): the manifest, the sum of the constant blobs, and for a run the
  machine's memory (every level up to its highest buffer, TSRAM once per tile) and the
  largest block one instruction touches.
* Fixed, far above what the compiler emits (its programs nest loops 2 deep, have a few
  thousand instructions): ``MAX_LOOP_DEPTH``, ``MAX_INSTRUCTIONS``, ``MAX_TRIPS`` per
  loop, ``MAX_JSON_DEPTH`` of the manifest, and ``MAX_RUN_STEPS`` instruction executions
  of one run of the interpreter. The timing model needs no bound of its own: its work is
  closed-form in trip counts and depth (``timing.VISIT_BUDGET``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

from maiac.runtime.errors import MaiacError, ProgramError
from maiac.runtime.isa import Collective, Dma, Gather, Instr, Loop, MatMul, Scatter, Sync, Vec

GiB = 1 << 30

DEFAULT_MAX_MEMORY = 8 * GiB
"""Host memory a load or run may use when neither ``--max-memory`` nor the
``MAIAC_MAX_MEMORY`` environment variable says otherwise (and the machine has 16 GiB+)."""

MAX_MANIFEST_BYTES = 64 << 20
"""Uncompressed ``manifest.json`` (an 8B-parameter model's manifest is ~1 MB)."""

MAX_JSON_DEPTH = 64
"""Nesting of arrays/objects in the manifest (a program with loops 8 deep needs ~30)."""

MAX_LOOP_DEPTH = 8
MAX_INSTRUCTIONS = 1 << 20
"""Instructions in the program, counting every loop body once."""

MAX_TRIPS = 1 << 40
"""Iterations of one loop (the product of its trip counts)."""

MAX_INT = 1 << 62
"""Largest magnitude of any address, shape, stride or count (fits int64 arithmetic)."""

MAX_RUN_STEPS = 1 << 22

TARGET_BOUNDS: dict[str, float] = {
    "n_clusters": 1 << 10,
    "tiles_per_cluster": 1 << 10,
    "tiles": 1 << 12,  # n_clusters x tiles_per_cluster
    "dma_queues": 1 << 8,
    "tsram_bytes": 1 << 34,
    "csram_bytes": 1 << 40,
    "hbm_bytes": 1 << 50,
}
"""Upper bounds of structural target parameters (Maia 200 has 4 x 10 tiles, GB of HBM)."""

_override: int | None = None


def set_max_memory(nbytes: int | None) -> None:
    """Set the host-memory bound (``None``: back to the environment / default)."""
    global _override
    if nbytes is not None and nbytes <= 0:
        raise MaiacError(f"--max-memory must be positive, got {nbytes}")
    _override = nbytes


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``"8GiB"``, ``"512M"``, ``"1e9"`` -> bytes; ``MaiacError`` naming ``option``."""
    from maiac.runtime.target import parse_number

    try:
        value = parse_number(text if text[-1:].isdigit() or text.endswith("B") else text + "B")
    except (ValueError, IndexError):
        raise MaiacError(f"{option} {text!r}: expected a size such as 8GiB, 512MiB or "
                         f"4000000000") from None
    if not math.isfinite(value) or value < 1:
        raise MaiacError(f"{option} {text!r}: must be a positive size")
    return int(value)


def max_memory() -> int:
    """The host-memory bound in bytes (see the module docstring)."""
    if _override is not None:
        return _override
    env = os.environ.get("MAIAC_MAX_MEMORY")
    if env:
        return parse_size(env, "MAIAC_MAX_MEMORY")
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_MAX_MEMORY
    return min(DEFAULT_MAX_MEMORY, physical // 2)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def memory_error(what: str, nbytes: int, limit: int) -> ProgramError:
    """The error for ``what`` needing ``nbytes`` of host memory over ``limit``."""
    return ProgramError(f"{what} needs {_mib(nbytes)} of host memory, over the limit of "
                        f"{_mib(limit)} (raise it with --max-memory or MAIAC_MAX_MEMORY)")


def json_depth_problem(data: Any) -> str | None:
    """Why ``data`` nests too deep (None if it does not); iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def check_instruction_json(instructions: list[Any]) -> None:
    """Loop depth and instruction count of the manifest's ``instructions``, before parsing."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(d, 0, str(i)) for i, d in enumerate(instructions)]
    while stack:
        data, depth, path = stack.pop()
        count += 1
        if count > MAX_INSTRUCTIONS:
            raise ProgramError(f"instructions: more than {MAX_INSTRUCTIONS} instructions")
        if isinstance(data, dict) and data.get("kind") == "loop":
            if depth + 1 > MAX_LOOP_DEPTH:
                raise ProgramError(f"instruction {path}: loops nest deeper than "
                                   f"{MAX_LOOP_DEPTH} levels")
            body = data.get("body")
            if isinstance(body, list):
                stack.extend((d, depth + 1, f"{path}.{k}") for k, d in enumerate(body))


def check_target(target: Any, where: str = "target") -> None:
    """Structural target parameters within ``TARGET_BOUNDS``; ``ProgramError`` naming one."""
    values = {k: getattr(target, k) for k in TARGET_BOUNDS if hasattr(target, k)}
    values["tiles"] = target.n_tiles
    for key, value in values.items():
        if value > TARGET_BOUNDS[key]:
            raise ProgramError(f"{where} parameter {key} = {value} is over the bound "
                               f"{int(TARGET_BOUNDS[key])} of runtime/limits.py")


def _leaves(instrs: list[Instr], trips: tuple[int, ...] = (),
            path: str = "") -> Iterator[tuple[str, Instr, tuple[tuple[int, ...], ...]]]:
    """(path, leaf, trips of each enclosing loop) of every non-loop instruction."""
    for i, ins in enumerate(instrs):
        p = f"{path}{i}"
        if isinstance(ins, Loop):
            yield from _leaves(ins.body, (*trips, tuple(ins.trips)), f"{p}.")  # type: ignore[arg-type]
        else:
            yield p, ins, trips  # type: ignore[misc]


def check_structure(program: Any) -> None:
    """Trip counts and loop depth; ``ProgramError`` naming the instruction. Run on every
    loaded program (``report`` too), before any walk."""

    def loops(instrs: list[Instr], depth: int, path: str) -> None:
        for i, ins in enumerate(instrs):
            if isinstance(ins, Loop):
                p = f"{path}{i}"
                if depth + 1 > MAX_LOOP_DEPTH:
                    raise ProgramError(f"instruction {p}: loops nest deeper than "
                                       f"{MAX_LOOP_DEPTH} levels")
                n = math.prod(ins.trips)
                if n > MAX_TRIPS:
                    raise ProgramError(f"instruction {p}: loop of {n} iterations, over the "
                                       f"bound {MAX_TRIPS}")
                loops(ins.body, depth + 1, f"{p}.")

    loops(program.instructions, 0, "")


def _accesses(instr: Instr) -> list[Any]:
    if isinstance(instr, Dma | Collective):
        return [instr.src, instr.dst]
    if isinstance(instr, Gather):
        return [instr.table, instr.indices, instr.dst]
    if isinstance(instr, Scatter):
        return [instr.table, instr.indices, instr.src]
    if isinstance(instr, MatMul):
        return [instr.a, instr.b, instr.c, *(a for _, a in instr.scale_accesses())]
    if isinstance(instr, Sync):
        return []
    assert isinstance(instr, Vec)
    return [*instr.ins, instr.out]


def machine_bytes(program: Any, n_tiles: int) -> int:
    """Host bytes the interpreter allocates for ``program``'s memory levels."""
    end = {lv: 0 for lv in ("hbm", "csram", "tsram")}
    for b in program.buffers:
        end[b.level] = max(end[b.level], b.addr + b.nbytes)
    return end["hbm"] + end["csram"] + n_tiles * end["tsram"]


def check_runnable(program: Any) -> None:
    """Before the interpreter allocates: its memory, the largest block an instruction
    materializes and the instruction executions of one run stay within bounds."""
    from maiac.runtime.memory import itemsize
    from maiac.runtime.target import Target

    limit = max_memory()
    target = Target.from_json(program.target or {})
    need = machine_bytes(program, target.n_tiles)
    if need > limit:
        raise memory_error("running this program (its memory levels)", need, limit)
    steps = 0

    def count(instrs: list[Instr]) -> int:
        total = 0
        for ins in instrs:
            if not isinstance(ins, Loop):
                total += 1
            elif len(ins.body) == 1 and not isinstance(ins.body[0], Loop):
                total += 1  # may run as one vectorized call; bounded by its block below
            else:
                total += math.prod(ins.trips) * count(ins.body)
            if total > MAX_RUN_STEPS:
                return total
        return total

    steps = count(program.instructions)
    if steps > MAX_RUN_STEPS:
        raise ProgramError(f"one run would execute more than {MAX_RUN_STEPS} instructions "
                           f"(loop trip counts); it can be timed (maiac report) but not run")
    for path, ins, trips in _leaves(program.instructions):
        tiles = math.prod(ins.grid)
        # a vectorized loop materializes every iteration's block at once
        iters = math.prod(math.prod(t) for t in trips)
        for acc in _accesses(ins):
            if isinstance(ins, Gather | Scatter) and acc is ins.table:
                continue  # a view of memory already counted; only the picked rows are copied
            block = math.prod(acc.shape) * itemsize(acc.dtype) * tiles * iters
            if block > limit:
                raise memory_error(f"instruction {path} ({ins.kind}, op {ins.op!r})", block,
                                   limit)
