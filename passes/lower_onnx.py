"""`lower-onnx-to-maia`: every `onnx` op becomes the `maia` tensor ops the machine runs.

Runs after `fold-constants`, so all shape arithmetic is already constant. The rules are
data: ``RULES[op_type]`` builds the replacement for one node (a ``lower_node.Node``). This
module holds the core elementwise, matmul, softmax, norm and reduce rules; op families live
in ``passes/lower_<family>.py`` (layout views and gathers in ``lower_layout``, Conv in
``lower_vision``, ...), merged by ``all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from maiac.ir import maia
from maiac.ir.onnx import input_at
from maiac.ir.types import tensor_dtype, tensor_shape
from maiac.passes.lower_node import Node, _norm_axis, _out, _size, constant
from maiac.passes.node_eval import EvaluationError
from maiac.runtime.narrow_store import E8M0_ROUND_MODES

UNARY = {
    "Relu": "relu", "Erf": "erf", "Tanh": "tanh", "Sigmoid": "sigmoid", "Exp": "exp",
    "Log": "log", "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Reciprocal": "reciprocal",
    "Cos": "cos", "Sin": "sin", "Not": "not", "IsNaN": "isnan", "Floor": "floor",
    "Ceil": "ceil", "Sign": "sign", "Identity": "copy", "Dropout": "copy",
}
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max",
    "Min": "min", "Mod": "mod", "Equal": "equal", "Less": "less", "Greater": "greater",
    "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal", "And": "and",
    "Or": "or", "Xor": "xor",
}
REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
          "ReduceMin": "reduce_min"}


def lower_unary(node: Node) -> list[SSAValue]:
    fn = UNARY[node.op.name.removeprefix("onnx.")]
    x = node.op.operands[0]
    if fn == "copy":
        if any(r.uses for r in node.op.results[1:]):
            raise node.fail("the mask output of Dropout is not supported (inference only)")
        if input_at(node.op, 2) is not None:
            mode = node.const(2)
            if mode is None or bool(mode):
                raise node.fail("training_mode Dropout is not supported (inference only)")
        return [x]
    return [node.emit(maia.UnaryOp, [x], _out(node), fn=fn)]


def lower_binary(node: Node) -> list[SSAValue]:
    fn = BINARY[node.op.name.removeprefix("onnx.")]
    params = {"fmod": 1} if fn == "mod" and node.attr("fmod", 0) else {}
    acc = node.op.operands[0]
    for other in node.op.operands[1:]:  # variadic Max/Min/Sum chains
        shape = np.broadcast_shapes(tensor_shape(acc.type), tensor_shape(other.type))
        out = TensorType(_out(node).get_element_type(), list(shape))
        acc = node.emit(maia.BinaryOp, [acc, other], out, fn=fn, **params)
    return [acc]


def lower_gelu(node: Node) -> list[SSAValue]:
    fn = "gelu_tanh" if node.attr("approximate", "none") == "tanh" else "gelu"
    return [node.emit(maia.UnaryOp, [node.op.operands[0]], _out(node), fn=fn)]


def lower_cast(node: Node) -> list[SSAValue]:
    """Cast/CastLike: a ``copy`` into the target type; the store rounds and saturates as
    the ONNX Cast does (runtime/narrow_store.py), ``saturate`` and ``round_mode`` (E8M0)
    passed through when they differ from the defaults."""
    x = node.op.operands[0]
    if x.type == _out(node):
        return [x]
    target = tensor_dtype(_out(node))
    params: dict[str, object] = {}
    if not node.attr("saturate", 1) and target.startswith("f8"):
        params["saturate"] = 0
    round_mode = node.attr("round_mode", "up")
    if target == "f8e8m0" and round_mode != "up":
        if round_mode not in E8M0_ROUND_MODES:
            raise node.fail(f"round_mode {round_mode!r} is not one of {E8M0_ROUND_MODES}")
        params["round_mode"] = round_mode
    extra = {"params": params} if params else {}
    return [node.emit(maia.UnaryOp, [x], _out(node), fn="copy", **extra)]


def lower_where(node: Node) -> list[SSAValue]:
    return [node.emit(maia.WhereOp, list(node.op.operands), _out(node))]


def lower_matmul(node: Node) -> list[SSAValue]:
    a, b = node.op.operands
    a_shape, b_shape = tensor_shape(a.type), tensor_shape(b.type)
    if len(a_shape) >= 2 and len(b_shape) >= 2:
        return [node.emit(maia.MatMulOp, [a, b], _out(node))]
    # numpy rules: a 1-D operand is a row (a) or column (b) vector, dropped afterwards
    a2 = node.reshape(a, [1, *a_shape]) if len(a_shape) == 1 else a
    b2 = node.reshape(b, [*b_shape, 1]) if len(b_shape) == 1 else b
    shape = [*np.broadcast_shapes(tensor_shape(a2.type)[:-2], tensor_shape(b2.type)[:-2]),
             tensor_shape(a2.type)[-2], tensor_shape(b2.type)[-1]]
    y = node.emit(maia.MatMulOp, [a2, b2], TensorType(_out(node).get_element_type(), shape))
    return [node.reshape(y, tensor_shape(_out(node)))]


def lower_gemm(node: Node) -> list[SSAValue]:
    a, b = node.op.operands[:2]
    if node.attr("transA", 0):
        a = node.transpose(a, [1, 0])
    if node.attr("transB", 0):
        b = node.transpose(b, [1, 0])
    m, n = tensor_shape(_out(node))
    f32_type = TensorType(_out(node).get_element_type(), [m, n])
    y = node.emit(maia.MatMulOp, [a, b], f32_type)
    alpha = float(node.attr("alpha", 1.0))
    if alpha != 1.0:
        y = _scale(node, y, alpha)
    c = input_at(node.op, 2)
    if c is not None:
        beta = float(node.attr("beta", 1.0))
        if beta != 1.0:
            c = _scale(node, c, beta)
        y = node.emit(maia.BinaryOp, [y, c], f32_type, fn="add")
    return [y]


def _scale(node: Node, x: SSAValue, factor: float) -> SSAValue:
    scalar = constant(node, np.array(factor, dtype=np.float32))
    return node.emit(maia.BinaryOp, [x, scalar], x.type, fn="mul")


def lower_softmax(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    rank = len(tensor_shape(x.type))
    fn = "log_softmax" if node.op.name == "onnx.LogSoftmax" else "softmax"
    axis = _norm_axis(int(node.attr("axis", -1)), rank)
    if axis == rank - 1:
        return [node.emit(maia.SoftmaxOp, [x], _out(node), fn=fn)]
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = node.transpose(x, perm)
    y = node.emit(maia.SoftmaxOp, [moved], moved.type, fn=fn)
    inverse = list(np.argsort(perm))
    return [node.transpose(y, inverse)]


def lower_layernorm(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    rank = len(shape)
    axis = _norm_axis(int(node.attr("axis", -1)), rank)
    eps = float(node.attr("epsilon", 1e-5))
    fn = "rmsnorm" if node.op.name == "onnx.SimplifiedLayerNormalization" else "layernorm"
    inner = _size(shape[axis:])
    flat_shape = [*shape[:axis], inner]
    xs = node.reshape(x, flat_shape)
    params = [node.reshape(node.broadcast(p, shape[axis:]), [inner])
              for p in (input_at(node.op, 1), input_at(node.op, 2)) if p is not None]
    out = TensorType(x.type.get_element_type(), flat_shape)
    y = node.emit(maia.NormOp, [xs, *params], out, fn=fn, eps=eps)
    results = [node.reshape(y, shape)]
    if any(r.uses for r in node.op.results[1:]):
        results += _norm_statistics(node, xs, fn, eps)
    return results


def _norm_statistics(node: Node, xs: SSAValue, fn: str, eps: float) -> list[SSAValue]:
    """LayerNormalization's optional Mean and InvStdDev outputs, from TVP reductions."""
    flat_shape = tensor_shape(xs.type)
    stat_type = TensorType(xs.type.get_element_type(), [*flat_shape[:-1], 1])
    centered = xs
    mean = None
    if fn == "layernorm":
        mean = node.emit(maia.ReduceOp, [xs], stat_type, fn="reduce_mean")
        centered = node.emit(maia.BinaryOp, [xs, mean], xs.type, fn="sub")
    square = node.emit(maia.BinaryOp, [centered, centered], xs.type, fn="mul")
    var = node.emit(maia.ReduceOp, [square], stat_type, fn="reduce_mean")
    shifted = node.emit(maia.BinaryOp, [var, constant(node, np.array(eps, np.float32))],
                        stat_type, fn="add")
    inv = node.emit(maia.UnaryOp, [shifted], stat_type, fn="rsqrt")
    stats = [mean, inv] if fn == "layernorm" else [inv]
    return [node.reshape(v, tensor_shape(r.type)) if v is not None else v
            for v, r in zip(stats, node.op.results[1:], strict=False)]


