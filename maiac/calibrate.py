"""Calibration: static activation scales for the formats that need them (FP8, NVFP4).

The fp32 model runs in onnxruntime on calibration inputs with the activation input of
every MatMul/Gemm node added as an extra graph output; each node gets the amax of that
input — the maximum of ``|x|`` (``max``) or its ``percentile`` — keyed by node name
(the name the maia matmul lowered from it carries). The `quantize` pass turns amax
into scales (FP8: ``amax / 448``; NVFP4: ``amax / (448 * 6)``).

Calibration data: an ``.npz`` with one array per model input; an array with one more
leading axis than the input holds several samples, run one by one. Without data,
seeded random inputs (maiac.inputs.random_inputs) are used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from maiac.onnx_model import OnnxModel, open_model, ort_session
from maiac.runtime.errors import MaiacError

MATMUL_OPS = ("MatMul", "Gemm")


def node_label(node: onnx.NodeProto) -> str:
    """The name maiac gives the ops lowered from ``node`` (as the importer does)."""
    return node.name or (node.output[0] if node.output else "")


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (typed when known)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            types[vi.name] = vi.type.tensor_type.elem_type
    except Exception:  # types are a nicety; onnxruntime infers them too
        pass
    for name in names:
        if name and name not in have:
            out.graph.output.append(helper.make_tensor_value_info(
                name, types.get(name) or onnx.TensorProto.FLOAT, None))
            have.add(name)
    return out


def load_samples(data: str | Path | Mapping[str, np.ndarray] | None, model: onnx.ModelProto,
                 shapes: Mapping[str, Iterable[int]] | None = None, seed: int = 0
                 ) -> list[dict[str, np.ndarray]]:
    """Calibration feeds: from an .npz / dict (extra leading axis = samples) or random."""
    from maiac.inputs import graph_input_specs, random_inputs

    if data is None:
        return [random_inputs(model, shapes, seed)]
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise MaiacError(f"--calib {path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as err:
            raise MaiacError(f"--calib {path}: not a readable .npz file ({err})") from None
    specs = graph_input_specs(model, shapes)
    arrays = {k: np.asarray(v) for k, v in dict(data).items()}
    names = [n for n, _, _ in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise MaiacError(f"calibration data has no array for model input {missing[0]!r} "
                         f"(inputs: {', '.join(names)}; got {', '.join(arrays) or 'none'})")
    ranks = {n: len(s) for n, _, s in specs}
    counts = {arrays[n].shape[0] for n in names if arrays[n].ndim == ranks[n] + 1}
    if not counts:
        return _checked([{n: arrays[n] for n in names}], specs)
    if len(counts) > 1:
        raise MaiacError(f"calibration data: inputs hold different sample counts {sorted(counts)}")
    count = counts.pop()
    return _checked([{n: arrays[n][i] if arrays[n].ndim == ranks[n] + 1 else arrays[n]
                      for n in names} for i in range(count)], specs)


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt.name == "bfloat16"


def _checked(samples: list[dict[str, np.ndarray]],
             specs: list[tuple[str, np.dtype, tuple[int, ...]]]) -> list[dict[str, np.ndarray]]:
    """Every sample array has its input's shape and converts exactly to its dtype."""
    from maiac.runtime.conversions import convert_input

    for sample in samples:
        for name, dtype, shape in specs:
            a = sample[name]
            if tuple(a.shape) != tuple(shape):
                raise MaiacError(f"--calib: array {name!r} has samples of shape "
                                 f"{list(a.shape)}, model input {name!r} is {list(shape)} "
                                 f"(an extra leading axis holds the samples)")
            if _is_float(a.dtype) != _is_float(np.dtype(dtype)):
                raise MaiacError(f"--calib: array {name!r} has dtype {a.dtype}, model input "
                                 f"{name!r} is {np.dtype(dtype)}")
            sample[name] = convert_input(f"--calib {name}", a, np.dtype(dtype),
                                         str(np.dtype(dtype)))
    return samples


@dataclass
class Activations:
    """The activation (first) input of every MatMul/Gemm over the calibration samples,
    from one onnxruntime pass: ``tensor_of`` maps node label -> tensor name, ``samples``
    holds one {tensor: value} per sample, ``constants`` the initializers among them."""

    tensor_of: dict[str, str]
    samples: list[dict[str, np.ndarray]]
    constants: dict[str, np.ndarray]


