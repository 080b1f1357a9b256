"""`quantize{spec=...}`: choose the formats of every matmul and quantize its weights.

Runs on tensor-level `maia` (after lowering, before `tile`). For each ``maia.matmul``
whose weight operand (``b``) is a compile-time 2-D constant [K, N], the spec
(passes/quant_spec.py) gives the weight format ``w`` and activation format ``a``:

* the weight is quantized now (runtime.formats, blocks along K): operand ``b`` becomes
  a constant of the stored payload — u8 ``[K, N*bits/8]`` of packed codes (MX, NVFP4),
  f8 ``[K, N]`` (FP8, per output channel scales) or bf16 — and the op gets
  ``w_fmt``, ``w_scales`` (a constant attribute: E8M0 / E4M3 bytes ``[ceil(K/B), N]``, or
  fp32 ``[1, N]``) and ``w_tensor_scale`` (NVFP4);
* the activation format is recorded (``a_fmt``): MX formats are quantized at run time
  on the TVP (block scales computed there); FP8 and NVFP4 activations take a static
  per-tensor scale (``a_scale`` / ``a_tensor_scale``) from calibration, which the
  driver attaches to the module as ``maia.calib`` (op name → amax of its input);
* ``fmt`` is the format the TTU runs at: the slower of the two operands.

A fused attention (``maia.attention``) gets ``fmt = bf16`` when its activations are
narrow: its two products (scores, P·V) run on the TTU in bf16 with fp32 accumulation,
softmax statistics in fp32. Unfused matmuls of two activations, softmax, norms and
residual adds are left as they are (fp32). A matmul whose shapes do not fit a format's
packing gets ``quant_skipped`` with the reason and stays fp32.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.ir.resources import constant_attr, constant_value
from maiac.ir.types import tensor_shape
from maiac.passes.quant_spec import (
    MODEL_QUANT_ATTR,
    OpQuant,
    QuantSpec,
    glob_matches,
    model_spec,
    parse_quant_spec,
)
from maiac.runtime import formats as F
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import strided_view
from maiac.runtime.quant_ops import pack_unit

CALIB_ATTR = "maia.calib"
QUANT_ATTR = "maia.quant"
# TTU speed class of an operand format (higher = faster); the matmul runs at the slowest
_TTU_CLASS = {"f32": 0, "bf16": 1, "fp8": 2, "fp6": 2, "fp4": 3}


def ttu_class(fmt: str | None) -> str:
    """The TTU peak (runtime.target ttu_flops key) an operand format runs at."""
    if fmt is None:
        return "f32"
    if fmt == "bf16":
        return "bf16"
    f = F.get_format(fmt)
    return {8: "fp8", 6: "fp6", 4: "fp4"}.get(f.bits, "f32")


def matmul_ttu_format(w: str | None, a: str | None) -> str:
    cw, ca = ttu_class(w), ttu_class(a)
    if _TTU_CLASS[cw] != _TTU_CLASS[ca]:
        return cw if _TTU_CLASS[cw] < _TTU_CLASS[ca] else ca
    return "fp8" if "fp8" in (cw, ca) else cw


def constant_of(value: SSAValue) -> np.ndarray | None:
    """The value of ``value`` when it is a constant, possibly through views/reshapes."""
    owner = value.owner
    if isinstance(owner, maia.ConstantOp):
        return constant_value(owner.attributes["value"])
    if isinstance(owner, maia.ReshapeOp | maia.ViewOp):
        src = constant_of(owner.operands[0])
        if src is None:
            return None
        shape = tensor_shape(owner.results[0].type)
        if isinstance(owner, maia.ReshapeOp):
            return np.ascontiguousarray(src).reshape(shape)
        flat = np.ascontiguousarray(src).reshape(-1)
        offset, strides = maia.attr(owner, "offset", 0), maia.attr(owner, "strides")
        isz = flat.itemsize
        view = strided_view(flat[offset:], tuple(shape), tuple(s * isz for s in strides),
                            writeable=False)
        return np.ascontiguousarray(view)
    return None


@dataclass
class Calibration:
    """amax of each quantized matmul's activation input, by op name."""

    amax: dict[str, float]

    @classmethod
    def of_module(cls, module: builtin.ModuleOp) -> Calibration | None:
        attr = module.attributes.get(CALIB_ATTR)
        if not isinstance(attr, builtin.StringAttr):
            return None
        return cls({k: float(v) for k, v in json.loads(attr.data).items()})


