"""The side store for weights: tensor bytes live here, the IR holds only handles.

A ``DenseResourceAttr`` in the IR carries a handle and a type (DESIGN §1). The handle
names an entry in this process-wide store, which holds either an array already in
memory or a loader that maps it on first use (external-data ONNX files), so a weight
is never read twice and shape-only models whose files are absent still import.

Small constants (at most ``DENSE_LIMIT`` elements) are kept inline as
``DenseIntOrFPElementsAttr`` instead; ``constant_value`` reads both kinds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from xdsl.dialects.builtin import (
    BFloat16Type,
    BytesAttr,
    DenseIntOrFPElementsAttr,
    DenseResourceAttr,
    Float4E2M1FNType,
    Float6E2M3FNType,
    Float6E3M2FNType,
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
)
from xdsl.ir import Attribute, Operation

from maiac.runtime.errors import MaiacError

DENSE_LIMIT = 16
"""Constants with at most this many elements are printed inline in the IR."""

_SIGNLESS = Signedness.SIGNLESS
_UNSIGNED = Signedness.UNSIGNED

# (xDSL element type, numpy dtype) pairs; the first match wins in each direction.
_TYPE_TABLE: list[tuple[Attribute, np.dtype]] = [
    (Float32Type(), np.dtype(np.float32)),
    (Float16Type(), np.dtype(np.float16)),
    (BFloat16Type(), np.dtype(ml_dtypes.bfloat16)),
    (Float64Type(), np.dtype(np.float64)),
    (IntegerType(64), np.dtype(np.int64)),
    (IntegerType(32), np.dtype(np.int32)),
    (IntegerType(16), np.dtype(np.int16)),
    (IntegerType(8), np.dtype(np.int8)),
    (IntegerType(1), np.dtype(np.bool_)),
    (IntegerType(8, _UNSIGNED), np.dtype(np.uint8)),
    (IntegerType(16, _UNSIGNED), np.dtype(np.uint16)),
    (IntegerType(32, _UNSIGNED), np.dtype(np.uint32)),
    (IntegerType(64, _UNSIGNED), np.dtype(np.uint64)),
    (Float8E4M3FNType(), np.dtype(ml_dtypes.float8_e4m3fn)),
    (Float8E5M2Type(), np.dtype(ml_dtypes.float8_e5m2)),
    (Float8E4M3FNUZType(), np.dtype(ml_dtypes.float8_e4m3fnuz)),
    (Float8E5M2FNUZType(), np.dtype(ml_dtypes.float8_e5m2fnuz)),
    (Float8E8M0FNUType(), np.dtype(ml_dtypes.float8_e8m0fnu)),
    (Float6E2M3FNType(), np.dtype(ml_dtypes.float6_e2m3fn)),
    (Float6E3M2FNType(), np.dtype(ml_dtypes.float6_e3m2fn)),
    (Float4E2M1FNType(), np.dtype(ml_dtypes.float4_e2m1fn)),
    (IntegerType(4), np.dtype(ml_dtypes.int4)),
    (IntegerType(4, _UNSIGNED), np.dtype(ml_dtypes.uint4)),
    (IntegerType(2), np.dtype(ml_dtypes.int2)),
    (IntegerType(2, _UNSIGNED), np.dtype(ml_dtypes.uint2)),
]


def numpy_dtype(element_type: Attribute) -> np.dtype:
    """The numpy dtype holding values of an xDSL element type (i1 → bool, bf16 → ml_dtypes)."""
    for xdsl_type, dtype in _TYPE_TABLE:
        if xdsl_type == element_type:
            return dtype
    raise MaiacError(f"element type {element_type} has no numpy dtype in maiac")


def element_type(dtype: np.dtype | type) -> Attribute:
    """The xDSL element type for a numpy dtype (bool → i1, int64 → i64, uint8 → ui8)."""
    dtype = np.dtype(dtype)
    for xdsl_type, candidate in _TYPE_TABLE:
        if candidate == dtype:
            return xdsl_type
    raise MaiacError(f"numpy dtype {dtype} has no element type in maiac")


@dataclass
class _Entry:
    """One stored tensor: either ``array`` is set, or ``loader`` produces it once."""

    shape: tuple[int, ...]
    dtype: np.dtype
    hint: str
    array: np.ndarray | None = None
    loader: Callable[[], np.ndarray] | None = None
    available: Callable[[], bool] | None = None


_STORE: dict[str, _Entry] = {}
_HANDLE_CHARS = re.compile(r"[^A-Za-z0-9_.]")


def _new_handle(hint: str) -> str:
    """A fresh handle derived from ``hint`` that is a valid MLIR bare identifier."""
    base = _HANDLE_CHARS.sub("_", hint) or "const"
    if not (base[0].isalpha() or base[0] == "_"):
        base = "_" + base
    handle, counter = base, 0
    while handle in _STORE:
        counter += 1
        handle = f"{base}_{counter}"
    return handle


@contextlib.contextmanager
def scoped_store() -> Iterator[None]:
    """Forget the resources registered inside the block when it ends.

    The store is process-global, so a process that compiles many models (maiac eval
    over formats, sweeps) would keep every weight copy alive; a compiled program holds
    its own bytes, so the handles can go once the module is emitted.
    """
    before = set(_STORE)
    try:
        yield
    finally:
        for handle in [h for h in _STORE if h not in before]:
            del _STORE[handle]


def register_array(arr: np.ndarray, hint: str = "const") -> str:
    """Store an in-memory array (not copied) and return its handle."""
    arr = np.asarray(arr)
    handle = _new_handle(hint)
    _STORE[handle] = _Entry(tuple(arr.shape), arr.dtype, hint, array=arr)
    return handle


def register_lazy(
    loader: Callable[[], np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    hint: str = "weight",
    available: Callable[[], bool] | None = None,
) -> str:
    """Store a tensor produced by ``loader`` on first use (then cached); return its handle.

    ``available`` answers whether the loader can run (e.g. whether the external-data
    file exists); without it the tensor is assumed materializable.
    """
    handle = _new_handle(hint)
    _STORE[handle] = _Entry(
        tuple(shape), np.dtype(dtype), hint, loader=loader, available=available
    )
    return handle


def has_handle(handle: str) -> bool:
    """Whether ``handle`` names a tensor in the store of this process."""
    return handle in _STORE


def is_materializable(handle: str) -> bool:
    """Whether ``get_array(handle)`` can produce the tensor's values."""
    entry = _STORE.get(handle)
    if entry is None:
        return False
    if entry.array is not None:
        return True
    return entry.available is None or entry.available()


