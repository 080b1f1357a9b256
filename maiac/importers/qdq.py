"""Pre-quantized graphs: QuantizeLinear / DequantizeLinear and onnxruntime's integer ops.

With no ``--quant`` a pre-quantized model runs as it says, so its outputs match
onnxruntime: a ``DequantizeLinear`` of a constant (int8/uint8/int4/uint4/fp8 weights, per
tensor, per axis or per block) is evaluated at import by the ONNX reference implementation
(bit-exact with the spec) into the fp32 weight the graph multiplies by; activation
QuantizeLinear → DequantizeLinear pairs become the same arithmetic in fp32
(``clip(round_half_even(x / s) + zp)``, ``(q - zp) * s``); DynamicQuantizeLinear computes
its scale and zero point from the tensor's range as onnxruntime does; MatMulInteger and
QLinearMatMul multiply the zero-point-shifted integers in fp32, which is exact while every
partial sum stays below 2^24 (K · 255² < 2^24, K <= 258). The decoded weights' source
format is recorded (``maiac.narrow_weights``) so ``--quant`` can map it onto Maia's
formats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from maiac.importers.graph_builder import Expansion

_INT_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
    TensorProto.INT4: (-8, 7), TensorProto.UINT4: (0, 15),
    TensorProto.INT16: (-32768, 32767), TensorProto.UINT16: (0, 65535),
}


def _reference_eval(e: Expansion, values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run the node on constant inputs with the ONNX reference implementation."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    node = helper.make_node(e.node.op_type, names, [f"out{i}" for i in range(len(e.node.output))])
    node.attribute.extend(e.node.attribute)
    graph = helper.make_graph(
        [node], "fold", [],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output],
        [numpy_helper.from_array(v, n) for v, n in zip(values, names, strict=True)
         if v is not None])
    # the reference implements opsets 19+; older versions of these ops mean the same
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(e.opset, 21))])
    try:
        return list(ReferenceEvaluator(model).run(None, {}))
    except Exception as err:  # the reference raises plain exceptions for bad attributes
        raise e.fail(f"cannot evaluate it on its constant inputs ({type(err).__name__}: {err})") \
            from None


def _all_constant(e: Expansion) -> bool:
    return all(not name or name in e.initializers for name in e.node.input)


def _fold(e: Expansion) -> bool:
    """Fold the node when all its inputs are initializers (weights); True if folded."""
    if not _all_constant(e):
        return False
    values = [numpy_helper.to_array(e.initializers[n]) if n else None for n in e.node.input]
    for name, value in zip(e.node.output, _reference_eval(e, values), strict=False):
        if name:
            e.constant_output(value, name)
    return True


def _axis_view(e: Expansion, param: str, x: str) -> str:
    """A per-axis scale / zero point reshaped to broadcast along ``axis`` of ``x``."""
    rank = e.ranks.get(x)
    axis = int(e.attr("axis", 1))
    size = e.initializers.get(param)
    if size is None or len(size.dims) == 0 or (len(size.dims) == 1 and size.dims[0] == 1):
        return param
    if rank is None:
        raise e.fail(f"a per-axis parameter needs the rank of '{x}'")
    axis = axis + rank if axis < 0 else axis
    shape = [1] * rank
    shape[axis] = -1
    return e.one("Reshape", [param, e.i64(shape)])


def dequantize_linear(e: Expansion) -> None:
    """Constant input: folded (reference implementation); runtime input: ``(x - zp) * s``."""
    if _fold(e):
        source = e.initializers[e.input(0)]
        e.quant_hints[e.output(0)] = {"from": TensorProto.DataType.Name(source.data_type),
                                      "block_size": int(e.attr("block_size", 0)),
                                      "axis": int(e.attr("axis", 1))}
        _record_mx_weight(e)
        return
    if int(e.attr("block_size", 0)):
        raise e.fail("blocked dequantization of a runtime tensor is not supported")
    x = _as_float(e, e.input(0))
    if e.input(2):
        x = e.one("Sub", [x, e.one("Cast", [_axis_view(e, e.input(2), e.input(0))],
                                   to=TensorProto.FLOAT)])
    e.one("Mul", [x, _axis_view(e, e.input(1), e.input(0))], e.output(0))


# the standard-opset MX form of a weight: DequantizeLinear of these element types with
# power-of-two (FLOAT8E8M0, opset 24) block scales, block 32 along K -> the Maia MX format
MX_ELEMENTS: dict[int, str] = {
    TensorProto.FLOAT4E2M1: "mxfp4", TensorProto.FLOAT8E4M3FN: "mxfp8e4m3",
    TensorProto.FLOAT8E5M2: "mxfp8e5m2", TensorProto.FLOAT6E2M3: "mxfp6e2m3",
    TensorProto.FLOAT6E3M2: "mxfp6e3m2",
}
MX_BLOCK = 32


def _power_of_two_scales(e: Expansion) -> bool:
    scale = e.initializers.get(e.input(1))
    if scale is None:
        return False
    if scale.data_type == TensorProto.FLOAT8E8M0:
        return True
    values = numpy_helper.to_array(scale).astype(np.float64)
    mantissa, _ = np.frexp(values)
    return bool(np.all(np.isfinite(values)) and np.all(mantissa == 0.5))


def _record_mx_weight(e: Expansion) -> None:
    """A folded DequantizeLinear that is an MX weight (MX element type, power-of-two
    scales, blocks of 32 along K of a [K, N] MatMul weight, no zero point) keeps its format:
    its MatMul is recorded for ``--quant model`` (importers/quark.py's table) so the weight
    is stored as MX codes + E8M0 scales again. Requantizing the decoded values by the
    floor rule reproduces them exactly (checked here: a block whose scale the exporter
    chose larger than the floor rule and whose largest element then saturates, possible
    only for E4M3, keeps the whole weight in fp32, with a warning)."""
    import warnings

    from maiac.runtime import formats

    source = e.initializers[e.input(0)]
    fmt = MX_ELEMENTS.get(source.data_type)
    axis = int(e.attr("axis", 1))
    if fmt is None or int(e.attr("block_size", 0)) != MX_BLOCK or len(source.dims) != 2 \
            or axis not in (0, -2) or not _power_of_two_scales(e):
        return
    if e.input(2):
        zero_point = e.initializers.get(e.input(2))
        if zero_point is None or np.any(numpy_helper.to_array(zero_point).astype(np.float32)):
            return
    readers = [r for r in e.consumers.get(e.output(0), [])
               if r.op_type == "MatMul" and len(r.input) > 1 and r.input[1] == e.output(0)]
    if not readers:
        return
    decoded = e.new_initializers[-1]
    value = numpy_helper.to_array(decoded)
    again = formats.fake_quantize(value, fmt, axis=0, scale_mode="floor")
    if not np.array_equal(again, value):
        warnings.warn(f"node '{e.node.name or e.output(0)}': {fmt} weight not reproducible "
                      f"by the floor scale rule ({int(np.sum(again != value))} element(s) "
                      "differ); it runs in fp32", stacklevel=2)
        return
    for reader in readers:
        entry = e.model_quant.setdefault(reader.name or reader.output[0],
                                         {"w": None, "a": None, "scale_mode": "floor"})
        entry["w"] = fmt


def _quantized_type(e: Expansion) -> int:
    if e.input(2):
        zp = e.initializers.get(e.input(2))
        if zp is None:
            raise e.fail("a runtime zero point is not supported")
        return zp.data_type
    return int(e.attr("output_dtype", 0)) or TensorProto.UINT8


def quantize_linear(e: Expansion) -> None:
    """Constant input: folded; runtime input: ``saturate(round_half_even(x / s) + zp)``."""
    if _fold(e):
        return
    if int(e.attr("block_size", 0)):
        raise e.fail("blocked quantization of a runtime tensor is not supported")
    target = _quantized_type(e)
    if target not in _INT_RANGES:
        raise e.fail(f"quantizing a runtime tensor to {TensorProto.DataType.Name(target)} is "
                     "not supported (int8/uint8/int16/uint16/int4/uint4)")
    lo, hi = _INT_RANGES[target]
    if _fake_quant(e, lo, hi):
        return
    scaled = e.round_half_even(e.one("Div", [e.input(0), _axis_view(e, e.input(1), e.input(0))]))
    if e.input(2):
        zp = e.one("Cast", [_axis_view(e, e.input(2), e.input(0))], to=TensorProto.FLOAT)
        scaled = e.one("Add", [scaled, zp])
    clipped = e.one("Min", [e.one("Max", [scaled, e.f32(float(lo))]), e.f32(float(hi))])
    e.one("Cast", [clipped], e.output(0), to=target)
    e.float_of[e.output(0)] = clipped


def _as_float(e: Expansion, x: str) -> str:
    """``Cast(x, float)``, or the exact fp32 value an expansion cast ``x`` from."""
    return e.float_of.get(x) or e.one("Cast", [x], to=TensorProto.FLOAT)


def _fake_quant(e: Expansion, lo: int, hi: int) -> bool:
    """QuantizeLinear read only by DequantizeLinear nodes of the same scale and zero point:
    ``clip(round(x / s), lo - zp, hi - zp) · s`` in fp32, no integer tensor in between
    (the same values, a third of the ops). True when it applied."""
    q = e.output(0)
    readers = e.consumers.get(q, [])
    if q in e.graph_outputs or not readers:
        return False
    for reader in readers:
        if reader.op_type != "DequantizeLinear" or list(reader.input[1:]) != list(e.node.input[1:]):
            return False
        if [(a.name, helper.get_attribute_value(a)) for a in reader.attribute if a.name != "axis"]:
            return False
    scale = _axis_view(e, e.input(1), e.input(0))
    scaled = e.round_half_even(e.one("Div", [e.input(0), scale]))
    low, high = e.f32(float(lo)), e.f32(float(hi))
    if e.input(2):
        zp = e.one("Cast", [_axis_view(e, e.input(2), e.input(0))], to=TensorProto.FLOAT)
        low, high = e.one("Sub", [low, zp]), e.one("Sub", [high, zp])
    clipped = e.one("Min", [e.one("Max", [scaled, low]), high])
    first, *others = readers
    value = e.one("Mul", [clipped, scale], first.output[0])
    for reader in others:
        e.one("Identity", [value], reader.output[0])
    e.done.update(id(r) for r in readers)
    return True


def dynamic_quantize_linear(e: Expansion) -> None:
    """uint8 with scale ``(max(0, max x) - min(0, min x)) / 255`` and its zero point."""
    x = e.input(0)
    low = e.one("Min", [e.one("ReduceMin", [x], keepdims=0), e.f32(0.0)])
    high = e.one("Max", [e.one("ReduceMax", [x], keepdims=0), e.f32(0.0)])
    scale = e.one("Div", [e.one("Sub", [high, low]), e.f32(255.0)], e.output(1) or None)
    zp = e.round_half_even(e.one("Sub", [e.f32(0.0), e.one("Div", [low, scale])]))
    zp = e.one("Min", [e.one("Max", [zp, e.f32(0.0)]), e.f32(255.0)])
    if e.output(2):
        e.one("Cast", [zp], e.output(2), to=TensorProto.UINT8)
        e.float_of[e.output(2)] = zp
    q = e.one("Add", [e.round_half_even(e.one("Div", [x, scale])), zp])
    q = e.one("Min", [e.one("Max", [q, e.f32(0.0)]), e.f32(255.0)])
    e.one("Cast", [q], e.output(0), to=TensorProto.UINT8)
    e.float_of[e.output(0)] = q


def _shifted(e: Expansion, x: str, zp: str) -> str:
    value = _as_float(e, x)
    if zp:
        value = e.one("Sub", [value, _as_float(e, zp)])
    return value


def matmul_integer(e: Expansion) -> None:
    """int32 ``(a - a_zp) @ (b - b_zp)``, computed in fp32 (exact below 2^24)."""
    product = e.one("MatMul", [_shifted(e, e.input(0), e.input(2)),
                               _shifted(e, e.input(1), e.input(3))])
    e.one("Cast", [product], e.output(0), to=TensorProto.INT32)


def qlinear_matmul(e: Expansion) -> None:
    """``saturate(round((a - a_zp) @ (b - b_zp) · a_s · b_s / y_s) + y_zp)``."""
    product = e.one("MatMul", [_shifted(e, e.input(0), e.input(2)),
                               _shifted(e, e.input(3), e.input(5))])
    multiplier = e.one("Div", [e.one("Mul", [e.input(1), e.input(4)]), e.input(6)])
    y = e.round_half_even(e.one("Mul", [product, multiplier]))
    y_zp = e.initializers.get(e.input(7))
    if e.input(7) and y_zp is None:  # its type is the output's: uint8 would clip an int8 y
        raise e.fail("a runtime zero point is not supported")
    target = y_zp.data_type if y_zp is not None else TensorProto.UINT8
    if e.input(7):
        y = e.one("Add", [y, e.one("Cast", [e.input(7)], to=TensorProto.FLOAT)])
    lo, hi = _INT_RANGES[target]
    y = e.one("Min", [e.one("Max", [y, e.f32(float(lo))]), e.f32(float(hi))])
    e.one("Cast", [y], e.output(0), to=target)
    e.float_of[e.output(0)] = y


EXPANSIONS: dict[tuple[str, str], Callable[[Expansion], None]] = {
    ("", "DequantizeLinear"): dequantize_linear,
    ("", "QuantizeLinear"): quantize_linear,
    ("", "DynamicQuantizeLinear"): dynamic_quantize_linear,
    ("", "MatMulInteger"): matmul_integer,
    ("", "QLinearMatMul"): qlinear_matmul,
    ("com.microsoft", "DequantizeLinear"): dequantize_linear,
    ("com.microsoft", "QuantizeLinear"): quantize_linear,
}
"""(domain, op type) → the expansion into standard ONNX."""
