"""Rewrite a ModelProto's contrib/QDQ nodes into standard ONNX (see maiac.importers)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import onnx
from onnx import helper

from maiac.importers import contrib, qdq, quark
from maiac.importers.graph_builder import Expansion

EXPANSIONS: dict[tuple[str, str], Callable[[Expansion], None]] = {
    **contrib.EXPANSIONS, **qdq.EXPANSIONS, **quark.EXPANSIONS,
}
_DEFAULT = ("", "ai.onnx")
MODEL_QUANT_KEY = "maiac.model_quant"


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in _DEFAULT else node.domain


def _rule(node: onnx.NodeProto, opset: int) -> Callable[[Expansion], None] | None:
    key = (_domain(node), node.op_type)
    if opset >= contrib.STANDARD_SINCE.get(key, 1 << 30):
        return None
    return EXPANSIONS.get(key)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT), 1)


def needs_expansion(model: onnx.ModelProto) -> bool:
    opset = _default_opset(model)
    return any(_rule(n, opset) is not None for n in model.graph.node)


def expand_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every expandable node rewritten (``model`` if none is).

    Initializers that only fed rewritten nodes (packed int4 weights, QDQ scales) are
    dropped; weights the expansions decoded become new fp32 initializers, recorded in the
    returned model's ``metadata_props`` key ``maiac.narrow_weights`` (their source format).
    """
    if not needs_expansion(model):
        return model
    opset = _default_opset(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    hints = StaticHints(model)
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    quant_hints: dict[str, dict] = {}
    model_quant: dict[str, dict] = {}
    dropped: list[str] = []
    float_of: dict[str, str] = {}
    made: set[int] = set()  # nodes the expansions wrote (pruned when dead)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    done: set[int] = set()
    outputs = {o.name for o in graph.output}
    for index, node in enumerate(graph.node):
        if id(node) in done:
            continue
        rule = _rule(node, opset)
        if rule is None:
            nodes.append(node)
            continue
        expansion = Expansion(node, opset, index, initializers)
        expansion.ranks = hints.ranks
        expansion.last_dim = hints.last_dim
        expansion.head_size = hints.head_size
        expansion.quant_hints = quant_hints
        expansion.model_quant, expansion.model_quant_dropped = model_quant, dropped
        expansion.float_of = float_of
        expansion.consumers, expansion.done, expansion.graph_outputs = consumers, done, outputs
        rule(expansion)
        nodes.extend(expansion.nodes)
        made.update(id(n) for n in expansion.nodes)
        added.extend(expansion.new_initializers)
        for tensor in expansion.new_initializers:
            initializers[tensor.name] = tensor
    nodes = _without_dead(nodes, made, {o.name for o in graph.output})
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    new_graph = helper.make_graph(
        nodes, graph.name,
        list(graph.input), list(graph.output),
        [t for t in graph.initializer if t.name in used] + [t for t in added if t.name in used],
        value_info=[v for v in graph.value_info],
    )
    expanded = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                                 ir_version=model.ir_version)
    del expanded.functions[:]
    expanded.functions.extend(model.functions)
    if quant_hints:
        expanded.metadata_props.add(key="maiac.narrow_weights", value=json.dumps(quant_hints))
    if model_quant:
        expanded.metadata_props.add(key=MODEL_QUANT_KEY, value=json.dumps(model_quant))
    if dropped:
        warnings.warn(f"{len(dropped)} MX quantization node(s) quantize no matmul operand and "
                      f"are not applied (maiac computes there in fp32): {', '.join(dropped[:3])}"
                      f"{', ...' if len(dropped) > 3 else ''}", stacklevel=2)
    return expanded


def _without_dead(nodes: list[onnx.NodeProto], made: set[int], outputs: set[str]
                  ) -> list[onnx.NodeProto]:
    """``nodes`` less the expansion-written ones nothing reads (e.g. an integer Cast whose
    readers take the fp32 value instead); the model's own nodes are all kept."""
    kept = list(nodes)
    while True:
        read = {i for n in kept for i in n.input} | outputs
        alive = [n for n in kept if id(n) not in made or any(o in read for o in n.output if o)]
        if len(alive) == len(kept):
            return kept
        kept = alive


