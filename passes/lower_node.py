"""The rule writer's view of one `onnx` node being lowered (``Node``) and the shape helpers
every ``passes/lower_*.py`` rule table shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.dialects import builtin
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.rewriter import InsertPoint, Rewriter

from maiac.ir import maia
from maiac.ir.onnx import describe, get_attr, input_at
from maiac.ir.resources import constant_attr, constant_value
from maiac.ir.types import tensor_shape
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import contiguous_strides


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


def constant(node: Node, value: np.ndarray) -> SSAValue:
    """A new small constant (e.g. a scale) inserted before the node."""
    attr = constant_attr(value, "scale")
    op = maia.ConstantOp.create(result_types=[attr.type], attributes={"value": attr})
    Rewriter.insert_op(op, InsertPoint.before(node.op))
    return op.results[0]
