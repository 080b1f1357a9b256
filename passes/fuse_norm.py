"""`fuse-norm`: decomposed LayerNorm / RMSNorm chains → one ``maia.norm``.

Exporters that predate (or avoid) ``LayerNormalization`` spell the norms out:

* LayerNorm (TorchScript BERT/ViT): ``d = x - mean(x)``; ``v = mean(d ** 2)``;
  ``y = d / sqrt(v + eps) * g + b``.
* RMSNorm (Llama, Qwen2): ``v = mean(x ** 2)``; ``y = g * (x * (1 / sqrt(v + eps)))``
  (``Reciprocal(Sqrt)``, ``Div(1, Sqrt)``, ``rsqrt`` or ``x / sqrt`` all match).

Both become ``maia.norm {fn = layernorm | rmsnorm, eps}`` over the last axis, which the
TVP runs as one row instruction instead of 7-9 elementwise kernels and their HBM round
trips. The reductions must be over the last axis (the ``maia.reduce`` of the lowering).
The walk goes backwards, so the largest pattern (with scale and bias) is seen first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import (
    as_vector,
    binary,
    commuted,
    erase_dead,
    is_scalar,
    label,
    last_axis_vector,
    new_constant,
    new_op,
    producer,
    scalar,
    unary,
)


@dataclass
class NormCore:
    """``x`` normalized by its RMS (``fn=rmsnorm``) or std (``fn=layernorm``)."""

    x: SSAValue
    fn: str
    eps: float
    ops: list[Operation]


def _mean_square(value: SSAValue, d: SSAValue) -> list[Operation] | None:
    """``value = reduce_mean(d * d)`` over the last axis (``d ** 2`` or ``d * d``)."""
    red = producer(value, "maia.reduce", "reduce_mean")
    if red is None or tensor_shape(red.operands[0].type) != tensor_shape(d.type):
        return None
    sq_val = red.operands[0]
    if (sq := binary(sq_val, "pow")) is not None:
        if sq.operands[0] is d and is_scalar(sq.operands[1], 2.0):
            return [red, sq]
    if (sq := binary(sq_val, "mul")) is not None and sq.operands[0] is d and sq.operands[1] is d:
        return [red, sq]
    return None


def _variance_plus_eps(value: SSAValue, d: SSAValue) -> tuple[float, list[Operation]] | None:
    """``value = mean(d ** 2) + eps``."""
    add = binary(value, "add")
    if add is None:
        return None
    for var, eps in commuted(add):
        eps_value = scalar(eps)
        if eps_value is not None and (ops := _mean_square(var, d)) is not None:
            return eps_value, [add, *ops]
    return None


def _std(value: SSAValue, d: SSAValue) -> tuple[float, list[Operation]] | None:
    """``value = sqrt(mean(d ** 2) + eps)``."""
    sq = unary(value, "sqrt")
    if sq is None or (found := _variance_plus_eps(sq.operands[0], d)) is None:
        return None
    return found[0], [sq, *found[1]]


def _inv_std(value: SSAValue, d: SSAValue) -> tuple[float, list[Operation]] | None:
    """``value = 1 / sqrt(mean(d ** 2) + eps)`` in its three spellings."""
    if (op := unary(value, "reciprocal")) is not None and (s := _std(op.operands[0], d)):
        return s[0], [op, *s[1]]
    if (op := binary(value, "div")) is not None and is_scalar(op.operands[0], 1.0):
        if (s := _std(op.operands[1], d)) is not None:
            return s[0], [op, *s[1]]
    if (op := unary(value, "rsqrt")) is not None:
        if (v := _variance_plus_eps(op.operands[0], d)) is not None:
            return v[0], [op, *v[1]]
    return None


def match_core(value: SSAValue) -> NormCore | None:
    """``d * inv_std(d)`` or ``d / std(d)``, with ``d = x - mean(x)`` for LayerNorm."""
    found: tuple[SSAValue, float, list[Operation]] | None = None
    if (op := binary(value, "mul")) is not None:
        for d, inv in commuted(op):
            if (s := _inv_std(inv, d)) is not None:
                found = (d, s[0], [op, *s[1]])
                break
    elif (op := binary(value, "div")) is not None:
        d = op.operands[0]
        if (s := _std(op.operands[1], d)) is not None:
            found = (d, s[0], [op, *s[1]])
    if found is None:
        return None
    d, eps, ops = found
    if (sub := binary(d, "sub")) is not None:
        x, mean = sub.operands
        red = producer(mean, "maia.reduce", "reduce_mean")
        if red is not None and red.operands[0] is x:
            return NormCore(x, "layernorm", eps, [*ops, sub, red])
    return NormCore(d, "rmsnorm", eps, ops)


def _affine(op: Operation, fn: str, n: int) -> tuple[SSAValue, SSAValue] | None:
    """(inner, vector) if ``op`` is ``inner <fn> vector`` with a per-channel ``vector``."""
    if op.name != "maia.binary" or maia.attr(op, "fn") != fn:
        return None
    for inner, vec in commuted(op):
        if last_axis_vector(vec, n) and tensor_shape(inner.type) == tensor_shape(op.results[0].type):
            return inner, vec
    return None


class FuseNorm(RewritePattern):
    """``[(core * g) + b]`` with a LayerNorm/RMSNorm core → ``maia.norm``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or not op.results[0].uses:
            return
        n = tensor_shape(op.results[0].type)[-1] if tensor_shape(op.results[0].type) else 0
        if n == 0:
            return
        scale = bias = None
        inner = op.results[0]
        if (found := _affine(op, "add", n)) is not None:
            mul = producer(found[0], "maia.binary", "mul")
            scaled = _affine(mul, "mul", n) if mul is not None else None
            if scaled is not None and (core := match_core(scaled[0])) is not None \
                    and core.fn == "layernorm":
                self._replace(op, core, scaled[1], found[1], [mul], rewriter)
                return
        if (scaled := _affine(op, "mul", n)) is not None:
            inner, scale = scaled
            if (core := match_core(inner)) is not None:
                self._replace(op, core, scale, bias, [], rewriter)
                return
        if (core := match_core(op.results[0])) is not None:
            self._replace(op, core, None, None, [], rewriter)

    @staticmethod
    def _replace(root: Operation, core: NormCore, scale: SSAValue | None,
                 bias: SSAValue | None, extra: list[Operation],
                 rewriter: PatternRewriter) -> None:
        if tensor_shape(core.x.type) != tensor_shape(root.results[0].type):
            return
        n = tensor_shape(core.x.type)[-1]
        dtype = np.float32
        if scale is None:
            ones = new_constant(np.ones(n, dtype), "norm_scale")
            rewriter.insert(ones, _at(root))
            scale = ones.results[0]
        params = [as_vector(scale, n, rewriter, root)]
        if bias is not None:
            params.append(as_vector(bias, n, rewriter, root))
        elif core.fn == "layernorm":
            zeros = new_constant(np.zeros(n, dtype), "norm_bias")
            rewriter.insert(zeros, _at(root))
            params.append(zeros.results[0])
        norm = new_op(maia.NormOp, [core.x, *params], root.results[0].type, op=label(root),
                      fn=core.fn, eps=float(core.eps))
        rewriter.replace(root, norm)
        erase_dead([*extra, *core.ops], rewriter)


def _at(op: Operation):  # noqa: ANN202 - an xdsl InsertPoint
    from xdsl.rewriter import InsertPoint

    return InsertPoint.before(op)


@dataclass(frozen=True)
class FuseNormPass(ModulePass):
    """Decomposed LayerNorm and RMSNorm → ``maia.norm``."""

    name = "fuse-norm"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseNorm(), walk_reverse=True,
                             apply_recursively=False).rewrite_module(op)