def collect_activations(model: str | Path | onnx.ModelProto | OnnxModel, data: Any = None, *,
                        shapes: Mapping[str, Iterable[int]] | None = None, seed: int = 0
                        ) -> Activations:
    """Run onnxruntime once over the calibration samples with every MatMul/Gemm
    activation added as an output (``data``: an .npz path, a dict, or None for seeded
    random inputs)."""
    opened = open_model(model)
    proto = opened.proto
    nodes = [n for n in proto.graph.node if n.op_type in MATMUL_OPS and n.input]
    wanted = {node_label(n): n.input[0] for n in nodes}
    inits = {i.name: i for i in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input}
    extra = [t for t in dict.fromkeys(wanted.values()) if t not in inits and t not in graph_inputs]
    sess = ort_session(opened, with_outputs(proto, extra), what="calibration")
    out_names = [o.name for o in sess.get_outputs()]
    samples = []
    for feeds in load_samples(data, proto, shapes, seed):
        results = dict(zip(out_names, sess.run(out_names, feeds), strict=True))
        results.update(feeds)
        samples.append({t: results[t] for t in set(wanted.values()) if t in results})
    constants = {t: _initializer(inits[t], opened) for t in set(wanted.values()) if t in inits}
    return Activations(wanted, samples, constants)


def _initializer(tensor: onnx.TensorProto, model: OnnxModel) -> np.ndarray:
    """A constant MatMul activation (rare), external data read through maiac's checks."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    from maiac.external_data import external_data, read_external

    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    what = f"initializer {tensor.name!r}"
    ext = external_data(tensor, model.base_dir or Path.cwd(),
                        int(np.prod(shape)) * dtype.itemsize, what, required=True)
    return read_external(ext, dtype, shape, what)


def amax_table(acts: Activations, *, method: str = "max", percentile: float = 100.0
               ) -> dict[str, float]:
    """amax of every MatMul/Gemm's activation, by node name (non-finite values ignored)."""
    amax: dict[str, float] = {}
    for label, tensor in acts.tensor_of.items():
        if tensor in acts.constants:
            vals = [np.abs(acts.constants[tensor].astype(np.float64)).ravel()]
        else:
            vals = [np.abs(np.asarray(s[tensor], np.float64)).ravel()
                    for s in acts.samples if tensor in s]
        if not vals:
            continue
        allv = np.concatenate(vals)
        allv = allv[np.isfinite(allv)]
        if allv.size == 0:
            continue
        amax[label] = float(np.max(allv) if method == "max" or percentile >= 100
                            else np.percentile(allv, percentile))
    return amax


def hessian_table(acts: Activations) -> dict[str, np.ndarray]:
    """``XᵀX`` (float64, [K, K]) of every MatMul/Gemm's activation over all calibration
    rows, by node name: GPTQ's layer-wise Hessian (passes/gptq.py)."""
    out: dict[str, np.ndarray] = {}
    for label, tensor in acts.tensor_of.items():
        rows = [np.asarray(s[tensor], np.float64) for s in acts.samples if tensor in s]
        rows = [r.reshape(-1, r.shape[-1]) for r in rows if r.ndim >= 2]
        if rows:
            x = np.concatenate(rows)
            x = np.where(np.isfinite(x), x, 0.0)
            out[label] = x.T @ x
    return out


def calibrate(model: str | Path | onnx.ModelProto | OnnxModel,
              data: str | Path | Mapping[str, np.ndarray] | None = None, *,
              shapes: Mapping[str, Iterable[int]] | None = None, method: str = "max",
              percentile: float = 100.0, seed: int = 0) -> dict[str, float]:
    """amax of the activation (first) input of every MatMul/Gemm, by node name."""
    return amax_table(collect_activations(model, data, shapes=shapes, seed=seed),
                      method=method, percentile=percentile)


def hessians(model: str | Path | onnx.ModelProto | OnnxModel,
             data: str | Path | Mapping[str, np.ndarray] | None = None, *,
             shapes: Mapping[str, Iterable[int]] | None = None, seed: int = 0
             ) -> dict[str, np.ndarray]:
    """GPTQ's Hessians (:func:`hessian_table`) over the calibration samples."""
    return hessian_table(collect_activations(model, data, shapes=shapes, seed=seed))


def summary(amax: Mapping[str, float]) -> dict[str, Any]:
    """A small description for the program manifest."""
    vals = list(amax.values())
    return {"ops": len(vals), "amax_min": min(vals, default=0.0),
            "amax_max": max(vals, default=0.0)}
