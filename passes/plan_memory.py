"""`plan-memory`: give every buffer a level and an address.

Inputs, outputs and constants live in HBM for the whole program. Activations are
placed by liveness (first and last kernel that touches them): first-fit into CSRAM when
``csram`` is on and they fit, else into HBM, reusing space whose tenant is dead.
TSRAM scratch belongs to one kernel: bump-allocated per kernel (from 0, or, with the
`prefetch` pass's ``maia.tsram_pingpong``, in a ring right after the previous kernel's
scratch; where the ring wraps, at the offset that keeps the kernel's first loads off
blocks the recent kernels still use: `wrap_offset`), so a kernel whose working set
exceeds TSRAM is an error naming its op.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.passes.tile import module_target
from maiac.passes.tiling.common import align
from maiac.runtime.errors import MaiacError

ACCESS_KEYS = ("src", "dst", "a", "b", "c", "out", "table", "indices", "a_scale", "b_scale")


def accessed_buffers(op: Operation) -> Iterator[str]:
    """Names of the buffers every instruction under ``op`` reads or writes."""
    for inner in op.walk():
        for key in ACCESS_KEYS:
            if key in inner.attributes:
                yield maia.attr(inner, key)["buf"]
        if "ins" in inner.attributes:
            for access in maia.attr(inner, "ins"):
                yield access["buf"]


@dataclass
class Placed:
    addr: int
    size: int
    start: int
    end: int


def first_fit(placed: list[Placed], size: int, start: int, end: int, capacity: int) -> int | None:
    """Lowest address where ``size`` bytes are free during [start, end]."""
    busy = sorted((p.addr, p.addr + p.size) for p in placed if p.start <= end and start <= p.end)
    addr = 0
    for lo, hi in busy:
        if addr + size <= lo:
            break
        addr = max(addr, hi)
    return addr if addr + size <= capacity else None


def plan_function(fn: func.FuncOp, csram_capacity: int, tsram_capacity: int,
                  resident: bool = False) -> None:
    ops = list(fn.body.block.ops)
    buffers = {maia.attr(b, "sym"): b for b in ops if isinstance(b, maia.BufferOp)}
    kernels = [k for k in ops if isinstance(k, maia.KernelOp)]
    live: dict[str, list[int]] = {}
    for index, kernel in enumerate(kernels):
        for name in accessed_buffers(kernel):
            span = live.setdefault(name, [index, index])
            span[1] = index
    hbm_top = 0
    for kind in ("input", "output", "const"):
        for buf in buffers.values():
            if maia.attr(buf, "kind") == kind:
                _place(buf, "hbm", hbm_top)
                hbm_top += align(maia.attr(buf, "nbytes"))
    csram: list[Placed] = []
    hbm: list[Placed] = []
    acts = [(name, buf) for name, buf in buffers.items() if maia.attr(buf, "kind") == "act"]
    acts.sort(key=lambda item: live.get(item[0], [0, 0])[0])
    for name, buf in acts:
        size = align(maia.attr(buf, "nbytes"))
        start, end = live.get(name, [0, 0])
        addr = first_fit(csram, size, start, end, csram_capacity) if csram_capacity else None
        if addr is not None:
            csram.append(Placed(addr, size, start, end))
            _place(buf, "csram", addr)
            continue
        addr = first_fit(hbm, size, start, end, 1 << 62)
        hbm.append(Placed(addr, size, start, end))
        _place(buf, "hbm", hbm_top + addr)
    if resident and csram_capacity:
        # weights that fit stay in CSRAM for the whole program (and across calls)
        consts = [b for b in buffers.values() if maia.attr(b, "kind") == "const"]
        consts.sort(key=lambda b: -maia.attr(b, "nbytes"))
        for buf in consts:
            size = align(maia.attr(buf, "nbytes"))
            addr = first_fit(csram, size, 0, len(kernels), csram_capacity)
            if addr is not None:
                csram.append(Placed(addr, size, 0, len(kernels)))
                _place(buf, "csram", addr)
    ring = bool(maia.attr(fn, "maia.tsram_pingpong", False))
    cursor = 0
    # the recent kernels' blocks: (addr, size, last use) in instructions of the function
    recent: list[list[tuple[int, int, int]]] = []
    base = 0
    previous_op = None
    for kernel in kernels:
        op_name = maia.attr(kernel, "op")
        scratch = [b for b in kernel.body.block.ops if isinstance(b, maia.BufferOp)]
        sizes = [align(maia.attr(b, "nbytes")) for b in scratch]
        total = sum(sizes)
        top = 0
        addrs: list[int] | None = None
        uses, count = use_order(kernel) if ring else ({}, 0)
        if ring and total <= tsram_capacity:
            # prefetch ring: each kernel's scratch right after the previous kernel's,
            # so a kernel's loads land on bytes no recent kernel uses and start as early
            # as their queue allows; when it would pass the end, where its first-used
            # blocks overlap only blocks the recent kernels were done with early
            if cursor + total > tsram_capacity:
                firsts = [base + uses.get(maia.attr(b, "sym"), (count, count))[0]
                          for b in scratch]
                blocks = [b for k in recent for b in k]
                cursor = wrap_offset(blocks, sizes, firsts, tsram_capacity)
                if op_name == previous_op:  # a ragged tail after its main kernel
                    addrs = wrap_buffers(blocks, sizes, firsts, tsram_capacity, cursor)
            top, cursor = cursor, cursor + total
            if addrs is not None:
                cursor = max(a + size for a, size in zip(addrs, sizes, strict=True))
        placed: list[tuple[int, int, int]] = []
        for index, (buf, size) in enumerate(zip(scratch, sizes, strict=True)):
            addr = addrs[index] if ring and addrs is not None else top
            _place(buf, "tsram", addr)
            placed.append((addr, size, base + uses.get(maia.attr(buf, "sym"), (0, 0))[1]))
            top = max(top, addr + size)
        recent = [*recent[-(RECENT - 1):], placed]
        base += count
        previous_op = op_name
        if top > tsram_capacity:
            raise MaiacError(f"op '{maia.attr(kernel, 'op')}': working set of {top} bytes "
                             f"exceeds TSRAM ({tsram_capacity} bytes per tile)")
    fn.attributes["maia.peak"] = maia.to_attr({
        "hbm": hbm_top + max((p.addr + p.size for p in hbm), default=0),
        "csram": max((p.addr + p.size for p in csram), default=0)})


def use_order(kernel: Operation) -> tuple[dict[str, tuple[int, int]], int]:
    """Per buffer ``kernel`` touches, the index of its first and last instruction that
    does, in program order (a loop body counted once); and the instruction count."""
    leaves = [op for op in kernel.walk() if not isinstance(op, maia.BufferOp)
              and (any(k in op.attributes for k in ACCESS_KEYS) or "ins" in op.attributes)]
    out: dict[str, tuple[int, int]] = {}
    for index, op in enumerate(leaves):
        for name in accessed_buffers(op):
            first, _ = out.get(name, (index, index))
            out[name] = (first, index)
    return out, len(leaves)


# kernels whose TSRAM blocks a wrapping ring avoids (ASSUMED: further back, their stores
# are done by the time a kernel starts)
RECENT = 3


def wrap_offset(recent: list[tuple[int, int, int]], sizes: list[int], firsts: list[int],
                capacity: int) -> int:
    """Where a kernel's scratch (``sizes`` in order, first used by instruction
    ``firsts``) goes when the ring wraps: the offset whose worst overlap pairs a recent
    kernel's block (``recent``: addr, size, last use) used the earliest with one of this
    kernel's used the latest — its first loads then wait for the least of the previous
    kernels' tails (a result block still being stored) — then the fewest overlapping
    bytes, then the lowest offset. Candidates: 0, the end of TSRAM, and the offsets
    that start or end the scratch at an edge of a recent block."""
    total = sum(sizes)
    candidates = {0, capacity - total}
    for addr, size, _ in recent:
        candidates |= {addr + size, addr - total}
    best: tuple[int, int, int] | None = None
    for offset in sorted(c for c in candidates if 0 <= c <= capacity - total):
        worst, overlap, lo = -(1 << 62), 0, offset
        for size, first in zip(sizes, firsts, strict=True):
            for addr, rsize, last in recent:
                common = min(lo + size, addr + rsize) - max(lo, addr)
                if common > 0:
                    worst = max(worst, last - first)
                    overlap += common
            lo += size
        key = (worst, overlap, offset)
        if best is None or key < best:
            best = key
    return best[2] if best is not None else 0


def _conflict(recent: list[tuple[int, int, int]], lo: int, size: int,
              first: int) -> tuple[int, int]:
    """(worst, overlap) of a block at ``lo`` first used by instruction ``first``: the
    latest last use minus ``first`` over the recent blocks it overlaps (-2^62 if none),
    and the bytes it shares with them (`wrap_offset`'s key, for one block)."""
    worst, overlap = -(1 << 62), 0
    for addr, rsize, last in recent:
        common = min(lo + size, addr + rsize) - max(lo, addr)
        if common > 0:
            worst = max(worst, last - first)
            overlap += common
    return worst, overlap


def wrap_buffers(recent: list[tuple[int, int, int]], sizes: list[int], firsts: list[int],
                 capacity: int, offset: int) -> list[int] | None:
    """Where a wrapping kernel's blocks go one by one, when that beats the contiguous
    scratch at ``offset`` (`wrap_offset`'s choice), else None. In the order of their
    first use, each block takes the free address (none of this kernel's blocks there)
    whose overlap with the recent kernels' blocks is least harmful by `wrap_offset`'s
    key: the blocks a kernel loads first land on bytes the previous kernels were done
    with early (the twin a double-buffered K loop read one step before its last), its
    later blocks on the bytes still being read. So a ragged tail kernel's first loads
    run during its main kernel's last K step instead of after it. None when the blocks
    do not all fit apart, or the key (the worst pair, then the bytes shared) is not
    better than the contiguous placement's."""
    def key_of(addrs: list[int]) -> tuple[int, int]:
        worst, overlap = -(1 << 62), 0
        for lo, size, first in zip(addrs, sizes, firsts, strict=True):
            w, o = _conflict(recent, lo, size, first)
            worst, overlap = max(worst, w), overlap + o
        return worst, overlap

    contiguous = [offset + sum(sizes[:i]) for i in range(len(sizes))]
    edges = {0} | {a + s for a, s, _ in recent} | {a for a, _, _ in recent}
    addrs: list[int | None] = [None] * len(sizes)
    mine: list[tuple[int, int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: (firsts[i], i)):
        size = sizes[i]
        cands = edges | {e - size for e in edges} | {a + s for a, s in mine} \
            | {a - size for a, _ in mine} | {capacity - size}
        best: tuple[tuple[int, int], int] | None = None
        for lo in sorted(c for c in cands if 0 <= c <= capacity - size):
            if any(min(lo + size, a + s) > max(lo, a) for a, s in mine):
                continue
            k = (_conflict(recent, lo, size, firsts[i]), lo)
            if best is None or k < best:
                best = k
        if best is None:
            return None
        addrs[i] = best[1]
        mine.append((best[1], size))
    spread = [a for a in addrs if a is not None]
    return spread if key_of(spread) < key_of(contiguous) else None


def _place(buf: Operation, level: str, addr: int) -> None:
    buf.attributes["level"] = maia.to_attr(level)
    buf.attributes["addr"] = maia.to_attr(int(addr))


@dataclass(frozen=True)
class PlanMemoryPass(ModulePass):
    """Address every buffer in HBM, CSRAM or TSRAM by liveness."""

    name = "plan-memory"

    csram: bool = True
    resident: bool = False  # weights that fit CSRAM after the activations live there

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = module_target(op)
        csram = target.n_clusters * target.csram_bytes if self.csram else 0
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                plan_function(fn, csram, target.tsram_bytes, self.resident)
