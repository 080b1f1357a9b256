"""The ``onnx`` dialect: one op per ONNX op type, generated from the ``onnx.defs`` schemas.

As in onnx-mlir, the op classes come from one table rather than hundreds of hand-written
classes. Every op ``onnx.<OpType>`` has variadic operands and results (counts checked
against the schema's min/max over all opset versions) and keeps the ONNX attributes in
its ``attributes`` dict under their ONNX names, as builtin attributes:

    INT → IntegerAttr i64        INTS → ArrayAttr[IntegerAttr i64]
    FLOAT → FloatAttr f32        FLOATS → ArrayAttr[FloatAttr f32]
    STRING → StringAttr          STRINGS → ArrayAttr[StringAttr]
    TENSOR → DenseIntOrFPElementsAttr (≤ 16 elements) or DenseResourceAttr

Two discardable attributes carry provenance: ``onnx.name`` (the node or initializer
name) and ``onnx.domain`` (only when not the default domain). The module carries
``onnx.opset_import``, a dictionary from domain ("" for ai.onnx) to opset version.

A missing optional input in the middle of a node's inputs is an ``onnx.NoValue``
result (type ``none``), as in onnx-mlir; trailing missing inputs are omitted.
Ops print in generic form and round-trip through xDSL's parser.
"""

from __future__ import annotations

from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import onnx
from xdsl.context import Context
from xdsl.dialect_interfaces.op_asm import OpAsmDialectInterface
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    ArrayAttr,
    Builtin,
    DenseIntOrFPElementsAttr,
    DenseResourceAttr,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    NoneType,
    StringAttr,
    TensorType,
    f32,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from maiac.ir import resources
from maiac.runtime.errors import MaiacError

UNBOUNDED = 2**31 - 1
"""The schemas' way of saying "variadic, no upper bound"."""

NAME_ATTR = "onnx.name"
DOMAIN_ATTR = "onnx.domain"
OPSET_ATTR = "onnx.opset_import"
_PROVENANCE = (NAME_ATTR, DOMAIN_ATTR)

# Ops with side effects or randomness: everything else is Pure, so DCE may drop it.
_IMPURE = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}

# Operator-set extensions (onnxruntime contrib ops) that exporters emit and the
# schemas in ``onnx.defs`` do not list. Counts: (min_in, max_in, min_out, max_out).
_CONTRIB_OPS: dict[str, tuple[int, int, int, int]] = {
    "SimplifiedLayerNormalization": (2, 2, 1, 2),
    "SkipSimplifiedLayerNormalization": (3, 4, 1, 4),
    "SkipLayerNormalization": (3, 5, 1, 4),
    "FastGelu": (1, 2, 1, 1),
    "BiasGelu": (2, 2, 1, 1),
    "QuickGelu": (1, 1, 1, 1),
    "FusedMatMul": (2, 2, 1, 1),
    "RotaryEmbedding": (2, 5, 1, 1),
    "MultiHeadAttention": (1, 11, 1, 4),
    "GroupQueryAttention": (3, 11, 1, 3),
}


class OnnxOp(IRDLOperation):
    """Base of every generated op: an ONNX node with schema-checked operand/result counts."""

    ONNX_TYPE: ClassVar[str]
    INPUT_RANGE: ClassVar[tuple[int, int]]
    OUTPUT_RANGE: ClassVar[tuple[int, int]]

    def verify_(self) -> None:
        lo, hi = self.INPUT_RANGE
        if not lo <= len(self.operands) <= hi:
            raise VerifyException(
                f"{self.name} takes {_count_text(lo, hi)} inputs, got {len(self.operands)}"
            )
        lo, hi = self.OUTPUT_RANGE
        if not lo <= len(self.results) <= hi:
            raise VerifyException(
                f"{self.name} has {_count_text(lo, hi)} outputs, got {len(self.results)}"
            )


def _count_text(lo: int, hi: int) -> str:
    if hi >= UNBOUNDED:
        return f"at least {lo}"
    return str(lo) if lo == hi else f"{lo} to {hi}"


@irdl_op_definition
class NoValueOp(IRDLOperation):
    """An absent optional input: ``%none = "onnx.NoValue"() : () -> none``."""

    name = "onnx.NoValue"
    result = result_def(NoneType)
    traits = traits_def(Pure())

    def __init__(self) -> None:
        super().__init__(result_types=[NoneType()])


