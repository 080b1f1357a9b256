"""`prefetch`: let the next op's weights stream in while the current op computes.

Three things make a kernel's weight DMAs independent of the kernel before it, so under
the asynchronous semantics (``sync``) they start as soon as their queue and their
TSRAM bytes are free — during the previous op:

* queues by role: activation loads on ``dma0``, write-backs (TSRAM → anywhere) on
  ``dma1``, constant (weight) loads alternating on ``dma2``/``dma3`` (queue order is
  program order, so a weight load never queues behind a write-back that waits for
  compute); so do copies of a program input that stay outside the tiles (a KV cache
  concatenated with the new row: the past part depends on no compute, so it streams
  from HBM early instead of queueing behind the activation loads), and so do the loads
  a tiler put on queue 1 (a matmul's ``b`` block read from an activation, attention's
  V): a kernel's two streamed operands then load side by side, not one after the other;
* a TSRAM ring: the function gets ``maia.tsram_pingpong``; ``plan-memory`` then puts
  each kernel's scratch right after the previous kernel's, wrapping to 0 at the end, so
  consecutive kernels use disjoint bytes as long as their working sets fit together
  (decode: the next few matmuls' weight slices load while attention and norms run);
* weights that fit stay resident in CSRAM across calls (``plan-memory{resident=true}``),
  so they need no HBM traffic at all.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.passes.schedule import access_items

ACT_QUEUE, WRITEBACK_QUEUE, WEIGHT_QUEUES = 0, 1, (2, 3)


def assign_queues(fn: func.FuncOp) -> None:
    """Give every DMA/gather the queue of its role (see module docstring)."""
    kinds = {maia.attr(b, "sym"): (maia.attr(b, "kind"), maia.attr(b, "level"))
             for b in fn.walk() if isinstance(b, maia.BufferOp)}
    weights = 0  # alternates across kernels: the next op's weights queue beside this op's
    for kernel in fn.body.block.ops:
        if not isinstance(kernel, maia.KernelOp):
            continue
        for op in kernel.walk():
            if not isinstance(op, maia.DmaOp | maia.GatherRowsOp):
                continue
            accs = {key: acc for key, _, acc in access_items(op)}
            src = accs.get("src") or accs.get("table")
            dst = accs.get("dst")
            src_kind, src_level = kinds.get(src["buf"], ("", "")) if src else ("", "")
            dst_kind, dst_level = kinds.get(dst["buf"], ("", "")) if dst else ("", "")
            second = (dst_kind == "scratch" and src_kind != "scratch"
                      and maia.attr(op, "queue", 0) == 1)
            if src_kind == "const" or (src_kind == "input" and dst_kind != "scratch") \
                    or second:
                queue = WEIGHT_QUEUES[weights % len(WEIGHT_QUEUES)]
                weights += 1
            elif src_kind == "scratch" and dst_kind != "scratch":
                queue = WRITEBACK_QUEUE
            else:
                queue = ACT_QUEUE
            op.attributes["queue"] = maia.to_attr(queue)


class PrefetchPass(ModulePass):
    """DMA queues by role and a TSRAM ring across kernels (weights prefetch)."""

    name = "prefetch"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                assign_queues(fn)
                fn.attributes["maia.tsram_pingpong"] = maia.to_attr(True)
