"""Static shapes for a model's graph inputs, from ``--shape`` bindings and input arrays.

Exported models name their dynamic dims (``batch``, ``sequence``, ``batch_size``...). Three
sources fix them, in one place for the importer, random inputs, calibration and verify:

- ``--shape input_ids=2x128``: the whole shape of one input (keys that are input names);
- ``--shape sequence=128``: one size for a symbolic dim, wherever it appears (keys that
  are a dim_param of some input and not an input name);
- arrays (``--inputs IN.npz``): each array's shape is its input's shape, as onnxruntime
  takes it.

A dim_param bound by one source binds it in every input. Disagreements (two sizes for one
symbolic dim, an array whose rank or static dims differ from the model's) are errors that
name the input, the dim and both sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from maiac.runtime.errors import MaiacError


def _dims_text(dims: Iterable[Any]) -> str:
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in dims) or "scalar"


def _example(dims: Iterable[Any]) -> str:
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else "1" for d in dims)


def _text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def bind_input_shapes(inputs: Sequence[Any], shapes: Mapping[str, Any] | None = None,
                      label: str = "the model",
                      arrays: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The static shape of every input in ``inputs`` (onnx ValueInfoProtos), by name.

    ``shapes``: input name -> shape, or symbolic dim name -> size (an int or a 1-tuple).
    ``arrays``: input name -> array (or anything with ``.shape``); its shape is the input's.
    Raises MaiacError when a dim stays unbound or two sources disagree.
    """
    shapes = dict(shapes or {})
    arrays = dict(arrays or {})
    names = [v.name for v in inputs]
    dims_of = {v.name: list(v.type.tensor_type.shape.dim) for v in inputs
               if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    symbols = sorted({d.dim_param for dims in dims_of.values() for d in dims if d.dim_param})

    bound: dict[str, tuple[int, str]] = {}  # dim_param -> (size, who bound it)
    explicit: dict[str, tuple[int, ...]] = {}

    def bind(symbol: str, size: int, who: str) -> None:
        if symbol in bound and bound[symbol][0] != size:
            raise MaiacError(f"symbolic dim '{symbol}' is {bound[symbol][0]} from "
                             f"{bound[symbol][1]} but {size} from {who}")
        bound.setdefault(symbol, (size, who))

    for key, value in shapes.items():
        if key in names:
            continue
        if key not in symbols:
            raise MaiacError(
                f"--shape {key}: {label} has no input '{key}' (its inputs: "
                f"{', '.join(names) or 'none'}) nor a symbolic dim '{key}' "
                f"(its symbolic dims: {', '.join(symbols) or 'none'})")
        sizes = (value,) if isinstance(value, int) else tuple(int(d) for d in value)
        if len(sizes) != 1:
            raise MaiacError(f"--shape {key}={_text(sizes)}: '{key}' is a symbolic dim; give "
                             f"one size, e.g. --shape {key}={sizes[0] if sizes else 1}")
        bind(key, sizes[0], f"--shape {key}={sizes[0]}")

    def take(name: str, shape: tuple[int, ...], who: str) -> None:
        if name in explicit and explicit[name] != shape:
            raise MaiacError(f"input '{name}': --shape gives {_text(explicit[name])} but "
                             f"{who}")
        if name in dims_of:
            dims = dims_of[name]
            if len(dims) != len(shape):
                raise MaiacError(f"{who}: input '{name}' has rank {len(dims)} "
                                 f"({_dims_text(dims)})")
            for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise MaiacError(f"{who}: input '{name}' has static shape "
                                     f"{_dims_text(dims)} (dim {axis} is {dim.dim_value})")
                if dim.dim_param:
                    bind(dim.dim_param, size, f"{who} (dim {axis} of '{name}')")
        explicit[name] = shape

    for name in names:
        if name in shapes:
            take(name, tuple(int(d) for d in shapes[name]),
                 f"--shape {name}={_text(tuple(int(d) for d in shapes[name]))}")
    for name, array in arrays.items():
        if name in names:
            shape = tuple(int(d) for d in array.shape)
            take(name, shape, f"the array for '{name}' (shape {_text(shape)})")

    out: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        if value.name in explicit:
            out[value.name] = explicit[value.name]
            continue
        if value.name not in dims_of:
            raise MaiacError(f"input '{value.name}' has no shape in {label}; give one with "
                             f"--shape {value.name}=<d0>x<d1>...")
        dims = dims_of[value.name]
        shape = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.dim_param in bound:
                shape.append(bound[dim.dim_param][0])
            else:
                symbol = f"'{dim.dim_param}'" if dim.dim_param else "(unnamed)"
                hint = (f"--shape {dim.dim_param}=N or " if dim.dim_param else "")
                raise MaiacError(
                    f"input '{value.name}' has symbolic dim {symbol} (dim {axis} of "
                    f"{_dims_text(dims)}); bind it, e.g. {hint}--shape "
                    f"{value.name}={_example(dims)}, or give --inputs")
        out[value.name] = tuple(shape)
    return out


def model_input_shapes(model: Any, shapes: Mapping[str, Any] | None = None,
                       inputs: Any = None) -> dict[str, tuple[int, ...]]:
    """:func:`bind_input_shapes` for a model (path or ModelProto) and optional arrays
    (a dict or an ``.npz`` path, e.g. ``compile --inputs IN.npz``)."""
    from maiac.onnx_model import open_model
    from maiac.verify import read_arrays

    proto = open_model(model).proto
    inits = {i.name for i in proto.graph.initializer}
    real = [v for v in proto.graph.input if v.name not in inits]
    arrays = read_arrays(inputs) if inputs is not None else None
    if arrays:
        unknown = sorted(set(arrays) - {v.name for v in real})
        if unknown:
            raise MaiacError(f"inputs name unknown model input {unknown[0]!r}; "
                             f"model inputs: {', '.join(v.name for v in real)}")
    return bind_input_shapes(real, shapes, arrays=arrays)
