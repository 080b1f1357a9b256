"""`fuse-rope`: the rotate-half rotary embedding chain → one ``maia.rope``.

Matches what Llama/Qwen2/Mistral exports (TorchScript and dynamo) and
``maiac.models.llama_decoder`` write for ``apply_rotary_pos_emb``, after lowering::

    x1 = x[..., :D/2]                 maia.view (Slice)
    x2 = x[..., D/2:]                 maia.view (Slice)
    r  = concat(-x2, x1, axis=-1)     maia.unary neg, maia.concat
    y  = x * cos + r * sin            maia.binary mul, mul, add (any operand order)

``cos``/``sin`` may be any tensors broadcasting to ``x`` (constant tables or computed
from position ids). ``x`` is read through its view chain (passes/fuse_views.py), so the
``[B, S, H, D] → [B, H, S, D]`` head transpose in front of RoPE is never materialized:
the TVP reads rows of ``D`` straight from the projection's output.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import binary, commuted, erase_dead, label, new_op, producer, unary
from maiac.passes.fuse_views import resolve
from maiac.runtime.isa import contiguous_strides


def _half_slice(value: SSAValue, x: SSAValue, first: bool) -> Operation | None:
    """The ``maia.view`` making ``value = x[..., :D/2]`` (``first``) or ``x[..., D/2:]``."""
    view = producer(value, "maia.view")
    if view is None or view.operands[0] != x or not value.has_one_use():
        return None
    shape = tensor_shape(x.type)
    d = shape[-1]
    if d % 2 or tensor_shape(value.type) != shape[:-1] + (d // 2,):
        return None
    offset = int(maia.attr(view, "offset", 0))
    strides = tuple(maia.attr(view, "strides", ()))
    own = contiguous_strides(shape)
    if offset != (0 if first else d // 2) or len(strides) != len(shape) or any(
            s != o for s, o, e in zip(strides, own, tensor_shape(value.type), strict=True) if e > 1):
        return None
    return view


def _rotate_half(value: SSAValue) -> tuple[SSAValue, list[Operation]] | None:
    """``value = concat(-x[..., D/2:], x[..., :D/2])``: (x, the ops of the chain)."""
    cat = producer(value, "maia.concat")
    if cat is None or len(cat.operands) != 2 or not value.has_one_use():
        return None
    shape = tensor_shape(value.type)
    if int(maia.attr(cat, "axis", -1)) not in (-1, len(shape) - 1):
        return None
    neg_value, first = cat.operands
    neg = unary(neg_value, "neg")
    if neg is None or not neg_value.has_one_use():
        return None
    second = producer(neg.operands[0], "maia.view")
    if second is None:
        return None
    x = second.operands[0]
    if tensor_shape(x.type) != shape:
        return None
    x1, x2 = _half_slice(first, x, True), _half_slice(neg.operands[0], x, False)
    if x1 is None or x2 is None:
        return None
    return x, [cat, neg, x1, x2]


def _view_chain(value: SSAValue) -> list[Operation]:
    """The reshape/view ops ``value`` is read through (erased once nobody reads them)."""
    ops = []
    while isinstance(value.owner, Operation) and value.owner.name in ("maia.reshape", "maia.view"):
        ops.append(value.owner)
        value = value.owner.operands[0]
    return ops


def _broadcasts_to(value: SSAValue, shape: tuple[int, ...]) -> bool:
    own = tensor_shape(value.type)
    if len(own) > len(shape):
        return False
    pad = (1,) * (len(shape) - len(own)) + tuple(own)
    return all(o in (1, s) for o, s in zip(pad, shape, strict=True))


class FuseRope(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "add":
            return
        shape = tensor_shape(op.results[0].type)
        if not shape or shape[-1] % 2:
            return
        for a, b in commuted(op):
            found = self._match(a, b, shape)
            if found is None:
                continue
            x, cos, sin, chain = found
            view = resolve(x, shape)
            if view is None:
                return
            fused = new_op(maia.RopeOp, [view.base, cos, sin], op.results[0].type,
                           op=label(op), x_view=[int(view.offset), *map(int, view.strides)])
            rewriter.replace(op, fused)
            erase_dead([*chain, *_view_chain(x)], rewriter)
            return

    @staticmethod
    def _match(a: SSAValue, b: SSAValue, shape: tuple[int, ...]
               ) -> tuple[SSAValue, SSAValue, SSAValue, list[Operation]] | None:
        """``a = x * cos`` and ``b = rotate_half(x) * sin``: (x, cos, sin, matched ops)."""
        mul_cos, mul_sin = binary(a, "mul"), binary(b, "mul")
        if mul_cos is None or mul_sin is None or not (a.has_one_use() and b.has_one_use()):
            return None
        for r, sin in commuted(mul_sin):
            if (rot := _rotate_half(r)) is None:
                continue
            x, chain = rot
            for xx, cos in commuted(mul_cos):
                if xx != x or tensor_shape(x.type) != shape:
                    continue
                if not (_broadcasts_to(cos, shape) and _broadcasts_to(sin, shape)):
                    return None
                return x, cos, sin, [mul_cos, mul_sin, *chain]
        return None


@dataclass(frozen=True)
class FuseRopePass(ModulePass):
    """Rotate-half RoPE (Slice/Neg/Concat/Mul/Add) → ``maia.rope`` reading x through views."""

    name = "fuse-rope"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseRope(), apply_recursively=False).rewrite_module(op)
