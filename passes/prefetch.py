"""`prefetch`: let the next op's weights stream in while the current op computes.

Three things make a kernel's weight DMAs independent of the kernel before it, so under
the asynchronous semantics (``sync``) they start as soon as their queue and their
TSRAM bytes are free — during the previous op:

* queues by role: activation loads on ``dma0``, write-backs (TSRAM → anywhere) on
  ``dma1``, constant (weight) loads alternating on ``dma2``/``dma3`` (queue order is
  program order, so a weight load never queues behind a write-back that waits for
  compute);
* TSRAM ping-pong: the function gets ``maia.tsram_pingpong``; ``plan-memory`` then puts
  the scratch of odd kernels at the top of TSRAM and of even ones at the bottom, so two
  consecutive kernels use disjoint bytes whenever they fit together (the tiler keeps
  blocks to a share of TSRAM: ``tile{buffers=4}``);
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
    for kernel in fn.body.block.ops:
        if not isinstance(kernel, maia.KernelOp):
            continue
        weights = 0
        for op in kernel.walk():
            if not isinstance(op, maia.DmaOp | maia.GatherRowsOp):
                continue
            accs = {key: acc for key, _, acc in access_items(op)}
            src = accs.get("src") or accs.get("table")
            dst = accs.get("dst")
            src_kind, src_level = kinds.get(src["buf"], ("", "")) if src else ("", "")
            dst_kind, dst_level = kinds.get(dst["buf"], ("", "")) if dst else ("", "")
            if src_kind == "const":
                queue = WEIGHT_QUEUES[weights % len(WEIGHT_QUEUES)]
                weights += 1
            elif src_kind == "scratch" and dst_kind != "scratch":
                queue = WRITEBACK_QUEUE
            else:
                queue = ACT_QUEUE
            op.attributes["queue"] = maia.to_attr(queue)


class PrefetchPass(ModulePass):
    """DMA queues by role and TSRAM ping-pong between kernels (weights prefetch)."""

    name = "prefetch"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                assign_queues(fn)
                fn.attributes["maia.tsram_pingpong"] = maia.to_attr(True)
