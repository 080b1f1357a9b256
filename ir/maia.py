"""The `maia` dialect: what the Maia 200 machine computes, at two levels.

Tensor level (after `lower-onnx-to-maia`): value-semantics ops on static-shaped tensors,
one per machine-level operation family. Their parameters are plain attributes so the IR
prints and parses in generic form:

    %y = "maia.matmul"(%x, %w, %b) {act = "gelu"} : (...) -> tensor<4x64xf32>

Tiled level (after `tile`): buffers and instructions, no tensor values. A
``maia.kernel`` holds the instructions of one tensor-level op; its TSRAM scratch
buffers live only inside it. Operand blocks are ``Access`` dictionaries::

    {buf = "t3", off = 0, dtype = "f32", shape = array<i64: 16, 64>,
     strides = array<i64: 64, 1>, ts = array<i64: 1024>, ls = array<i64>}

meaning runtime.isa.Access with the address resolved from buffer ``buf`` (+ ``off``
elements) once `plan-memory` has placed it. ``ts``/``ls`` are the tile and loop strides.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

from xdsl.dialects.builtin import (
    ArrayAttr,
    BoolAttr,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    f64,
    i1,
    i64,
)
from xdsl.ir import Attribute, Dialect, Region
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import VerifyException


class TensorOp(IRDLOperation):
    """Base of tensor-level ops: operands ``ins``, one tensor result."""

    ins = var_operand_def()
    out = result_def(TensorType)
    ARITY: ClassVar[tuple[int, int]] = (0, 0)

    def verify_(self) -> None:
        lo, hi = self.ARITY
        if not lo <= len(self.ins) <= hi:
            raise VerifyException(f"{self.name} takes {lo}..{hi} operands, got {len(self.ins)}")


@irdl_op_definition
class ConstantOp(TensorOp):
    """A constant tensor: ``value`` is a dense or dense_resource attribute."""

    name = "maia.constant"
    ARITY: ClassVar[tuple[int, int]] = (0, 0)


@irdl_op_definition
class MatMulOp(TensorOp):
    """``act(a @ b (+ bias)) (<residual> r)`` with numpy batch broadcasting.

    Operands ``(a, b, [bias], [r])``: optional ``act`` epilogue; when the ``residual``
    attribute (``add`` | ``mul``) is set, the last operand is ``r``, a tensor broadcast
    to the result and combined with it before the store (residual add, SwiGLU gate).
    With ``glu`` (a binary fn) ``b`` is ``[K, 2N]`` and the result is
    ``glu(act(a @ b[:, :N]), a @ b[:, N:])`` (SwiGLU: gate and up projection in one op).
    """

    name = "maia.matmul"
    ARITY: ClassVar[tuple[int, int]] = (2, 4)


@irdl_op_definition
class UnaryOp(TensorOp):
    """Elementwise ``fn`` (runtime.isa.UNARY_FNS); ``copy`` with another type is a cast."""

    name = "maia.unary"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class BinaryOp(TensorOp):
    """Elementwise ``fn`` (runtime.isa.BINARY_FNS) with numpy broadcasting."""

    name = "maia.binary"
    ARITY: ClassVar[tuple[int, int]] = (2, 2)


@irdl_op_definition
class WhereOp(TensorOp):
    name = "maia.where"
    ARITY: ClassVar[tuple[int, int]] = (3, 3)


@irdl_op_definition
class ReduceOp(TensorOp):
    """``fn`` over the last axis, which is kept with extent 1."""

    name = "maia.reduce"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class SoftmaxOp(TensorOp):
    """Softmax (``fn`` = softmax | log_softmax) over the last axis."""

    name = "maia.softmax"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class RowOp(TensorOp):
    """A last-axis row ``fn`` whose result has the input's shape (``cumsum``), with the
    function's ``params`` (a dictionary, e.g. ``{exclusive = 1, reverse = 0}``)."""

    name = "maia.row"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class NormOp(TensorOp):
    """``fn`` = layernorm (x, scale, bias) | rmsnorm (x, scale) over the last axis."""

    name = "maia.norm"
    ARITY: ClassVar[tuple[int, int]] = (2, 3)


@irdl_op_definition
class GatherOp(TensorOp):
    """Rows of a 2-D ``table`` picked by integer ``indices``: out = indices.shape + [row]."""

    name = "maia.gather"
    ARITY: ClassVar[tuple[int, int]] = (2, 2)


@irdl_op_definition
class ViewOp(TensorOp):
    """A strided view of the (contiguous) input, materialized by a DMA.

    ``out[idx] = flat(in)[offset + sum(idx * strides)]``: transposes, slices, expands.
    """

    name = "maia.view"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class ReshapeOp(TensorOp):
    """Same bytes, another shape: an alias, no data moves."""

    name = "maia.reshape"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class ConcatOp(TensorOp):
    name = "maia.concat"
    ARITY: ClassVar[tuple[int, int]] = (1, 1 << 16)


