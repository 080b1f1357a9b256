"""`rotate-hadamard`: block-Hadamard rotation of matmul inputs before FP4/FP8 quantization.

``x @ W = (x H) @ (Hᵀ W)`` for an orthonormal ``H``. With ``H`` block-diagonal of
normalized Sylvester-Hadamard blocks of size ``block`` (the MX group size, 32), each
group of 32 activations is spread evenly over the group before it is quantized, so one
outlier no longer forces a large shared scale onto its 31 neighbours; the weight
``Hᵀ W = H W`` (``H`` is symmetric) is rotated once at compile time. This is the rotation
of QuaRot (Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs",
NeurIPS 2024, arXiv:2404.00456), applied per group as for microscaling formats by
Egiazarian et al., "Bridging the Gap Between Promise and Performance for Microscaling
FP4 Quantization" (arXiv:2509.23202): block rotations of the group size.

Where the input of a rotated matmul is produced by another matmul with a constant weight
and no nonlinear epilogue (``y = z @ Wp + b``), the rotation is merged into that weight
(``Wp H``, ``b H``) and the machine runs no extra op. Otherwise ``x H`` is computed on the
machine by a small matmul over ``[..., K/block, block]`` (``block`` MACs per element,
``block / N`` of the rotated matmul's), marked ``rotation`` so `quantize` keeps it fp32.
An activation feeding several matmuls (q, k, v) is rotated once.

Opt-in: ``--quant "mxfp4,method=hadamard"`` puts this pass before `quantize`, or name it
in a pipeline (``rotate-hadamard{block=32}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import label, new_constant, new_op
from maiac.passes.quantize import constant_of
from maiac.runtime.errors import MaiacError

ROTATION_ATTR = "rotation"  # the x @ H matmul this pass adds
ROTATED_INPUT_ATTR = "hadamard_in"  # a matmul whose input (and weight) are rotated


def hadamard(n: int) -> np.ndarray:
    """The normalized Sylvester-Hadamard matrix of order ``n`` (a power of two), fp64."""
    if n < 1 or n & (n - 1):
        raise MaiacError(f"rotate-hadamard: block {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotate_rows(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``blockdiag(H) @ w`` for ``w`` [K, N]: each group of ``b`` rows mixed by ``H``
    (computed in float64, returned in ``w``'s dtype)."""
    k, n = w.shape
    b = h.shape[0]
    return np.einsum("ij,gjn->gin", h, w.astype(np.float64).reshape(k // b, b, n)
                     ).reshape(k, n).astype(w.dtype)


def rotate_cols(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``w @ blockdiag(H)`` for ``w`` [..., N]: each group of ``b`` columns mixed (in
    float64, returned in ``w``'s dtype)."""
    b = h.shape[0]
    lead, n = w.shape[:-1], w.shape[-1]
    g = w.astype(np.float64).reshape(*lead, n // b, b)
    return np.einsum("...gj,jk->...gk", g, h).reshape(w.shape).astype(w.dtype)


def _plain_weight_matmul(op: Operation | None) -> bool:
    """A matmul whose output is ``a @ W (+ bias)`` with a constant 2-D fp32 W."""
    if not isinstance(op, maia.MatMulOp) or maia.attr(op, ROTATION_ATTR):
        return False
    if any(maia.attr(op, k) for k in ("act", "glu", "residual")):
        return False
    w = constant_of(op.operands[1])
    return w is not None and w.ndim == 2 and w.dtype == np.float32


@dataclass(frozen=True)
class RotateHadamardPass(ModulePass):
    """Rotate every constant-weight matmul's input by block Hadamard matrices (QuaRot)."""

    name = "rotate-hadamard"

    block: int = 32

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        h = hadamard(self.block)
        targets = [m for m in op.walk() if isinstance(m, maia.MatMulOp)
                   and not maia.attr(m, ROTATION_ATTR) and self._rotatable(m)]
        rotated: dict[SSAValue, SSAValue] = {}
        target_ids = {id(m) for m in targets}
        for mm in targets:
            x = mm.operands[0]
            if x not in rotated:
                rotated[x] = self._rotated_input(x, mm, h, target_ids)
            w = constant_of(mm.operands[1])
            assert w is not None
            const = new_constant(rotate_rows(w, h), f"{label(mm)}.w.hadamard")
            mm.parent_block().insert_op_before(const, mm)  # type: ignore[union-attr]
            old_w = mm.operands[1]
            mm.operands = [rotated[x], const.results[0], *mm.operands[2:]]
            mm.attributes[ROTATED_INPUT_ATTR] = maia.to_attr(self.block)
            if not old_w.uses and old_w.owner is not None:
                old_w.owner.detach()
                old_w.owner.erase()

    def _rotatable(self, mm: maia.MatMulOp) -> bool:
        w = constant_of(mm.operands[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            return False
        k = w.shape[0]
        return k % self.block == 0 and tensor_shape(mm.operands[0].type)[-1] == k

    def _rotated_input(self, x: SSAValue, user: Operation, h: np.ndarray,
                       target_ids: set[int]) -> SSAValue:
        producer = x.owner
        # merge only when every reader of x is a matmul this pass rotates (and reads x
        # as its activation), so nobody sees the rotated values unrotated
        if (_plain_weight_matmul(producer) and all(
                id(u.operation) in target_ids and u.index == 0 for u in x.uses)):
            return self._merge_into_producer(producer, h)  # type: ignore[arg-type]
        return self._rotate_online(x, user, h)

    def _merge_into_producer(self, mm: maia.MatMulOp, h: np.ndarray) -> SSAValue:
        """``(z @ Wp + b) H = z @ (Wp H) + b H``: no op on the machine."""
        w = constant_of(mm.operands[1])
        assert w is not None
        new_ops = [new_constant(rotate_cols(w, h), f"{label(mm)}.w.hadamard_out")]
        operands = [mm.operands[0], new_ops[0].results[0]]
        if len(mm.operands) > 2:
            bias = constant_of(mm.operands[2])
            if bias is None:
                raise MaiacError(f"rotate-hadamard: {label(mm)} has a non-constant bias")
            new_ops.append(new_constant(rotate_cols(bias, h), f"{label(mm)}.b.hadamard_out"))
            operands.append(new_ops[1].results[0])
        block = mm.parent_block()
        assert block is not None
        for c in new_ops:
            block.insert_op_before(c, mm)
        mm.operands = operands
        mm.attributes["hadamard_out"] = maia.to_attr(h.shape[0])
        return mm.results[0]

    def _rotate_online(self, x: SSAValue, user: Operation, h: np.ndarray) -> SSAValue:
        """``x H`` on the machine: reshape to [..., K/b, b], matmul by H, reshape back."""
        shape = tensor_shape(x.type)
        b = h.shape[0]
        grouped = TensorType(f32, (*shape[:-1], shape[-1] // b, b))
        name = f"{label(user)}.hadamard"
        ops = [new_op(maia.ReshapeOp, [x], grouped, op=f"{name}.group")]
        ops.append(new_constant(h.astype(np.float32), f"{name}.H"))
        ops.append(new_op(maia.MatMulOp, [ops[0].results[0], ops[1].results[0]], grouped,
                          op=name, **{ROTATION_ATTR: True}))
        ops.append(new_op(maia.ReshapeOp, [ops[2].results[0]], x.type, op=f"{name}.ungroup"))
        anchor = x.owner if isinstance(x.owner, Operation) else None
        block = user.parent_block()
        assert block is not None
        if anchor is not None and anchor.parent_block() is block:
            for o in reversed(ops):
                block.insert_op_after(o, anchor)
        else:  # a block argument: rotate at the top of the block
            first = block.first_op
            for o in ops:
                block.insert_op_before(o, first) if first is not None else block.add_op(o)
        return ops[-1].results[0]