def _act_attrs(name: str, q: OpQuant, calib: Calibration | None,
               placeholder: bool = False) -> dict[str, Any]:
    """Attributes describing how the activation operand is quantized.

    ``placeholder``: a shape-only model (no weights, so no calibration either): static
    scales get a stand-in amax of 1; the program is for timing, it cannot run.
    """
    a = q.a
    if a is None:
        return {}
    out: dict[str, Any] = {"a_fmt": a}
    f = F.get_format(a)
    if f.is_mx:
        out["scale_mode"] = q.scale_mode
    elif f.scale_kind in ("fp32", "e4m3+fp32"):
        if placeholder:
            calib = Calibration({name: 1.0})
        if calib is None or name not in calib.amax:
            raise MaiacError(
                f"op '{name}': activation format {a} needs a static scale from calibration; "
                f"compile with --calib DATA.npz (or maiac.compile(..., calib=...)), or use an "
                f"MX activation format (scales computed at run time)")
        amax = float(calib.amax[name])
        if not np.isfinite(amax) or amax <= 0:
            amax = 1.0
        if f.scale_kind == "fp32":
            out["a_scale"] = float(np.float32(amax / f.max_finite))
        else:
            e4m3 = F.get_format("fp8e4m3").max_finite
            out["a_tensor_scale"] = float(np.float32(np.float32(amax) /
                                                     np.float32(e4m3 * f.max_finite)))
    return out


def _skip_reason(q: OpQuant, k: int, n: int) -> str | None:
    if q.w is not None and q.w != "bf16":
        unit = pack_unit(q.w)
        if n % unit:
            return f"N={n} is not a multiple of {unit} ({q.w} packing)"
    if q.a is not None and q.a != "bf16":
        fa = F.get_format(q.a)
        if fa.is_blocked and (k * fa.bits) % 8:
            return f"K={k} rows of {q.a} are not whole bytes"
    return None


def quantize_weight(w: np.ndarray, fmt: str, scale_mode: str
                    ) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(stored payload, scales or None, tensor scale) of a [K, N] weight in ``fmt``."""
    f = F.get_format(fmt)
    k, n = w.shape
    if fmt == "bf16":
        return F.cast(w, f, allow_nonfinite=True).astype(ml_dtypes.bfloat16), None, None
    if f.scale_kind == "fp32":  # FP8: per output channel (column) scales
        q = F.quantize(w, fmt, axis=1, granularity="channel", allow_nonfinite=True)
        payload = q.payload.view(f.elem).reshape(k, n)
        return payload, q.scales.astype(np.float32).reshape(1, n), None
    q = F.quantize(w, fmt, axis=0, scale_mode=scale_mode, allow_nonfinite=True)
    payload = q.payload.reshape(k, n * f.bits // 8)
    return payload, np.ascontiguousarray(q.scales, np.uint8), q.tensor_scale


def constant_type(value: SSAValue) -> TensorType | None:
    """The type of ``value`` when it is a constant (through views/reshapes), data or not."""
    owner = value.owner
    if isinstance(owner, maia.ConstantOp):
        return value.type  # type: ignore[return-value]
    if isinstance(owner, maia.ReshapeOp | maia.ViewOp):
        return value.type if constant_type(owner.operands[0]) is not None else None  # type: ignore[return-value]
    return None


def absent_weight(shape: tuple[int, int], fmt: str, scale_mode: str
                  ) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Stand-ins for a shape-only weight's payload and scales: right shapes and dtypes,
    as broadcast views (no memory), from quantizing one packing unit of columns."""
    k, n = shape
    unit = 1 if fmt == "bf16" or F.get_format(fmt).scale_kind == "fp32" else pack_unit(fmt)
    payload, scales, tscale = quantize_weight(np.zeros((k, unit), np.float32), fmt, scale_mode)
    widen = n // unit
    payload = np.broadcast_to(payload[:, :1], (k, payload.shape[1] * widen))
    if scales is not None:
        scales = np.broadcast_to(scales[:, :1], (scales.shape[0], scales.shape[1] * widen))
    return payload, scales, tscale


