"""``fold-constants``: evaluate every onnx op whose inputs are all constants.

``onnx.Shape`` (and ``onnx.Size``) of a static tensor fold to a constant without its
data, which is what unravels the exporters' Shape → Gather → Unsqueeze → Concat →
Reshape chains once shapes are bound. Ops whose inputs are all ``onnx.Constant`` with
data are evaluated by ``maiac.passes.node_eval`` and replaced by an ``onnx.Constant``
(inline when small, else a new entry in the resource store). Identity and inference
Dropout are removed; dead constants are erased at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import (
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    NoneType,
    StringAttr,
    TensorType,
)
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
)
from xdsl.rewriter import InsertPoint
from xdsl.transforms.dead_code_elimination import region_dce

from maiac.ir import resources
from maiac.ir.onnx import (
    DOMAIN_ATTR,
    NAME_ATTR,
    ONNX_OPS,
    OPSET_ATTR,
    node_name,
    onnx_attributes,
    op_type,
)
from maiac.passes.canonicalize import RemoveInferenceDropout, RemoveNoOp
from maiac.passes.node_eval import EvaluationError, evaluate

_NEVER_FOLD = {"onnx.Constant", "onnx.NoValue"}


def _static_shape(value_type) -> tuple[int, ...] | None:
    if isinstance(value_type, TensorType):
        return tuple(value_type.get_shape())
    return None


def _empty_value(value_type) -> np.ndarray | None:
    """The (only) value of a static tensor type with zero elements, else None."""
    shape = _static_shape(value_type)
    if shape is None or 0 not in shape:
        return None
    return np.zeros(shape, resources.numpy_dtype(value_type.get_element_type()))


def _constant_inputs(op: Operation) -> list[np.ndarray | None] | None:
    """The values of all of ``op``'s inputs (None for absent ones), or None if one is unknown.

    A zero-size input is known whatever produces it: it has no values."""
    values: list[np.ndarray | None] = []
    for operand in op.operands:
        if isinstance(operand.type, NoneType):
            values.append(None)
            continue
        empty = _empty_value(operand.type)
        if empty is not None:
            values.append(empty)
            continue
        owner = operand.owner
        if not isinstance(owner, Operation) or owner.name != "onnx.Constant":
            return None
        value = resources.constant_value(owner)
        if value is None:
            return None  # a weight of a shape-only import: type known, data absent
        values.append(value)
    return values


@dataclass
class FoldConstant(RewritePattern):
    """Replace an op computed from constants (or from static shapes) by its value."""

    opsets: dict[str, int]
    size_limit: int
    grow_limit: int

    def _inputs(self, op: Operation) -> list[np.ndarray | None] | None:
        if op.name in ("onnx.Shape", "onnx.Size"):
            shape = _static_shape(op.operands[0].type)
            # Shape needs no data: a zero-strided stand-in of the right shape suffices.
            return None if shape is None else [np.broadcast_to(np.uint8(0), shape)]
        return _constant_inputs(op)

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if not op.name.startswith("onnx.") or op.name in _NEVER_FOLD or not op.results:
            return
        out_size = sum(int(np.prod(_static_shape(r.type) or (0,))) for r in op.results)
        if out_size > self.size_limit:
            return
        inputs = self._inputs(op)
        if inputs is None:
            return
        in_size = sum(x.size for x in inputs if x is not None)
        if op.name not in ("onnx.Shape", "onnx.Size") and out_size > max(self.grow_limit, 2 * in_size):
            return  # a broadcast (Expand, ConstantOfShape): lowering does it without the bytes
        domain = getattr(op.attributes.get(DOMAIN_ATTR), "data", "")
        try:
            results = evaluate(
                op_type(op), onnx_attributes(op), inputs, len(op.results), self.opsets, domain
            )
        except EvaluationError:
            return  # leave it to lowering, which reports what it cannot do
        new_ops = []
        for result, value in zip(op.results, results, strict=True):
            result_type = result.type
            assert isinstance(result_type, TensorType)
            dtype = resources.numpy_dtype(result_type.get_element_type())
            value = np.asarray(value)
            if tuple(value.shape) != tuple(result_type.get_shape()):
                return  # inference and evaluation disagree: keep the op, do not guess
            hint = node_name(op) or "folded"
            new_ops.append(
                ONNX_OPS["Constant"].create(
                    result_types=[result_type],
                    attributes={
                        "value": resources.constant_attr(value.astype(dtype, copy=False), hint),
                        NAME_ATTR: op.attributes.get(NAME_ATTR) or StringAttr(hint),
                    },
                )
            )
        rewriter.replace(op, new_ops, [c.results[0] for c in new_ops])


class ReplaceEmptyResults(RewritePattern):
    """A used zero-size result of a runtime op (a Slice past the end, an empty piece of a
    Split) becomes an empty ``onnx.Constant``: the machine has nothing to compute for it,
    and its consumers see a constant (Concat drops it, a reduce over it folds)."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if not op.name.startswith("onnx.") or op.name in _NEVER_FOLD:
            return
        for result in op.results:
            empty = _empty_value(result.type)
            if empty is None or not result.uses:
                continue
            hint = (node_name(op) or "empty") + "_empty"
            const = ONNX_OPS["Constant"].create(
                result_types=[result.type],
                attributes={"value": resources.constant_attr(empty, hint),
                            NAME_ATTR: StringAttr(hint)})
            rewriter.insert(const, InsertPoint.before(op))
            rewriter.replace_all_uses_with(result, const.results[0])


def module_opsets(module: ModuleOp) -> dict[str, int]:
    """The module's ``onnx.opset_import`` as a dict (default domain ""), or {}."""
    attr = module.attributes.get(OPSET_ATTR)
    if not isinstance(attr, DictionaryAttr):
        return {}
    return {k: v.value.data for k, v in attr.data.items() if isinstance(v, IntegerAttr)}


@dataclass(frozen=True)
class FoldConstantsPass(ModulePass):
    """Evaluate ops on constants and Shape of static tensors; drop Identity/Dropout.

    Weights of a shape-only import (data absent) are never folded.
    """

    name = "fold-constants"

    size_limit: int = 1 << 24
    """Do not fold ops whose results hold more elements than this (memory, not time)."""

    grow_limit: int = 1 << 20
    """Nor ops whose results exceed this and twice their inputs' elements (broadcasts)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        import onnx

        opsets = module_opsets(op) or {"": onnx.defs.onnx_opset_version()}
        patterns: list[RewritePattern] = [
            RemoveNoOp(),
            RemoveInferenceDropout(),
            FoldConstant(opsets, self.size_limit, self.grow_limit),
            ReplaceEmptyResults(),
        ]
        PatternRewriteWalker(
            GreedyRewritePatternApplier(patterns), post_walk_func=region_dce
        ).rewrite_module(op)
