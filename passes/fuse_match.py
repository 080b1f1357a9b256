"""Matching helpers shared by the `fuse-*` passes (maia tensor level).

The fusion passes read the `maia` tensor IR that `lower-onnx-to-maia` produced and
recognize exporter patterns in it. These helpers answer the small questions the
patterns ask: "is this value made by a maia.binary mul?", "is it a scalar constant?",
"does anyone else read it?". A matcher returns ``None`` when the answer is no, so a
pattern is a chain of ``if (x := ...) is None: return``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter

from maiac.ir import maia
from maiac.ir.resources import constant_attr, constant_value
from maiac.ir.types import tensor_shape

SMALL_CONSTANT = 1 << 16
"""Constants up to this many elements are read at compile time (never the weights)."""


def producer(value: SSAValue, name: str, fn: str | None = None) -> Operation | None:
    """The op defining ``value`` if it is a ``name`` op (with ``fn``, when given)."""
    owner = value.owner
    if not isinstance(owner, Operation) or owner.name != name:
        return None
    if fn is not None and maia.attr(owner, "fn") != fn:
        return None
    return owner


def binary(value: SSAValue, fn: str) -> Operation | None:
    return producer(value, "maia.binary", fn)


def unary(value: SSAValue, fn: str) -> Operation | None:
    return producer(value, "maia.unary", fn)


def skip_reshapes(value: SSAValue) -> SSAValue:
    """The value under a chain of ``maia.reshape`` aliases (same bytes, other shape)."""
    while (op := producer(value, "maia.reshape")) is not None:
        value = op.operands[0]
    return value


def constant_array(value: SSAValue, limit: int = SMALL_CONSTANT) -> np.ndarray | None:
    """The value of a small ``maia.constant`` (through reshapes), else None."""
    value = skip_reshapes(value)
    op = producer(value, "maia.constant")
    if op is None or _size(tensor_shape(value.type)) > limit:
        return None
    return constant_value(op.attributes["value"])


def scalar(value: SSAValue) -> float | None:
    """The number a constant holds when all its elements are equal (a broadcast scalar)."""
    arr = constant_array(value)
    if arr is None or arr.size == 0:
        return None
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def is_scalar(value: SSAValue, expected: float, rtol: float = 1e-6) -> bool:
    found = scalar(value)
    return found is not None and abs(found - expected) <= rtol * max(abs(expected), 1e-30)


def commuted(op: Operation) -> list[tuple[SSAValue, SSAValue]]:
    """Both operand orders of a commutative binary op."""
    a, b = op.operands
    return [(a, b), (b, a)]


def only_used_by(value: SSAValue, users: Iterable[Operation]) -> bool:
    """True if every use of ``value`` is by one of ``users``."""
    allowed = set(map(id, users))
    return all(id(use.operation) in allowed for use in value.uses)


def single_use(value: SSAValue) -> bool:
    return value.has_one_use()


def same_shape(a: SSAValue, b: SSAValue) -> bool:
    return tensor_shape(a.type) == tensor_shape(b.type)


def last_axis_vector(value: SSAValue, n: int) -> bool:
    """True if ``value`` has shape (..., 1, n) with only ones before: a per-channel vector."""
    shape = tensor_shape(value.type)
    return len(shape) >= 1 and shape[-1] == n and all(d == 1 for d in shape[:-1])


def label(op: Operation) -> str:
    return str(maia.attr(op, "op", op.name))


def new_op(cls: type[maia.TensorOp], ins: Sequence[SSAValue], out: Attribute,
           **attrs: object) -> Operation:
    """A maia tensor op from plain attribute values."""
    return cls.create(operands=list(ins), result_types=[out],
                      attributes={k: maia.to_attr(v) for k, v in attrs.items()})


def new_constant(value: np.ndarray, hint: str = "fused") -> Operation:
    attr = constant_attr(np.asarray(value), hint)
    return maia.ConstantOp.create(result_types=[attr.type], attributes={"value": attr})


def as_vector(value: SSAValue, n: int, rewriter: PatternRewriter,
              before: Operation) -> SSAValue:
    """``value`` (shape (1, .., 1, n)) as a rank-1 ``[n]`` tensor (a reshape alias)."""
    if tensor_shape(value.type) == (n,):
        return value
    assert isinstance(value.type, TensorType)
    op = new_op(maia.ReshapeOp, [value], TensorType(value.type.get_element_type(), [n]),
                op="fused")
    rewriter.insert(op, _before(before))
    return op.results[0]


def _before(op: Operation):  # noqa: ANN202 - an xdsl InsertPoint
    from xdsl.rewriter import InsertPoint

    return InsertPoint.before(op)


def erase_dead(ops: Sequence[Operation], rewriter: PatternRewriter) -> None:
    """Erase those of ``ops`` (a matched pattern) whose results nobody reads any more.

    Tried in reverse definition order until nothing changes, so a chain goes entirely.
    """
    alive = [op for op in ops if op is not None]
    changed = True
    while changed:
        changed = False
        for op in list(alive):
            if op.parent is not None and all(not r.uses for r in op.results):
                rewriter.erase(op)
                alive.remove(op)
                changed = True


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))
