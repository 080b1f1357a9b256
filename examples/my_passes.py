"""A pass plugin: ``fuse-erf-gelu`` turns the erf form of GELU into one TVP instruction.

Exporters (torch.onnx TorchScript, ``maiac.models``) write GELU as five elementwise ops:

    0.5 * x * (1 + erf(x / sqrt(2)))

After ``lower-onnx-to-maia`` that is five ``maia.binary``/``maia.unary`` ops, each a
round trip through SRAM. This pass rewrites the pattern into one
``maia.unary {fn = "gelu"}``. Use it from the command line:

    maiac compile model.onnx -o model.maia --load-pass-plugin examples/my_passes.py \\
        --pipeline "fold-constants,canonicalize,lower-onnx-to-maia,fuse-erf-gelu,tile,plan-memory"

or from Python: ``import my_passes`` then ``maiac.compile(..., pipeline=[..., "fuse-erf-gelu",
...])`` (or pass a ``FuseErfGeluPass(tol=1e-3)`` object). See docs/pass-authors.md.
"""

from __future__ import annotations

import math

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.ir.resources import constant_value
from maiac.passes import register_pass


def scalar(value: SSAValue) -> float | None:
    """The number ``value`` holds if it is a one-element ``maia.constant``, else None."""
    op = value.owner
    if not isinstance(op, maia.ConstantOp):
        return None
    array = constant_value(op.attributes["value"])
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def binary(value: SSAValue, fn: str) -> tuple[SSAValue, SSAValue] | None:
    """The operands of ``value``'s defining op if it is ``maia.binary {fn = fn}``."""
    op = value.owner
    if isinstance(op, maia.BinaryOp) and op.attributes["fn"] == StringAttr(fn):
        return op.ins[0], op.ins[1]
    return None


class FuseErfGelu(RewritePattern):
    """``(x * 0.5) * (erf(x / sqrt2) + 1)`` → ``maia.unary(x) {fn = "gelu"}``."""

    def __init__(self, tol: float) -> None:
        self.tol = tol

    def near(self, value: SSAValue, want: float) -> bool:
        got = scalar(value)
        return got is not None and abs(got - want) <= self.tol

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        root = binary(op.results[0], "mul") if isinstance(op, maia.BinaryOp) else None
        for half_x, one_plus in (root, root[::-1]) if root else ():
            half = binary(half_x, "mul")          # x * 0.5
            add = binary(one_plus, "add")         # erf(...) + 1
            if not half or not add or not self.near(half[1], 0.5) or not self.near(add[1], 1.0):
                continue
            erf = add[0].owner
            if not isinstance(erf, maia.UnaryOp) or erf.attributes["fn"] != StringAttr("erf"):
                continue
            div = binary(erf.ins[0], "div")       # x / sqrt(2)
            if not div or div[0] != half[0] or not self.near(div[1], math.sqrt(2.0)):
                continue
            gelu = maia.UnaryOp.create(
                operands=[half[0]], result_types=[op.results[0].type],
                attributes={"op": op.attributes["op"], "fn": StringAttr("gelu")})
            rewriter.replace(op, gelu)
            erase_dead(rewriter, [half_x.owner, one_plus.owner, erf, erf.ins[0].owner])
            return


def erase_dead(rewriter: PatternRewriter, ops: list[Operation]) -> None:
    """Erase each of ``ops`` (and then its constant operands) once nothing uses it."""
    for op in ops:
        if all(not r.uses for r in op.results):
            constants = list(dict.fromkeys(
                v.owner for v in op.operands if isinstance(v.owner, maia.ConstantOp)))
            rewriter.erase(op)
            erase_dead(rewriter, constants)


@register_pass
class FuseErfGeluPass(ModulePass):
    """Fuse the erf form of GELU (5 maia ops) into one maia.unary {fn = "gelu"}."""

    name = "fuse-erf-gelu"
    tol: float = 1e-6  # how far the constants 0.5, 1 and sqrt(2) may be from exact

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseErfGelu(self.tol)).rewrite_module(op)

