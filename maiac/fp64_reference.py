"""A float64 reference of an fp32 ONNX model, for verify's depth-fair fp32 criterion.

On a deep fp32 model (30 decoder layers) maiac and onnxruntime round differently at
every matmul and reduction (block order, fused kernels), and the difference of the two
grows with depth beyond any fixed rtol/atol: SmolLM2-135M's logits differ by 1.1e-4, and
onnxruntime's own optimization levels happen to agree bit for bit there, so its noise says
nothing. The honest yardstick is the exact answer: the same graph computed in float64.
``fp64_outputs`` returns it (onnxruntime on a float64 copy of the graph, or the ONNX
reference evaluator when onnxruntime lacks a double kernel); verify then measures how far
onnxruntime's own fp32 result is from it and passes maiac when it is within
``FP64_FACTOR`` x that distance (maiac/verify.py). A real bug (a wrong weight, a wrong
index) moves maiac far from the float64 answer while onnxruntime stays close, so it
still fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from maiac.external_data import external_data, read_external
from maiac.onnx_model import OnnxModel, ort_session

FP64_FACTOR = 4.0
"""maiac's fp32 error from the float64 answer may be this many times onnxruntime's."""

_F, _D = TensorProto.FLOAT, TensorProto.DOUBLE
_PACKED = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(TensorProto, n)}  # sub-byte external data: not widened (no reference)


FP64_MAX_BYTES = 4 << 30
"""No float64 reference for models whose float64 weights would exceed this (memory)."""

_DATA_FILE = "weights64.bin"


def _tensor_to_double(t: onnx.TensorProto) -> None:
    if t.data_type == _F:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))


def _value_to_double(v: onnx.ValueInfoProto) -> None:
    if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == _F:
        v.type.tensor_type.elem_type = _D


def _graph_to_double(graph: onnx.GraphProto) -> None:
    """Everything but ``graph.initializer`` (streamed by ``double_model``) to float64."""
    for v in [*graph.input, *graph.output, *graph.value_info]:
        _value_to_double(v)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _tensor_to_double(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                for t in attr.g.initializer:
                    _tensor_to_double(t)
                _graph_to_double(attr.g)
            elif attr.name == "to" and node.op_type == "Cast" and attr.i == _F:
                attr.i = _D
        if node.op_type == "Constant":  # value_float(s) would make a float32 constant
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    value = np.array(attr.f if attr.name == "value_float" else list(attr.floats),
                                     np.float64)
                    node.attribute.remove(attr)
                    node.attribute.append(onnx.helper.make_attribute(
                        "value", numpy_helper.from_array(value)))


def _float64_bytes(proto: onnx.ModelProto) -> int:
    total = 0
    for t in proto.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        total += 8 * n  # float64, an upper bound for the other element types
    return total


def _initializer(t: onnx.TensorProto, base_dir: Path | None) -> np.ndarray | None:
    """An initializer's values; external data only from inside ``base_dir`` (the model's
    folder, checked as the importer checks it), None when it cannot be read here."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    if base_dir is None or t.data_type in _PACKED:
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    shape = tuple(int(d) for d in t.dims)
    what = f"initializer '{t.name}'"
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return read_external(external_data(t, base_dir, nbytes, what, required=True), dtype,
                         shape, what)


def double_model(proto: onnx.ModelProto, folder: Path | None = None,
                 base_dir: Path | None = None) -> onnx.ModelProto | None:
    """A copy of ``proto`` computing in float64 wherever it computes in float32 (weights,
    inputs, outputs, constants, Casts to float), or None when its float64 weights would
    exceed ``FP64_MAX_BYTES`` or some are external and no ``base_dir`` (the model's folder)
    says where. With ``folder`` the widened weights are written there as one external-data
    file, one tensor at a time, so the float64 weights never sit in memory twice
    (onnxruntime reads them from the file)."""
    external = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external and (base_dir is None or any(t.data_type in _PACKED for t in external)):
        return None
    if _float64_bytes(proto) > FP64_MAX_BYTES:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.initializer[:]  # rebuilt one by one below
    _graph_to_double(copy.graph)
    sink = open(folder / _DATA_FILE, "wb") if folder is not None else None  # noqa: SIM115
    try:
        for t in proto.graph.initializer:
            value = _initializer(t, base_dir)
            if value is None:
                return None
            if value.dtype == np.float32:
                value = value.astype(np.float64)
            if sink is None or value.nbytes < 1024:
                copy.graph.initializer.append(numpy_helper.from_array(value, t.name))
                continue
            offset = sink.tell()
            sink.write(np.ascontiguousarray(value).tobytes())
            wide = onnx.TensorProto(name=t.name, dims=list(value.shape),
                                    data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                    data_location=TensorProto.EXTERNAL)
            for key, val in (("location", _DATA_FILE), ("offset", str(offset)),
                             ("length", str(value.nbytes))):
                wide.external_data.add(key=key, value=val)
            copy.graph.initializer.append(wide)
            del value
    finally:
        if sink is not None:
            sink.close()
    return copy


def fp64_outputs(model: OnnxModel, graph: onnx.ModelProto,
                 feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str] | None:
    """The float64 outputs of ``graph`` on ``feeds`` (float32 inputs widened) and which
    engine computed them ("onnxruntime-fp64" or "onnx-reference-fp64"); None when the
    graph cannot be widened (too large, or external weights with no folder) or neither
    engine runs it."""
    with tempfile.TemporaryDirectory(prefix="maiac-fp64-") as tmp:
        folder = Path(tmp)
        doubled = double_model(graph, folder, model.base_dir)
        if doubled is None:
            return None
        wide = {k: (np.asarray(v, np.float64) if np.asarray(v).dtype == np.float32 else v)
                for k, v in feeds.items()}
        names = [o.name for o in doubled.graph.output]
        try:
            sess = ort_session(OnnxModel(doubled, model.label, folder),
                               what="float64 reference")
            outs = sess.run(names, wide)
            return dict(zip(names, outs, strict=True)), "onnxruntime-fp64"
        except Exception:  # noqa: BLE001 - e.g. no double kernel for one of its ops
            sess = None
        try:
            from onnx.external_data_helper import load_external_data_for_model
            from onnx.reference import ReferenceEvaluator

            load_external_data_for_model(doubled, tmp)
            with np.errstate(all="ignore"):
                outs = ReferenceEvaluator(doubled).run(names, wide)
            return dict(zip(names, outs, strict=True)), "onnx-reference-fp64"
        except Exception:  # noqa: BLE001 - verify then reports that no fp64 reference exists
            return None


def max_distance(a: np.ndarray, exact: np.ndarray) -> float:
    """max |a - exact| in float64 over the elements where both are finite (inf if a
    non-finite value of one is finite in the other)."""
    a64, e64 = np.asarray(a, np.float64), np.asarray(exact, np.float64)
    if a64.shape != e64.shape:
        return float("inf")
    if not a64.size:
        return 0.0
    both = np.isfinite(a64) & np.isfinite(e64)
    same = (a64 == e64) | (np.isnan(a64) & np.isnan(e64))
    if not np.all(both | same):
        return float("inf")
    return float(np.max(np.abs(a64[both] - e64[both]), initial=0.0))