def lower_reduce(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    rank = len(shape)
    axes = node.attr("axes", None)
    if axes is None and input_at(node.op, 1) is not None:
        axes = node.required_const(1, "the axes input").tolist()
    if axes is None or len(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    axes = sorted(_norm_axis(int(a), rank) for a in axes)
    kept = [i for i in range(rank) if i not in axes]
    moved = node.transpose(x, kept + axes)
    inner = _size([shape[a] for a in axes])
    flat = node.reshape(moved, [*(shape[i] for i in kept), inner])
    fn = REDUCE[node.op.name.removeprefix("onnx.")]
    reduced_type = TensorType(x.type.get_element_type(), [*(shape[i] for i in kept), 1])
    y = node.emit(maia.ReduceOp, [flat], reduced_type, fn=fn)
    return [node.reshape(y, tensor_shape(_out(node)))]


def lower_constant(node: Node) -> list[SSAValue]:
    new = maia.ConstantOp.create(result_types=[_out(node)],
                                 attributes={"value": node.op.attributes["value"],
                                             "op": maia.to_attr(node.op_name())})
    Rewriter.insert_op(new, InsertPoint.before(node.op))
    return [new.results[0]]


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    **dict.fromkeys(UNARY, lower_unary),
    **dict.fromkeys(BINARY, lower_binary),
    **dict.fromkeys(REDUCE, lower_reduce),
    "Sum": lower_binary, "Gelu": lower_gelu, "Cast": lower_cast, "Where": lower_where,
    "MatMul": lower_matmul, "Gemm": lower_gemm, "Softmax": lower_softmax,
    "LogSoftmax": lower_softmax, "LayerNormalization": lower_layernorm,
    "SimplifiedLayerNormalization": lower_layernorm, "Constant": lower_constant,
}
BINARY["Sum"] = "add"

# Lowering tables of further op families, one module each (passes/lower_<family>.py):
# each defines ``RULES`` (op type -> rule) and ``FOLDED`` (op types fold-constants always
# folds, e.g. Size); they import this module's helpers, so they are merged in on first use.
FAMILY_MODULES = ("maiac.passes.lower_layout", "maiac.passes.lower_math",
                  "maiac.passes.lower_norms",
                  "maiac.passes.lower_index", "maiac.passes.lower_transformer",
                  "maiac.passes.lower_vision")
_FAMILY_RULES: dict[str, Callable[[Node], list[SSAValue]]] = {}
_FAMILY_FOLDED: set[str] = set()


def _load_families() -> None:
    if _FAMILY_RULES or _FAMILY_FOLDED:
        return
    import importlib

    for name in FAMILY_MODULES:
        module = importlib.import_module(name)
        _FAMILY_RULES.update(module.RULES)
        _FAMILY_FOLDED.update(getattr(module, "FOLDED", ()))


def all_rules() -> dict[str, Callable[[Node], list[SSAValue]]]:
    """Every lowering rule: this module's ``RULES`` and the families'."""
    _load_families()
    return {**RULES, **_FAMILY_RULES}


def family_ops() -> set[str]:
    """The op types the family modules lower or always fold (for the importer)."""
    _load_families()
    return set(_FAMILY_RULES) | _FAMILY_FOLDED


class LowerOnnxToMaiaPass(ModulePass):
    """Replace every `onnx` op by `maia` tensor ops (fails naming the first unsupported node)."""

    name = "lower-onnx-to-maia"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for fn in op.walk():
            if isinstance(fn, func.FuncOp):
                absent = []  # onnx.NoValue (an omitted optional input): dropped at the end
                for onnx_op in list(fn.body.walk()):
                    if onnx_op.name == "onnx.NoValue":
                        absent.append(onnx_op)
                    elif onnx_op.name.startswith("onnx."):
                        lower_one(onnx_op)
                for none in absent:
                    if not none.results[0].uses:
                        Rewriter.erase_op(none)


def lower_one(op: Operation) -> None:
    node = Node(op)
    rule = all_rules().get(op.name.removeprefix("onnx."))
    if rule is None:
        raise node.fail("no lowering to the Maia machine")
    try:
        results = rule(node)
    except EvaluationError as err:  # a constant sub-graph the ONNX semantics reject
        raise node.fail(f"cannot evaluate on its constant inputs: {err}") from None
    for old, new in zip(op.results, results, strict=False):
        old.replace_all_uses_with(new)
    Rewriter.erase_op(op, safe_erase=False)

