"""ONNX ModelProto → ``builtin.module { func.func @main(...) }`` of ``onnx`` ops.

One op per ONNX node, every value a static ``TensorType``: symbolic input dims are bound
from ``shapes`` (``--shape input_ids=1x128``), then ONNX shape inference runs (with data
propagation), and where it leaves a shape unknown the importer evaluates the shape
sub-graph itself, node by node (``maiac.passes.node_eval``).

Weights stay out of the IR (DESIGN §1): every initializer becomes an ``onnx.Constant``
whose ``value`` is a ``dense_resource`` handle into ``maiac.ir.resources``, mapped from
the file on first use (``np.memmap`` for external data), or an inline ``dense`` when it
has at most 16 elements.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

from maiac.external_data import check_inline_size, external_data, read_external
from maiac.importers import expand_model, model_quant_table
from maiac.ir import resources
from maiac.ir.onnx import (
    DOMAIN_ATTR,
    NAME_ATTR,
    ONNX_OPS,
    OPSET_ATTR,
    NoValueOp,
    element_type_of_onnx,
    numpy_dtype_of_onnx,
    to_attribute,
)
from maiac.onnx_model import OnnxModel, open_model
from maiac.passes.lower_onnx import family_ops
from maiac.passes.node_eval import EvaluationError, evaluate
from maiac.passes.quant_spec import MODEL_QUANT_ATTR
from maiac.runtime.errors import MaiacError
from maiac.shapes import bind_input_shapes

SUPPORTED_OPS: set[str] = {
    "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Relu", "Gelu", "Erf",
    "Tanh", "Sigmoid", "Softmax", "LayerNormalization", "ReduceMean", "ReduceSum",
    "ReduceMax", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Concat", "Split",
    "Slice", "Gather", "Cast", "Constant", "Identity", "Where", "Expand", "Shape", "Neg",
    "Exp", "Log", "Equal", "Less", "Greater", "And", "Or", "Not", "IsNaN",
    "ConstantOfShape", "Range", "Flatten", "Max", "Min", "Abs", "Reciprocal", "Cos", "Sin",
    "Trilu", "SimplifiedLayerNormalization", "Dropout",
    "LessOrEqual", "GreaterOrEqual", "GatherElements", "GatherND", "Conv", "Mod", "Sum",
    "Xor", "Floor", "Ceil", "Sign", "LogSoftmax", "ReduceMin",
}  # fmt: skip
"""ONNX op types maiac accepts; other engineers add the ops they lower."""
SUPPORTED_OPS.update(family_ops())  # the op families lowered in passes/lower_<family>.py

SHAPE_PRESERVING = {"GroupNormalization"}
"""Ops whose output 0 has input 0's type, where ONNX shape inference gives nothing."""

SMALL_VALUE_LIMIT = 4096
"""Values with at most this many elements are tracked while inferring shapes."""

_DEFAULT_DOMAINS = ("", "ai.onnx")
_HINT_CHARS = re.compile(r"[^A-Za-z0-9_$.-]+")
_I64, _I32 = element_type_of_onnx(TensorProto.INT64), element_type_of_onnx(TensorProto.INT32)


def import_model(
    model: str | Path | onnx.ModelProto | OnnxModel,
    shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    shape_only: bool = False,
) -> ModuleOp:
    """Import an ONNX model (path or ModelProto) as a module of ``onnx`` ops.

    ``shapes`` binds the symbolic dims of inputs by input name. With ``shape_only``
    external weight files may be absent: their constants import with shape and type
    only, for compiling and timing models whose weights never exist here.
    """
    proto, label, base_dir = _load(model)
    return _Importer(proto, label, base_dir, shape_only).run(dict(shapes or {}))


def _load(model: str | Path | onnx.ModelProto | OnnxModel) -> tuple[onnx.ModelProto, str, Path]:
    """The ModelProto (external data not loaded), a label for errors, its directory."""
    opened = open_model(model)
    return opened.proto, opened.label, opened.base_dir or Path.cwd()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "")