@irdl_op_definition
class AttentionOp(TensorOp):
    """``softmax(q @ kᵀ * scale + mask) @ v`` per (batch, head), never materializing scores.

    Operands ``(q, k, v, [mask])`` are the *sources* of strided views (see
    passes/fuse_views.py): ``dims = [B, Hkv, G, Sq, Sk, D]`` with ``G = kv_groups``
    query heads per key/value head (GQA; query head ``h = hkv * G + g``); each of
    ``q_view``, ``k_view``, ``v_view``, ``mask_view`` is ``[offset, s_B, s_Hkv, s_G,
    s_row, s_col]`` in elements of its operand over the logical blocks
    ``q: [B, Hkv, G, Sq, D]``, ``k, v: [B, Hkv, G, Sk, D]`` (``s_G = 0``: shared K/V),
    ``mask: [B, Hkv, G, Sq, Sk]`` (additive, 0 strides broadcast). The result is
    contiguous ``[B, Hkv * G, Sq, D]``, unless ``out_view = [offset, s_B, s_Hkv, s_G,
    s_row, s_col]`` gives where element ``[b, hkv, g, row, col]`` goes in the result
    (e.g. straight into the ``[B, Sq, H, D]`` layout the output projection reads).
    ``causal`` records that the mask hides exactly the keys after each query (key ``c``
    is hidden from query ``r`` iff ``c > r + Sk - Sq``). Without a mask operand, a causal
    attention generates that mask on the TVP and skips the key blocks it hides entirely.
    ``empty_rows = "zero"``: a query row whose keys are all masked gives 0 (the
    exporters' ``where(isnan(p), 0, p)`` guard, absorbed by fuse-attention), not the
    softmax's 0/0 = NaN.
    """

    name = "maia.attention"
    ARITY: ClassVar[tuple[int, int]] = (3, 4)


@irdl_op_definition
class CacheWriteOp(TensorOp):
    """Write ``new`` [B, H, S, D] into the cache [B, H, C, D] at rows ``pos[b] + s`` (in
    place: the result *is* the cache operand's buffer, with the new rows in it).

    Operands ``(cache, new, pos)`` with ``pos`` an integer [B] tensor (each sequence's
    length). Made by passes/kv_cache_inplace.py; ``new`` is converted to the cache's
    element type as it is stored.
    """

    name = "maia.cache_write"
    ARITY: ClassVar[tuple[int, int]] = (3, 3)


@irdl_op_definition
class RopeOp(TensorOp):
    """Rotate-half rotary embedding ``x * cos + rotate_half(x) * sin`` over the last axis.

    Operands ``(x, cos, sin)``; ``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])``.
    ``x`` is the *source* of a strided view (passes/fuse_views.py): ``x_view = [offset,
    *strides]`` in elements of operand ``x`` over the result's shape, so a head transpose
    in front of RoPE is never materialized. ``cos``/``sin`` broadcast (numpy rules) to the
    contiguous result.
    """

    name = "maia.rope"
    ARITY: ClassVar[tuple[int, int]] = (3, 3)


@irdl_op_definition
class AllReduceOp(TensorOp):
    """Sum of the operand over the ``chips`` chips of a tensor-parallel group (``rank``
    is this chip); passes/shard.py inserts it after a row-parallel matmul."""

    name = "maia.all_reduce"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class AllGatherOp(TensorOp):
    """The operands of all ``chips`` chips concatenated along ``axis`` in rank order."""

    name = "maia.all_gather"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class SendOp(TensorOp):
    """Send the operand to pipeline stage ``peer`` (passes/pipeline.py); the result is the
    operand itself (never read: the op is kept for the transfer it makes)."""

    name = "maia.send"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)


@irdl_op_definition
class RecvOp(TensorOp):
    """The value pipeline stage ``peer`` sends (the k-th recv from a stage pairs with its
    k-th send to this one)."""

    name = "maia.recv"
    ARITY: ClassVar[tuple[int, int]] = (0, 0)


# ---- tiled level -------------------------------------------------------------------


@irdl_op_definition
class BufferOp(IRDLOperation):
    """A named allocation: ``sym``, ``level``, ``nbytes``, ``kind`` (+ ``addr`` once planned)."""

    name = "maia.buffer"


@irdl_op_definition
class KernelOp(IRDLOperation):
    """The instructions of one tensor-level op (``op``, ``kind``, ``flops``)."""

    name = "maia.kernel"
    body = region_def("single_block")
    traits = traits_def(NoTerminator())


@irdl_op_definition
class LoopOp(IRDLOperation):
    """Runs its body for every iteration of ``trips`` (row-major)."""

    name = "maia.loop"
    body = region_def("single_block")
    traits = traits_def(NoTerminator())


@irdl_op_definition
class DmaOp(IRDLOperation):
    name = "maia.dma"


@irdl_op_definition
class GatherRowsOp(IRDLOperation):
    name = "maia.gather_rows"


