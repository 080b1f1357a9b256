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


def collective_op(collective: str, src: Access, dst: Access, chips: int, rank: int) -> Any:
    return maia.instruction(maia.CollectiveOp, collective=collective, src=src.to_dict(),
                            dst=dst.to_dict(), chips=chips, rank=rank, grid=[1])


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
