"""Lowering of the index family: scans, arg-reductions, top-k, scatters, pads, einsum.

* CumSum: the TVP row scan ``cumsum`` (exclusive/reverse as its params) along the axis,
  moved last by a view.
* ArgMax/ArgMin/Hardmax: row max/min, compare, first (or last) matching position.
* TopK: k rounds of arg-max with the found element masked, values and indices
  concatenated (k <= ``TOPK_LIMIT``).
* ScatterND/ScatterElements (KV-cache updates): every update row's flat target row
  ``t`` (runtime indices allowed); the one-hot ``E[r, n] = (t[n] == r)`` selects rows:
  ``E @ updates`` on the TTU for reduction none/add of float data, else a masked TVP
  reduction over the updates.
* Pad (constant/reflect/edge/wrap), Tile, DepthToSpace, SpaceToDepth: an index map
  computed by running the op on an index probe, lowered as a view or row gather
  (constant padding through a constant mask).
* Einsum: transposes, reductions and one batched matmul per operand pair.

Merged into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from xdsl.dialects.builtin import TensorType, f32, i1, i64
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import get_opset, input_at, onnx_attributes
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.lower_layout import _affine_view, gather_by_index, lower_by_index_probe
from maiac.passes.lower_math import binary, scalar, unary, where
from maiac.passes.lower_node import Node, _norm_axis, _out, _size, constant
from maiac.passes.node_eval import evaluate
from maiac.runtime.errors import MaiacError

TOPK_LIMIT = 64
"""Largest k TopK lowers to (k rounds of TVP row max + mask)."""


def _move_last(node: Node, x: SSAValue, axis: int) -> tuple[SSAValue, list[int]]:
    """``x`` with ``axis`` moved last, and the permutation that undoes it."""
    rank = len(tensor_shape(x.type))
    perm = [i for i in range(rank) if i != axis] + [axis]
    return node.transpose(x, perm), [int(p) for p in np.argsort(perm)]


def _with_elem(x: SSAValue, elem: object, shape: Sequence[int] | None = None) -> TensorType:
    return TensorType(elem, list(tensor_shape(x.type) if shape is None else shape))


# ---- CumSum ----------------------------------------------------------------------------


def lower_cumsum(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    rank = len(tensor_shape(x.type))
    axis = _norm_axis(int(node.required_const(1, "the axis input").reshape(-1)[0]), rank)
    moved, back = _move_last(node, x, axis)
    params = {"exclusive": int(node.attr("exclusive", 0)), "reverse": int(node.attr("reverse", 0))}
    y = node.emit(maia.RowOp, [moved], moved.type, fn="cumsum", params=params)
    return [node.transpose(y, back)]


# ---- ArgMax / ArgMin / Hardmax / TopK -------------------------------------------------


def _positions(node: Node, n: int) -> SSAValue:
    return constant(node, np.arange(n, dtype=np.int64))


def _arg_rows(node: Node, rows: SSAValue, largest: bool, last: bool = False
              ) -> tuple[SSAValue, SSAValue]:
    """(extreme value, its position) of each row of ``rows`` ([..., N] -> [..., 1])."""
    shape = tensor_shape(rows.type)
    n = shape[-1]
    kept = [*shape[:-1], 1]
    peak = node.emit(maia.ReduceOp, [rows], _with_elem(rows, rows.type.get_element_type(), kept),
                     fn="reduce_max" if largest else "reduce_min")
    hit = binary(node, "equal", rows, peak, elem=i1)
    miss = constant(node, np.array(-1 if last else n, dtype=np.int64))
    cand = where(node, hit, _positions(node, n), miss)
    index = node.emit(maia.ReduceOp, [cand], _with_elem(cand, i64, kept),
                      fn="reduce_max" if last else "reduce_min")
    return peak, index


def lower_argmax(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    rank = len(tensor_shape(x.type))
    axis = _norm_axis(int(node.attr("axis", 0)), rank)
    moved, _ = _move_last(node, x, axis)
    _, index = _arg_rows(node, moved, node.op.name == "onnx.ArgMax",
                         bool(node.attr("select_last_index", 0)))
    return [node.reshape(index, tensor_shape(_out(node)))]


def lower_hardmax(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    axis = _norm_axis(int(node.attr("axis", -1)), len(shape))
    if get_opset(node.op) < 13:  # coerced to 2-D at axis, as Softmax-1
        rows = node.reshape(x, [_size(shape[:axis]), _size(shape[axis:])])
        back = None
    else:
        rows, back = _move_last(node, x, axis)
    _, index = _arg_rows(node, rows, True)
    n = tensor_shape(rows.type)[-1]
    onehot = binary(node, "equal", _positions(node, n), index, elem=i1)
    y = unary(node, "copy", onehot, _with_elem(onehot, x.type.get_element_type()))
    return [node.reshape(y, shape) if back is None else node.transpose(y, back)]


def lower_topk(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    axis = _norm_axis(int(node.attr("axis", -1)), len(shape))
    k = int(node.required_const(1, "K").reshape(-1)[0]) if get_opset(node.op) >= 10 \
        else int(node.attr("k"))
    if k > TOPK_LIMIT:
        raise node.fail(f"TopK with k = {k} > {TOPK_LIMIT} is not supported")
    largest = bool(node.attr("largest", 1))
    rows, back = _move_last(node, x, axis)
    n = tensor_shape(rows.type)[-1]
    dtype = NUMPY_DTYPES[tensor_dtype(x.type)]
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V":
        fill = -np.inf if largest else np.inf
    else:
        info = np.iinfo(dtype)
        fill = info.min if largest else info.max
    fill_value = constant(node, np.array(fill, dtype=dtype))
    positions = _positions(node, n)
    values, indices = [], []
    current = rows
    for step in range(k):
        peak, index = _arg_rows(node, current, largest)
        values.append(peak)
        indices.append(index)
        if step + 1 < k:
            taken = binary(node, "equal", positions, index, elem=i1)
            current = where(node, taken, fill_value, current)
    kshape = [*tensor_shape(rows.type)[:-1], k]

    def joined(parts: list[SSAValue], elem: object) -> SSAValue:
        if len(parts) == 1:
            return parts[0]
        return node.emit(maia.ConcatOp, parts, TensorType(elem, kshape), axis=len(kshape) - 1)

    out_values = node.transpose(joined(values, x.type.get_element_type()), back)
    out_indices = node.transpose(joined(indices, i64), back)
    return [out_values, out_indices]


# ---- scatters --------------------------------------------------------------------------


def _wrap_negative(node: Node, index: SSAValue, extent: SSAValue | int) -> SSAValue:
    """``index + extent`` where ``index < 0`` (ONNX negative indices)."""
    ext = extent if isinstance(extent, SSAValue) else constant(
        node, np.array(extent, dtype=NUMPY_DTYPES[tensor_dtype(index.type)]))
    negative = binary(node, "less", index, scalar(node, 0, index), elem=i1)
    return where(node, negative, binary(node, "add", index, ext), index)


def scatter_rows(node: Node, data: SSAValue, targets: SSAValue, updates: SSAValue,
                 reduction: str) -> SSAValue:
    """``data [R, row]`` with row ``targets[n]`` (int64 [N]) set to / combined with
    ``updates [N, row]``."""
    rows, row = tensor_shape(data.type)
    n = tensor_shape(targets.type)[0]
    elem = data.type.get_element_type()
    hit_rn = binary(node, "equal", node.reshape(targets, [1, n]),
                    constant(node, np.arange(rows, dtype=np.int64).reshape(rows, 1)), elem=i1)
    is_float = tensor_dtype(data.type) in ("f32", "bf16", "f16")
    if reduction in ("none", "add") and is_float:
        onehot = unary(node, "copy", hit_rn, TensorType(f32, [rows, n]))
        upd = updates if tensor_dtype(updates.type) == "f32" else unary(
            node, "copy", updates, TensorType(f32, [n, row]))
        summed = node.emit(maia.MatMulOp, [onehot, upd], TensorType(f32, [rows, row]))
        if tensor_dtype(data.type) != "f32":
            summed = unary(node, "copy", summed, data.type)
        if reduction == "add":
            return binary(node, "add", data, summed)
        hit = node.emit(maia.ReduceOp, [hit_rn], TensorType(i1, [rows, 1]), fn="reduce_max")
        return where(node, hit, summed, data)
    # masked reduction over the updates: [R, row, N] where(E, U, identity)
    dtype = NUMPY_DTYPES[tensor_dtype(data.type)]
    if reduction in ("max", "min"):
        big = np.inf if np.issubdtype(dtype, np.floating) or dtype.kind == "V" \
            else np.iinfo(dtype).max
        ident = -big if reduction == "max" else big
    else:
        ident = 1 if reduction == "mul" else 0
    hit3 = node.view(hit_rn, [rows, row, n], 0, [n, 0, 1])
    upd3 = node.view(updates, [rows, row, n], 0, [0, 1, row])
    masked = where(node, hit3, upd3, constant(node, np.array(ident, dtype=dtype)))
    fn = {"none": "reduce_sum", "add": "reduce_sum", "mul": "reduce_prod",
          "max": "reduce_max", "min": "reduce_min"}[reduction]
    combined = node.reshape(node.emit(maia.ReduceOp, [masked], TensorType(elem, [rows, row, 1]),
                                      fn=fn), [rows, row])
    if reduction == "none":
        hit = node.emit(maia.ReduceOp, [hit_rn], TensorType(i1, [rows, 1]), fn="reduce_max")
        return where(node, hit, combined, data)
    return binary(node, {"add": "add", "mul": "mul", "max": "max", "min": "min"}[reduction],
                  data, combined)


def lower_scatter_nd(node: Node) -> list[SSAValue]:
    data, indices, updates = node.op.operands[:3]
    d_shape, i_shape = tensor_shape(data.type), tensor_shape(indices.type)
    k = i_shape[-1]
    n = _size(i_shape[:-1])
    row = _size(d_shape[k:])
    strides = np.array([_size(d_shape[i + 1:k]) for i in range(k)], dtype=np.int64)
    idx = node.reshape(indices, [n, k])
    if tensor_dtype(idx.type) != "i64":
        idx = unary(node, "copy", idx, TensorType(i64, [n, k]))
    idx = _wrap_negative(node, idx, constant(node, np.array(d_shape[:k], dtype=np.int64)))
    flat = binary(node, "mul", idx, constant(node, strides))
    targets = node.reshape(node.emit(maia.ReduceOp, [flat], TensorType(i64, [n, 1]),
                                     fn="reduce_sum"), [n])
    y = scatter_rows(node, node.reshape(data, [_size(d_shape[:k]), row]), targets,
                     node.reshape(updates, [n, row]), str(node.attr("reduction", "none")))
    return [node.reshape(y, d_shape)]


def lower_scatter_elements(node: Node) -> list[SSAValue]:
    data, indices, updates = node.op.operands[:3]
    d_shape, i_shape = tensor_shape(data.type), tensor_shape(indices.type)
    axis = _norm_axis(int(node.attr("axis", 0)), len(d_shape))
    d_strides = np.array([_size(d_shape[i + 1:]) for i in range(len(d_shape))], dtype=np.int64)
    grid = np.indices(i_shape).reshape(len(i_shape), -1)
    grid[axis] = 0
    base = (grid * d_strides[:, None]).sum(0).astype(np.int64)  # flat index, axis coord 0
    n = _size(i_shape)
    idx = node.reshape(indices, [n])
    if tensor_dtype(idx.type) != "i64":
        idx = unary(node, "copy", idx, TensorType(i64, [n]))
    idx = _wrap_negative(node, idx, d_shape[axis])
    targets = binary(node, "add", binary(node, "mul", idx, constant(
        node, np.array(d_strides[axis], np.int64))), constant(node, base))
    y = scatter_rows(node, node.reshape(data, [_size(d_shape), 1]), targets,
                     node.reshape(updates, [n, 1]), str(node.attr("reduction", "none")))
    return [node.reshape(y, d_shape)]


# ---- index maps: Pad, Tile, DepthToSpace, ... -------------------------------------------


def _index_map(node: Node, x: SSAValue, probe: np.ndarray) -> list[np.ndarray]:
    consts = [None if input_at(node.op, i) is None else node.required_const(i, f"input {i}")
              for i in range(1, len(node.op.operands))]
    return evaluate(node.op.name.removeprefix("onnx."), onnx_attributes(node.op),
                    [probe, *consts], len(node.op.results), {"": get_opset(node.op)})


def _gather_map(node: Node, x: SSAValue, index: np.ndarray) -> SSAValue:
    if index.size == 0:
        raise node.fail("zero-size tensors are not supported")
    view = _affine_view(index)
    if view is not None:
        return node.view(x, index.shape, view[0], view[1])
    return gather_by_index(node, x, index)


def lower_pad(node: Node) -> list[SSAValue]:
    """Any mode: the map from output to input positions, by Pad on an index probe; the
    positions constant padding fills (probe value -1) take the constant value."""
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    mode = str(node.attr("mode", "constant"))
    pads_attr = node.attr("pads", None) if get_opset(node.op) < 11 else None
    probe = np.arange(_size(shape), dtype=np.int64).reshape(shape)
    if mode == "constant":
        probe = probe + 1  # 0 marks padding
    if pads_attr is not None:
        attrs = {**onnx_attributes(node.op), "value": 0.0}
        (index,) = evaluate("Pad", attrs, [probe], 1, {"": get_opset(node.op)})
    else:
        consts: list[np.ndarray | None] = [node.required_const(1, "pads")]
        if input_at(node.op, 2) is not None and mode == "constant":
            consts.append(np.zeros((), dtype=np.int64))
        elif len(node.op.operands) > 3:
            consts.append(None)
        if input_at(node.op, 3) is not None:
            consts.append(node.required_const(3, "axes"))
        (index,) = evaluate("Pad", {"mode": mode}, [probe, *consts], 1,
                            {"": get_opset(node.op)})
    index = np.asarray(index)
    if mode != "constant":
        return [_gather_map(node, x, index)]
    padded = index == 0
    if not padded.any():
        return [_gather_map(node, x, index - 1)]
    gathered = _gather_map(node, x, np.maximum(index - 1, 0))
    if pads_attr is not None:
        value = scalar(node, float(node.attr("value", 0.0)), x)
    elif input_at(node.op, 2) is not None:
        value = node.reshape(input_at(node.op, 2), [])
    else:
        value = scalar(node, 0, x)
    return [where(node, constant(node, ~padded), gathered, value)]


def lower_index_probe(node: Node) -> list[SSAValue]:
    return lower_by_index_probe(node)


# ---- Einsum ----------------------------------------------------------------------------


def _parse_einsum(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand terms and the output term, ``...`` expanded to upper-case letters."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise MaiacError(f"einsum '{equation}' has {len(terms)} terms for {len(ranks)} inputs")
    ellipsis_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks,
                                                                     strict=True)
                         if "..." in t), default=0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:ellipsis_rank]
    expanded = []
    for term, rank in zip(terms, ranks, strict=True):
        if "..." in term:
            own = rank - len(term.replace("...", ""))
            term = term.replace("...", letters[ellipsis_rank - own:])
        expanded.append(term)
    if "->" not in equation:
        counts = {c: "".join(expanded).count(c) for c in set("".join(expanded))}
        rhs = letters + "".join(sorted(c for c, n in counts.items() if n == 1 and c.islower()))
    else:
        rhs = rhs.replace("...", letters)
    if not all(re.fullmatch(r"[A-Za-z]*", t) for t in [*expanded, rhs]):
        raise MaiacError(f"einsum '{equation}' is not a valid equation")
    return expanded, rhs


def _einsum_diagonal(node: Node, x: SSAValue, term: str) -> tuple[SSAValue, str]:
    """Repeated letters of one operand (``ii``): the diagonal, as a strided view."""
    if len(set(term)) == len(term):
        return x, term
    shape = tensor_shape(x.type)
    strides = [_size(shape[i + 1:]) for i in range(len(shape))]
    letters = list(dict.fromkeys(term))
    new_shape = [shape[term.index(c)] for c in letters]
    new_strides = [sum(s for t, s in zip(term, strides, strict=True) if t == c) for c in letters]
    return node.view(x, new_shape, 0, new_strides), "".join(letters)


def _einsum_sum(node: Node, x: SSAValue, term: str, keep: str) -> tuple[SSAValue, str]:
    """Sum ``x`` over the letters of ``term`` not in ``keep``."""
    gone = [i for i, c in enumerate(term) if c not in keep]
    if not gone:
        return x, term
    shape = tensor_shape(x.type)
    kept = [i for i in range(len(shape)) if i not in gone]
    moved = node.transpose(x, kept + gone)
    flat = node.reshape(moved, [*(shape[i] for i in kept), _size([shape[i] for i in gone])])
    y = node.emit(maia.ReduceOp, [flat], TensorType(x.type.get_element_type(),
                                                    [*(shape[i] for i in kept), 1]),
                  fn="reduce_sum")
    return node.reshape(y, [shape[i] for i in kept]), "".join(term[i] for i in kept)


def _einsum_pair(node: Node, a: SSAValue, ta: str, b: SSAValue, tb: str, keep: str
                 ) -> tuple[SSAValue, str]:
    """``a`` (letters ``ta``) times ``b`` (``tb``), summed over shared letters not in
    ``keep``: one batched matmul [batch, free_a, contract] @ [batch, contract, free_b]."""
    dims = dict(zip(ta, tensor_shape(a.type), strict=True))
    for c, d in zip(tb, tensor_shape(b.type), strict=True):
        dims[c] = max(dims.get(c, 1), d)
    batch = [c for c in ta if c in tb and c in keep]
    contract = [c for c in ta if c in tb and c not in keep]
    free_a = [c for c in ta if c not in tb]
    free_b = [c for c in tb if c not in ta]
    a_shape = dict(zip(ta, tensor_shape(a.type), strict=True))
    b_shape = dict(zip(tb, tensor_shape(b.type), strict=True))
    am = node.transpose(a, [ta.index(c) for c in batch + free_a + contract])
    bm = node.transpose(b, [tb.index(c) for c in batch + contract + free_b])
    am = node.reshape(am, [*(a_shape[c] for c in batch), _size([a_shape[c] for c in free_a]),
                           _size([a_shape[c] for c in contract])])
    bm = node.reshape(bm, [*(b_shape[c] for c in batch), _size([b_shape[c] for c in contract]),
                           _size([b_shape[c] for c in free_b])])
    out_shape = [*(dims[c] for c in batch), _size([dims[c] for c in free_a]),
                 _size([dims[c] for c in free_b])]
    y = node.emit(maia.MatMulOp, [am, bm], TensorType(a.type.get_element_type(), out_shape))
    letters = batch + free_a + free_b
    return node.reshape(y, [dims[c] for c in letters]), "".join(letters)


def lower_einsum(node: Node) -> list[SSAValue]:
    operands = list(node.op.operands)
    try:
        terms, out = _parse_einsum(str(node.attr("equation")),
                                   [len(tensor_shape(v.type)) for v in operands])
    except MaiacError as err:
        raise node.fail(str(err)) from None
    values = []
    for i, (v, t) in enumerate(zip(operands, terms, strict=True)):
        v, t = _einsum_diagonal(node, v, t)
        later = out + "".join(terms[j] for j in range(len(terms)) if j != i)
        values.append(_einsum_sum(node, v, t, later))
    acc, term = values[0]
    for i, (v, t) in enumerate(values[1:], start=1):
        keep = out + "".join(tt for _, tt in values[i + 1:])
        acc, term = _einsum_pair(node, acc, term, v, t, keep)
    acc, term = _einsum_sum(node, acc, term, out)
    y = node.transpose(acc, [term.index(c) for c in out])
    if tensor_shape(y.type) != tensor_shape(_out(node)):  # broadcast batch dims
        y = node.broadcast(y, tensor_shape(_out(node)))
    return [y]


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    "CumSum": lower_cumsum,
    "ArgMax": lower_argmax,
    "ArgMin": lower_argmax,
    "Hardmax": lower_hardmax,
    "TopK": lower_topk,
    "ScatterND": lower_scatter_nd,
    "ScatterElements": lower_scatter_elements,
    "Pad": lower_pad,
    "Tile": lower_index_probe,
    "DepthToSpace": lower_index_probe,
    "SpaceToDepth": lower_index_probe,
    "Einsum": lower_einsum,
}


# ---- Resize -----------------------------------------------------------------------------


def _resize_inputs(node: Node) -> list[np.ndarray | None]:
    """roi, scales, sizes (opset >= 11; scales only before) as constants."""
    values: list[np.ndarray | None] = []
    for index in range(1, len(node.op.operands)):
        value = input_at(node.op, index)
        if value is None:
            values.append(None)
            continue
        const = node.const(index)
        if const is None:
            raise node.fail(f"input '{value.name_hint}' (roi/scales/sizes) must be a constant: "
                            "maiac resizes by constant factors")
        values.append(None if const.size == 0 else const)
    return values


def _run_resize(node: Node, probe: np.ndarray, consts: list[np.ndarray | None],
                **overrides: object) -> np.ndarray:
    attrs = {**onnx_attributes(node.op), **overrides}
    (out,) = evaluate("Resize", attrs, [probe, *consts], 1, {"": get_opset(node.op)})
    return np.asarray(out)


def lower_resize(node: Node) -> list[SSAValue]:
    """Nearest: the index map of Resize on an index probe (a gather, any dtype).
    Linear/cubic (separable): per resized axis a constant [in, out] weight matrix, from
    Resize of one-hot probes, applied by a matmul on the TTU."""
    x = node.op.operands[0]
    shape = tensor_shape(x.type)
    out_shape = tensor_shape(_out(node))
    consts = _resize_inputs(node)
    mode = str(node.attr("mode", "nearest"))
    crop = node.attr("coordinate_transformation_mode", "") == "tf_crop_and_resize"
    if mode == "nearest":
        probe = np.arange(_size(shape), dtype=np.float64).reshape(shape)
        index = _run_resize(node, probe, consts, extrapolation_value=-1.0)
        outside = index < 0
        gathered = _gather_map(node, x, np.maximum(index, 0).astype(np.int64))
        if not outside.any():
            return [gathered]
        value = scalar(node, float(node.attr("extrapolation_value", 0.0)), x)
        return [where(node, constant(node, ~outside), gathered, value)]
    if str(node.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise node.fail("keep_aspect_ratio_policy is supported for mode 'nearest' only")
    if tensor_dtype(x.type) not in ("f32", "bf16", "f16"):
        raise node.fail(f"{mode} Resize of {tensor_dtype(x.type)} data is not supported")
    moved_axes = [a for a in range(len(shape)) if shape[a] != out_shape[a] or crop]
    # a probe keeping only the resized axes (scale-1 axes shrunk to 1)
    probe_shape = [shape[a] if a in moved_axes else 1 for a in range(len(shape))]
    if get_opset(node.op) < 11:  # Resize-10: (X, scales)
        roi, scales, sizes = None, consts[0], None
    else:
        roi, scales, sizes = (consts + [None, None, None])[:3]
    axes = node.attr("axes", None)
    listed = [_norm_axis(int(a), len(shape)) for a in axes] if axes else list(range(len(shape)))
    if sizes is not None:
        sizes = np.array([probe_shape[a] if a not in moved_axes else int(sizes[i])
                          for i, a in enumerate(listed)], dtype=np.int64)
    probe_consts = [scales] if get_opset(node.op) < 11 else [roi, scales, sizes][:len(consts)]
    zero = _run_resize(node, np.zeros(probe_shape), probe_consts)
    if np.any(zero != 0):
        raise node.fail("tf_crop_and_resize extrapolation is supported for mode 'nearest' only")
    y = x if tensor_dtype(x.type) == "f32" else unary(node, "copy", x, TensorType(f32, shape))
    for axis in moved_axes:
        n_in = shape[axis]
        columns = []
        for k in range(n_in):
            onehot = np.zeros(probe_shape)  # 1 on hyperplane k of axis, constant elsewhere
            np.moveaxis(onehot, axis, 0)[k] = 1
            response = _run_resize(node, onehot, probe_consts)
            pick = tuple(slice(None) if a == axis else 0 for a in range(len(shape)))
            columns.append(response[pick])
        weights = np.stack(columns).astype(np.float32)  # [in, out]
        if weights.shape == (n_in, n_in) and np.array_equal(weights, np.eye(n_in)):
            continue
        moved, back = _move_last(node, y, axis)
        m_shape = tensor_shape(moved.type)
        res = node.emit(maia.MatMulOp, [moved, constant(node, weights)],
                        TensorType(f32, [*m_shape[:-1], weights.shape[1]]))
        y = node.transpose(res, back)
    if tensor_shape(y.type) != out_shape:
        raise node.fail(f"resized shape {tensor_shape(y.type)} != {out_shape}")
    return [y if y.type == _out(node) else unary(node, "copy", y, _out(node))]


RULES["Resize"] = lower_resize
