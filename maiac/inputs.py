"""Seeded random inputs for a model, respecting what integer inputs mean.

Float inputs get N(0, 1) samples. Integer inputs named like token ids get ids in
``[0, vocab)`` where ``vocab`` is read off the embedding table (the ``Gather`` the ids
feed); attention masks are ones (optionally with a zero-padded tail); position ids are
``arange``; bool inputs are True. Used by ``maiac run`` (no inputs given) and
``maiac verify``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from maiac.runtime.errors import MaiacError

DEFAULT_INT_HIGH = 100
# Ops an index tensor may pass through unchanged in value on its way to a Gather.
_INDEX_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}

# ONNX TensorProto element type -> numpy dtype name (bf16 via ml_dtypes).
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}
# Program TensorSpec dtype names (runtime.isa.DTYPES) -> numpy dtype name.
_SPEC_DTYPES = {
    "f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64", "i64": "int64",
    "i32": "int32", "i8": "int8", "u8": "uint8", "bool": "bool",
}


def np_dtype(name: str) -> np.dtype:
    """numpy dtype for a numpy name, a TensorSpec name ("f32", "bf16", ...) or "bfloat16"."""
    name = _SPEC_DTYPES.get(name, name)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(name)
    except TypeError as e:
        raise MaiacError(f"unsupported input dtype {name!r}") from e


def _kind(name: str) -> str:
    """Classify an integer input by name: 'mask', 'position', 'ids' or 'int'."""
    n = name.lower()
    if "mask" in n:
        return "mask"
    if "position" in n or n in ("pos", "positions", "pos_ids", "cache_position"):
        return "position"
    if "ids" in n or n.endswith("_id") or "token" in n or n in ("input", "tokens"):
        return "ids"
    return "int"


def infer_int_ranges(model: Any) -> dict[str, int]:
    """For each graph input used as Gather indices into a constant table, the table size.

    Follows the index through value-preserving ops (Cast, Reshape, Unsqueeze, ...). When an
    input feeds several tables the smallest bound is kept. Inputs with no such Gather are
    absent from the result.
    """
    graph = model.graph
    table_rows: dict[str, int] = {}
    for init in graph.initializer:
        if len(init.dims) >= 1:
            table_rows[init.name] = int(init.dims[0])
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and len(a.t.dims) >= 1:
                    table_rows[node.output[0]] = int(a.t.dims[0])
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    def gather_axis(node: Any) -> int:
        for a in node.attribute:
            if a.name == "axis":
                return int(a.i)
        return 0

    ranges: dict[str, int] = {}
    for inp in graph.input:
        seen: set[str] = set()
        frontier = [inp.name]
        bound: int | None = None
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for node, idx in consumers.get(value, []):
                if node.op_type == "Gather" and idx == 1 and gather_axis(node) == 0:
                    rows = table_rows.get(node.input[0])
                    if rows:
                        bound = rows if bound is None else min(bound, rows)
                elif node.op_type in _INDEX_PASSTHROUGH and idx == 0:
                    frontier.extend(node.output)
        if bound is not None:
            ranges[inp.name] = bound
    return ranges


def graph_input_specs(model: Any, shapes: Mapping[str, Iterable[int]] | None = None
                      ) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, static shape) of every real graph input (initializers excluded).

    Symbolic or unknown dims must be bound by ``shapes`` (input name -> shape, or
    symbolic dim name -> size; maiac/shapes.py); the error names the input.
    """
    from maiac.shapes import bind_input_shapes

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    real = [inp for inp in graph.input if inp.name not in inits]
    static = bind_input_shapes(real, shapes)
    specs = []
    for inp in real:
        dtype_name = _ONNX_DTYPES.get(inp.type.tensor_type.elem_type)
        if dtype_name is None:
            raise MaiacError(f"input {inp.name!r}: unsupported element type "
                             f"{inp.type.tensor_type.elem_type} for random inputs")
        specs.append((inp.name, np_dtype(dtype_name), static[inp.name]))
    return specs


def random_array(name: str, dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator,
                 *, int_high: int | None = None, mask_pad: int = 0) -> np.ndarray:
    """One seeded random input, chosen by dtype and name (see the module docstring)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=np.bool_)
    if dtype.kind in "iu":
        kind = _kind(name)
        if kind == "mask":
            out = np.ones(shape, dtype=dtype)
            if mask_pad and len(shape) >= 1:
                out[..., max(0, shape[-1] - mask_pad):] = 0
            return out
        if kind == "position" and len(shape) >= 1:
            return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        high = int_high if int_high is not None else DEFAULT_INT_HIGH
        return rng.integers(0, max(high, 1), size=shape).astype(dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return rng.standard_normal(size=shape, dtype=np.float32).astype(dtype)
    raise MaiacError(f"input {name!r}: cannot make random values of dtype {dtype}")


def random_inputs(model_proto: Any, shapes: Mapping[str, Iterable[int]] | None = None,
                  seed: int = 0, *, mask_pad: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input of ``model_proto`` (a ModelProto or path).

    ``shapes`` binds symbolic dims (``{"input_ids": (1, 128)}``); ``mask_pad`` zeroes that
    many trailing positions of attention-mask-like inputs.
    """
    from maiac.onnx_model import open_model

    model = open_model(model_proto).proto
    ranges = infer_int_ranges(model)
    rng = np.random.default_rng(seed)
    return {
        name: random_array(name, dtype, shape, rng, int_high=ranges.get(name), mask_pad=mask_pad)
        for name, dtype, shape in graph_input_specs(model, shapes)
    }


def random_inputs_for_specs(specs: Iterable[Any], seed: int = 0,
                            int_ranges: Mapping[str, int] | None = None,
                            *, mask_pad: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for a compiled program's input specs (name, dtype, shape)."""
    rng = np.random.default_rng(seed)
    int_ranges = dict(int_ranges or {})
    return {
        s.name: random_array(s.name, np_dtype(s.dtype), tuple(s.shape), rng,
                             int_high=int_ranges.get(s.name), mask_pad=mask_pad)
        for s in specs
    }
