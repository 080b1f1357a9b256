"""Element types: xDSL builtin types <-> runtime dtype names <-> numpy."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from xdsl.dialects.builtin import (
    BFloat16Type,
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

NUMPY_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16),
    "f16": np.dtype(np.float16), "i64": np.dtype(np.int64), "i32": np.dtype(np.int32),
    "i8": np.dtype(np.int8), "u8": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
}
_ELEMENT_TYPES: dict[str, Attribute] = {
    "f32": f32, "bf16": bf16, "f16": f16, "i64": i64, "i32": i32, "i8": i8, "bool": i1,
    "u8": IntegerType(8, Signedness.UNSIGNED),
}


def dtype_name(element_type: Attribute) -> str:
    """The runtime dtype name of an xDSL element type ("f32", "i64", "bool", ...)."""
    if isinstance(element_type, Float32Type | Float64Type):
        return "f32"  # f64 tensors compute in fp32 on the machine
    if isinstance(element_type, BFloat16Type):
        return "bf16"
    if isinstance(element_type, Float16Type):
        return "f16"
    if isinstance(element_type, IntegerType):
        width = element_type.width.data
        if width == 1:
            return "bool"
        if element_type.signedness.data == Signedness.UNSIGNED and width == 8:
            return "u8"
        if width in (8, 32, 64):
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


def itemsize(dtype: str) -> int:
    return NUMPY_DTYPES[dtype].itemsize