def _absent_attr(arr: np.ndarray, hint: str) -> Any:
    """A dense_resource whose data is unavailable (shape-only), typed like ``arr``."""
    from xdsl.dialects.builtin import DenseResourceAttr

    from maiac.ir.resources import register_lazy

    def unavailable() -> np.ndarray:
        raise MaiacError(f"weight '{hint}' has no data (shape-only model)")

    handle = register_lazy(unavailable, arr.shape, arr.dtype, hint, available=lambda: False)
    return DenseResourceAttr.from_params(handle, TensorType(_element_type(arr), arr.shape))


def quantize_matmul(op: maia.MatMulOp, spec: QuantSpec, calib: Calibration | None) -> str:
    """Quantize one matmul in place; returns what was done (for the summary)."""
    name = maia.attr(op, "op", "matmul")
    if maia.attr(op, "rotation"):  # rotate-hadamard's x @ H: exact, stays fp32
        return "fp32 (rotation)"
    q = spec.for_op(name)
    if not q.active:
        return "fp32"
    w = constant_of(op.operands[1])
    wtype = constant_type(op.operands[1])
    shape_only = w is None and wtype is not None
    if shape_only:
        shape = tuple(int(d) for d in wtype.get_shape())
        if len(shape) != 2 or wtype.get_element_type() != builtin.f32:
            return "fp32 (no constant fp32 2-D weight)"
        k, n = shape
    elif w is None or w.ndim != 2 or w.dtype != np.float32:
        return "fp32 (no constant fp32 2-D weight)"
    else:
        k, n = w.shape
    reason = _skip_reason(q, k, n)
    if reason is not None:
        op.attributes["quant_skipped"] = maia.to_attr(reason)
        warnings.warn(f"quantize: op '{name}' stays fp32: {reason}", stacklevel=2)
        return f"fp32 ({reason})"
    attrs: dict[str, Any] = _act_attrs(name, q, calib, placeholder=shape_only)
    if q.w is not None:
        if shape_only:
            payload, scales, tscale = absent_weight((k, n), q.w, q.scale_mode)
            make_attr = _absent_attr
        else:
            bad = int(w.size - np.count_nonzero(np.isfinite(w)))
            if bad:  # encoded as the TVP encodes activations (formats: allow_nonfinite)
                warnings.warn(f"quantize: weight of '{name}' has {bad} non-finite value(s); "
                              f"encoded as {q.w} NaN/Inf (an MX/NVFP4 block becomes NaN)",
                              stacklevel=2)
            payload, scales, tscale = quantize_weight(w, q.w, q.scale_mode)
            make_attr = constant_attr
        const = maia.ConstantOp.create(
            attributes={"value": make_attr(payload, f"{name}.w.{q.w}"),
                        "op": maia.to_attr(f"{name}.w.{q.w}")},
            result_types=[TensorType(_element_type(payload), payload.shape)])
        block = op.parent_block()
        assert block is not None
        block.insert_op_before(const, op)
        old = op.operands[1]
        op.operands = [op.operands[0], const.results[0], *op.operands[2:]]
        _erase_if_dead(old)
        attrs["w_fmt"] = q.w
        if q.w != "bf16":
            attrs["scale_mode"] = q.scale_mode
        if scales is not None:
            op.attributes["w_scales"] = make_attr(scales, f"{name}.w_scales")
        if tscale is not None:
            attrs["w_tensor_scale"] = float(tscale)
    attrs["fmt"] = matmul_ttu_format(q.w, q.a)
    for key, value in attrs.items():
        op.attributes[key] = maia.to_attr(value)
    return q.describe()


