"""Lowering of the elementwise op family: activations, clipping, rounding, casts, bit ops.

Each op becomes the TVP elementwise functions it is made of (``maia.unary`` /
``maia.binary`` / ``maia.where`` with scalar constants), so it runs on runtime data and
the fusions see the same ops an exporter's decomposed form would give. Formulas are the
ONNX definitions (onnx/reference/ops), e.g. HardSwish ``x * max(0, min(1, x/6 + 1/2))``.
Merged into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xdsl.dialects.builtin import TensorType, f32
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import get_opset, input_at
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.lower_node import Node, _out, constant
from maiac.passes.lower_onnx import lower_cast


def scalar(node: Node, value: float, like: SSAValue) -> SSAValue:
    """A 0-d constant of ``like``'s element type."""
    return constant(node, np.array(value, dtype=NUMPY_DTYPES[tensor_dtype(like.type)]))


def unary(node: Node, fn: str, x: SSAValue, out: TensorType | None = None,
          **params: object) -> SSAValue:
    extra = {"params": params} if params else {}
    return node.emit(maia.UnaryOp, [x], out or x.type, fn=fn, **extra)


def binary(node: Node, fn: str, a: SSAValue, b: SSAValue, elem: object = None) -> SSAValue:
    """``fn(a, b)`` with numpy broadcasting; the result has ``a``'s element type unless
    ``elem`` (an xDSL element type) is given (comparisons: i1)."""
    shape = np.broadcast_shapes(tensor_shape(a.type), tensor_shape(b.type))
    out = TensorType(elem or a.type.get_element_type(), list(shape))
    return node.emit(maia.BinaryOp, [a, b], out, fn=fn)


def where(node: Node, cond: SSAValue, a: SSAValue, b: SSAValue) -> SSAValue:
    shape = np.broadcast_shapes(*(tensor_shape(v.type) for v in (cond, a, b)))
    return node.emit(maia.WhereOp, [cond, a, b], TensorType(a.type.get_element_type(),
                                                            list(shape)))


def less(node: Node, a: SSAValue, b: SSAValue, fn: str = "less") -> SSAValue:
    from xdsl.dialects.builtin import i1

    return binary(node, fn, a, b, elem=i1)


def x_of(node: Node, index: int = 0) -> SSAValue:
    """Operand ``index``, in fp32 when it is a narrower float: the composed formulas then
    round once, at the end (``finish``), as onnxruntime's fused kernels do."""
    x = node.op.operands[index]
    if tensor_dtype(x.type) in ("bf16", "f16"):
        return unary(node, "copy", x, TensorType(f32, tensor_shape(x.type)))
    return x


def finish(node: Node, y: SSAValue) -> list[SSAValue]:
    """The result in the op's output type (back from fp32, see ``x_of``)."""
    if y.type != _out(node):
        y = unary(node, "copy", y, _out(node))
    return [y]


def alpha(node: Node, name: str, default: float) -> float:
    return float(node.attr(name, default))


# ---- rules ---------------------------------------------------------------------------


def lower_clip(node: Node) -> list[SSAValue]:
    """``min(max(x, lo), hi)`` (so ``hi`` wins when lo > hi, as ONNX's reference);
    bounds from inputs 1, 2 (opset >= 11) or attributes (older), either absent."""
    x = x_of(node)
    if get_opset(node.op) < 11:
        lo = node.attr("min", None)
        hi = node.attr("max", None)
        bounds = [None if v is None else scalar(node, v, x) for v in (lo, hi)]
    else:
        bounds = [input_at(node.op, 1), input_at(node.op, 2)]
    y = x
    if bounds[0] is not None:
        y = binary(node, "max", y, bounds[0])
    if bounds[1] is not None:
        y = binary(node, "min", y, bounds[1])
    return [y if y is not x else unary(node, "copy", x)]


def _hard_sigmoid(node: Node, x: SSAValue, a: float, b: float) -> SSAValue:
    y = binary(node, "add", binary(node, "mul", x, scalar(node, a, x)), scalar(node, b, x))
    return binary(node, "max", binary(node, "min", y, scalar(node, 1.0, x)),
                  scalar(node, 0.0, x))


def lower_hard_sigmoid(node: Node) -> list[SSAValue]:
    a, b = alpha(node, "alpha", 0.2), alpha(node, "beta", 0.5)
    return finish(node, _hard_sigmoid(node, x_of(node), a, b))


def lower_hard_swish(node: Node) -> list[SSAValue]:
    x = x_of(node)
    return finish(node, binary(node, "mul", x, _hard_sigmoid(node, x, 1.0 / 6.0, 0.5)))


def lower_leaky_relu(node: Node) -> list[SSAValue]:
    x = x_of(node)
    scaled = binary(node, "mul", x, scalar(node, alpha(node, "alpha", 0.01), x))
    return finish(node, where(node, less(node, x, scalar(node, 0.0, x)), scaled, x))


def lower_prelu(node: Node) -> list[SSAValue]:
    x, slope = x_of(node), x_of(node, 1)
    scaled = binary(node, "mul", x, slope)
    return finish(node, where(node, less(node, x, scalar(node, 0.0, x)), scaled, x))


def _softplus(node: Node, x: SSAValue) -> SSAValue:
    return unary(node, "log", binary(node, "add", unary(node, "exp", x), scalar(node, 1.0, x)))


def lower_softplus(node: Node) -> list[SSAValue]:
    return finish(node, _softplus(node, x_of(node)))