@irdl_op_definition
class ScatterRowsOp(IRDLOperation):
    """runtime.isa.Scatter: ``dst`` (the table, written), ``indices``, ``src`` (the rows)."""

    name = "maia.scatter_rows"


@irdl_op_definition
class MmOp(IRDLOperation):
    name = "maia.mm"


@irdl_op_definition
class VecOp(IRDLOperation):
    name = "maia.vec"


@irdl_op_definition
class CollectiveOp(IRDLOperation):
    """runtime.isa.Collective: ``collective``, ``src``/``dst`` accesses, ``chips``, ``rank``."""

    name = "maia.collective"


@irdl_op_definition
class SyncOp(IRDLOperation):
    """runtime.isa.Sync: a barrier on ``engine`` carrying ``waits`` (the sync pass inserts
    it where an instruction needs more waits than the target allows)."""

    name = "maia.sync"


TILED_INSTRUCTIONS = (DmaOp, GatherRowsOp, ScatterRowsOp, MmOp, VecOp, CollectiveOp, SyncOp)

Maia = Dialect(
    "maia",
    [ConstantOp, MatMulOp, UnaryOp, BinaryOp, WhereOp, ReduceOp, SoftmaxOp, NormOp, GatherOp,
     ViewOp, ReshapeOp, ConcatOp, AttentionOp, BufferOp, KernelOp, LoopOp, DmaOp, GatherRowsOp, MmOp,
     VecOp, RopeOp, AllReduceOp, AllGatherOp, CollectiveOp, RowOp, SendOp, RecvOp,
     CacheWriteOp, ScatterRowsOp, SyncOp],
)


# ---- attribute helpers ------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _int_attr(value: int) -> IntegerAttr:
    return IntegerAttr(value, i64)


@lru_cache(maxsize=1 << 16)
def _int_array_attr(values: tuple[int, ...]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, list(values))


@lru_cache(maxsize=1 << 16)
def _int_array_values(attr: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(v) for v in attr.get_values())


# Attributes are immutable and compare by value, and building one verifies it (~17 us
# for an integer): the tiled IR of an 8B model builds and reads ~10^6 of them, mostly
# the same few thousand integers and index tuples, so those are made (and read) once.


def to_attr(value: Any) -> Attribute:
    """A builtin attribute for a plain Python value (ints, floats, str, bools, lists)."""
    if isinstance(value, Attribute):
        return value
    if isinstance(value, bool):
        return BoolAttr.from_bool(value)
    if isinstance(value, int):
        return _int_attr(int(value))
    if isinstance(value, float):
        return FloatAttr(value, f64)
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, dict):
        return DictionaryAttr({k: to_attr(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return _int_array_attr(tuple(int(v) for v in value))
        return ArrayAttr([to_attr(v) for v in value])
    raise TypeError(f"no attribute for {value!r}")


# The plain values of dictionary attributes whose values are all immutable (an
# instruction's accesses), by the attribute object: every pass after `tile` reads the
# same accesses again. A copy of the dict is returned, so callers may change it.
_DICT_VALUES: dict[int, tuple[DictionaryAttr, dict[str, Any]]] = {}


def forget_attr_values() -> None:
    """Drop the cached values (and the attributes they keep alive): called when a
    compile ends, its module gone, so a process that compiles many models does not
    hold the last 64K attributes (0.4 MB per small export, tens of MB at the cap)."""
    _DICT_VALUES.clear()


def from_attr(attr: Attribute) -> Any:
    """Inverse of ``to_attr``."""
    if isinstance(attr, IntegerAttr):
        value = attr.value.data
        return bool(value) if attr.type == i1 else value
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, DenseArrayBase):
        return _int_array_values(attr)
    if isinstance(attr, DictionaryAttr):
        hit = _DICT_VALUES.get(id(attr))
        if hit is not None and hit[0] is attr:
            return dict(hit[1])
        value = {k: from_attr(v) for k, v in attr.data.items()}
        if all(v is None or isinstance(v, str | int | float | tuple) for v in value.values()):
            if len(_DICT_VALUES) >= 1 << 16:
                _DICT_VALUES.clear()
            _DICT_VALUES[id(attr)] = (attr, value)  # the entry keeps ``attr`` (and its id)
            return dict(value)
        return value
    if isinstance(attr, ArrayAttr):
        return [from_attr(v) for v in attr.data]
    return attr


def attr(op: IRDLOperation, name: str, default: Any = None) -> Any:
    """The plain value of attribute ``name`` of ``op`` (or ``default``)."""
    found = op.attributes.get(name)
    return default if found is None else from_attr(found)


def instruction(cls: type[IRDLOperation], **fields: Any) -> IRDLOperation:
    """Build a tiled-level op from plain values."""
    return cls.create(attributes={k: to_attr(v) for k, v in fields.items() if v is not None})


def region_of(ops: Sequence[IRDLOperation]) -> Region:
    from xdsl.ir import Block

    return Region(Block(list(ops)))
