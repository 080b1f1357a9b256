"""`fuse-gelu`: GELU spelled out elementwise → one ``maia.unary``.

* erf form (BERT, ViT): ``0.5 * x * (1 + erf(x / sqrt 2))`` → ``fn = gelu``.
* tanh form (GPT-2 ``gelu_new``): ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``
  → ``fn = gelu_tanh``.

The products may be associated either way (``(0.5 x) * (1 + ...)``, ``(x * (1 + ...)) *
0.5``) and either operand order; ``x / sqrt 2`` may be ``x * (1/sqrt 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.passes.fuse_match import (
    binary,
    commuted,
    erase_dead,
    is_scalar,
    label,
    new_op,
    same_shape,
    unary,
)

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TOL = 1e-3  # exporters print these constants with 4-8 digits


def mul_leaves(value: SSAValue, depth: int = 3) -> tuple[list[SSAValue], list[Operation]]:
    """The factors of a tree of ``mul`` ops rooted at ``value`` (single-use inner nodes)."""
    op = binary(value, "mul")
    if op is None or depth == 0:
        return [value], []
    leaves: list[SSAValue] = []
    ops = [op]
    for operand in op.operands:
        inner = binary(operand, "mul")
        if inner is not None and operand.has_one_use():
            sub, sub_ops = mul_leaves(operand, depth - 1)
            leaves += sub
            ops += sub_ops
        else:
            leaves.append(operand)
    return leaves, ops


def _scaled(value: SSAValue, x: SSAValue, factor: float) -> Operation | None:
    """``value = x * factor`` or ``x / (1/factor)``."""
    if (op := binary(value, "mul")) is not None:
        for a, c in commuted(op):
            if a is x and is_scalar(c, factor, TOL):
                return op
    if (op := binary(value, "div")) is not None and op.operands[0] is x:
        if is_scalar(op.operands[1], 1.0 / factor, TOL):
            return op
    return None


def _cube_term(value: SSAValue, x: SSAValue) -> list[Operation] | None:
    """``value = 0.044715 * x^3`` (``pow(x, 3)`` or ``x * x * x``)."""
    op = binary(value, "mul")
    if op is None:
        return None
    for cube, c in commuted(op):
        if not is_scalar(c, 0.044715, TOL):
            continue
        if (p := binary(cube, "pow")) is not None and p.operands[0] is x \
                and is_scalar(p.operands[1], 3.0):
            return [op, p]
        leaves, ops = mul_leaves(cube)
        if len(leaves) == 3 and all(v is x for v in leaves):
            return [op, *ops]
    return None


def _tanh_arg(value: SSAValue, x: SSAValue) -> list[Operation] | None:
    """``value = sqrt(2/pi) * (x + 0.044715 x^3)``."""
    op = binary(value, "mul")
    if op is None:
        return None
    for inner, c in commuted(op):
        if not is_scalar(c, SQRT_2_OVER_PI, TOL) or (add := binary(inner, "add")) is None:
            continue
        for a, cube in commuted(add):
            if a is x and (ops := _cube_term(cube, x)) is not None:
                return [op, add, *ops]
    return None


def _one_plus(value: SSAValue, x: SSAValue) -> tuple[str, list[Operation]] | None:
    """``1 + erf(x / sqrt 2)`` → gelu, ``1 + tanh(...)`` → gelu_tanh."""
    add = binary(value, "add")
    if add is None:
        return None
    for inner, one in commuted(add):
        if not is_scalar(one, 1.0):
            continue
        if (e := unary(inner, "erf")) is not None:
            if (s := _scaled(e.operands[0], x, 1.0 / math.sqrt(2.0))) is not None:
                return "gelu", [add, e, s]
        if (t := unary(inner, "tanh")) is not None:
            if (ops := _tanh_arg(t.operands[0], x)) is not None:
                return "gelu_tanh", [add, t, *ops]
    return None


def match_gelu(root: Operation) -> tuple[SSAValue, str, list[Operation]] | None:
    """(x, fn, matched ops) if ``root`` computes ``0.5 * x * (1 + f(x))``."""
    leaves, ops = mul_leaves(root.results[0])
    # (0.5 * x) may be a factor that has other users, so also look one level into it
    expanded: list[tuple[list[SSAValue], list[Operation]]] = [(leaves, ops)]
    for i, leaf in enumerate(leaves):
        if (inner := binary(leaf, "mul")) is not None:
            expanded.append((leaves[:i] + list(inner.operands) + leaves[i + 1:], [*ops, inner]))
    for factors, mul_ops in expanded:
        if len(factors) != 3:
            continue
        half = [f for f in factors if is_scalar(f, 0.5)]
        rest = [f for f in factors if all(f is not h for h in half)]
        if len(half) != 1 or len(rest) != 2:
            continue
        for x, term in (rest, rest[::-1]):
            if not same_shape(x, root.results[0]):
                continue
            if (found := _one_plus(term, x)) is not None:
                return x, found[0], [*mul_ops, *found[1]]
    return None


class FuseGelu(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        found = match_gelu(op)
        if found is None:
            return
        x, fn, ops = found
        rewriter.replace(op, new_op(maia.UnaryOp, [x], op.results[0].type, op=label(op),
                                       fn=fn))
        erase_dead(ops[1:], rewriter)


@dataclass(frozen=True)
class FuseGeluPass(ModulePass):
    """Decomposed GELU (erf and tanh forms) → ``maia.unary``."""

    name = "fuse-gelu"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseGelu(), walk_reverse=True,
                             apply_recursively=False).rewrite_module(op)
