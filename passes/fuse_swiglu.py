"""`fuse-swiglu`: the gated MLP of Llama/Qwen2, ``silu(x @ Wg) * (x @ Wu)``, in one matmul.

First ``x * sigmoid(x)`` becomes ``maia.unary {fn = silu}``; then the product of a
gate matmul's SiLU with anything of the same shape (the up projection) becomes the gate
matmul with ``act = silu`` and the ``residual = mul`` epilogue: the up projection's
block is multiplied in TSRAM before the gate result is ever stored, so neither the
gate activations nor the SiLU output make a round trip through HBM.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_epilogue import matmul_source, rebuild
from maiac.passes.fuse_match import commuted, erase_dead, label, new_op, same_shape, unary


class FuseSilu(RewritePattern):
    """``x * sigmoid(x)`` → ``silu(x)``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        for x, s in commuted(op):
            sig = unary(s, "sigmoid")
            if sig is not None and sig.operands[0] is x and same_shape(x, op.results[0]):
                rewriter.replace(op, new_op(maia.UnaryOp, [x], op.results[0].type,
                                               op=label(op), fn="silu"))
                erase_dead([sig], rewriter)
                return


class FuseGatedMatmul(RewritePattern):
    """``silu(x @ Wg) * u`` → ``matmul(x, Wg) {act = silu, residual = mul}(u)``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        out = tensor_shape(op.results[0].type)
        for gate, up in commuted(op):
            act = unary(gate, "silu")
            if act is None or not gate.has_one_use() or tensor_shape(up.type) != out:
                continue
            src = matmul_source(act.operands[0])
            if src is None or src.act or src.residual or tensor_shape(gate.type) != out:
                continue
            rebuild(op, src, rewriter, act="silu", residual=("mul", up), consumed=(act,))
            return


@dataclass(frozen=True)
class FuseSwigluPass(ModulePass):
    """SiLU and the SwiGLU gate product → one gated ``maia.matmul``."""

    name = "fuse-swiglu"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for pattern in (FuseSilu(), FuseGatedMatmul()):
            PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
