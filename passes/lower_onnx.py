"""`lower-onnx-to-maia`: every `onnx` op becomes the `maia` tensor ops the machine runs.

Runs after `fold-constants`, so all shape arithmetic is already constant. The rules are
data: ``RULES[op_type]`` builds the replacement for one node. Layout ops whose result is
an affine view of their input (Transpose, Slice, Expand, Split, Gather by a constant
index, ...) become one ``maia.view``; shape-only ops (Reshape, Squeeze, ...) become a
``maia.reshape`` alias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from maiac.ir import maia
from maiac.ir.onnx import describe, get_attr, get_opset, input_at, onnx_attributes
from maiac.ir.resources import constant_attr, constant_value
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.node_eval import EvaluationError, evaluate
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import contiguous_strides

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


@dataclass
class Node:
    """The onnx op being lowered, with helpers that insert maia ops before it."""

    op: Operation

    @property
    def label(self) -> str:
        return describe(self.op)

    def attr(self, name: str, default: object = None) -> object:
        return get_attr(self.op, name, default)

    def fail(self, why: str) -> MaiacError:
        return MaiacError(f"{self.label}: {why}")

    def const(self, index: int) -> np.ndarray | None:
        """The value of operand ``index`` when it is a compile-time constant."""
        value = input_at(self.op, index)
        if value is None:
            return None
        owner = value.owner
        if isinstance(owner, Operation) and owner.name in ("onnx.Constant", "maia.constant"):
            return constant_value(owner.attributes["value"])
        return None

    def required_const(self, index: int, what: str) -> np.ndarray:
        value = self.const(index)
        if value is None:
            raise self.fail(f"{what} must be a constant after shape folding")
        return value

    def emit(self, cls: type[maia.TensorOp], ins: Sequence[SSAValue], out: Attribute,
             **attrs: object) -> SSAValue:
        new = cls.create(operands=list(ins), result_types=[out],
                         attributes={"op": maia.to_attr(self.op_name()),
                                     **{k: maia.to_attr(v) for k, v in attrs.items()}})
        Rewriter.insert_op(new, InsertPoint.before(self.op))
        return new.results[0]

    def op_name(self) -> str:
        name = self.op.attributes.get("onnx.name")
        if isinstance(name, builtin.StringAttr) and name.data:
            return name.data
        return self.op.name.removeprefix("onnx.")

    # -- layout helpers ------------------------------------------------------------
    def view(self, x: SSAValue, shape: Sequence[int], offset: int,
             strides: Sequence[int]) -> SSAValue:
        """``out[idx] = flat(x)[offset + idx . strides]``; elided when it is ``x`` itself."""
        in_shape = tensor_shape(x.type)
        out_type = TensorType(x.type.get_element_type(), list(shape))
        if offset == 0 and tuple(shape) == in_shape and _is_contiguous(shape, strides):
            return x
        if offset == 0 and _is_contiguous(shape, strides) and _size(shape) == _size(in_shape):
            return self.reshape(x, shape)
        return self.emit(maia.ViewOp, [x], out_type, offset=int(offset),
                         strides=[int(s) for s in strides])

    def reshape(self, x: SSAValue, shape: Sequence[int]) -> SSAValue:
        if tuple(shape) == tensor_shape(x.type):
            return x
        if _size(shape) != _size(tensor_shape(x.type)):
            raise self.fail(f"cannot reshape {list(tensor_shape(x.type))} "
                            f"({_size(tensor_shape(x.type))} elements) to {list(shape)} "
                            f"({_size(shape)} elements)")
        out_type = TensorType(x.type.get_element_type(), list(shape))
        return self.emit(maia.ReshapeOp, [x], out_type)

    def transpose(self, x: SSAValue, perm: Sequence[int]) -> SSAValue:
        shape = tensor_shape(x.type)
        strides = contiguous_strides(shape)
        return self.view(x, [shape[p] for p in perm], 0, [strides[p] for p in perm])

    def broadcast(self, x: SSAValue, shape: Sequence[int]) -> SSAValue:
        """``x`` expanded to ``shape`` by numpy rules (stride-0 view)."""
        in_shape = tensor_shape(x.type)
        if tuple(in_shape) == tuple(shape):
            return x
        padded = (1,) * (len(shape) - len(in_shape)) + tuple(in_shape)
        strides = (0,) * (len(shape) - len(in_shape)) + contiguous_strides(in_shape)
        out_strides = [0 if p == 1 and s != 1 else st for p, s, st in zip(padded, shape, strides, strict=True)]
        return self.view(x, shape, 0, out_strides)


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _is_contiguous(shape: Sequence[int], strides: Sequence[int]) -> bool:
    expected = contiguous_strides(tuple(shape))
    return all(d == 1 or s == e for d, s, e in zip(shape, strides, expected, strict=True))


def _out(node: Node, index: int = 0) -> TensorType:
    return node.op.results[index].type  # type: ignore[return-value]


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---- rules ---------------------------------------------------------------------------


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
    x = node.op.operands[0]
    if not node.attr("saturate", 1) and tensor_dtype(_out(node)).startswith("f8"):
        raise node.fail("Cast with saturate=0 is not supported: Maia fp8 stores saturate")
    if x.type == _out(node):
        return [x]
    return [node.emit(maia.UnaryOp, [x], _out(node), fn="copy")]


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


def constant(node: Node, value: np.ndarray) -> SSAValue:
    """A new small constant (e.g. a scale) inserted before the node."""
    attr = constant_attr(value, "scale")
    op = maia.ConstantOp.create(result_types=[attr.type], attributes={"value": attr})
    Rewriter.insert_op(op, InsertPoint.before(node.op))
    return op.results[0]


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


def lower_reshape_like(node: Node) -> list[SSAValue]:
    return [node.reshape(node.op.operands[0], tensor_shape(_out(node)))]


def lower_transpose(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    rank = len(tensor_shape(x.type))
    perm = node.attr("perm", None) or list(reversed(range(rank)))
    return [node.transpose(x, [int(p) for p in perm])]


def lower_expand(node: Node) -> list[SSAValue]:
    return [node.broadcast(node.op.operands[0], tensor_shape(_out(node)))]


def lower_by_index_probe(node: Node) -> list[SSAValue]:
    """Slice, Split, constant-index Gather, ...: run the op on an index array.

    When every result is an affine function of the input's flat index it is a view.
    """
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    probe = np.arange(_size(shape), dtype=np.int64).reshape(shape)
    inputs = [probe] + [None if input_at(node.op, i) is None
                        else node.required_const(i, f"input {i}")
                        for i in range(1, len(node.op.operands))]
    results = evaluate(node.op.name.removeprefix("onnx."), onnx_attributes(node.op), inputs,
                       len(node.op.results), {"": get_opset(node.op)})
    values = []
    for result in results:
        index = np.asarray(result)
        if index.size == 0:
            raise node.fail("zero-size tensors are not supported")
        view = _affine_view(index)
        if view is None:
            values.append(gather_by_index(node, x, index))
            continue
        offset, strides = view
        values.append(node.view(x, index.shape, offset, strides))
    return values


def gather_by_index(node: Node, x: SSAValue, index: np.ndarray) -> SSAValue:
    """``out = flat(x)[index]`` for a constant index map that is not a view: an indexed
    row DMA, with rows as long as the index map's innermost contiguous runs."""
    size = _size(tensor_shape(x.type))
    flat = index.reshape(-1, index.shape[-1]) if index.ndim else index.reshape(1, 1)
    row = flat.shape[1]
    runs = flat[:, :1] + np.arange(row)
    if not (np.array_equal(flat, runs) and np.all(flat[:, 0] % row == 0) and size % row == 0):
        row = 1
    starts = (index.reshape(-1)[::row] // row).astype(np.int64)
    table = node.reshape(x, [size // row, row])
    rows_type = TensorType(x.type.get_element_type(), [starts.size, row])
    rows = node.emit(maia.GatherOp, [table, constant(node, starts)], rows_type)
    return node.reshape(rows, list(index.shape))


def _affine_view(index: np.ndarray) -> tuple[int, list[int]] | None:
    if index.size == 0:
        return None
    offset = int(index.reshape(-1)[0])
    strides = []
    for axis, dim in enumerate(index.shape):
        if dim == 1:
            strides.append(0)
            continue
        first = np.moveaxis(np.take(index, [0, 1], axis=axis), axis, 0).reshape(2, -1)[:, 0]
        strides.append(int(first[1] - first[0]))
    grid = np.indices(index.shape, sparse=True)
    expected = offset + sum(g * s for g, s in zip(grid, strides, strict=True))
    return (offset, strides) if np.array_equal(index, expected) else None


def lower_gather(node: Node) -> list[SSAValue]:
    """Constant indices that form a view: a DMA. Otherwise the indexed row DMA, with the
    gathered axis moved to the front first (and the result's axes put back)."""
    data, indices = node.op.operands
    if node.const(1) is not None:
        try:
            return lower_by_index_probe(node)
        except MaiacError:
            pass  # not affine: gather rows by the constant indices
    shape = tensor_shape(data.type)
    axis = _norm_axis(int(node.attr("axis", 0)), len(shape))
    rest = [d for i, d in enumerate(shape) if i != axis]
    moved = node.transpose(data, [axis, *(i for i in range(len(shape)) if i != axis)])
    table = node.reshape(moved, [shape[axis], _size(rest)])
    idx_shape = tensor_shape(indices.type)
    rows_type = TensorType(data.type.get_element_type(), [*idx_shape, _size(rest)])
    rows = node.emit(maia.GatherOp, [table, indices], rows_type)
    gathered = node.reshape(rows, [*idx_shape, *rest])
    if axis == 0:
        return [gathered]
    n_idx = len(idx_shape)
    perm = [*range(n_idx, n_idx + axis), *range(n_idx), *range(n_idx + axis, n_idx + len(rest))]
    return [node.transpose(gathered, perm)]


def lower_concat(node: Node) -> list[SSAValue]:
    axis = _norm_axis(int(node.attr("axis", 0)), len(tensor_shape(_out(node))))
    ins = [x for x in node.op.operands if tensor_shape(x.type)[axis] != 0]
    if len(ins) == 1:
        return [ins[0]]
    return [node.emit(maia.ConcatOp, ins, _out(node), axis=axis)]


def lower_trilu(node: Node) -> list[SSAValue]:
    """Trilu of a runtime tensor: ``where(mask, x, 0)`` with the mask known at compile time."""
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    k = int(node.required_const(1, "k")) if input_at(node.op, 1) is not None else 0
    rows, cols = np.indices(shape[-2:])
    keep = cols - rows >= k if node.attr("upper", 1) else cols - rows <= k
    zero = np.zeros((), dtype=NUMPY_DTYPES[tensor_dtype(x.type)])
    return [node.emit(maia.WhereOp, [constant(node, keep), x, constant(node, zero)], _out(node))]


def _conv_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int],
               strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """Explicit [begin..., end...] pads, resolving ``auto_pad`` as ONNX defines it."""
    k = len(spatial)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, kk, st, dl in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // st) - 1) * st + (kk - 1) * dl + 1 - size)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * k)
    return [int(p) for p in node.attr("pads", [0] * (2 * k))]


def _zero_pad(node: Node, x: SSAValue, pads: Sequence[int]) -> SSAValue:
    """Concatenate zero blocks around the spatial axes (dims 2..) of ``x``."""
    k = len(pads) // 2
    dtype = NUMPY_DTYPES[tensor_dtype(x.type)]
    for i in range(k):
        before, after = pads[i], pads[k + i]
        if not before and not after:
            continue
        shape = list(tensor_shape(x.type))
        parts = []
        for width in (before, after):
            block = shape.copy()
            block[2 + i] = width
            parts.append(constant(node, np.zeros(block, dtype)) if width else None)
        ins = [v for v in (parts[0], x, parts[1]) if v is not None]
        shape[2 + i] += before + after
        x = node.emit(maia.ConcatOp, ins, TensorType(x.type.get_element_type(), shape),
                      axis=2 + i)
    return x


def lower_conv(node: Node) -> list[SSAValue]:
    """Conv as im2col + matmul: the patch matrix is a strided view of the (zero-padded)
    input, the kernel a [C*K, M] matrix, groups a batch dim of the matmul."""
    x, w = node.op.operands[0], node.op.operands[1]
    n, c, *spatial = tensor_shape(x.type)
    m, cg, *kernel = tensor_shape(w.type)
    k = len(spatial)
    strides = [int(v) for v in node.attr("strides", [1] * k)]
    dilations = [int(v) for v in node.attr("dilations", [1] * k)]
    groups = int(node.attr("group", 1))
    if groups < 1 or c % groups or m % groups or c // groups != cg:
        raise node.fail(f"group={groups} does not split {c} input channels and {m} filters "
                        f"of {cg} channels each")
    if any(v < 1 for v in strides + dilations) or len(strides) != k or len(dilations) != k \
            or len(kernel) != k:
        raise node.fail(f"strides {strides} and dilations {dilations} must be {k} positive "
                        f"integers")
    xp = _zero_pad(node, x, _conv_pads(node, spatial, kernel, strides, dilations))
    padded = tensor_shape(xp.type)
    out_sp = [(padded[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
              for i in range(k)]
    cs = contiguous_strides(padded)
    patch_shape = [n, *out_sp, c, *kernel]
    patch_strides = [cs[0], *(cs[2 + i] * strides[i] for i in range(k)), cs[1],
                     *(cs[2 + i] * dilations[i] for i in range(k))]
    patches = node.view(xp, patch_shape, 0, patch_strides)
    rows, per_group = n * _size(out_sp), cg * _size(kernel)
    elem = _out(node).get_element_type()
    a = node.reshape(patches, [rows, groups, per_group])
    a = node.transpose(a, [1, 0, 2])  # [G, rows, Cg*K]
    w_const = node.const(1)
    if w_const is not None:
        w_mat = constant(node, np.ascontiguousarray(
            w_const.reshape(groups, m // groups, per_group).transpose(0, 2, 1)))
    else:
        w_mat = node.transpose(node.reshape(w, [groups, m // groups, per_group]), [0, 2, 1])
    y = node.emit(maia.MatMulOp, [a, w_mat], TensorType(elem, [groups, rows, m // groups]))
    y = node.reshape(node.transpose(y, [1, 0, 2]), [rows, m])
    bias = input_at(node.op, 2)
    if bias is not None:
        y = node.emit(maia.BinaryOp, [y, bias], y.type, fn="add")
    y = node.reshape(y, [n, *out_sp, m])
    return [node.transpose(y, [0, k + 1, *range(1, k + 1)])]


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
    "SimplifiedLayerNormalization": lower_layernorm,
    "Reshape": lower_reshape_like, "Squeeze": lower_reshape_like,
    "Unsqueeze": lower_reshape_like, "Flatten": lower_reshape_like,
    "Transpose": lower_transpose, "Expand": lower_expand, "Slice": lower_by_index_probe,
    "Split": lower_by_index_probe, "Gather": lower_gather, "Concat": lower_concat,
    "Constant": lower_constant, "Trilu": lower_trilu,
    "GatherND": lower_by_index_probe, "GatherElements": lower_by_index_probe,
    "Conv": lower_conv,
}
BINARY["Sum"] = "add"

# Lowering tables of further op families, one module each (passes/lower_<family>.py):
# each defines ``RULES`` (op type -> rule) and ``FOLDED`` (op types fold-constants always
# folds, e.g. Size); they import this module's helpers, so they are merged in on first use.
FAMILY_MODULES = ("maiac.passes.lower_math", "maiac.passes.lower_norms",
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

