"""Lowering of the opset-23 transformer ops: Attention and RotaryEmbedding.

Both become the op chains the fusions already recognise in exported models, so the rest
of the pipeline treats them like an exporter's decomposed form:

* Attention -> ``q @ kT`` (kT a transpose view), ``* scale``, ``+ bias`` (attn_mask,
  bool masks as ``where(mask, 0, -inf)``, plus the constant causal / sliding-window
  bias), softmax, ``@ v``; fuse-attention makes one ``maia.attention`` of it (GQA: K/V
  heads repeated by a 0-stride view, past_key/past_value concatenated into the present
  outputs). softcap and qk_matmul_output follow onnx/reference/ops/op_attention.py.
* RotaryEmbedding -> ``x * cos + concat(-x2, x1) * sin`` over the rotated part, cos/sin
  gathered by position_ids and duplicated to the rotary width; fuse-rope makes one
  ``maia.rope`` of it (interleaved pairs are de-interleaved by a view first).

Merged into the lowering table by ``lower_onnx.all_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xdsl.dialects.builtin import TensorType, f32
from xdsl.ir import SSAValue

from maiac.ir import maia
from maiac.ir.onnx import input_at
from maiac.ir.types import tensor_dtype, tensor_shape
from maiac.passes.lower_math import binary, scalar, unary, where
from maiac.passes.lower_node import Node, _out, constant

NEG_INF = np.float32(-np.inf)


def _f32(node: Node, x: SSAValue) -> SSAValue:
    if tensor_dtype(x.type) == "f32":
        return x
    return unary(node, "copy", x, TensorType(f32, tensor_shape(x.type)))


def _cast(node: Node, x: SSAValue, like: TensorType) -> SSAValue:
    return x if x.type == like else unary(node, "copy", x, like)


def _heads(node: Node, x: SSAValue, heads: int) -> SSAValue:
    """[B, S, H*D] -> [B, H, S, D] (a view); 4-D inputs as they are."""
    shape = tensor_shape(x.type)
    if len(shape) == 4:
        return x
    b, s, hd = shape
    if not heads or hd % heads:
        raise node.fail(f"a 3-D input of width {hd} needs q_num_heads/kv_num_heads dividing it")
    return node.transpose(node.reshape(x, [b, s, heads, hd // heads]), [0, 2, 1, 3])


def _concat(node: Node, parts: list[SSAValue], axis: int) -> SSAValue:
    shape = list(tensor_shape(parts[0].type))
    shape[axis] = sum(tensor_shape(p.type)[axis] for p in parts)
    return node.emit(maia.ConcatOp, parts, TensorType(parts[0].type.get_element_type(), shape),
                     axis=axis)


def _constant_bias(node: Node, sq: int, sk: int, offset: int) -> np.ndarray | None:
    """The causal / sliding-window bias [Sq, Sk] (0 or -inf), or None when there is none."""
    causal = bool(node.attr("is_causal", 0))
    left, right = int(node.attr("left_window_size", -1)), int(node.attr("right_window_size", -1))
    if not causal and left < 0 and right < 0:
        return None
    rows = np.arange(sq)[:, None] + offset
    cols = np.arange(sk)[None, :]
    allowed = np.ones((sq, sk), dtype=bool)
    if causal:
        allowed &= cols <= rows
    if left >= 0:
        allowed &= cols >= rows - left
    if right >= 0:
        allowed &= cols <= rows + right
    return np.where(allowed, np.float32(0), NEG_INF).astype(np.float32)


def lower_attention(node: Node) -> list[SSAValue]:
    nonpad = input_at(node.op, 6)
    if nonpad is not None and input_at(node.op, 4) is not None:
        raise node.fail("nonpad_kv_seqlen together with past_key is not supported")
    q_in, k_in, v_in = node.op.operands[:3]
    rank3 = len(tensor_shape(q_in.type)) == 3
    q = _f32(node, _heads(node, q_in, int(node.attr("q_num_heads", 0))))
    k_new = _heads(node, k_in, int(node.attr("kv_num_heads", 0)))
    v_new = _heads(node, v_in, int(node.attr("kv_num_heads", 0)))
    past_k, past_v = input_at(node.op, 4), input_at(node.op, 5)
    k = _concat(node, [past_k, k_new], 2) if past_k is not None else k_new
    v = _concat(node, [past_v, v_new], 2) if past_v is not None else v_new
    present = [k, v]
    b, hq, sq, d = tensor_shape(q.type)
    _, hkv, sk, _ = tensor_shape(k.type)
    dv = tensor_shape(v.type)[-1]
    if hq % hkv:
        raise node.fail(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    groups = hq // hkv
    k, v = _f32(node, k), _f32(node, v)
    if groups > 1:  # GQA: query head h reads K/V head h // groups (0-stride repeat)
        def repeat(x: SSAValue, width: int) -> SSAValue:
            st = [hkv * sk * width, sk * width, 0, width, 1]
            return node.reshape(node.view(x, [b, hkv, groups, sk, width], 0, st),
                                [b, hq, sk, width])

        k, v = repeat(k, d), repeat(v, dv)
    kt = node.transpose(k, [0, 1, 3, 2])
    scores = node.emit(maia.MatMulOp, [q, kt], TensorType(f32, [b, hq, sq, sk]))
    scale = node.attr("scale", None)
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(d))
    scores = binary(node, "mul", scores, scalar(node, scale, scores))
    softcap = float(node.attr("softcap", 0.0))
    if softcap > 0:  # before the bias, so masked scores stay -inf
        capped = unary(node, "tanh", binary(node, "div", scores, scalar(node, softcap, scores)))
        scores = binary(node, "mul", capped, scalar(node, softcap, scores))
    capped = scores
    bias = None
    mask = input_at(node.op, 3)
    if mask is not None:
        m_shape = tensor_shape(mask.type)
        if m_shape[-1] < sk:  # shorter masks are padded with "not attended"
            pad_shape = [*m_shape[:-1], sk - m_shape[-1]]
            fill = np.zeros(pad_shape, bool) if tensor_dtype(mask.type) == "bool" \
                else np.full(pad_shape, NEG_INF)
            mask = _concat(node, [mask, constant(node, fill.astype(
                bool if tensor_dtype(mask.type) == "bool" else np.float32))], len(m_shape) - 1)
        if tensor_dtype(mask.type) == "bool":
            bias = where(node, mask, constant(node, np.float32(0)), constant(node, NEG_INF))
        else:
            bias = _f32(node, mask)
    if nonpad is not None:  # per-batch cache lengths: a runtime bias [B, 1, Sq, Sk]
        fixed = None
        lengths = _nonpad_bias(node, nonpad, b, sq, sk)
        bias = lengths if bias is None else binary(node, "add", bias, lengths)
    else:
        fixed = _constant_bias(node, sq, sk, tensor_shape(past_k.type)[2]
                               if past_k is not None else 0)
    if fixed is not None:
        bias = constant(node, fixed) if bias is None else binary(
            node, "add", bias, constant(node, fixed))
    if bias is not None:
        scores = binary(node, "add", scores, bias)
    probs = node.emit(maia.SoftmaxOp, [scores], scores.type, fn="softmax")
    y = node.emit(maia.MatMulOp, [probs, v], TensorType(f32, [b, hq, sq, dv]))
    masked_rows = _fully_masked_rows(node, bias, fixed, mask is not None or nonpad is not None)
    if masked_rows is not None:  # a query row with no key attended is 0, not NaN (ONNX)
        zero = constant(node, np.float32(0))
        y = where(node, masked_rows, zero, y)
        probs = where(node, masked_rows, zero, probs)
    if rank3:
        y = node.reshape(node.transpose(y, [0, 2, 1, 3]), [b, sq, hq * dv])
    results = [_cast(node, y, _out(node))]
    mode = int(node.attr("qk_matmul_output_mode", 0))
    debug = {0: capped, 1: capped, 2: scores, 3: probs}.get(mode, capped)
    for index, value in enumerate([*present, debug], start=1):
        if len(node.op.results) > index:  # unused outputs keep whatever type they got
            used = bool(node.op.results[index].uses)
            results.append(_cast(node, value, _out(node, index)) if used else value)
    return results


def _nonpad_bias(node: Node, nonpad: SSAValue, b: int, sq: int, sk: int) -> SSAValue:
    """0 / -inf for key j of query i in batch b: j < n[b] (padding), and with is_causal
    or a window the frontier at offset n[b] - Sq: j - i + Sq <= n[b] (causal),
    j - i + Sq + left >= n[b], j - i + Sq - right <= n[b]."""
    from xdsl.dialects.builtin import i1, i64

    n = node.reshape(nonpad, [b, 1, 1, 1])
    if tensor_dtype(n.type) != "i64":
        n = unary(node, "copy", n, TensorType(i64, [b, 1, 1, 1]))
    cols = np.arange(sk, dtype=np.int64)[None, :]
    rel = cols - np.arange(sq, dtype=np.int64)[:, None] + sq  # j - i + Sq
    conds = [binary(node, "less", constant(node, np.broadcast_to(cols, (sq, sk)).copy()), n,
                    elem=i1)]
    left, right = int(node.attr("left_window_size", -1)), int(node.attr("right_window_size", -1))
    if node.attr("is_causal", 0):
        conds.append(binary(node, "less_equal", constant(node, rel), n, elem=i1))
    if left >= 0:
        conds.append(binary(node, "greater_equal", constant(node, rel + left), n, elem=i1))
    if right >= 0:
        conds.append(binary(node, "less_equal", constant(node, rel - right), n, elem=i1))
    allowed = conds[0]
    for cond in conds[1:]:
        allowed = binary(node, "and", allowed, cond, elem=i1)
    return where(node, allowed, constant(node, np.float32(0)), constant(node, NEG_INF))


def _fully_masked_rows(node: Node, bias: SSAValue | None, fixed: np.ndarray | None,
                       runtime_mask: bool) -> SSAValue | None:
    """Where every key of a query row is masked ([..., Sq, 1] bool), or None when no
    row can be (no mask, or a constant bias that leaves every row a key)."""
    if bias is None:
        return None
    if not runtime_mask:
        assert fixed is not None
        rows = np.isneginf(fixed.max(-1, keepdims=True))
        return constant(node, rows) if rows.any() else None
    from xdsl.dialects.builtin import i1

    shape = tensor_shape(bias.type)
    peak = node.emit(maia.ReduceOp, [bias], TensorType(f32, [*shape[:-1], 1]), fn="reduce_max")
    return binary(node, "equal", peak, constant(node, NEG_INF), elem=i1)


def lower_rotary_embedding(node: Node) -> list[SSAValue]:
    x_in, cos_cache, sin_cache = node.op.operands[:3]
    position_ids = input_at(node.op, 3)
    shape = tensor_shape(x_in.type)
    if len(shape) == 4:  # [B, H, S, D] -> [B, S, H, D]
        x = node.transpose(x_in, [0, 2, 1, 3])
    else:
        heads = int(node.attr("num_heads", 0))
        if not heads or shape[2] % heads:
            raise node.fail("a 3-D input needs num_heads dividing its width")
        x = node.reshape(x_in, [shape[0], shape[1], heads, shape[2] // heads])
    x = _f32(node, x)
    b, s, h, d = tensor_shape(x.type)
    rot = int(node.attr("rotary_embedding_dim", 0)) or d
    half = rot // 2
    cs = [s * h * d, h * d, d, 1]  # contiguous strides of x
    x_rot = node.view(x, [b, s, h, rot], 0, cs) if rot < d else x
    interleaved = bool(node.attr("interleaved", 0))
    if interleaved:  # pairs (x[2i], x[2i+1]) -> halves
        x_rot = node.view(x, [b, s, h, 2, half], 0, [cs[0], cs[1], cs[2], 1, 2])
        x_rot = node.reshape(x_rot, [b, s, h, rot])

    def table(cache: SSAValue) -> SSAValue:
        cache = _f32(node, cache)
        if position_ids is not None:
            c_shape = tensor_shape(cache.type)
            rows = node.reshape(cache, [c_shape[0], int(np.prod(c_shape[1:]))])
            ids = position_ids
            cache = node.emit(maia.GatherOp, [rows, ids], TensorType(
                f32, [*tensor_shape(ids.type), tensor_shape(rows.type)[1]]))
        cache = node.reshape(cache, [b, s, 1, half])
        return _concat(node, [cache, cache], 3)

    cos, sin = table(cos_cache), table(sin_cache)
    rs = [s * h * rot, h * rot, rot, 1]
    x1 = node.view(x_rot, [b, s, h, half], 0, rs)
    x2 = node.view(x_rot, [b, s, h, half], half, rs)
    rotated = _concat(node, [unary(node, "neg", x2), x1], 3)
    y = binary(node, "add", binary(node, "mul", x_rot, cos), binary(node, "mul", rotated, sin))
    if interleaved:  # halves -> pairs
        y = node.reshape(node.view(y, [b, s, h, half, 2], 0, [rs[0], rs[1], rs[2], 1, half]),
                         [b, s, h, rot])
    if rot < d:
        y = _concat(node, [y, node.view(x, [b, s, h, d - rot], rot, cs)], 3)
    if len(shape) == 4:
        y = node.transpose(y, [0, 2, 1, 3])
    else:
        y = node.reshape(y, shape)
    return [_cast(node, y, _out(node))]


RULES: dict[str, Callable[[Node], list[SSAValue]]] = {
    "Attention": lower_attention,
    "RotaryEmbedding": lower_rotary_embedding,
}
