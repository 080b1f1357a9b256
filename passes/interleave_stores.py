"""``interleave-stores`` (after ``double-buffer``): a job's result store, cut into row
chunks spread over the next job's K loop.

After ``double-buffer`` twins a matmul's accumulators across jobs, a job loop body reads
``[K steps of job a, epilogue a, store a, K steps of job b, ...]``: store a reads the
block job b does not touch, so it may run during job b. As one DMA it moves the whole
``[bm, bn]`` block (LM head, prefill: 37 MB over the tiles, 9.7 us of HBM), and while it
holds HBM the weight blocks of job b's K steps wait behind it: the TTU starves for most
of that time, the weights being double buffered one step ahead only. This pass splits
such a store into ``c`` chunks of rows and the K loop after it into ``c`` consecutive
loops (the same body, offsets advanced), with one chunk after each, so the store's bytes
interleave with the weight stream instead of blocking it. The numbers are the same: the
chunks move the same bytes, and the ``sync`` pass orders them as any other DMA.

A store qualifies when it is a DMA out of a scratch block directly inside a loop body,
a 1-D loop follows it in the same body with at least 2 trips, and nothing from the store
to the end of that loop touches the store's buffers (blocks and destination).
"""

from __future__ import annotations

from typing import Any

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.passes.schedule import _loop_depth, access_items, rewrite_accesses
from maiac.passes.tiling.common import divisors


def _buffers(op: Operation) -> set[str]:
    """Every buffer ``op`` (and the ops nested in it) accesses."""
    out: set[str] = set()
    for inner in op.walk():
        out |= {acc["buf"] for _, _, acc in access_items(inner)}
    return out


def _chunk(store: Operation, rows: int, index: int) -> Operation:
    """Rows ``[index * rows, (index + 1) * rows)`` of ``store``'s block (axis 0)."""
    chunk = store.clone()

    def cut(acc: dict[str, Any]) -> dict[str, Any]:
        acc["off"] = acc["off"] + index * rows * acc["strides"][0]
        acc["shape"] = [rows, *acc["shape"][1:]]
        return acc
    rewrite_accesses(chunk, cut)
    return chunk


def _split_loop(loop: maia.LoopOp, pieces: int) -> list[maia.LoopOp]:
    """``loop`` (1-D) as ``pieces`` consecutive loops over its iterations, in order."""
    (trips,) = maia.attr(loop, "trips")
    idx = _loop_depth(loop)
    sizes = [trips // pieces + (1 if i < trips % pieces else 0) for i in range(pieces)]
    out = []
    start = 0
    for size in sizes:
        part = loop.clone()
        part.attributes["trips"] = maia.to_attr([size])

        def shift(acc: dict[str, Any], start: int = start) -> dict[str, Any]:
            ls = list(acc["ls"])
            if len(ls) > idx:
                acc["off"] = acc["off"] + start * ls[idx]
            return acc
        rewrite_accesses(part, shift)
        out.append(part)
        start += size
    return out


def interleave_block(ops: list[Operation], scratch: set[str]) -> int:
    """Interleave the qualifying stores of one loop body (see the module doc); the number
    of stores split."""
    done = 0
    for i, store in enumerate(ops):
        if not _is_store(store, scratch):
            continue
        src, dst = maia.attr(store, "src"), maia.attr(store, "dst")
        nxt = next((j for j in range(i + 1, len(ops)) if isinstance(ops[j], maia.LoopOp)),
                   None)
        if nxt is None:
            continue
        loop = ops[nxt]
        if loop.parent_block() is not store.parent_block():
            continue  # an earlier store of this block already split that loop
        trips = list(maia.attr(loop, "trips"))
        if len(trips) != 1 or trips[0] < 2:
            continue
        mine = {src["buf"], dst["buf"]}
        if any(mine & _buffers(op) for op in ops[i + 1:nxt + 1]):
            continue
        rows = src["shape"][0]
        pieces = max(d for d in divisors(rows) if d <= trips[0])
        if pieces < 2:
            continue
        block = store.parent_block()
        assert block is not None
        parts = _split_loop(loop, pieces)
        for k, part in enumerate(parts):
            block.insert_ops_before([part, _chunk(store, rows // pieces, k)], loop)
        loop.detach()
        loop.erase()
        store.detach()
        store.erase()
        done += 1
    return done


def _is_store(op: Operation, scratch: set[str]) -> bool:
    """A DMA out of a scratch block of rank >= 2 to a buffer outside the tiles."""
    if not isinstance(op, maia.DmaOp):
        return False
    src, dst = maia.attr(op, "src"), maia.attr(op, "dst")
    return src["buf"] in scratch and dst["buf"] not in scratch and len(src["shape"]) >= 2


def rotate_last_store(loop: maia.LoopOp, scratch: set[str]) -> bool:
    """A 1-D loop of ``n`` trips whose body ends in a store: run the store of iteration i
    first in iteration i + 1 (iteration 0 without it peeled before the loop, the last
    store after it). The same instructions in the same order; the store then precedes
    the next job's K loop, where `interleave_block` can spread it."""
    trips = list(maia.attr(loop, "trips"))
    ops = list(loop.body.block.ops)
    if (len(trips) != 1 or trips[0] < 2 or not _is_store(ops[-1], scratch)
            or not any(isinstance(o, maia.LoopOp) for o in ops[:-1])):
        return False  # (no K loop in the body: nothing to spread the store over)
    n, idx, store = trips[0], _loop_depth(loop), ops[-1]

    def at(k: int) -> Any:
        def fn(acc: dict[str, Any]) -> dict[str, Any]:
            ls = list(acc["ls"])
            if len(ls) > idx:
                acc["off"] = acc["off"] + k * ls[idx]
                del ls[idx]
            acc["ls"] = ls
            return acc
        return fn

    def next_iteration(acc: dict[str, Any]) -> dict[str, Any]:
        if len(acc["ls"]) > idx:
            acc["off"] = acc["off"] + acc["ls"][idx]
        return acc

    first = [op.clone() for op in ops[:-1]]
    for op in first:
        rewrite_accesses(op, at(0))
    last = store.clone()
    rewrite_accesses(last, at(n - 1))
    for op in ops[:-1]:
        rewrite_accesses(op, next_iteration)
    store.detach()
    loop.body.block.insert_op_before(store, ops[0])
    loop.attributes["trips"] = maia.to_attr([n - 1])
    parent = loop.parent_block()
    assert parent is not None
    parent.insert_ops_before(first, loop)
    parent.insert_ops_after([last], loop)
    return True


class InterleaveStoresPass(ModulePass):
    """Spread each job's result store over the next job's K loop (see the module doc)."""

    name = "interleave-stores"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for kernel in list(op.walk()):
            if not isinstance(kernel, maia.KernelOp):
                continue
            scratch = {maia.attr(b, "sym") for b in kernel.body.block.ops
                       if isinstance(b, maia.BufferOp)}
            for loop in [o for o in kernel.walk() if isinstance(o, maia.LoopOp)]:
                rotate_last_store(loop, scratch)
            blocks = [kernel.body.block] + [o.body.block for o in kernel.walk()
                                            if isinstance(o, maia.LoopOp)]
            for block in blocks:
                if block.parent_op() is not None:  # not a K loop a split replaced
                    interleave_block(list(block.ops), scratch)