def stored_shape(handle: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a stored tensor, without loading it."""
    entry = _lookup(handle)
    return entry.shape, entry.dtype


def _lookup(handle: str) -> _Entry:
    entry = _STORE.get(handle)
    if entry is None:
        raise MaiacError(
            f"weight '{handle}' is not in the resource store of this process "
            "(IR parsed from text references weights by handle only; import the ONNX model instead)"
        )
    return entry


def get_array(handle: str) -> np.ndarray:
    """The tensor behind ``handle``, loading (e.g. mmapping) it on first use."""
    entry = _lookup(handle)
    if entry.array is None:
        if entry.available is not None and not entry.available():
            raise MaiacError(
                f"weight '{entry.hint}' cannot be loaded: its data file is absent "
                "(the model was imported shape-only)"
            )
        assert entry.loader is not None
        arr = np.asarray(entry.loader())
        if tuple(arr.shape) != entry.shape or arr.dtype != entry.dtype:
            raise MaiacError(
                f"weight '{entry.hint}': loaded {arr.dtype}{list(arr.shape)}, "
                f"expected {entry.dtype}{list(entry.shape)}"
            )
        entry.array = arr
        entry.loader = None
    return entry.array


def dense_attr(arr: np.ndarray, tensor_type: TensorType | None = None) -> DenseIntOrFPElementsAttr:
    """An inline ``dense<...>`` attribute holding a copy of ``arr``'s bytes."""
    arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns scalars into 1-d
    if tensor_type is None:
        tensor_type = TensorType(element_type(arr.dtype), arr.shape)
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return DenseIntOrFPElementsAttr(tensor_type, BytesAttr(data))


def _printable_inline(dtype: np.dtype) -> bool:
    """Whether xDSL can print and parse ``dense<...>`` of this dtype (bf16 and fp8 cannot)."""
    try:
        return getattr(element_type(dtype), "format", None) is not None
    except MaiacError:
        return False


def constant_attr(arr: np.ndarray, hint: str = "const") -> DenseIntOrFPElementsAttr | DenseResourceAttr:
    """Inline ``dense`` for small arrays, else a ``dense_resource`` handle into the store."""
    arr = np.asarray(arr)
    if arr.size <= DENSE_LIMIT and _printable_inline(arr.dtype):
        return dense_attr(arr)
    tensor_type = TensorType(element_type(arr.dtype), arr.shape)
    return DenseResourceAttr.from_params(register_array(arr, hint), tensor_type)


def resource_attr(handle: str, tensor_type: TensorType) -> DenseResourceAttr:
    """A ``dense_resource<handle> : tensor_type`` attribute."""
    return DenseResourceAttr.from_params(handle, tensor_type)


def dense_value(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The values of an inline dense attribute as an array of its type's shape (splats expanded)."""
    dtype = numpy_dtype(attr.get_element_type()).newbyteorder("<")
    shape = tuple(attr.get_shape())
    flat = np.frombuffer(attr.data.data, dtype=dtype)
    if flat.size == 1 and int(np.prod(shape)) != 1:
        return np.full(shape, flat[0], dtype=dtype.newbyteorder("="))
    return flat.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def constant_value(op_or_attr: Operation | Attribute | None) -> np.ndarray | None:
    """The value of a constant, or None when it is not a constant or its data is absent.

    Accepts an ``onnx.Constant`` op (reads its ``value``), a ``DenseIntOrFPElementsAttr``
    or a ``DenseResourceAttr``.
    """
    attr = op_or_attr
    if isinstance(op_or_attr, Operation):
        if op_or_attr.name != "onnx.Constant":
            return None
        attr = op_or_attr.attributes.get("value")
    if isinstance(attr, DenseIntOrFPElementsAttr):
        return dense_value(attr)
    if isinstance(attr, DenseResourceAttr):
        handle = attr.resource_handle.data
        if not is_materializable(handle):
            for seen in _ABSENT_READS:
                seen.add(handle)
            return None
        return get_array(handle)
    return None


_ABSENT_READS: list[set[str]] = []


@contextlib.contextmanager
def absent_reads() -> Iterator[set[str]]:
    """The handles whose values ``constant_value`` was asked for inside the block but could
    not give (their data is absent): a pass that reads a weight of IR text without its
    weights folder would otherwise silently see no value (``maiac opt`` refuses)."""
    seen: set[str] = set()
    _ABSENT_READS.append(seen)
    try:
        yield seen
    finally:
        _ABSENT_READS.remove(seen)