def _schema_table() -> dict[str, dict[str, Any]]:
    """op type → {ranges, attribute types}, merged over every opset version."""
    table: dict[str, dict[str, Any]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain not in ("", "ai.onnx"):
            continue
        entry = table.setdefault(
            schema.name,
            {"inputs": [UNBOUNDED, 0], "outputs": [UNBOUNDED, 0], "attrs": {}},
        )
        entry["inputs"][0] = min(entry["inputs"][0], schema.min_input)
        entry["inputs"][1] = max(entry["inputs"][1], schema.max_input)
        entry["outputs"][0] = min(entry["outputs"][0], schema.min_output)
        entry["outputs"][1] = max(entry["outputs"][1], schema.max_output)
        for attr_name, attr in schema.attributes.items():
            entry["attrs"][attr_name] = int(attr.type)
    for op_type, (lo_in, hi_in, lo_out, hi_out) in _CONTRIB_OPS.items():
        table.setdefault(
            op_type, {"inputs": [lo_in, hi_in], "outputs": [lo_out, hi_out], "attrs": {}}
        )
    return table


_SCHEMAS = _schema_table()

ATTR_TYPES: dict[str, dict[str, int]] = {k: v["attrs"] for k, v in _SCHEMAS.items()}
"""op type → attribute name → ``onnx.AttributeProto.AttributeType`` (from the schemas)."""


def _make_op_class(op_type: str, spec: dict[str, Any]) -> type[OnnxOp]:
    namespace = {
        "__doc__": f"ONNX {op_type}.",
        "__module__": __name__,
        "__annotations__": {
            "ONNX_TYPE": ClassVar[str],
            "INPUT_RANGE": ClassVar[tuple[int, int]],
            "OUTPUT_RANGE": ClassVar[tuple[int, int]],
        },
        "name": f"onnx.{op_type}",
        "ONNX_TYPE": op_type,
        "INPUT_RANGE": tuple(spec["inputs"]),
        "OUTPUT_RANGE": tuple(spec["outputs"]),
        "inputs": var_operand_def(TensorType | NoneType),
        "outputs": var_result_def(TensorType),
        "traits": traits_def() if op_type in _IMPURE else traits_def(Pure()),
    }
    return irdl_op_definition(type(f"{op_type}Op", (OnnxOp,), namespace))


ONNX_OPS: dict[str, type[IRDLOperation]] = {
    op_type: _make_op_class(op_type, spec) for op_type, spec in sorted(_SCHEMAS.items())
}
"""ONNX op type (``"MatMul"``) → its op class (``onnx.MatMul``)."""

Onnx = Dialect("onnx", [NoValueOp, *ONNX_OPS.values()], [])


def op_type(op: Operation) -> str:
    """The ONNX op type of an ``onnx.*`` op (``"MatMul"`` for ``onnx.MatMul``)."""
    assert op.name.startswith("onnx."), op.name
    return op.name[len("onnx.") :]


def node_name(op: Operation) -> str:
    """The ONNX node (or initializer) name the op came from, or ``""``."""
    attr = op.attributes.get(NAME_ATTR)
    return attr.data if isinstance(attr, StringAttr) else ""


def get_opset(op: Operation, domain: str = "") -> int:
    """The opset version of ``domain`` imported by the module enclosing ``op``."""
    module = op if isinstance(op, ModuleOp) else op.get_toplevel_object()
    attr = module.attributes.get(OPSET_ATTR) if isinstance(module, Operation) else None
    if isinstance(attr, DictionaryAttr):
        version = attr.data.get(domain)
        if isinstance(version, IntegerAttr):
            return version.value.data
    return onnx.defs.onnx_opset_version()


def describe(op: Operation) -> str:
    """``node 'name': op 'Type' (opset N)`` — the prefix of every error about an op."""
    domain_attr = op.attributes.get(DOMAIN_ATTR)
    domain = domain_attr.data if isinstance(domain_attr, StringAttr) else ""
    return f"node '{node_name(op)}': op '{op_type(op)}' (opset {get_opset(op, domain)})"


def inputs(op: Operation) -> list[SSAValue | None]:
    """The op's ONNX inputs by position; None where an optional input is absent."""
    return [None if isinstance(v.type, NoneType) else v for v in op.operands]


def input_at(op: Operation, index: int) -> SSAValue | None:
    """The ONNX input at ``index``, or None when absent (omitted or ``onnx.NoValue``)."""
    if index >= len(op.operands):
        return None
    value = op.operands[index]
    return None if isinstance(value.type, NoneType) else value


def to_attribute(value: Any, onnx_type: int | None = None) -> Attribute:
    """A Python/ONNX attribute value as the builtin attribute the dialect stores.

    ``onnx_type`` (an ``AttributeProto.AttributeType``) disambiguates empty lists.
    """
    A = onnx.AttributeProto
    if isinstance(value, bool | int | np.integer):
        return IntegerAttr(int(value), i64)
    if isinstance(value, float | np.floating):
        return FloatAttr(float(value), f32)
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, bytes):
        return StringAttr(value.decode("utf-8"))
    if isinstance(value, np.ndarray):
        return resources.constant_attr(value)
    if isinstance(value, list | tuple):
        if onnx_type == A.INTS or (value and isinstance(value[0], int | np.integer)):
            return ArrayAttr([IntegerAttr(int(v), i64) for v in value])
        if onnx_type == A.FLOATS or (value and isinstance(value[0], float | np.floating)):
            return ArrayAttr([FloatAttr(float(v), f32) for v in value])
        return ArrayAttr([to_attribute(v) for v in value])
    raise TypeError(f"cannot store {type(value).__name__} as an onnx attribute")