def model_quant_table(model: onnx.ModelProto) -> dict[str, dict] | None:
    """The model's own quantization as maiac formats (MatMul name -> {"w", "a",
    "scale_mode"}), from an expanded model's metadata; None when it has none."""
    for prop in model.metadata_props:
        if prop.key == MODEL_QUANT_KEY:
            return json.loads(prop.value)
    return None


def carries_model_quant(model: onnx.ModelProto) -> bool:
    """True when the model has quantization nodes maiac maps onto native formats (Quark MX)."""
    return any(_domain(n) in (quark.QUARK, quark.QUARK_DEPRECATED) for n in model.graph.node)


class StaticHints:
    """Ranks and static last dimensions of values, where the model shows them.

    Expansions run before shapes are bound; a few need a static size (a head size for
    the default attention scale, a transpose's rank), read from initializers, declared
    shapes and the weights of the producing MatMul/MatMulNBits/Gather.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.ranks: dict[str, int] = {}
        self.dims: dict[str, int] = {}
        graph = model.graph
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor = value.type.tensor_type
            if tensor.HasField("shape"):
                self.ranks[value.name] = len(tensor.shape.dim)
                if tensor.shape.dim and tensor.shape.dim[-1].HasField("dim_value"):
                    self.dims[value.name] = tensor.shape.dim[-1].dim_value
        inits = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            self.ranks[t.name] = len(t.dims)
            if t.dims:
                self.dims[t.name] = int(t.dims[-1])
        attrs = {}
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            out = node.output[0] if node.output else ""
            ins = [i for i in node.input]
            if node.op_type in ("MatMul", "FusedMatMul", "Gemm") and len(ins) > 1 \
                    and ins[1] in inits:
                b = inits[ins[1]]
                trans = attrs.get("transB", 0)
                self.dims[out] = int(b.dims[-2] if trans else b.dims[-1])
                if ins[0] in self.ranks:
                    self.ranks[out] = self.ranks[ins[0]]
            elif node.op_type == "MatMulNBits":
                self.dims[out] = int(attrs["N"])
                if ins[0] in self.ranks:
                    self.ranks[out] = self.ranks[ins[0]]
            elif node.op_type == "Gather" and ins and ins[0] in inits:
                self.dims[out] = int(inits[ins[0]].dims[-1])
                if ins[1] in self.ranks:
                    self.ranks[out] = self.ranks[ins[1]] + len(inits[ins[0]].dims) - 1
            elif node.op_type == "ReduceSum" and ins and ins[0] in self.ranks:
                axes = attrs.get("axes")
                if axes is None and len(ins) > 1 and ins[1] in inits:
                    axes = list(onnx.numpy_helper.to_array(inits[ins[1]]).reshape(-1))
                if axes is not None:
                    keep = attrs.get("keepdims", 1)
                    self.ranks[out] = self.ranks[ins[0]] - (0 if keep else len(axes))
            elif node.op_type in ("Add", "Mul", "Sub", "Div", "SimplifiedLayerNormalization",
                                  "SkipSimplifiedLayerNormalization", "SkipLayerNormalization",
                                  "LayerNormalization", "FastGelu", "BiasGelu", "Gelu",
                                  "Relu", "Sigmoid", "Tanh", "Cast", "Identity"):
                known = [self.dims[i] for i in ins[:2] if i in self.dims]
                if known:
                    for o in node.output:
                        if o:
                            self.dims.setdefault(o, max(known))
                ranks = [self.ranks[i] for i in ins[:2] if i in self.ranks]
                if ranks:
                    for o in node.output:
                        if o:
                            self.ranks.setdefault(o, max(ranks))

    def last_dim(self, name: str) -> int | None:
        return self.dims.get(name)

    def head_size(self, name: str, heads: int) -> int | None:
        dim = self.dims.get(name)
        return dim // heads if dim and dim % heads == 0 else None
