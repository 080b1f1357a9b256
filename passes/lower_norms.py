"""Lowering of the normalization and reduction family.

RMSNormalization (opset 23) becomes the ``maia.norm {fn = rmsnorm}`` that fuse-norm
makes of a decomposed RMSNorm; InstanceNormalization and GroupNormalization are a
``maia.norm {fn = layernorm}`` over the rows of each instance / group, followed by the
per-channel affine; BatchNormalization (inference) is one multiply-add per channel
(folded into two constants when its statistics are constants). ReduceL1/L2/LogSum/
LogSumExp/SumSquare/Prod are the TVP row reductions with their elementwise pre- and
post-steps. Merged into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import input_at
from maiac.ir.types import tensor_shape
from maiac.passes.lower_math import binary, finish, scalar, unary, x_of
from maiac.passes.lower_node import Node, _norm_axis, _out, _size, constant


def _norm_rows(node: Node, rows: SSAValue, fn: str, eps: float,
               scale: SSAValue | None = None) -> SSAValue:
    """``maia.norm`` over the last axis of ``rows``; without ``scale`` an identity affine."""
    inner = tensor_shape(rows.type)[-1]
    params = [scale] if scale is not None else [constant(node, np.ones(inner, np.float32))]
    if fn == "layernorm":
        params.append(constant(node, np.zeros(inner, np.float32)))
    return node.emit(maia.NormOp, [rows, *params], rows.type, fn=fn, eps=eps)


def _channel_param(node: Node, p: SSAValue, rank: int) -> SSAValue:
    """A per-channel [C] parameter as [C, 1, ...] for an [N, C, ...] tensor."""
    return node.reshape(p, [tensor_shape(p.type)[0], *([1] * (rank - 2))])


def lower_rms_norm(node: Node) -> list[SSAValue]:
    x = x_of(node)
    shape = tensor_shape(x.type)
    axis = _norm_axis(int(node.attr("axis", -1)), len(shape))
    eps = float(node.attr("epsilon", 1e-5))
    inner = _size(shape[axis:])
    rows = node.reshape(x, [*shape[:axis], inner])
    scale = x_of(node, 1)
    s_shape = list(tensor_shape(scale.type))
    while s_shape and s_shape[0] == 1 and len(s_shape) > len(shape) - axis:
        s_shape.pop(0)
    try:
        np.broadcast_shapes(s_shape, shape[axis:])
        fits = len(s_shape) <= len(shape) - axis
    except ValueError:
        fits = False
    if fits:
        scale = node.reshape(node.broadcast(node.reshape(scale, s_shape), shape[axis:]), [inner])
        y = node.reshape(_norm_rows(node, rows, "rmsnorm", eps, scale), shape)
    else:  # a scale over more than the normalized axes: normalize, then multiply
        y = binary(node, "mul", node.reshape(_norm_rows(node, rows, "rmsnorm", eps), shape),
                   scale)
    return finish(node, y)


def _affine(node: Node, y: SSAValue, scale: SSAValue | None, bias: SSAValue | None,
            rank: int) -> SSAValue:
    if scale is not None:
        y = binary(node, "mul", y, _channel_param(node, scale, rank))
    if bias is not None:
        y = binary(node, "add", y, _channel_param(node, bias, rank))
    return y


def lower_instance_norm(node: Node) -> list[SSAValue]:
    x = x_of(node)
    shape = tensor_shape(x.type)
    n, c = shape[:2]
    rows = node.reshape(x, [n, c, _size(shape[2:])])
    y = node.reshape(_norm_rows(node, rows, "layernorm", float(node.attr("epsilon", 1e-5))),
                     shape)
    return finish(node, _affine(node, y, x_of(node, 1), x_of(node, 2), len(shape)))


def lower_group_norm(node: Node) -> list[SSAValue]:
    x = x_of(node)
    shape = tensor_shape(x.type)
    n, c = shape[:2]
    groups = int(node.attr("num_groups"))
    if groups <= 0 or c % groups:
        raise node.fail(f"num_groups {groups} does not divide the {c} channels")
    rows = node.reshape(x, [n, groups, (c // groups) * _size(shape[2:])])
    y = node.reshape(_norm_rows(node, rows, "layernorm", float(node.attr("epsilon", 1e-5))),
                     shape)
    scale, bias = x_of(node, 1), x_of(node, 2)
    if tensor_shape(scale.type)[0] == groups and groups != c:  # opset 18: one per group

        def per_channel(p: SSAValue) -> SSAValue:
            return node.reshape(node.view(p, [groups, c // groups], 0, [1, 0]), [c])

        scale, bias = per_channel(scale), per_channel(bias)
    return finish(node, _affine(node, y, scale, bias, len(shape)))


def lower_batch_norm(node: Node) -> list[SSAValue]:
    if node.attr("training_mode", 0) or any(r.uses for r in node.op.results[1:]):
        raise node.fail("training-mode BatchNormalization is not supported (inference only)")
    x = x_of(node)
    rank = len(tensor_shape(x.type))
    eps = float(node.attr("epsilon", 1e-5))
    stats = [node.const(i) for i in range(1, 5)]
    if all(s is not None for s in stats):  # y = x * a + b with a, b computed here
        scale, bias, mean, var = (np.asarray(s, np.float64) for s in stats)
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        shape = [a.shape[0], *([1] * (rank - 2))]
        y = binary(node, "mul", x, constant(node, a.astype(np.float32).reshape(shape)))
        return finish(node, binary(node, "add", y, constant(
            node, b.astype(np.float32).reshape(shape))))
    scale, bias, mean, var = (x_of(node, i) for i in range(1, 5))
    inv = unary(node, "rsqrt", binary(node, "add", var, scalar(node, eps, var)))
    a = binary(node, "mul", scale, inv)
    b = binary(node, "sub", bias, binary(node, "mul", mean, a))
    y = binary(node, "mul", x, _channel_param(node, a, rank))
    return finish(node, binary(node, "add", y, _channel_param(node, b, rank)))


# ---- reductions ------------------------------------------------------------------------


def _reduce_axes(node: Node, rank: int) -> list[int] | None:
    """The reduced axes (sorted), or None when the op is the identity (empty axes with
    ``noop_with_empty_axes``)."""
    axes = node.attr("axes", None)
    if axes is None and input_at(node.op, 1) is not None:
        axes = node.required_const(1, "the axes input").tolist()
    if axes is None or len(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted({_norm_axis(int(a), rank) for a in axes})


def reduce_rows(node: Node, x: SSAValue, fn: str, axes: Sequence[int]) -> SSAValue:
    """``fn`` over ``axes`` of ``x``, as the op's output shape (keepdims or not)."""
    shape = tensor_shape(x.type)
    kept = [i for i in range(len(shape)) if i not in axes]
    moved = node.transpose(x, kept + list(axes))
    flat = node.reshape(moved, [*(shape[i] for i in kept), _size([shape[a] for a in axes])])
    out = TensorType(x.type.get_element_type(), [*(shape[i] for i in kept), 1])
    y = node.emit(maia.ReduceOp, [flat], out, fn=fn)
    return node.reshape(y, tensor_shape(_out(node)))


