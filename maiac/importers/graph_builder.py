"""Emit standard ONNX nodes that replace one contrib/QDQ node (the expansion helpers).

An expansion rewrites one node into plain ``ai.onnx`` nodes of the model's own opset,
spelled the way the exporters spell the same computation (so fuse-norm, fuse-rope,
fuse-attention and fuse-epilogue find them again): it never sees static shapes, so any
size it needs comes from ``Shape`` sub-graphs that the importer folds once the inputs are
bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from maiac.runtime.errors import MaiacError


class Expansion:
    """The nodes and initializers that replace one node, named after it."""

    def __init__(self, node: onnx.NodeProto, opset: int, index: int,
                 initializers: dict[str, onnx.TensorProto]) -> None:
        self.node = node
        self.opset = opset
        self.prefix = f"{node.name or node.op_type}/__maiac{index}"
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.initializers = initializers
        self._count = 0
        # filled in by expand_model: static facts about values, the narrow-weight record,
        # the nodes reading each value, and nodes an expansion already computed
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.done: set[int] = set()
        self.graph_outputs: set[str] = set()
        self.ranks: dict[str, int] = {}
        self.last_dim: Callable[[str], int | None] = lambda name: None
        self.head_size: Callable[[str, int], int | None] = lambda name, heads: None
        self.quant_hints: dict[str, dict] = {}
        # the model's own quantization mapped onto maiac formats (importers/quark.py):
        # MatMul node name -> {"w", "a", "scale_mode"}; quantization nodes not mappable
        self.model_quant: dict[str, dict] = {}
        self.model_quant_dropped: list[str] = []
        # integer tensor an expansion cast from an exactly integral, in-range fp32 value ->
        # that fp32 value: a later Cast back to float reads it instead (no Cast pair)
        self.float_of: dict[str, str] = {}

    # -- naming and errors -------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def fail(self, why: str) -> MaiacError:
        label = self.node.name or (self.node.output[0] if self.node.output else "")
        domain = f"{self.node.domain}." if self.node.domain else ""
        return MaiacError(f"node '{label}': op '{domain}{self.node.op_type}': {why}")

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def input(self, index: int) -> str:
        """Input ``index`` of the node, or '' when absent."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def constant_input(self, index: int, what: str) -> np.ndarray:
        """The value of an initializer input (packed weights, scales, zero points)."""
        name = self.input(index)
        tensor = self.initializers.get(name)
        if tensor is None:
            raise self.fail(f"{what} ('{name}') must be an initializer")
        return numpy_helper.to_array(tensor)

    def optional_constant(self, index: int, what: str) -> np.ndarray | None:
        return self.constant_input(index, what) if self.input(index) else None

    # -- emitting ------------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
           **attrs: object) -> list[str]:
        names = [self.fresh(op_type) for _ in range(outputs)] if isinstance(outputs, int) \
            else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=self.fresh(op_type), **attrs))
        return names

    def one(self, op_type: str, inputs: Sequence[str], output: str | None = None,
            **attrs: object) -> str:
        return self.op(op_type, inputs, [output] if output else 1, **attrs)[0]

    def const(self, value: np.ndarray | float | int | Sequence[int], hint: str = "c",
              dtype: type | np.dtype | None = None) -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.new_initializers.append(numpy_helper.from_array(array, name))
        return name

    def constant_output(self, value: np.ndarray, name: str) -> None:
        """An initializer holding a node output computed at import (folded weights)."""
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))

    def i64(self, values: Sequence[int] | int) -> str:
        return self.const(np.asarray(values, np.int64), "i64")

    def f32(self, value: float | np.ndarray) -> str:
        return self.const(np.asarray(value, np.float32), "f32")

    # -- opset-dependent spellings -----------------------------------------------------------

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.one(op_type, [x, self.i64(axes)], keepdims=keepdims)
        return self.one(op_type, [x], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.one("Unsqueeze", [x, self.i64(axes)])
        return self.one("Unsqueeze", [x], axes=list(axes))

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        if self.opset >= 13:
            return self.op("Split", [x, self.i64(sizes)], len(sizes), axis=axis)
        return self.op("Split", [x], len(sizes), axis=axis, split=list(sizes))

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int],
              axes: Sequence[int]) -> str:
        return self.one("Slice", [x, self.i64(starts), self.i64(ends), self.i64(axes)])

    def dim(self, x: str, axis: int) -> str:
        """``shape(x)[axis]`` as a 1-element int64 tensor (folds to a constant)."""
        shape = self.one("Shape", [x])
        return self.one("Gather", [shape, self.i64([axis])], axis=0)

    def rms_norm(self, x: str, gamma: str, eps: float, output: str | None = None) -> str:
        """``gamma * (x * (1 / sqrt(mean(x**2) + eps)))``: the Llama spelling fuse-norm knows."""
        square = self.one("Pow", [x, self.f32(2.0)])
        mean = self.reduce("ReduceMean", square, [-1])
        root = self.one("Sqrt", [self.one("Add", [mean, self.f32(eps)])])
        normed = self.one("Mul", [x, self.one("Reciprocal", [root])])
        return self.one("Mul", [gamma, normed], output)

    def layer_norm(self, x: str, gamma: str, beta: str, eps: float,
                   output: str | None = None) -> str:
        if self.opset >= 17:
            inputs = [x, gamma] + ([beta] if beta else [])
            return self.one("LayerNormalization", inputs, output, axis=-1, epsilon=eps)
        centered = self.one("Sub", [x, self.reduce("ReduceMean", x, [-1])])
        var = self.reduce("ReduceMean", self.one("Pow", [centered, self.f32(2.0)]), [-1])
        root = self.one("Sqrt", [self.one("Add", [var, self.f32(eps)])])
        scaled = self.one("Mul", [self.one("Div", [centered, root]), gamma],
                          None if beta else output)
        return self.one("Add", [scaled, beta], output) if beta else scaled

    def gelu(self, x: str, tanh: bool, output: str | None = None) -> str:
        if self.opset >= 20:
            return self.one("Gelu", [x], output, approximate="tanh" if tanh else "none")
        if tanh:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.one("Mul", [self.one("Pow", [x, self.f32(3.0)]), self.f32(0.044715)])
            inner = self.one("Mul", [self.one("Add", [x, cube]),
                                     self.f32(np.sqrt(2.0 / np.pi))])
            one_plus = self.one("Add", [self.one("Tanh", [inner]), self.f32(1.0)])
        else:  # 0.5 x (1 + erf(x / sqrt 2))
            erf = self.one("Erf", [self.one("Div", [x, self.f32(np.sqrt(2.0))])])
            one_plus = self.one("Add", [erf, self.f32(1.0)])
        return self.one("Mul", [self.one("Mul", [x, self.f32(0.5)]), one_plus], output)

    def round_half_even(self, x: str) -> str:
        """Round to nearest, ties to even (QuantizeLinear's rounding): ONNX ``Round`` (opset
        11+; one TVP op, ``np.round``), else ``(x + 1.5·2^23) - 1.5·2^23`` in fp32, which is
        IEEE round-half-even for ``|x| < 2^22`` (larger values keep their sign and
        magnitude, which the saturation that follows every use here clips exactly)."""
        if self.opset >= 11:
            return self.one("Round", [x])
        magic = self.f32(1.5 * 2.0**23)
        return self.one("Sub", [self.one("Add", [x, magic]), magic])