def _element_type(arr: np.ndarray) -> Any:
    from maiac.ir.resources import element_type

    return element_type(arr.dtype)


def _erase_if_dead(value: SSAValue) -> None:
    """Erase the old weight constant (and views of it) once nothing uses it."""
    owner = value.owner
    if not isinstance(owner, Operation) or value.uses:
        return
    srcs = list(owner.operands)
    owner.detach()
    owner.erase()
    for src in srcs:
        _erase_if_dead(src)


def quantize_module(module: builtin.ModuleOp, spec: QuantSpec) -> dict[str, str]:
    """Apply ``spec`` to every matmul of ``module``; op name → what it became."""
    if spec.from_model:
        spec = _model_spec(module)
    calib = Calibration.of_module(module)
    done: dict[str, str] = {}
    attention: dict[str, str] = {}
    for op in list(module.walk()):
        if isinstance(op, maia.MatMulOp):
            done[maia.attr(op, "op", "matmul")] = quantize_matmul(op, spec, calib)
            up = maia.attr(op, "up_op")  # a gate and up projection merged (fuse-swiglu)
            if up is not None:
                done[up] = done[maia.attr(op, "op", "matmul")]
                if spec.for_op(up) != spec.for_op(maia.attr(op, "op", "matmul")):
                    warnings.warn(f"quantize: '{up}' is merged with the gate projection "
                                  f"'{maia.attr(op, 'op')}' and takes its formats",
                                  stacklevel=2)
        elif isinstance(op, maia.AttentionOp):
            attention[maia.attr(op, "op", "attention")] = quantize_attention(op, spec)
    for glob, _ in spec.overrides:
        if not any(glob_matches(glob, name) for name in (*done, *attention)):
            warnings.warn(f"--quant: override pattern {glob!r} matches no matmul "
                          f"(matmuls: {', '.join(list(done)[:6])}"
                          f"{', ...' if len(done) > 6 else ''})", stacklevel=2)
    summary: dict[str, Any] = {"spec": spec.text, "ops": done}
    if attention:
        summary["attention"] = attention
    module.attributes[QUANT_ATTR] = builtin.StringAttr(json.dumps(summary))
    return done


def _model_spec(module: builtin.ModuleOp) -> QuantSpec:
    """``--quant model``: the formats the importer read from the model's quantization nodes."""
    attr = module.attributes.get(MODEL_QUANT_ATTR)
    if not isinstance(attr, builtin.StringAttr):
        raise MaiacError("--quant model: the model has no quantization nodes maiac maps "
                         "onto its formats (AMD Quark MXQuantizeDequantize)")
    return model_spec(json.loads(attr.data))


def quantize_attention(op: maia.AttentionOp, spec: QuantSpec) -> str:
    """The TTU format of a fused attention's two products: bf16 (fp32 accumulation,
    fp32 softmax statistics) when the spec's activations for the op are narrow, else
    fp32. The split-K decode kernel honours it too (passes/tiling/decode_attention.py)."""
    q = spec.for_op(maia.attr(op, "op", "attention"))
    fmt = "bf16" if q.a is not None else "f32"
    op.attributes["fmt"] = maia.to_attr(fmt)
    return fmt


class QuantizePass(ModulePass):
    """Quantize matmul weights and choose activation formats (``spec``: a --quant spec)."""

    name = "quantize"

    spec: str = ""

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        parsed = parse_quant_spec(self.spec)
        if parsed is None:
            return
        quantize_module(op, parsed)
