"""Scheduling passes on the tiled IR: double buffering and semaphore waits.

``double-buffer`` (after ``tile``, before ``plan-memory``): a loop whose body first
*writes* a TSRAM scratch block (a DMA landing an operand) is unrolled by two along an
even trip dimension, the second copy using a twin of every such block. Iteration i+1's
DMAs then write other bytes than iteration i's compute reads, so the timing model (and
the hardware) overlaps them. Odd 1-D loops peel their last iteration. A loop is left
alone when the twins would not fit TSRAM or a buffer it renames is used outside it.

``sync`` (after ``plan-memory``): switches the program to the asynchronous semantics
(runtime/isa.py WAITS) and gives every instruction the waits its hazards need, inferred
by runtime/hazards.py from the planned addresses: the tightest ``{engine: pending}``
that orders each conflicting pair (so a DMA may stay in flight while the compute of
the previous block runs). ``sync{naive=true}`` makes every instruction wait for every
other engine (that runs anything) to drain — the no-overlap baseline of bench/schedule.py.

An instruction carries at most the target's ``max_waits`` waits (Maia 200: 2, public);
one that needs more gets ``maia.sync`` barriers on its own engine right before it
(runtime/barriers.py: the waits are then inferred again with the barriers in place).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.passes.tile import module_target
from maiac.passes.tiling.common import align
from maiac.runtime import hazards, isa
from maiac.runtime.barriers import limit_waits
from maiac.runtime.errors import MaiacError
from maiac.runtime.program import Buffer

TWIN = "@1"  # suffix of a double-buffer twin


# --------------------------------------------------------------------------- accesses

def access_items(op: Operation) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """(attribute, list index or None, access dict) of every access an instruction has."""
    for key, value in op.attributes.items():
        v = maia.from_attr(value)
        if isinstance(v, dict) and "buf" in v and "ls" in v:
            yield key, None, v
        elif isinstance(v, list) and v and all(isinstance(a, dict) and "buf" in a for a in v):
            for i, a in enumerate(v):
                yield key, i, a


def rewrite_accesses(op: Operation, fn: Any) -> None:
    """Replace every access dict ``a`` of ``op`` (and ops nested in it) by ``fn(a)``."""
    for inner in op.walk():
        if isinstance(inner, maia.BufferOp | maia.LoopOp | maia.KernelOp):
            continue
        changed: dict[str, Any] = {}
        for key, idx, acc in access_items(inner):
            new = fn(dict(acc))
            if idx is None:
                changed[key] = new
            else:
                changed.setdefault(key, list(maia.from_attr(inner.attributes[key])))[idx] = new
        for key, value in changed.items():
            inner.attributes[key] = maia.to_attr(value)


def _reads_writes(op: Operation) -> tuple[set[str], set[str]]:
    reads: set[str] = set()
    writes: set[str] = set()
    for key, _, acc in access_items(op):
        if key in ("dst", "out") or (key == "c" and not maia.attr(op, "accumulate", False)):
            writes.add(acc["buf"])
        elif key == "c":
            reads.add(acc["buf"])
            writes.add(acc["buf"])
        else:
            reads.add(acc["buf"])
    return reads, writes


def _leaf_ops(ops: Any) -> Iterator[Operation]:
    for op in ops:
        if isinstance(op, maia.LoopOp):
            yield from _leaf_ops(op.body.block.ops)
        elif not isinstance(op, maia.BufferOp):
            yield op


# --------------------------------------------------------------------------- double buffering

def _loop_depth(loop: maia.LoopOp) -> int:
    depth = 0
    parent = loop.parent_op()
    while isinstance(parent, maia.LoopOp):
        depth += len(maia.attr(parent, "trips"))
        parent = parent.parent_op()
    return depth


def _renameable(loop: maia.LoopOp, kernel: maia.KernelOp, scratch: set[str]) -> list[str]:
    """Scratch buffers the loop body writes before reading and nothing after the loop
    touches (their value is neither live into nor out of the loop)."""
    inside = list(_leaf_ops(loop.body.block.ops))
    first: dict[str, bool] = {}
    for op in inside:
        reads, writes = _reads_writes(op)
        for b in (reads | writes) & scratch:
            first.setdefault(b, b in writes and b not in reads)
    inside_ids = {id(op) for op in inside}
    after: set[str] = set()
    seen = False
    for op in _leaf_ops(kernel.body.block.ops):
        if id(op) in inside_ids:
            seen = True
        elif seen:
            r, w = _reads_writes(op)
            after |= r | w
    return [b for b, ok in first.items() if ok and b not in after]


def double_buffer_loop(loop: maia.LoopOp, kernel: maia.KernelOp, sizes: dict[str, int],
                       capacity: int, exclude: set[str] | frozenset[str] = frozenset()
                       ) -> bool:
    """Unroll ``loop`` by two with twin scratch buffers (none of ``exclude``); False if
    not applicable."""
    trips = list(maia.attr(loop, "trips"))
    names = [b for b in _renameable(loop, kernel, set(sizes)) if b not in exclude]
    if not names:
        return False
    extra = sum(sizes[n] for n in names)
    if sum(sizes.values()) + extra > capacity:
        return False
    even = [d for d, t in enumerate(trips) if t >= 2 and t % 2 == 0]
    if even:
        d, peel = even[-1], False
    elif len(trips) == 1 and trips[0] >= 3:
        d, peel = 0, True
    else:
        return False
    idx = _loop_depth(loop) + d
    n = trips[d]

    def shifted(copy: int, rename: bool) -> Any:
        def fn(acc: dict[str, Any]) -> dict[str, Any]:
            ls = list(acc["ls"])
            if len(ls) > idx:
                acc["off"] = acc["off"] + copy * ls[idx]
                ls[idx] *= 2
            acc["ls"] = ls
            if rename and acc["buf"] in names:
                acc["buf"] += TWIN
            return acc
        return fn

    def shifted_names() -> Any:
        def fn(acc: dict[str, Any]) -> dict[str, Any]:
            if acc["buf"] in names:
                acc["buf"] += TWIN
            return acc
        return fn

    def last(acc: dict[str, Any]) -> dict[str, Any]:
        ls = list(acc["ls"])
        if len(ls) > idx:
            acc["off"] = acc["off"] + (n - 1) * ls[idx]
            del ls[idx]
        acc["ls"] = ls
        return acc

    block = loop.body.block
    body = list(block.ops)
    tail = [op.clone() for op in body] if peel else []
    second = [op.clone() for op in body]
    # the first copy takes the twins: a peeled step right before the loop (a matmul's
    # first K step, attention's first key block) used the original blocks, so the loop's
    # first DMAs need not wait for it
    for op in body:
        rewrite_accesses(op, shifted(0, True))
    for op in second:
        rewrite_accesses(op, shifted(1, False))
    block.add_ops(second)
    trips[d] = n // 2
    loop.attributes["trips"] = maia.to_attr(trips)
    if peel:
        # the peeled last iteration takes the twins too: the loop's last copy used the
        # originals, so the blocks keep alternating (and the next job's first step, on
        # the originals again, need not wait for this one's compute)
        for op in tail:
            rewrite_accesses(op, last)
            rewrite_accesses(op, shifted_names())
        parent = loop.parent_block()
        assert parent is not None
        parent.insert_ops_after(tail, loop)
    kblock = kernel.body.block
    for name in names:
        sizes[name + TWIN] = sizes[name]
        twin = maia.instruction(maia.BufferOp, sym=name + TWIN, level="tsram",
                                nbytes=sizes[name], kind="scratch")
        if kblock.first_op is not None:
            kblock.insert_op_before(twin, kblock.first_op)
        else:
            kblock.add_op(twin)
    return True


def double_buffer_kernel(kernel: maia.KernelOp, capacity: int) -> int:
    """Double-buffer the loops of one kernel, innermost first; number of loops changed."""
    sizes = {maia.attr(b, "sym"): align(maia.attr(b, "nbytes"))
             for b in kernel.body.block.ops if isinstance(b, maia.BufferOp)}
    loops = [op for op in kernel.walk() if isinstance(op, maia.LoopOp)]
    done: list[maia.LoopOp] = []
    for loop in reversed(loops):  # inner loops before the loops around them
        if any(_encloses(loop, d) for d in done):
            continue
        if double_buffer_loop(loop, kernel, sizes, capacity):
            done.append(loop)
    # a loop around double-buffered ones (a matmul's jobs around its K loop) then twins
    # the blocks its body writes first that have no twin yet (the accumulator, a bias or
    # residual block), where they fit: the next job's first product then need not wait
    # for this job's epilogue and store
    twinned = {n for n in sizes if n.endswith(TWIN)}
    twinned |= {n.removesuffix(TWIN) for n in twinned}
    outer = [lp for lp in loops if any(_encloses(lp, d) for d in done)
             and not any(_encloses(lp, o) for o in loops if o is not lp
                         and any(_encloses(o, d) for d in done))]
    changed = 0
    for loop in outer:
        if double_buffer_loop(loop, kernel, sizes, capacity, exclude=twinned):
            changed += 1
    return len(done) + changed


def _encloses(outer: Operation, inner: Operation) -> bool:
    p = inner.parent_op()
    while p is not None:
        if p is outer:
            return True
        p = p.parent_op()
    return False


class DoubleBufferPass(ModulePass):
    """Unroll DMA→compute loops by two with twin TSRAM blocks so DMA overlaps compute."""

    name = "double-buffer"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        capacity = module_target(op).tsram_bytes
        for kernel in list(op.walk()):
            if isinstance(kernel, maia.KernelOp):
                double_buffer_kernel(kernel, capacity)


# --------------------------------------------------------------------------- sync

def planned_buffers(fn: func.FuncOp) -> dict[str, Buffer]:
    return {maia.attr(b, "sym"): Buffer(maia.attr(b, "sym"), maia.attr(b, "level"),
                                        maia.attr(b, "addr"), maia.attr(b, "nbytes"),
                                        maia.attr(b, "kind"))
            for b in fn.walk() if isinstance(b, maia.BufferOp)}


def _program_of(fn: func.FuncOp) -> tuple[list[isa.Instr], list[Operation]]:
    """The function's instructions as the ISA sees them, and the IR ops they come from
    (the kernels' top-level ops, buffers left out, in program order)."""
    from maiac.passes.emit import _instructions

    buffers = planned_buffers(fn)
    program: list[isa.Instr] = []
    ops: list[Operation] = []
    for kernel in fn.body.block.ops:
        if isinstance(kernel, maia.KernelOp):
            program.extend(_instructions(kernel.body.block.ops, buffers,
                                         maia.attr(kernel, "op")))
            ops.extend(o for o in kernel.body.block.ops if not isinstance(o, maia.BufferOp))
    return program, ops


def _mirror(instrs: list[isa.Instr], ops: list[Operation]) -> None:
    """Write the waits of ``instrs`` back onto the IR ``ops`` they were emitted from, and
    a ``maia.sync`` before the op of every barrier the IR does not have yet."""
    it = iter(ops)
    barriers: list[isa.Sync] = []
    for ins in instrs:
        if isinstance(ins, isa.Sync):
            barriers.append(ins)
            continue
        op = next(it)
        block = op.parent_block()
        assert block is not None
        for b in barriers:
            block.insert_op_before(maia.instruction(maia.SyncOp, engine=b.engine,
                                                    waits=dict(b.waits)), op)
        barriers = []
        if isinstance(ins, isa.Loop):
            assert isinstance(op, maia.LoopOp)
            _mirror(ins.body, [o for o in op.body.block.ops if not isinstance(o, maia.BufferOp)])
        elif ins.waits:
            op.attributes["waits"] = maia.to_attr(dict(ins.waits))
        elif "waits" in op.attributes:
            del op.attributes["waits"]
    assert not barriers and next(it, None) is None


def sync_function(fn: func.FuncOp, dma_queues: int, naive: bool, max_waits: int) -> None:
    """Give every instruction of ``fn`` its waits, within ``max_waits`` per instruction."""
    program, ops = _program_of(fn)
    if naive:
        used = {isa.engine_of(ins, dma_queues) for ins in _isa_leaves(program)}
        names = [e for e in hazards.engines(dma_queues) if e in used]
        for ins in _isa_leaves(program):
            own = isa.engine_of(ins, dma_queues)
            ins.waits = {e: 0 for e in names if e != own}
    else:
        hazards.infer_waits(program, dma_queues)
    try:  # naive waits drain whole engines: a barrier shifts no count they depend on
        limit_waits(program, dma_queues, max_waits, reinfer=not naive)
    except MaiacError as err:
        raise MaiacError(f"sync: {err}") from None
    _mirror(program, ops)
    fn.attributes["maia.async"] = maia.to_attr(True)


def _isa_leaves(instrs: list[isa.Instr]) -> Iterator[isa.Instr]:
    for ins in instrs:
        if isinstance(ins, isa.Loop):
            yield from _isa_leaves(ins.body)
        else:
            yield ins


class SyncPass(ModulePass):
    """Asynchronous semantics: the semaphore waits every DMA/compute hazard needs."""

    name = "sync"

    naive: bool = False

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = module_target(op)
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                sync_function(fn, target.dma_queues, self.naive, target.max_waits)
