"""An ONNX model opened once per compile, and onnxruntime sessions over it.

:func:`open_model` reads the graph (external weights stay on disk) and checks it once; the
importer, calibration, random inputs and the reference runs all take the resulting
:class:`OnnxModel` instead of loading the file again. :func:`ort_session` hands onnxruntime
the in-memory graph with the model's folder as the one place external weights may come
from, so onnxruntime applies its own path checks (``../`` or absolute locations are refused)
and never a second, unchecked ``onnx.load`` of the weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from maiac.runtime.errors import MaiacError

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class OnnxModel:
    """A loaded graph; ``base_dir`` is the folder its external data resolves against
    (None for a ModelProto given in memory, whose weights must all be inline)."""

    proto: onnx.ModelProto
    label: str
    base_dir: Path | None = None

    @property
    def path(self) -> str | None:
        return self.label if self.base_dir is not None else None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def open_model(model: str | os.PathLike[str] | onnx.ModelProto | OnnxModel) -> OnnxModel:
    """The graph of an .onnx file (external data not loaded) or a ModelProto, checked."""
    if isinstance(model, OnnxModel):
        return model
    if isinstance(model, onnx.ModelProto):
        return OnnxModel(model, model.graph.name or "<model>", None)
    path = Path(os.fspath(model))
    if path.is_dir():
        raise MaiacError(f"{path}: is a directory, expected an .onnx file")
    if not path.is_file():
        raise MaiacError(f"{path}: no such ONNX model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, onnx may raise others
        raise MaiacError(f"{path}: not a valid ONNX model ({type(err).__name__}: "
                         f"{first_line(err)})") from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise MaiacError(f"{path}: not a valid ONNX model (no ir_version or graph)")
    _check_names(proto.graph, str(path))
    return OnnxModel(proto, str(path), path.parent)


def _check_names(graph: onnx.GraphProto, label: str) -> None:
    """Every name in the graph is text: protobuf hands invalid UTF-8 back as bytes."""
    def names(g: onnx.GraphProto) -> Iterable[object]:
        yield g.name
        for v in [*g.input, *g.output, *g.value_info, *g.initializer]:
            yield v.name
        for n in g.node:
            yield from (n.name, n.op_type, n.domain, *n.input, *n.output)
            for a in n.attribute:
                yield a.name
                for sub in [a.g, *a.graphs] if a.HasField("g") or a.graphs else []:
                    yield from names(sub)

    for name in names(graph):
        if not isinstance(name, str):
            raise MaiacError(f"{label}: not a valid ONNX model (name {bytes(name)[:40]!r} is "
                             f"not UTF-8 text)")


def ort_session(model: OnnxModel, graph: onnx.ModelProto | None = None, *,
                optimize: bool = True, custom_op_lib: str | None = None,
                what: str = "onnxruntime") -> Any:
    """A CPU onnxruntime session over ``graph`` (default: the model's own), its external
    weights read by onnxruntime from the model's folder. ``what`` starts error messages."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if model.base_dir is not None:
        opts.add_session_config_entry(_EXTERNAL_FOLDER_KEY, str(model.base_dir.resolve()))
    if custom_op_lib is not None:
        if not os.path.isfile(custom_op_lib):
            raise MaiacError(f"--ort-custom-op-lib {custom_op_lib}: no such file")
        try:
            opts.register_custom_ops_library(custom_op_lib)
        except Exception as e:
            raise MaiacError(f"--ort-custom-op-lib {custom_op_lib}: onnxruntime could not "
                             f"load it ({first_line(e)})") from None
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession((graph or model.proto).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        raise MaiacError(f"{what}: onnxruntime cannot load {model.label} ({first_line(e)})"
                         ) from None
