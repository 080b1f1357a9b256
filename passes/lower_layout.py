"""Lowering of the layout family: Reshape/Squeeze/Unsqueeze/Flatten (a ``maia.reshape``
alias), Transpose/Expand/Slice/Split and constant-index Gather* (one ``maia.view`` when the
result is an affine function of the input's flat index, else an indexed row DMA), runtime
Gather, Concat and Trilu. Merged into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import get_opset, input_at, onnx_attributes
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.lower_node import Node, _norm_axis, _out, _size, constant
from maiac.passes.node_eval import evaluate
from maiac.runtime.errors import MaiacError


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
    consts = [None if input_at(node.op, i) is None else node.required_const(i, f"input {i}")
              for i in range(1, len(node.op.operands))]
    key = _probe_key(node, shape, consts)
    if key is not None and key in _PROBED_VIEWS:
        return [node.view(x, out_shape, offset, strides)
                for out_shape, offset, strides in _PROBED_VIEWS[key]]
    probe = np.arange(_size(shape), dtype=np.int64).reshape(shape)
    inputs = [probe, *consts]
    results = evaluate(node.op.name.removeprefix("onnx."), onnx_attributes(node.op), inputs,
                       len(node.op.results), {"": get_opset(node.op)})
    values = []
    views: list[tuple[tuple[int, ...], int, list[int]]] = []
    for result in results:
        index = np.asarray(result)
        if index.size == 0:  # an unused empty piece (fold-constants replaced used ones)
            values.append(constant(node, np.zeros(index.shape, NUMPY_DTYPES[tensor_dtype(x.type)])))
            continue
        view = _affine_view(index)
        if view is None:
            values.append(gather_by_index(node, x, index))
            continue
        offset, strides = view
        values.append(node.view(x, index.shape, offset, strides))
        views.append((index.shape, offset, strides))
    if key is not None and len(views) == len(values):
        if len(_PROBED_VIEWS) >= 256:
            _PROBED_VIEWS.clear()
        _PROBED_VIEWS[key] = views
    return values


# The views an index probe found, by op, input shape, attributes and constant inputs: a
# decoder's layers slice alike (RoPE's rotate-half), and each probe of a
# [2048, 32, 128] activation costs an 8M-element index array and its check.
_PROBED_VIEWS: dict[tuple[Any, ...], list[tuple[tuple[int, ...], int, list[int]]]] = {}


def _probe_key(node: Node, shape: Sequence[int],
               consts: list[np.ndarray | None]) -> tuple[Any, ...] | None:
    """What the result of an index probe depends on (None: not hashable)."""
    op = node.op
    key = (op.name, get_opset(op), tuple(shape), len(op.results),
           tuple(sorted((k, op.attributes[k]) for k in onnx_attributes(op))),
           tuple(None if c is None else (c.dtype.str, c.shape, c.tobytes()) for c in consts))
    try:
        hash(key)
    except TypeError:
        return None
    return key


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


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    "Reshape": lower_reshape_like, "Squeeze": lower_reshape_like,
    "Unsqueeze": lower_reshape_like, "Flatten": lower_reshape_like,
    "Transpose": lower_transpose, "Expand": lower_expand, "Slice": lower_by_index_probe,
    "Split": lower_by_index_probe, "Gather": lower_gather, "Concat": lower_concat,
    "Trilu": lower_trilu, "GatherND": lower_by_index_probe,
    "GatherElements": lower_by_index_probe,
}