def _reduction(pre: str | None, fn: str, post: str | None,
               stable_exp: bool = False) -> Callable[[Node], list[SSAValue]]:
    """ReduceX = ``post(fn(pre(x)))`` over the reduced axes."""

    def rule(node: Node) -> list[SSAValue]:
        x = x_of(node)
        axes = _reduce_axes(node, len(tensor_shape(x.type)))
        if axes is None:
            return finish(node, unary(node, "copy", x))
        if stable_exp:  # log(sum(exp(x - max))) + max: no overflow for large x
            peak = reduce_rows(node, x, "reduce_max", axes)
            keep = node.reshape(peak, [1 if i in axes else d
                                       for i, d in enumerate(tensor_shape(x.type))])
            total = reduce_rows(node, unary(node, "exp", binary(node, "sub", x, keep)),
                                "reduce_sum", axes)
            return finish(node, binary(node, "add", unary(node, "log", total), peak))
        if pre == "square":
            x = binary(node, "mul", x, x)
        elif pre is not None:
            x = unary(node, pre, x)
        y = reduce_rows(node, x, fn, axes)
        if post is not None:
            y = unary(node, post, y)
        return finish(node, y)

    return rule


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    "RMSNormalization": lower_rms_norm,
    "InstanceNormalization": lower_instance_norm,
    "GroupNormalization": lower_group_norm,
    "BatchNormalization": lower_batch_norm,
    "ReduceL1": _reduction("abs", "reduce_sum", None),
    "ReduceL2": _reduction("square", "reduce_sum", "sqrt"),
    "ReduceSumSquare": _reduction("square", "reduce_sum", None),
    "ReduceLogSum": _reduction(None, "reduce_sum", "log"),
    "ReduceLogSumExp": _reduction(None, "reduce_sum", None, stable_exp=True),
    "ReduceProd": _reduction(None, "reduce_prod", None),
}
