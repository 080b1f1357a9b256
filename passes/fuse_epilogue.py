"""`fuse-epilogue`: bias, activation and residual add folded into the ``maia.matmul``.

``act(a @ b + bias) + r`` runs as one kernel: the TTU result block stays in TSRAM while
the TVP adds the bias row, applies the activation and adds the residual block, then
one DMA stores it (passes/tiling/matmul.py). Three patterns, applied in program order:

* bias: ``add(mm, v)``, ``v`` of shape ``[N]`` (or ``[1, .., N]``), ``mm`` plain;
* activation: ``unary{fn}(mm)`` for the TVP activations, ``mm`` without act/residual;
* residual: ``add(mm, r)``, any ``r`` broadcasting to the result, ``mm`` without residual.

The matmul result may reach its consumer through ``maia.reshape`` aliases (Gemm on
flattened rows, then reshaped back); the fused matmul keeps its own shape and is
reshaped again. Only results with no other reader are fused.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
)
from xdsl.rewriter import InsertPoint

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import commuted, erase_dead, last_axis_vector, new_op

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")


@dataclass
class MatmulSource:
    """A plain-read matmul behind ``value``: the op and the reshapes in between."""

    op: Operation
    reshapes: list[Operation]

    @property
    def has_bias(self) -> bool:
        return len(self.op.operands) > (3 if self.residual else 2)

    @property
    def act(self) -> str | None:
        return maia.attr(self.op, "act")

    @property
    def residual(self) -> str | None:
        return maia.attr(self.op, "residual")


def matmul_source(value: SSAValue) -> MatmulSource | None:
    """The matmul ``value`` is (through single-use reshapes), if nothing else reads it."""
    reshapes = []
    while isinstance(value.owner, Operation) and value.owner.name == "maia.reshape":
        if not value.has_one_use():
            return None
        reshapes.append(value.owner)
        value = value.owner.operands[0]
    owner = value.owner
    if not isinstance(owner, Operation) or owner.name != "maia.matmul":
        return None
    if not value.has_one_use() or maia.attr(owner, "fmt") not in (None, "f32"):
        return None
    return MatmulSource(owner, reshapes)


def rebuild(root: Operation, src: MatmulSource, rewriter: PatternRewriter, *,
            bias: SSAValue | None = None, act: str | None = None,
            residual: tuple[str, SSAValue] | None = None,
            consumed: tuple[Operation, ...] = ()) -> None:
    """Replace ``root`` by ``src``'s matmul with one more epilogue (reshaped to ``root``).

    ``consumed``: ops between the matmul and ``root`` that die with it (an activation).
    """
    mm = src.op
    a, b = mm.operands[:2]
    old_bias = mm.operands[2] if src.has_bias else None
    old_residual = mm.operands[-1] if src.residual else None
    ins = [a, b]
    if bias is not None or old_bias is not None:
        ins.append(bias if bias is not None else old_bias)
    attrs = {k: v for k, v in mm.attributes.items()}
    if act is not None:
        attrs["act"] = maia.to_attr(act)
    new_ops: list[Operation] = []
    if residual is not None:
        fn, r = residual
        mm_shape = tensor_shape(mm.results[0].type)
        if tensor_shape(r.type) != mm_shape and tensor_shape(r.type) == tensor_shape(root.results[0].type):
            reshape = new_op(maia.ReshapeOp, [r], TensorType(r.type.get_element_type(),
                                                               list(mm_shape)), op="residual")
            new_ops.append(reshape)
            r = reshape.results[0]
        ins.append(r)
        attrs["residual"] = maia.to_attr(fn)
    elif old_residual is not None:
        ins.append(old_residual)
    fused = maia.MatMulOp.create(operands=ins, result_types=[mm.results[0].type],
                                 attributes=attrs)
    new_ops.append(fused)
    result = fused.results[0]
    if tensor_shape(result.type) != tensor_shape(root.results[0].type):
        back = new_op(maia.ReshapeOp, [result], root.results[0].type, op=maia.attr(root, "op"))
        new_ops.append(back)
        result = back.results[0]
    rewriter.replace(root, new_ops, [result])
    erase_dead([*consumed, *src.reshapes, mm], rewriter)


def _broadcasts_to(value: SSAValue, shape: tuple[int, ...]) -> bool:
    own = tensor_shape(value.type)
    if len(own) > len(shape):
        return False
    return all(o in (1, s) for o, s in zip(own[::-1], shape[::-1], strict=False))


class FuseBias(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "add":
            return
        out = tensor_shape(op.results[0].type)
        for x, vec in commuted(op):
            src = matmul_source(x)
            if src is None or src.has_bias or src.act or src.residual:
                continue
            n = tensor_shape(src.op.results[0].type)[-1]
            if tensor_shape(x.type) != out or out[-1] != n or not last_axis_vector(vec, n):
                continue
            if vec.type.get_element_type() != x.type.get_element_type():
                continue
            if tensor_shape(vec.type) != (n,):
                reshape = new_op(maia.ReshapeOp, [vec], TensorType(vec.type.get_element_type(),
                                                                   [n]), op="bias")
                rewriter.insert(reshape, InsertPoint.before(op))
                vec = reshape.results[0]
            rebuild(op, src, rewriter, bias=vec)
            return


class FuseActivation(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.unary" or maia.attr(op, "fn") not in ACTIVATIONS:
            return
        if op.results[0].type != op.operands[0].type:
            return
        src = matmul_source(op.operands[0])
        if src is None or src.act or src.residual:
            return
        rebuild(op, src, rewriter, act=maia.attr(op, "fn"))


class FuseResidual(RewritePattern):
    """``add(mm, r)`` (``fn = add``), or any binary ``fn`` listed in ``fns``."""

    def __init__(self, fns: tuple[str, ...] = ("add",)) -> None:
        self.fns = fns

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") not in self.fns:
            return
        out = tensor_shape(op.results[0].type)
        for x, r in commuted(op):
            src = matmul_source(x)
            if src is None or src.residual or tensor_shape(x.type) != out or r is x:
                continue
            if r.type.get_element_type() != x.type.get_element_type():
                continue
            mm_shape = tensor_shape(src.op.results[0].type)
            if not (_broadcasts_to(r, mm_shape) or tensor_shape(r.type) == out):
                continue
            rebuild(op, src, rewriter, residual=(maia.attr(op, "fn"), r))
            return


EPILOGUE_PATTERNS: list[RewritePattern] = [FuseBias(), FuseActivation(), FuseResidual()]


@dataclass(frozen=True)
class FuseEpiloguePass(ModulePass):
    """Bias add, activation and residual add → epilogues of the producing matmul."""

    name = "fuse-epilogue"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(GreedyRewritePatternApplier(list(EPILOGUE_PATTERNS))
                             ).rewrite_module(op)