class _Importer:
    """The state of one import: the model, its opsets, and what is known of each value."""

    def __init__(self, proto: onnx.ModelProto, label: str, base_dir: Path, shape_only: bool):
        self.label = label
        self.base_dir = base_dir
        self.shape_only = shape_only
        self.opsets = {
            ("" if o.domain in _DEFAULT_DOMAINS else o.domain): o.version
            for o in proto.opset_import
        }
        if proto.functions:
            proto = onnx.inliner.inline_local_functions(proto)
        proto = expand_model(proto)  # contrib / QDQ ops -> standard ONNX (maiac.importers)
        self.proto = proto
        self.graph = proto.graph
        self.types: dict[str, TensorType] = {}
        self.values: dict[str, np.ndarray] = {}  # small known values, for shape inference

    # -- helpers -------------------------------------------------------------------

    def opset(self, node: onnx.NodeProto) -> int:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        return self.opsets.get(domain, 1)

    def describe(self, node: onnx.NodeProto) -> str:
        return f"node '{_node_label(node)}': op '{node.op_type}' (opset {self.opset(node)})"

    # -- the stages ----------------------------------------------------------------

    def run(self, shapes: dict[str, tuple[int, ...]]) -> ModuleOp:
        nodes = self._name_unnamed_outputs()
        self._check_supported(nodes)
        initializers = {t.name: t for t in self.graph.initializer}
        inputs = [v for v in self.graph.input if v.name not in initializers]
        self._bind_inputs(inputs, shapes)
        constants = {name: self._tensor_attr(t, name, name) for name, t in initializers.items()}
        self.constant_nodes = {
            n.output[0]: self._constant_node_attr(n) for n in nodes if n.op_type == "Constant"
        }
        self._infer_types(nodes, inputs, initializers)
        return self._build(nodes, inputs, constants)

    def _name_unnamed_outputs(self) -> list[onnx.NodeProto]:
        """Copies of the nodes where an unnamed output before a named one gets a name.

        Shape inference then types it, and the op keeps its output positions.
        """
        nodes = []
        for index, node in enumerate(self.graph.node):
            named = [k for k, o in enumerate(node.output) if o]
            last = named[-1] if named else -1
            if any(not node.output[k] for k in range(last)):
                node = onnx.NodeProto.FromString(node.SerializeToString())
                for k in range(last):
                    if not node.output[k]:
                        node.output[k] = f"__maiac_unused_{index}_{k}"
            nodes.append(node)
        return nodes

    def _check_supported(self, nodes: list[onnx.NodeProto]) -> None:
        """Every unsupported op type of the model in one error (maiac.op_support)."""
        from maiac.op_support import check_supported

        check_supported(nodes, self.label)

    def _bind_inputs(self, inputs: list[onnx.ValueInfoProto], shapes: dict) -> None:
        """Static types for the graph inputs: ``shapes`` binds input shapes or symbolic
        dims by name (maiac/shapes.py)."""
        for value in inputs:
            if not value.type.HasField("tensor_type"):
                raise MaiacError(f"input '{value.name}': only tensor inputs are supported")
        static = bind_input_shapes(inputs, shapes, self.label)
        for value in inputs:
            self.types[value.name] = self._tensor_type(value.type.tensor_type.elem_type,
                                                       static[value.name], value.name)

    def _tensor_type(self, elem_type: int, shape: Iterable[int], what: str) -> TensorType:
        try:
            return TensorType(element_type_of_onnx(elem_type), list(shape))
        except MaiacError as err:
            raise MaiacError(f"'{what}': {err}") from None

    # -- constants -----------------------------------------------------------------

    def _tensor_attr(
        self, tensor: onnx.TensorProto, hint: str, record_as: str | None = None
    ) -> Attribute:
        """The ``value`` attribute of a constant: inline when small, else a handle.

        Small values are remembered under ``record_as`` for shape inference.
        """
        dtype = numpy_dtype_of_onnx(tensor.data_type)
        shape = tuple(tensor.dims)
        if any(d < 0 for d in shape):
            raise MaiacError(f"initializer '{tensor.name or hint}': negative dimension in "
                             f"shape {list(shape)}")
        tensor_type = self._tensor_type(tensor.data_type, shape, hint)
        size = int(np.prod(shape, dtype=np.int64))
        external = tensor.data_location == TensorProto.EXTERNAL
        if not external:
            check_inline_size(tensor, dtype, shape, f"initializer '{tensor.name or hint}'")
        if not external and size <= SMALL_VALUE_LIMIT:
            value = _tensor_to_array(tensor, dtype)
            if record_as:
                self.values[record_as] = value
            return resources.constant_attr(value, hint)
        if external:
            loader, available = self._external_loader(tensor, dtype, shape, hint)
            if dtype.kind in "iu" and size <= SMALL_VALUE_LIMIT and available():
                # a small integer tensor saved externally (onnx.save(size_threshold=0)) may
                # be a Reshape's shape: shape inference needs its values as inline ones
                value = np.array(loader())
                if record_as:
                    self.values[record_as] = value
                return resources.constant_attr(value, hint)
        else:
            def loader(t: onnx.TensorProto = tensor) -> np.ndarray:
                return _tensor_to_array(t, dtype)

            available = None
        handle = resources.register_lazy(loader, shape, dtype, hint, available)
        return resources.resource_attr(handle, tensor_type)

    def _external_loader(self, tensor: onnx.TensorProto, dtype: np.dtype, shape: tuple, hint: str):
        what = f"initializer '{tensor.name or hint}'"
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ext = external_data(tensor, self.base_dir, nbytes, what, required=not self.shape_only)

        def loader() -> np.ndarray:
            return read_external(ext, dtype, shape, what)

        return loader, ext.present

    def _constant_node_attr(self, node: onnx.NodeProto) -> Attribute:
        """A Constant node's value, whichever of value/value_float/... it uses."""
        attr = node.attribute[0] if len(node.attribute) == 1 else None
        hint = node.output[0]
        if attr is None:
            raise MaiacError(f"{self.describe(node)} needs exactly one value attribute")
        if attr.name == "value":
            return self._tensor_attr(attr.t, hint, hint)
        python_value = helper.get_attribute_value(attr)
        arrays = {
            "value_float": np.float32, "value_floats": np.float32,
            "value_int": np.int64, "value_ints": np.int64,
        }
        if attr.name not in arrays:
            raise MaiacError(f"{self.describe(node)}: attribute '{attr.name}' is not supported")
        value = np.array(python_value, dtype=arrays[attr.name])
        self.values[hint] = value
        return resources.constant_attr(value, hint)

    # -- shapes --------------------------------------------------------------------

    def _infer_types(self, nodes, inputs, initializers) -> None:
        """A static type for every value: ONNX inference, then our own where it fails."""
        skeleton = self._skeleton(nodes, inputs, initializers)
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=False, strict_mode=False, data_prop=True
            )
        except Exception as err:
            raise MaiacError(f"{self.label}: ONNX shape inference failed: {_first_line(err)}") from None
        for value in [*inferred.graph.value_info, *inferred.graph.output]:
            static = _static_type(value)
            if static is not None and value.name not in self.types:
                self.types[value.name] = self._tensor_type(*static, value.name)
        for name, tensor in initializers.items():
            self.types[name] = self._tensor_type(tensor.data_type, tensor.dims, name)
        holes = [n for n in nodes for o in n.output if o and o not in self.types]
        if holes:
            self._propagate(nodes, inferred)

    def _skeleton(self, nodes, inputs, initializers) -> onnx.ModelProto:
        """A weightless copy of the model for shape inference: big initializers become inputs."""
        graph = helper.make_graph(nodes, self.graph.name or "main", [], [])
        for value in inputs:
            graph.input.append(_value_info(value.name, self.types[value.name]))
        for name, tensor in initializers.items():
            if name in self.values:
                graph.initializer.append(numpy_helper.from_array(self.values[name], name))
            else:
                graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
        for value in self.graph.output:
            graph.output.append(
                helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, None)
            )
        skeleton = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        skeleton.ir_version = self.proto.ir_version
        return skeleton

    def _propagate(self, nodes: list[onnx.NodeProto], inferred: onnx.ModelProto) -> None:
        """Node by node: evaluate small constant sub-graphs, re-infer the rest."""
        elem_types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
        for node in nodes:
            outputs = [o for o in node.output if o]
            self._evaluate_if_constant(node)
            missing = [o for o in outputs if o not in self.types]
            if missing:
                self._infer_one(node, elem_types)
            if node.op_type in SHAPE_PRESERVING and node.output[0] not in self.types \
                    and node.input[0] in self.types:  # ONNX has no inference for these
                self.types[node.output[0]] = self.types[node.input[0]]
            for name in outputs:
                if name not in self.types and name.startswith("__maiac_unused_"):
                    # an output the model leaves unnamed: no use, so any type will do
                    self.types[name] = TensorType(element_type_of_onnx(TensorProto.FLOAT), [1])
                if name not in self.types:
                    raise MaiacError(f"{self.describe(node)}: {self._why_not_static(node, name)}")

    def _why_not_static(self, node: onnx.NodeProto, output: str) -> str:
        """The reason an output's shape stays unknown, phrased as what the user can do."""
        runtime_ints = [
            name for name in dict.fromkeys(i for i in node.input if i)
            if name not in self.values and name in self.types
            and self.types[name].get_element_type() in (_I64, _I32)
        ]
        if runtime_ints:
            names = ", ".join(f"'{n}'" for n in runtime_ints)
            return (
                f"the shape of output '{output}' depends on the values of {names}, which "
                "are not constants; maiac needs static shapes"
            )
        return (
            f"cannot infer a static shape for output '{output}' "
            "(bind the model's symbolic dims with --shape)"
        )

    def _evaluate_if_constant(self, node: onnx.NodeProto) -> None:
        names = [i for i in node.input if i]
        if node.op_type == "Shape" and names and names[0] in self.types:
            inputs = [np.broadcast_to(np.uint8(0), self.types[names[0]].get_shape())]
        elif all(n in self.values for n in names) and node.op_type != "Constant":
            inputs = [self.values[n] if n else None for n in node.input]
        elif node.op_type == "Constant":
            return  # its value was recorded when its attribute was built
        else:
            return
        if node.domain not in _DEFAULT_DOMAINS:
            return
        attrs = {a.name: _attribute_value(a) for a in node.attribute}
        try:
            results = evaluate(node.op_type, attrs, inputs, len(node.output), self.opsets)
        except EvaluationError:
            return
        for name, result in zip(node.output, results, strict=False):
            if name and result.size <= SMALL_VALUE_LIMIT:
                self.values[name] = result
                if name not in self.types:
                    self.types[name] = TensorType(resources.element_type(result.dtype),
                                                  list(result.shape))

    def _infer_one(self, node: onnx.NodeProto, elem_types: dict[str, int]) -> None:
        """ONNX inference on this node alone, with the inputs we know as initializers."""
        graph = helper.make_graph([node], "one", [], [])
        for name in dict.fromkeys(i for i in node.input if i):
            if name in self.values:
                graph.initializer.append(numpy_helper.from_array(self.values[name], name))
            elif name in self.types:
                graph.input.append(_value_info(name, self.types[name]))
        for name in node.output:
            if name:
                graph.output.append(helper.make_tensor_value_info(name, elem_types.get(name, 0), None))
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as err:
            raise MaiacError(f"{self.describe(node)}: shape inference failed: {_first_line(err)}") from None
        for value in [*inferred.graph.value_info, *inferred.graph.output]:
            static = _static_type(value)
            if static is not None and value.name not in self.types:
                self.types[value.name] = self._tensor_type(*static, value.name)

    # -- the module ----------------------------------------------------------------

    def _build(self, nodes, inputs, constants) -> ModuleOp:
        arg_types = [self.types[v.name] for v in inputs]
        block = Block(arg_types=arg_types)
        values: dict[str, SSAValue] = {}
        for value, arg in zip(inputs, block.args, strict=True):
            arg.name_hint = _name_hint(value.name)
            values[value.name] = arg
        ops: list[Operation] = []
        for name, attr in constants.items():
            op = ONNX_OPS["Constant"].create(
                result_types=[self.types[name]],
                attributes={"value": attr, NAME_ATTR: StringAttr(name)},
            )
            op.results[0].name_hint = _name_hint(name)
            values[name] = op.results[0]
            ops.append(op)
        no_value: list[SSAValue] = []
        for node in nodes:
            ops.append(self._build_node(node, values, no_value, ops))
        returned = []
        for value in self.graph.output:
            if value.name not in values:
                raise MaiacError(f"{self.label}: graph output '{value.name}' is never computed")
            returned.append(values[value.name])
        ops.append(func.ReturnOp(*returned))
        block.add_ops(ops)
        main = func.FuncOp(
            "main",
            (arg_types, [v.type for v in returned]),
            Region(block),
            arg_attrs=_name_dicts(v.name for v in inputs),
            res_attrs=_name_dicts(v.name for v in self.graph.output),
        )
        module = ModuleOp([main])
        module.attributes[OPSET_ATTR] = DictionaryAttr(
            {d: IntegerAttr(v, i64) for d, v in sorted(self.opsets.items())}
        )
        model_quant = model_quant_table(self.proto)  # e.g. Quark MX nodes (maiac/importers)
        if model_quant:
            module.attributes[MODEL_QUANT_ATTR] = StringAttr(json.dumps(model_quant))
        try:
            module.verify()
        except VerifyException:
            raise self._verify_error(ops) from None
        return module

    def _verify_error(self, ops: list[Operation]) -> MaiacError:
        """The first imported op that does not verify, named by its ONNX node."""
        for op in ops:
            try:
                op.verify()
            except VerifyException as err:
                name = op.attributes.get("onnx.name")
                label = getattr(name, "data", None) or op.name
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                return MaiacError(f"{self.label}: node '{label}' ({op.name.removeprefix('onnx.')})"
                                  f": {first}")
        return MaiacError(f"{self.label}: the imported graph does not verify")

    def _build_node(self, node, values, no_value: list[SSAValue], ops: list[Operation]) -> Operation:
        operand_names = list(node.input)
        while operand_names and not operand_names[-1]:
            operand_names.pop()
        operands = []
        for name in operand_names:
            if not name:
                if not no_value:
                    none = NoValueOp()
                    ops.insert(0, none)
                    no_value.append(none.result)
                operands.append(no_value[0])
            elif name not in values:
                raise MaiacError(f"{self.describe(node)}: input '{name}' is never defined")
            else:
                operands.append(values[name])
        output_names = list(node.output)
        while output_names and not output_names[-1]:
            output_names.pop()
        if node.op_type == "Constant":
            attributes = {"value": self.constant_nodes[node.output[0]]}
        else:
            attributes = {a.name: self._attribute(node, a) for a in node.attribute}
        attributes[NAME_ATTR] = StringAttr(_node_label(node))
        if node.domain not in _DEFAULT_DOMAINS:
            attributes[DOMAIN_ATTR] = StringAttr(node.domain)
        op = ONNX_OPS[node.op_type].create(
            operands=operands,
            result_types=[self.types[o] for o in output_names],
            attributes=attributes,
        )
        for name, result in zip(output_names, op.results, strict=True):
            result.name_hint = _name_hint(name)
            values[name] = result
        return op

    def _attribute(self, node: onnx.NodeProto, attr: onnx.AttributeProto) -> Attribute:
        A = onnx.AttributeProto
        if attr.type == A.TENSOR:
            return self._tensor_attr(attr.t, f"{_node_label(node)}.{attr.name}")
        if attr.type not in (A.INT, A.FLOAT, A.STRING, A.INTS, A.FLOATS, A.STRINGS):
            raise MaiacError(
                f"{self.describe(node)}: attribute '{attr.name}' of type "
                f"{A.AttributeType.Name(attr.type)} is not supported"
            )
        return to_attribute(helper.get_attribute_value(attr), attr.type)


