"""AMD Quark's MX quantization (``com.amd.quark`` MXQuantizeDequantize) → native MX formats.

Quark's ONNX quantizer writes MX models as fp32 graphs with an ``MXQuantizeDequantize``
node (attributes ``element_dtype``, ``axis``, ``block_size``, ``rounding_mode``) on each
quantized tensor: on a MatMul's constant weight (blocks along K, axis 0) and on its
activation input (blocks along the last axis, K). maiac does not run those nodes as fp32
fake-quant arithmetic: each one is removed and its MatMul is recorded with the formats
the nodes name (``Expansion.model_quant``: MatMul node name → ``w`` / ``a`` format and
scale rule), which the ``quantize`` pass then applies natively (``--quant model``, the
default for such a model): the weight is stored as MX codes + E8M0 scales, the activation
is quantized on the TVP at run time and the TTU multiplies the MX operands.

The mapping, from Quark's CPU kernel (``custom_ops/src/mx/cpu/mx_kernel.cc``):

* element_dtype ``fp8_e4m3``/``fp8_e5m2``/``fp6_e3m2``/``fp6_e2m3``/``fp4_e2m1`` →
  ``mxfp8e4m3``/``mxfp8e5m2``/``mxfp6e3m2``/``mxfp6e2m3``/``mxfp4``; ``int8`` (MXINT8)
  has no Maia format and is refused;
* scale: E8M0 ``2^(max biased exponent of the block − 127 − emax_elem)``, i.e.
  ``floor(log2(amax)) − emax``: maiac's ``floor`` scale mode (the OCP MX v1.0 rule);
* elements: round half to even and saturate to the format's largest normal, whatever
  ``rounding_mode`` says (the kernel reads it for MXINT8 only); so maiac's elements equal
  Quark's bit for bit except that Quark returns +0 where an element rounds to zero from a
  negative value (maiac, like ml_dtypes and the OCP spec, keeps -0);
* ``block_size`` must be 32 (the MX formats' block); the block axis must be K.

MX on a tensor that is not a MatMul operand (Quark's default config also quantizes norm,
softmax and residual inputs and MatMul outputs) has no native place on the machine:
those nodes are removed too and maiac computes there in its own precision (fp32 on the
TVP); ``expand_model`` warns with their count.
"""

from __future__ import annotations

from collections.abc import Callable

from maiac.importers.graph_builder import Expansion

QUARK = "com.amd.quark"
QUARK_DEPRECATED = "com.vai.quantize"  # the same kernel under its earlier name

ELEMENT_FORMATS: dict[str, str] = {
    "fp8_e4m3": "mxfp8e4m3", "fp8_e5m2": "mxfp8e5m2", "fp6_e3m2": "mxfp6e3m2",
    "fp6_e2m3": "mxfp6e2m3", "fp4_e2m1": "mxfp4",
}
SCALE_MODE = "floor"  # Quark's shared exponent: max element exponent - emax (OCP MX v1.0)
MX_BLOCK = 32


def _format(e: Expansion) -> str:
    dtype = str(e.attr("element_dtype", "int8"))
    if dtype not in ELEMENT_FORMATS:
        raise e.fail(f"element_dtype {dtype!r} has no Maia MX format (supported: "
                     f"{', '.join(ELEMENT_FORMATS)})")
    block = int(e.attr("block_size", 32))
    if block != MX_BLOCK:
        raise e.fail(f"block_size {block} is not supported (MX blocks are {MX_BLOCK})")
    return ELEMENT_FORMATS[dtype]


def _role(e: Expansion, reader_input: int, axis: int) -> str | None:
    """'w' for a MatMul's constant weight blocked along K, 'a' for its activation blocked
    along the last axis; None when the node is no such operand."""
    x = e.input(0)
    if reader_input == 1 and x in e.initializers:
        rank = len(e.initializers[x].dims)
        return "w" if rank == 2 and axis in (0, -2) else None
    if reader_input == 0:
        rank = e.ranks.get(x)
        return "a" if axis == -1 or (rank is not None and axis == rank - 1) else None
    return None


def mx_quantize_dequantize(e: Expansion) -> None:
    """Remove the node; record the MX format on each MatMul it feeds (or count it as not
    mappable onto a matmul operand)."""
    fmt = _format(e)
    axis = int(e.attr("axis", 1))
    e.one("Identity", [e.input(0)], e.output(0))
    readers = e.consumers.get(e.output(0), [])
    mapped = False
    for reader in readers:
        if reader.op_type != "MatMul" or reader.domain not in ("", "ai.onnx"):
            continue
        for index, name in enumerate(reader.input):
            if name != e.output(0):
                continue
            role = _role(e, index, axis)
            if role is None:
                continue
            entry = e.model_quant.setdefault(reader.name or reader.output[0],
                                             {"w": None, "a": None, "scale_mode": SCALE_MODE})
            entry[role] = fmt
            mapped = True
    if not mapped:
        e.model_quant_dropped.append(
            f"{e.node.name or e.output(0)} (read by "
            f"{', '.join(sorted({r.op_type for r in readers})) or 'the graph output'})")


EXPANSIONS: dict[tuple[str, str], Callable[[Expansion], None]] = {
    (QUARK, "MXQuantizeDequantize"): mx_quantize_dequantize,
    (QUARK_DEPRECATED, "MXFixNeuron"): mx_quantize_dequantize,
}
"""(domain, op type) → the expansion (Quark's MX ops)."""