def from_attribute(attr: Attribute) -> Any:
    """The Python value of a stored attribute (see ``get_attr``)."""
    if isinstance(attr, IntegerAttr):
        return attr.value.data
    if isinstance(attr, FloatAttr):
        return float(attr.value.data)
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, ArrayAttr):
        return [from_attribute(a) for a in attr.data]
    if isinstance(attr, DenseIntOrFPElementsAttr | DenseResourceAttr):
        return resources.constant_value(attr)
    return attr


def get_attr(op: Operation, name: str, default: Any = None) -> Any:
    """An ONNX attribute of ``op`` as a Python value, or ``default`` when absent.

    int, float, str, list[int], list[float], list[str]; tensors as ``np.ndarray``
    (None if the tensor's data is absent, e.g. a shape-only import).
    """
    attr = op.attributes.get(name)
    if attr is None:
        return default
    return from_attribute(attr)


def onnx_attributes(op: Operation) -> dict[str, Any]:
    """Every ONNX attribute of ``op`` (provenance attributes left out) as Python values."""
    return {
        k: from_attribute(v) for k, v in op.attributes.items() if k not in _PROVENANCE
    }


_ONNX_ELEMENT_TYPES: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.UINT16: np.dtype(np.uint16),
    onnx.TensorProto.UINT32: np.dtype(np.uint32),
    onnx.TensorProto.UINT64: np.dtype(np.uint64),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    onnx.TensorProto.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    onnx.TensorProto.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    onnx.TensorProto.FLOAT8E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    onnx.TensorProto.FLOAT8E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    onnx.TensorProto.FLOAT8E8M0: np.dtype(ml_dtypes.float8_e8m0fnu),
    onnx.TensorProto.FLOAT4E2M1: np.dtype(ml_dtypes.float4_e2m1fn),
    onnx.TensorProto.INT4: np.dtype(ml_dtypes.int4),
    onnx.TensorProto.UINT4: np.dtype(ml_dtypes.uint4),
    onnx.TensorProto.INT2: np.dtype(ml_dtypes.int2),
    onnx.TensorProto.UINT2: np.dtype(ml_dtypes.uint2),
}


def numpy_dtype_of_onnx(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX ``TensorProto`` element type (``to`` of Cast)."""
    dtype = _ONNX_ELEMENT_TYPES.get(elem_type)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise MaiacError(f"ONNX element type {name} is not supported by maiac")
    return dtype


def element_type_of_onnx(elem_type: int) -> Attribute:
    """The xDSL element type of an ONNX element type (FLOAT → f32, INT64 → i64, BOOL → i1)."""
    return resources.element_type(numpy_dtype_of_onnx(elem_type))


def onnx_elem_type_of(element_type: Attribute) -> int:
    """The ONNX ``TensorProto`` element type of an xDSL element type."""
    dtype = resources.numpy_dtype(element_type)
    for code, candidate in _ONNX_ELEMENT_TYPES.items():
        if candidate == dtype:
            return code
    raise MaiacError(f"element type {element_type} has no ONNX equivalent")


def make_context() -> Context:
    """A context that parses builtin, func, arith, onnx and maia.

    It carries its own builtin resource table, so parsing twice in one process keeps
    ``dense_resource`` handles unchanged (xDSL's shared table would rename them).
    """
    ctx = Context()
    ctx.load_dialect(
        Dialect(
            "builtin",
            list(Builtin.operations),
            list(Builtin.attributes),
            [OpAsmDialectInterface()],
        )
    )
    ctx.load_dialect(func.Func)
    ctx.load_dialect(arith.Arith)
    ctx.load_dialect(Onnx)
    from maiac.ir.maia import Maia

    ctx.load_dialect(Maia)
    return ctx


def parse_module(text: str, ctx: Context | None = None) -> ModuleOp:
    """Parse textual IR (generic or custom form) into a module."""
    from xdsl.parser import Parser

    return Parser(ctx or make_context(), text).parse_module()
