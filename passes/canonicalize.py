"""``canonicalize`` and ``dce``: drop the no-ops exporters leave in ONNX graphs.

Each rule removes an op whose result equals one of its inputs (same type, same values):
Identity, Dropout in inference, Reshape/Squeeze/Unsqueeze/Flatten/Expand to the shape
it already has, Cast to the type it already has, Transpose by the identity permutation,
Concat of one input. A Reshape of a Reshape reads the first one's input directly (the
result type already says the final shape). Dead ops are erased after every walk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
from xdsl.transforms.dead_code_elimination import region_dce

from maiac.ir import resources
from maiac.ir.onnx import NAME_ATTR, ONNX_OPS, get_attr, input_at
from maiac.ir.resources import constant_value

# Ops that only restate their first input's values in a (possibly) new shape.
_SHAPE_ONLY = {"onnx.Reshape", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Flatten", "onnx.Expand"}


def _same_as_input(op: Operation) -> SSAValue | None:
    """The input ``op``'s single result equals, if it is a no-op; else None."""
    if len(op.results) != 1 or not op.operands:
        return None
    source = op.operands[0]
    if source.type != op.results[0].type:
        return None
    match op.name:
        case "onnx.Identity" | "onnx.Cast" | "onnx.CastLike":
            return source
        case name if name in _SHAPE_ONLY:
            return source
        case "onnx.Transpose":
            rank = len(op.results[0].type.get_shape())
            perm = get_attr(op, "perm", list(range(rank))[::-1])
            return source if list(perm) == list(range(rank)) else None
        case "onnx.Concat" if len(op.operands) == 1:
            return source
    return None


class RemoveNoOp(RewritePattern):
    """``%y = onnx.Identity(%x)`` (and the other no-ops above) → uses of ``%y`` read ``%x``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        source = _same_as_input(op)
        if source is not None:
            rewriter.replace(op, [], [source])


def _dropout_is_inference(op: Operation) -> bool:
    """Dropout is the identity unless ``training_mode`` is a constant true (or unknown)."""
    training = input_at(op, 2)
    if training is None:
        return True
    value = constant_value(training.owner) if isinstance(training.owner, Operation) else None
    return value is not None and not bool(np.asarray(value).reshape(-1)[0])


class RemoveInferenceDropout(RewritePattern):
    """``onnx.Dropout`` in inference: output = input, mask = all true."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "onnx.Dropout" or not _dropout_is_inference(op):
            return
        new_ops: list[Operation] = []
        new_results: list[SSAValue] = [op.operands[0]]
        if len(op.results) > 1:
            mask_type = op.results[1].type
            assert isinstance(mask_type, TensorType)
            mask = np.ones(mask_type.get_shape(), dtype=np.bool_)
            const = ONNX_OPS["Constant"].create(
                result_types=[mask_type],
                attributes={"value": resources.constant_attr(mask, "dropout_mask")},
            )
            new_ops.append(const)
            new_results.append(const.results[0])
        rewriter.replace(op, new_ops, new_results)


class MergeReshapes(RewritePattern):
    """``Reshape(Reshape(x, s1), s2)`` → ``Reshape(x, s2)``: only the last shape matters."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "onnx.Reshape":
            return
        inner = op.operands[0].owner
        if not isinstance(inner, Operation) or inner.name != "onnx.Reshape":
            return
        if get_attr(op, "allowzero", 0) or get_attr(inner, "allowzero", 0):
            return  # a 0 in the shape means "zero", not "keep": leave the rare case be
        shape = np.array(op.results[0].type.get_shape(), dtype=np.int64)
        const = ONNX_OPS["Constant"].create(
            result_types=[TensorType(resources.element_type(np.int64), [len(shape)])],
            attributes={"value": resources.constant_attr(shape, "shape")},
        )
        merged = ONNX_OPS["Reshape"].create(
            operands=[inner.operands[0], const.results[0]],
            result_types=[op.results[0].type],
            attributes={k: v for k, v in op.attributes.items() if k == NAME_ATTR},
        )
        rewriter.replace(op, [const, merged])


CANONICALIZE_PATTERNS: list[RewritePattern] = [
    RemoveNoOp(),
    RemoveInferenceDropout(),
    MergeReshapes(),
]


@dataclass(frozen=True)
class CanonicalizePass(ModulePass):
    """Remove no-op onnx ops (identity casts, reshapes, transposes, dropout) and dead ops."""

    name = "canonicalize"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(
            GreedyRewritePatternApplier(list(CANONICALIZE_PATTERNS)),
            post_walk_func=region_dce,
        ).rewrite_module(op)


@dataclass(frozen=True)
class DeadCodeEliminationPass(ModulePass):
    """Erase ops whose results are unused and that have no side effects."""

    name = "dce"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for region in op.regions:
            region_dce(region)
