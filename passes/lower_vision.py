"""Lowering of the vision family: ConvTranspose.

ConvTranspose is the convolution of the zero-upsampled input with the flipped, transposed
kernel: the upsampling (a zero between every ``stride`` input positions) and its padding
are one constant index map with a constant mask (a gather + select, as constant Pad), the
convolution the im2col strided view + one batched matmul of lower_onnx's Conv. Merged
into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import input_at
from maiac.ir.types import NUMPY_DTYPES, tensor_dtype, tensor_shape
from maiac.passes.lower_index import _gather_map
from maiac.passes.lower_math import where
from maiac.passes.lower_onnx import Node, _out, _size, constant
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


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {"ConvTranspose": lower_conv_transpose}