def lower_mish(node: Node) -> list[SSAValue]:
    x = x_of(node)
    return finish(node, binary(node, "mul", x, unary(node, "tanh", _softplus(node, x))))


def lower_softsign(node: Node) -> list[SSAValue]:
    x = x_of(node)
    return finish(node, binary(node, "div", x, binary(node, "add", unary(node, "abs", x),
                                                      scalar(node, 1.0, x))))


def lower_swish(node: Node) -> list[SSAValue]:
    x = x_of(node)
    scaled = binary(node, "mul", x, scalar(node, alpha(node, "alpha", 1.0), x))
    return finish(node, binary(node, "mul", x, unary(node, "sigmoid", scaled)))


def _expm1_scaled(node: Node, x: SSAValue, a: float) -> SSAValue:
    """``a * (exp(x) - 1)``."""
    e = binary(node, "sub", unary(node, "exp", x), scalar(node, 1.0, x))
    return binary(node, "mul", e, scalar(node, a, x))


def lower_elu(node: Node) -> list[SSAValue]:
    x = x_of(node)
    neg = _expm1_scaled(node, x, alpha(node, "alpha", 1.0))
    return finish(node, where(node, less(node, x, scalar(node, 0.0, x)), neg, x))


def lower_selu(node: Node) -> list[SSAValue]:
    x = x_of(node)
    a = alpha(node, "alpha", 1.67326319217681884765625)
    g = alpha(node, "gamma", 1.05070102214813232421875)
    neg = _expm1_scaled(node, x, a)
    y = where(node, less(node, x, scalar(node, 0.0, x), "less_equal"), neg, x)
    return finish(node, binary(node, "mul", y, scalar(node, g, x)))


def lower_celu(node: Node) -> list[SSAValue]:
    x = x_of(node)
    a = alpha(node, "alpha", 1.0)
    inner = _expm1_scaled(node, binary(node, "div", x, scalar(node, a, x)), a)
    return finish(node, binary(node, "add", binary(node, "max", x, scalar(node, 0.0, x)),
                               binary(node, "min", inner, scalar(node, 0.0, x))))


def lower_thresholded_relu(node: Node) -> list[SSAValue]:
    x = x_of(node)
    keep = less(node, x, scalar(node, alpha(node, "alpha", 1.0), x), "greater")
    return finish(node, where(node, keep, x, scalar(node, 0.0, x)))


def lower_shrink(node: Node) -> list[SSAValue]:
    x = x_of(node)
    lambd, bias = alpha(node, "lambd", 0.5), alpha(node, "bias", 0.0)
    low = less(node, x, scalar(node, -lambd, x))
    high = less(node, x, scalar(node, lambd, x), "greater")
    inner = where(node, high, binary(node, "sub", x, scalar(node, bias, x)), scalar(node, 0, x))
    return finish(node, where(node, low, binary(node, "add", x, scalar(node, bias, x)), inner))


def lower_mean(node: Node) -> list[SSAValue]:
    acc = node.op.operands[0]
    for other in node.op.operands[1:]:
        acc = binary(node, "add", acc, other)
    if len(node.op.operands) == 1:
        return [unary(node, "copy", acc)]
    count = scalar(node, float(len(node.op.operands)), acc)
    return finish(node, binary(node, "div", acc, count))


def lower_isinf(node: Node) -> list[SSAValue]:
    return [unary(node, "isinf", x_of(node), _out(node),
                  detect_positive=int(node.attr("detect_positive", 1)),
                  detect_negative=int(node.attr("detect_negative", 1)))]


def lower_bitshift(node: Node) -> list[SSAValue]:
    fn = "bitshift_left" if node.attr("direction", "LEFT") == "LEFT" else "bitshift_right"
    a, b = node.op.operands[:2]
    return [node.emit(maia.BinaryOp, [a, b], _out(node), fn=fn)]


def _unary_fn(fn: str) -> Callable[[Node], list[SSAValue]]:
    def rule(node: Node) -> list[SSAValue]:
        return [unary(node, fn, x_of(node), _out(node))]

    return rule


def _binary_fn(fn: str) -> Callable[[Node], list[SSAValue]]:
    def rule(node: Node) -> list[SSAValue]:
        a, b = node.op.operands[:2]
        return [node.emit(maia.BinaryOp, [a, b], _out(node), fn=fn)]

    return rule


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    "CastLike": lower_cast,
    "Clip": lower_clip,
    "HardSigmoid": lower_hard_sigmoid,
    "HardSwish": lower_hard_swish,
    "LeakyRelu": lower_leaky_relu,
    "PRelu": lower_prelu,
    "Softplus": lower_softplus,
    "Mish": lower_mish,
    "Softsign": lower_softsign,
    "Swish": lower_swish,
    "Elu": lower_elu,
    "Selu": lower_selu,
    "Celu": lower_celu,
    "ThresholdedRelu": lower_thresholded_relu,
    "Shrink": lower_shrink,
    "Mean": lower_mean,
    "IsInf": lower_isinf,
    "BitShift": lower_bitshift,
    "Round": _unary_fn("round"),
    **{op: _unary_fn(fn) for op, fn in {
        "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh",
        "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh",
        "BitwiseNot": "bitwise_not"}.items()},
    **{op: _binary_fn(fn) for op, fn in {
        "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or",
        "BitwiseXor": "bitwise_xor"}.items()},
}
FOLDED = {"Size"}  # static shapes: fold-constants always turns Size into a constant
