"""Lowering of the vision family: Conv and ConvTranspose.

Conv is im2col + matmul (see ``lower_conv``). ConvTranspose is the convolution of the zero-upsampled input with the flipped, transposed
kernel: the upsampling (a zero between every ``stride`` input positions) and its padding
are one constant index map with a constant mask (a gather + select, as constant Pad), the
convolution the im2col strided view + one batched matmul of Conv. Merged
into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import input_at
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.lower_index import _gather_map
from maiac.passes.lower_math import where
from maiac.passes.lower_node import Node, _out, _size, constant
from maiac.runtime.isa import contiguous_strides


def lower_conv_transpose(node: Node) -> list[SSAValue]:
    x = node.op.operands[0]
    w = node.const(1)
    if w is None:
        raise node.fail(f"input '{node.op.operands[1].name_hint}' (the weights) must be a "
                        "constant")
    n, c, *spatial = tensor_shape(x.type)
    k = len(spatial)
    _, m_g, *kernel = w.shape
    groups = int(node.attr("group", 1))
    if node.attr("output_shape", None) or node.attr("auto_pad", "NOTSET") not in ("NOTSET",
                                                                                  "VALID"):
        raise node.fail("ConvTranspose with output_shape or auto_pad SAME is not supported")
    strides = [int(v) for v in node.attr("strides", [1] * k)]
    dil = [int(v) for v in node.attr("dilations", [1] * k)]
    pads = [int(v) for v in node.attr("pads", [0] * (2 * k))]
    out_pad = [int(v) for v in node.attr("output_padding", [0] * k)]
    # the input, zero-upsampled by the strides and padded for a stride-1 convolution
    begin = [dil[i] * (kernel[i] - 1) - pads[i] for i in range(k)]
    end = [dil[i] * (kernel[i] - 1) - pads[k + i] + out_pad[i] for i in range(k)]
    up = [(spatial[i] - 1) * strides[i] + 1 for i in range(k)]
    full = [up[i] + begin[i] + end[i] for i in range(k)]
    index = np.full([n, c, *full], -1, dtype=np.int64)
    src = np.arange(_size([n, c, *spatial]), dtype=np.int64).reshape([n, c, *spatial])
    dst_sel, src_sel = [slice(None), slice(None)], [slice(None), slice(None)]
    for i in range(k):
        pos = begin[i] + strides[i] * np.arange(spatial[i])
        keep = (pos >= 0) & (pos < full[i])
        dst_sel.append(pos[keep])
        src_sel.append(np.nonzero(keep)[0])
    index[np.ix_(*[np.arange(n), np.arange(c), *dst_sel[2:]])] = \
        src[np.ix_(*[np.arange(n), np.arange(c), *src_sel[2:]])]
    mask = index >= 0
    gathered = _gather_map(node, x, np.maximum(index, 0))
    zero = constant(node, np.zeros((), dtype=NUMPY_DTYPES[tensor_dtype(x.type)]))
    xp = where(node, constant(node, mask), gathered, zero)
    # stride-1 convolution with the flipped kernel, W'[g, (ci, kk), co]
    out_sp = [full[i] - dil[i] * (kernel[i] - 1) for i in range(k)]
    cs = contiguous_strides(tuple(tensor_shape(xp.type)))
    patches = node.view(xp, [n, *out_sp, c, *kernel], 0,
                        [cs[0], *(cs[2 + i] for i in range(k)), cs[1],
                         *(cs[2 + i] * dil[i] for i in range(k))])
    c_g = c // groups
    rows, per_group = n * _size(out_sp), c_g * _size(kernel)
    a = node.transpose(node.reshape(patches, [rows, groups, per_group]), [1, 0, 2])
    flipped = w[(slice(None), slice(None), *([slice(None, None, -1)] * k))]
    w_mat = flipped.reshape(groups, c_g, m_g, _size(kernel)).transpose(0, 1, 3, 2)
    w_mat = np.ascontiguousarray(w_mat.reshape(groups, per_group, m_g)).astype(np.float32)
    elem = _out(node).get_element_type()
    y = node.emit(maia.MatMulOp, [a, constant(node, w_mat)],
                  TensorType(elem, [groups, rows, m_g]))
    y = node.reshape(node.transpose(y, [1, 0, 2]), [rows, groups * m_g])
    bias = input_at(node.op, 2)
    if bias is not None:
        y = node.emit(maia.BinaryOp, [y, bias], y.type, fn="add")
    y = node.reshape(y, [n, *out_sp, groups * m_g])
    return [node.transpose(y, [0, k + 1, *range(1, k + 1)])]


def _conv_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int],
               strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """Explicit [begin..., end...] pads, resolving ``auto_pad`` as ONNX defines it."""
    k = len(spatial)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, kk, st, dl in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // st) - 1) * st + (kk - 1) * dl + 1 - size)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * k)
    return [int(p) for p in node.attr("pads", [0] * (2 * k))]


def _zero_pad(node: Node, x: SSAValue, pads: Sequence[int]) -> SSAValue:
    """Concatenate zero blocks around the spatial axes (dims 2..) of ``x``."""
    k = len(pads) // 2
    dtype = NUMPY_DTYPES[tensor_dtype(x.type)]
    for i in range(k):
        before, after = pads[i], pads[k + i]
        if not before and not after:
            continue
        shape = list(tensor_shape(x.type))
        parts = []
        for width in (before, after):
            block = shape.copy()
            block[2 + i] = width
            parts.append(constant(node, np.zeros(block, dtype)) if width else None)
        ins = [v for v in (parts[0], x, parts[1]) if v is not None]
        shape[2 + i] += before + after
        x = node.emit(maia.ConcatOp, ins, TensorType(x.type.get_element_type(), shape),
                      axis=2 + i)
    return x


def lower_conv(node: Node) -> list[SSAValue]:
    """Conv as im2col + matmul: the patch matrix is a strided view of the (zero-padded)
    input, the kernel a [C*K, M] matrix, groups a batch dim of the matmul."""
    x, w = node.op.operands[0], node.op.operands[1]
    n, c, *spatial = tensor_shape(x.type)
    m, cg, *kernel = tensor_shape(w.type)
    k = len(spatial)
    strides = [int(v) for v in node.attr("strides", [1] * k)]
    dilations = [int(v) for v in node.attr("dilations", [1] * k)]
    groups = int(node.attr("group", 1))
    if groups < 1 or c % groups or m % groups or c // groups != cg:
        raise node.fail(f"group={groups} does not split {c} input channels and {m} filters "
                        f"of {cg} channels each")
    if any(v < 1 for v in strides + dilations) or len(strides) != k or len(dilations) != k \
            or len(kernel) != k:
        raise node.fail(f"strides {strides} and dilations {dilations} must be {k} positive "
                        f"integers")
    xp = _zero_pad(node, x, _conv_pads(node, spatial, kernel, strides, dilations))
    padded = tensor_shape(xp.type)
    out_sp = [(padded[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
              for i in range(k)]
    cs = contiguous_strides(padded)
    patch_shape = [n, *out_sp, c, *kernel]
    patch_strides = [cs[0], *(cs[2 + i] * strides[i] for i in range(k)), cs[1],
                     *(cs[2 + i] * dilations[i] for i in range(k))]
    patches = node.view(xp, patch_shape, 0, patch_strides)
    rows, per_group = n * _size(out_sp), cg * _size(kernel)
    elem = _out(node).get_element_type()
    a = node.reshape(patches, [rows, groups, per_group])
    a = node.transpose(a, [1, 0, 2])  # [G, rows, Cg*K]
    w_const = node.const(1)
    if w_const is not None:
        w_mat = constant(node, np.ascontiguousarray(
            w_const.reshape(groups, m // groups, per_group).transpose(0, 2, 1)))
    else:
        w_mat = node.transpose(node.reshape(w, [groups, m // groups, per_group]), [0, 2, 1])
    y = node.emit(maia.MatMulOp, [a, w_mat], TensorType(elem, [groups, rows, m // groups]))
    y = node.reshape(node.transpose(y, [1, 0, 2]), [rows, m])
    bias = input_at(node.op, 2)
    if bias is not None:
        y = node.emit(maia.BinaryOp, [y, bias], y.type, fn="add")
    y = node.reshape(y, [n, *out_sp, m])
    return [node.transpose(y, [0, k + 1, *range(1, k + 1)])]


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {"Conv": lower_conv,
                                                  "ConvTranspose": lower_conv_transpose}
