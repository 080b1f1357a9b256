"""Element types: xDSL builtin types <-> runtime dtype names <-> numpy."""

from __future__ import annotations

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float4E2M1FNType,
    Float8E4M3FNType,
    Float8E4M3FNUZType,
    Float8E5M2FNUZType,
    Float8E5M2Type,
    Float8E8M0FNUType,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    TensorType,
    bf16,
    f16,
    f32,
    i1,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute

from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import NP_DTYPES

NUMPY_DTYPES = NP_DTYPES
_ELEMENT_TYPES: dict[str, Attribute] = {
    "f32": f32, "bf16": bf16, "f16": f16, "i64": i64, "i32": i32, "i8": i8, "bool": i1,
    "u8": IntegerType(8, Signedness.UNSIGNED), "i16": IntegerType(16),
    "u16": IntegerType(16, Signedness.UNSIGNED), "f8e4m3": Float8E4M3FNType(),
    "f8e5m2": Float8E5M2Type(), "f8e4m3fnuz": Float8E4M3FNUZType(),
    "f8e5m2fnuz": Float8E5M2FNUZType(), "f8e8m0": Float8E8M0FNUType(),
    "f4e2m1": Float4E2M1FNType(), "i4": IntegerType(4),
    "u4": IntegerType(4, Signedness.UNSIGNED), "i2": IntegerType(2),
    "u2": IntegerType(2, Signedness.UNSIGNED),
}
_NARROW_FLOATS: tuple[tuple[type, str], ...] = (
    (Float8E4M3FNUZType, "f8e4m3fnuz"), (Float8E5M2FNUZType, "f8e5m2fnuz"),
    (Float8E8M0FNUType, "f8e8m0"), (Float4E2M1FNType, "f4e2m1"))


def dtype_name(element_type: Attribute) -> str:
    """The runtime dtype name of an xDSL element type ("f32", "i64", "bool", ...)."""
    if isinstance(element_type, Float32Type | Float64Type):
        return "f32"  # f64 tensors compute in fp32 on the machine
    if isinstance(element_type, BFloat16Type):
        return "bf16"
    if isinstance(element_type, Float16Type):
        return "f16"
    if isinstance(element_type, Float8E4M3FNType):
        return "f8e4m3"
    if isinstance(element_type, Float8E5M2Type):
        return "f8e5m2"
    for cls, name in _NARROW_FLOATS:
        if isinstance(element_type, cls):
            return name
    if isinstance(element_type, IntegerType):
        width = element_type.width.data
        if width == 1:
            return "bool"
        if element_type.signedness.data == Signedness.UNSIGNED and width in (2, 4, 8, 16):
            return f"u{width}"
        if width in (2, 4, 8, 16, 32, 64):
            return f"i{width}"
    raise MaiacError(f"element type {element_type} is not supported by the Maia machine model")


def element_type(name: str) -> Attribute:
    return _ELEMENT_TYPES[name]


def tensor_dtype(t: Attribute) -> str:
    assert isinstance(t, TensorType), t
    return dtype_name(t.get_element_type())


def tensor_shape(t: Attribute) -> tuple[int, ...]:
    assert isinstance(t, TensorType), t
    return tuple(int(d) for d in t.get_shape())



