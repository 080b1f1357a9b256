"""Tiling of collectives: one network instruction over the whole tensor.

The network DMA engines move HBM (or CSRAM) blocks between chips, so a collective needs
no TSRAM: ``src`` is the operand's buffer, ``dst`` the result's. An all-gather along
``axis`` writes chip ``c``'s block at offset ``c * m`` of that axis (``m`` = the operand's
extent), so the result is the concatenation in rank order with no copy after it.
"""

from __future__ import annotations

from typing import Any

from xdsl.ir import Operation

from maiac.ir import maia
from maiac.passes.tiling.common import Access, Kernel, Tensor, contiguous
from maiac.runtime.errors import MaiacError


def collective_op(collective: str, src: Access, dst: Access, chips: int, rank: int,
                  peer: int = -1) -> Any:
    extra = {"peer": peer} if peer >= 0 else {}
    return maia.instruction(maia.CollectiveOp, collective=collective, src=src.to_dict(),
                            dst=dst.to_dict(), chips=chips, rank=rank, grid=[1], **extra)


def tile_p2p(kernel: Kernel, op: Operation, block: Tensor) -> None:
    """A send (``block`` = its operand) or recv (``block`` = its result) between pipeline
    stages: global chip numbers from the stage and the tensor-parallel rank (a stage of
    ``tp`` chips: chip ``stage * tp + tp_rank``, sending to the same rank of ``peer``)."""
    tp, tp_rank = maia.attr(op, "tp", 1), maia.attr(op, "tp_rank", 0)
    stage, peer, stages = maia.attr(op, "stage"), maia.attr(op, "peer"), maia.attr(op, "stages")
    shape = block.shape or (1,)
    acc = Access(block.buf, block.dtype, shape, contiguous(shape), block.off)
    kind = "send" if isinstance(op, maia.SendOp) else "recv"
    kernel.body.append(collective_op(kind, acc, acc, stages * tp, stage * tp + tp_rank,
                                     peer * tp + tp_rank))


def tile_collective(kernel: Kernel, op: Operation, x: Tensor, out: Tensor) -> None:
    chips, rank = maia.attr(op, "chips"), maia.attr(op, "rank")
    shape = x.shape or (1,)
    src = Access(x.buf, x.dtype, shape, contiguous(shape), x.off)
    if isinstance(op, maia.AllReduceOp):
        dst = Access(out.buf, out.dtype, shape, contiguous(shape), out.off)
        kernel.body.append(collective_op("all_reduce", src, dst, chips, rank))
        return
    axis = maia.attr(op, "axis", -1) % len(out.shape)
    if out.shape[axis] != chips * shape[axis]:
        raise MaiacError(f"all_gather over {chips} chips of {list(shape)} along axis {axis} "
                         f"cannot make {list(out.shape)}")
    full = contiguous(out.shape)
    dst = Access(out.buf, out.dtype, (chips, *shape), (shape[axis] * full[axis], *full),
                 out.off)
    kernel.body.append(collective_op("all_gather", src, dst, chips, rank))
