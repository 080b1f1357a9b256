"""Evaluate one ONNX node on constant inputs: numpy for the shape ops, else ONNX's reference.

The exporters' shape sub-graphs (Shape → Gather → Unsqueeze → Concat → Reshape, Range,
ConstantOfShape, Where/Equal masks) are evaluated by the numpy rules below, which are
fast enough to run on every node of a large graph. Any other op falls back to
``onnx.reference.ReferenceEvaluator`` on a one-node model. Used by the importer (to
bind shapes ONNX inference leaves unknown) and by the fold-constants pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from maiac.ir.onnx import ATTR_TYPES, numpy_dtype_of_onnx

Inputs = list[np.ndarray | None]
Attrs = dict[str, Any]


class EvaluationError(Exception):
    """The node could not be evaluated (unsupported op or attribute, or bad inputs)."""


def _axes(attrs: Attrs, inputs: Inputs, index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``index`` (newer opsets)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return None


def _unsqueeze(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    x = inputs[0]
    axes = _axes(attrs, inputs, 1) or []
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = np.expand_dims(x, axis)
    return [x]


def _squeeze(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    axes = _axes(attrs, inputs, 1)
    x = inputs[0]
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _reshape(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    x, shape = inputs[0], [int(d) for d in inputs[1]]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _slice(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    x = inputs[0]
    if "starts" in attrs:  # opset < 10
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = list(inputs[1]), list(inputs[2])
        axes = _axes({}, inputs, 3)
        steps = list(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis) % x.ndim] = slice(int(start), int(end), int(step))
    return [x[tuple(index)]]


def _shape(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    dims = inputs[0].shape
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [np.array(dims[start:end], dtype=np.int64)]


def _constant(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    value = attrs.get("value")
    if value is None:
        raise EvaluationError("Constant without a materializable 'value'")
    return [value]


def _constant_of_shape(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    value = attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(tuple(int(d) for d in inputs[0]), fill[0], dtype=fill.dtype)]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX integer Div truncates toward zero (C semantics), unlike numpy's floor."""
    if np.issubdtype(a.dtype, np.integer):
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype)


def _elementwise(fn: Callable[..., np.ndarray]) -> Callable[[Attrs, Inputs], list[np.ndarray]]:
    def rule(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
        return [np.asarray(fn(*inputs))]

    return rule


def _cast(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    dtype = numpy_dtype_of_onnx(attrs["to"])
    if dtype.kind not in "biuf" or dtype.itemsize < 2 and dtype.kind == "f":
        raise EvaluationError("fp8 casts go through the reference evaluator")
    return [inputs[0].astype(dtype)]


def _transpose(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    return [np.transpose(inputs[0], attrs.get("perm"))]


def _expand(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    x, shape = inputs[0], tuple(int(d) for d in inputs[1])
    return [np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)).copy()]


def _range(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    return [np.arange(start, limit, delta).astype(start.dtype)]


def _gather(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    return [np.take(inputs[0], inputs[1].astype(np.int64), axis=attrs.get("axis", 0))]


def _concat(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    return [np.concatenate([x for x in inputs if x is not None], axis=attrs["axis"])]


def _gather_elements(attrs: Attrs, inputs: Inputs) -> list[np.ndarray]:
    data, indices = inputs[0], np.asarray(inputs[1])
    axis = int(attrs.get("axis", 0))
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return [np.take_along_axis(data, indices, axis=axis)]


NUMPY_RULES: dict[str, Callable[[Attrs, Inputs], list[np.ndarray]]] = {
    "GatherElements": _gather_elements,
    "LessOrEqual": _elementwise(np.less_equal),
    "GreaterOrEqual": _elementwise(np.greater_equal),
    "Identity": lambda attrs, inputs: [inputs[0]],
    "Constant": _constant,
    "Shape": _shape,
    "Size": lambda attrs, inputs: [np.array(inputs[0].size, dtype=np.int64)],
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Reshape": _reshape,
    "Slice": _slice,
    "Cast": _cast,
    "Transpose": _transpose,
    "Expand": _expand,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Add": _elementwise(lambda a, b: (a + b).astype(a.dtype)),
    "Sub": _elementwise(lambda a, b: (a - b).astype(a.dtype)),
    "Mul": _elementwise(lambda a, b: (a * b).astype(a.dtype)),
    "Div": _elementwise(_int_div),
    "Neg": _elementwise(np.negative),
    "Abs": _elementwise(np.abs),
    "Equal": _elementwise(np.equal),
    "Less": _elementwise(np.less),
    "Greater": _elementwise(np.greater),
    "And": _elementwise(np.logical_and),
    "Or": _elementwise(np.logical_or),
    "Not": _elementwise(np.logical_not),
    "Where": _elementwise(np.where),
    "Max": _elementwise(lambda *xs: np.maximum.reduce(np.broadcast_arrays(*xs))),
    "Min": _elementwise(lambda *xs: np.minimum.reduce(np.broadcast_arrays(*xs))),
}


def _make_attribute(op_type: str, name: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    attr_type = ATTR_TYPES.get(op_type, {}).get(name)
    if isinstance(value, list) and not value and attr_type is not None:
        return helper.make_attribute(name, value, attr_type=attr_type)
    return helper.make_attribute(name, value)


def evaluate_reference(
    op_type: str,
    attrs: Attrs,
    inputs: Inputs,
    num_outputs: int,
    opsets: dict[str, int],
    domain: str = "",
) -> list[np.ndarray]:
    """Run one node through ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference import ReferenceEvaluator

    in_names = ["" if x is None else f"in{i}" for i, x in enumerate(inputs)]
    out_names = [f"out{i}" for i in range(num_outputs)]
    node = helper.make_node(op_type, in_names, out_names, domain=domain or None)
    node.attribute.extend(_make_attribute(op_type, k, v) for k, v in attrs.items())
    graph = helper.make_graph(
        [node],
        "fold",
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in in_names if n],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in out_names],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    feeds = {n: x for n, x in zip(in_names, inputs, strict=True) if n}
    try:
        return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as err:  # the reference raises anything from KeyError to TypeError
        raise EvaluationError(f"{type(err).__name__}: {err}") from err


def evaluate(
    op_type: str,
    attrs: Attrs,
    inputs: Inputs,
    num_outputs: int,
    opsets: dict[str, int],
    domain: str = "",
) -> list[np.ndarray]:
    """The outputs of one ONNX node on constant ``inputs`` (None for an absent input).

    Raises ``EvaluationError`` when the node cannot be evaluated.
    """
    rule = NUMPY_RULES.get(op_type) if domain in ("", "ai.onnx") else None
    if rule is not None:
        try:
            return rule(attrs, inputs)
        except (EvaluationError, ValueError, IndexError, TypeError, KeyError):
            pass  # an unusual attribute combination: let the reference decide
    return evaluate_reference(op_type, attrs, inputs, num_outputs, opsets, domain)