def _tensor_to_array(tensor: onnx.TensorProto, dtype: np.dtype) -> np.ndarray:
    """The values of an in-file TensorProto as ``dtype`` (bf16/fp8 come back as raw bits)."""
    array = numpy_helper.to_array(tensor)
    if array.dtype != dtype:
        array = array.view(dtype) if array.dtype.itemsize == dtype.itemsize else array.astype(dtype)
    return array


def _attribute_value(attr: onnx.AttributeProto):
    """A node attribute as the Python value ``node_eval`` expects (tensors as arrays)."""
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _static_type(value: onnx.ValueInfoProto) -> tuple[int, list[int]] | None:
    """(elem type, shape) when the value's type is a tensor of fully static shape."""
    if not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or tensor.elem_type == 0:
        return None
    dims = tensor.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tensor.elem_type, [d.dim_value for d in dims]


def _value_info(name: str, tensor_type: TensorType) -> onnx.ValueInfoProto:
    from maiac.ir.onnx import onnx_elem_type_of

    return helper.make_tensor_value_info(
        name, onnx_elem_type_of(tensor_type.get_element_type()), list(tensor_type.get_shape())
    )


def _name_hint(name: str) -> str | None:
    """An SSA name for printing from an ONNX value name (``/a/b.0/Add_output_0`` → ``a_b.0_Add_output``)."""
    hint = _HINT_CHARS.sub("_", name).strip("_")
    if not hint:
        return None
    return hint if not hint[0].isdigit() else f"v{hint}"


def _name_dicts(names: Iterable[str]) -> ArrayAttr[DictionaryAttr]:
    return ArrayAttr([DictionaryAttr({NAME_ATTR: StringAttr(n)}) for n in names])

