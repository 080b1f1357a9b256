"""onnxruntime contrib ops (``com.microsoft`` and ORT's default-domain extensions) → ONNX.

The onnxruntime-genai model builder and onnxruntime's transformer optimizer write fused
ops that the ONNX schemas do not define. Each is rewritten here into the standard ONNX
sub-graph that computes the same thing, spelled as the exporters spell it, so the
existing passes map it onto the maia ops (``maia.norm`` rmsnorm/layernorm,
``maia.rope``, ``maia.attention`` with GQA and a runtime mask, matmul epilogues).
What onnxruntime's CPU kernels do that is emulated, and what is not, is stated per op
(docs/toolchains.md has the table).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto

from maiac.importers.graph_builder import Expansion

MS = "com.microsoft"
FLOAT_MIN = float(np.finfo(np.float32).min)
# set by maiac.kv_cache.cache_in_place on a GroupQueryAttention whose cache is resident
IN_PLACE_CACHE = "maiac_in_place_cache"


def simplified_layer_norm(e: Expansion) -> None:
    """RMSNorm over the last axis: ``y = x / sqrt(mean(x²) + eps) * scale``."""
    axis = int(e.attr("axis", -1))
    if axis != -1:
        raise e.fail(f"axis {axis} is not supported (only the last axis, -1)")
    if e.output(1):
        raise e.fail("the inv_std_var output is not supported")
    e.rms_norm(e.input(0), e.input(1), float(e.attr("epsilon", 1e-5)), e.output(0))


def old_opset_layer_norm(e: Expansion) -> None:
    """LayerNormalization in a model of opset < 17 (onnxruntime runs it as its own op)."""
    axis = int(e.attr("axis", -1))
    if axis != -1:
        raise e.fail(f"axis {axis} is not supported (only the last axis, -1)")
    if e.output(1) or e.output(2):
        raise e.fail("the Mean / InvStdDev outputs are not supported")
    e.layer_norm(e.input(0), e.input(1), e.input(2), float(e.attr("epsilon", 1e-5)), e.output(0))


def _skip_sum(e: Expansion, bias_index: int) -> str:
    """``input + skip (+ bias)``, named as the node's input_skip_bias_sum output if used."""
    total = e.one("Add", [e.input(0), e.input(1)],
                  None if e.input(bias_index) else (e.output(3) or None))
    if e.input(bias_index):
        total = e.one("Add", [total, e.input(bias_index)], e.output(3) or None)
    if e.output(1) or e.output(2):
        raise e.fail("the mean / inv_std_var outputs are not supported")
    return total


def skip_simplified_layer_norm(e: Expansion) -> None:
    """``s = input + skip (+ bias)``; output 0 = RMSNorm(s) * gamma, output 3 = s."""
    total = _skip_sum(e, 3)
    e.rms_norm(total, e.input(2), float(e.attr("epsilon", 1e-5)), e.output(0))


def skip_layer_norm(e: Expansion) -> None:
    """``s = input + skip (+ bias)``; output 0 = LayerNorm(s, gamma, beta), output 3 = s."""
    total = _skip_sum(e, 4)
    e.layer_norm(total, e.input(2), e.input(3), float(e.attr("epsilon", 1e-12)), e.output(0))


def fast_gelu(e: Expansion) -> None:
    """FastGelu(x (+ bias)) = tanh-approximated GELU."""
    x = e.one("Add", [e.input(0), e.input(1)]) if e.input(1) else e.input(0)
    e.gelu(x, tanh=True, output=e.output(0))


def bias_gelu(e: Expansion) -> None:
    """BiasGelu(a, b) = erf GELU of ``a + b``."""
    e.gelu(e.one("Add", [e.input(0), e.input(1)]), tanh=False, output=e.output(0))


def quick_gelu(e: Expansion) -> None:
    """QuickGelu(x) = x · sigmoid(alpha · x)."""
    alpha = float(e.attr("alpha", 1.702))
    gate = e.one("Sigmoid", [e.one("Mul", [e.input(0), e.f32(alpha)])])
    e.one("Mul", [e.input(0), gate], e.output(0))


def fused_matmul(e: Expansion) -> None:
    """alpha · op(A) @ op(B), op = transpose of the last two axes when transA/transB."""
    if e.attr("transBatchA", 0) or e.attr("transBatchB", 0):
        raise e.fail("transBatchA / transBatchB are not supported")
    operands = []
    for index, flag in ((0, "transA"), (1, "transB")):
        x = e.input(index)
        if e.attr(flag, 0):
            rank = _rank(e, x)
            if rank is None:
                raise e.fail(f"{flag} needs the rank of input '{x}'")
            perm = [*range(rank - 2), rank - 1, rank - 2]
            x = e.one("Transpose", [x], perm=perm)
        operands.append(x)
    alpha = float(e.attr("alpha", 1.0))
    if alpha == 1.0:
        e.one("MatMul", operands, e.output(0))
    else:
        e.one("Mul", [e.one("MatMul", operands), e.f32(alpha)], e.output(0))


def _rank(e: Expansion, name: str) -> int | None:
    if name in e.initializers:
        return len(e.initializers[name].dims)
    return e.ranks.get(name)


# -- MatMulNBits ---------------------------------------------------------------------------

def dequantize_nbits(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                     k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """MatMulNBits' B as the fp32 ``[K, N]`` matrix onnxruntime multiplies by.

    ``packed`` is ``[N, blocks, block_size * bits / 8]`` uint8, element ``i`` of a byte
    in its bits ``i*bits .. (i+1)*bits-1`` (low first); ``w[n, k] = (q - zp) * scale``
    per (column, K-block), zp = 2^(bits-1) when absent; a zero point is packed like the
    weights (uint8) or given per block in the scales' float type.
    """
    blocks = -(-k // block_size)
    raw = np.asarray(packed, np.uint8).reshape(n, -1)
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)
    codes = ((raw[..., None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(n, -1)
    codes = codes[:, :blocks * block_size].reshape(n, blocks, block_size).astype(np.float32)
    scale = np.asarray(scales, np.float32).reshape(n, blocks)
    if zero_points is None:
        zp = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    elif zero_points.dtype == np.uint8:
        zp_codes = ((zero_points.reshape(n, -1)[..., None] >> shifts)
                    & np.uint8((1 << bits) - 1)).reshape(n, -1)
        zp = zp_codes[:, :blocks].astype(np.float32)
    else:
        zp = np.asarray(zero_points, np.float32).reshape(n, blocks)
    weight = (codes - zp[..., None]) * scale[..., None]
    return np.ascontiguousarray(weight.reshape(n, blocks * block_size)[:, :k].T)


def matmul_nbits(e: Expansion) -> None:
    """A @ dequantize(B) (+ bias): the weight is decoded at import, as onnxruntime does.

    onnxruntime's ``accuracy_level=4`` additionally quantizes A to int8 per block before
    its integer dot products; maiac keeps A in fp32 (or in the --quant format), so such
    models agree with onnxruntime to cosine ~0.999, not bit for bit.
    """
    k, n = int(e.attr("K")), int(e.attr("N"))
    bits, block = int(e.attr("bits", 4)), int(e.attr("block_size"))
    if bits not in (2, 4, 8):
        raise e.fail(f"bits={bits} is not supported (2, 4 or 8)")
    if block < 16 or block & (block - 1):
        raise e.fail(f"block_size={block} must be a power of two >= 16")
    if e.input(4):
        raise e.fail("g_idx (act-order) is not supported")
    packed = e.constant_input(1, "B")
    if packed.dtype != np.uint8:
        raise e.fail(f"B of type {packed.dtype} is not supported (uint8 packed)")
    weight = dequantize_nbits(packed, e.constant_input(2, "scales"),
                              e.optional_constant(3, "zero_points"), k, n, bits, block)
    name = e.const(weight, "weight")
    e.quant_hints[name] = {"bits": bits, "block_size": block,
                           "zero_points": bool(e.input(3)),
                           "accuracy_level": int(e.attr("accuracy_level", 0))}
    if e.input(5):
        e.one("Add", [e.one("MatMul", [e.input(0), name]), e.input(5)], e.output(0))
    else:
        e.one("MatMul", [e.input(0), name], e.output(0))


# -- rotary embeddings and attention ---------------------------------------------------------

def _scalar(e: Expansion, one_element: str) -> str:
    """A 0-d tensor from a 1-element one (Range wants scalars)."""
    return e.one("Reshape", [one_element, e.i64([])])


def _rotate(e: Expansion, x: str, cos: str, sin: str, rotary_dim: int,
            head_size: int | None, interleaved: bool) -> str:
    """Rotary embedding of ``x [B, H, S, D]`` with ``cos``/``sin`` ``[B, 1, S, R/2]``."""
    half = rotary_dim // 2
    # without a known head size the rotary part is taken to be the whole head
    partial = head_size is not None and rotary_dim < head_size
    x_rot = e.slice(x, [0], [rotary_dim], [3]) if partial else x
    if interleaved:  # pairs (x[2i], x[2i+1])
        raise e.fail("rotary_interleaved=1 is not supported")
    cos_full = e.one("Concat", [cos, cos], axis=-1)
    sin_full = e.one("Concat", [sin, sin], axis=-1)
    x1 = e.slice(x_rot, [0], [half], [3])
    x2 = e.slice(x_rot, [half], [rotary_dim], [3])
    rotated = e.one("Concat", [e.one("Neg", [x2]), x1], axis=-1)
    y = e.one("Add", [e.one("Mul", [x_rot, cos_full]), e.one("Mul", [rotated, sin_full])])
    if partial:
        y = e.one("Concat", [y, e.slice(x, [rotary_dim], [head_size], [3])], axis=-1)
    return y


def group_query_attention(e: Expansion) -> None:
    """GroupQueryAttention as onnxruntime's CPU kernel computes it (BNSH KV cache).

    Per batch row ``b``: ``total_b = seqlens_k[b] + 1`` keys are valid; the new tokens sit
    at ``past_b = max(total_b - S, 0)`` (0 for the first prompt, ``S ==
    total_sequence_length``) and get positions ``past_b + s`` (padding rows of a first
    prompt too, as onnxruntime's CPU kernel does); query ``s`` attends to keys
    ``j <= past_b + s`` (and ``j > past_b + s - local_window_size``). The present cache has
    ``max(total_sequence_length, past length)`` slots: the past, with the new K/V written
    at ``past_b ..`` of each row (a one-hot matmul: exact) and zeros after a row's
    ``total_b``, as onnxruntime leaves them.

    With the attribute ``maiac_in_place_cache = 1`` (a decode step whose cache the
    machine keeps, maiac/kv_cache.py) there is no present: the keys are
    ``Concat(past, new)`` and key ``j`` is visible to query ``s`` iff ``j <= past_b + s``
    and ``j < past length`` (the appended columns hidden), the contract of the
    `kv-cache-inplace` pass (passes/kv_cache_inplace.py), which writes the new rows into
    the cache at slot ``past_b`` (its ``cache_position`` input) and attends over the
    cache's slots: the new keys are then those of slot ``past_b``.
    """
    heads, kv_heads = int(e.attr("num_heads")), int(e.attr("kv_num_heads"))
    if heads % kv_heads:
        raise e.fail(f"num_heads {heads} is not a multiple of kv_num_heads {kv_heads}")
    for index, what in ((9, "position_ids"), (10, "attention_bias"), (11, "head_sink")):
        if e.input(index):
            raise e.fail(f"the {what} input is not supported")
    if e.attr("smooth_softmax", 0) or e.attr("qk_output", 0):
        raise e.fail("smooth_softmax / qk_output are not supported")
    query, key, value = e.input(0), e.input(1), e.input(2)
    packed = not key
    head_size = e.head_size(query, heads + 2 * kv_heads if packed else heads)
    scale = float(e.attr("scale", 0.0)) or (1.0 / np.sqrt(head_size) if head_size else 0.0)
    if not scale:
        raise e.fail("needs the head size (or a scale attribute) for the default scale")

    def heads_first(x: str, count: int) -> str:  # [B, S, count*D] -> [B, count, S, D]
        split = e.one("Reshape", [x, e.i64([0, 0, count, -1])])
        return e.one("Transpose", [split], perm=[0, 2, 1, 3])

    if packed:
        q, k, v = e.split(heads_first(query, heads + 2 * kv_heads), [heads, kv_heads, kv_heads], 1)
    else:
        q, k, v = heads_first(query, heads), heads_first(key, kv_heads), heads_first(value, kv_heads)

    # positions from the real seqlens_k
    seq = e.dim(query, 1)
    total = e.one("Add", [e.one("Cast", [e.input(5)], to=TensorProto.INT64), e.i64(1)])
    total = e.unsqueeze(total, [1])  # [B, 1]
    total_len = e.one("Reshape", [e.one("Cast", [e.input(6)], to=TensorProto.INT64),
                                  e.i64([1])])
    past_b = e.one("Max", [e.one("Sub", [total, seq]), e.i64(0)])  # [B, 1]
    steps = e.one("Range", [e.const(np.int64(0)), _scalar(e, seq), e.const(np.int64(1))])
    positions = e.one("Add", [past_b, steps])  # [B, S]

    if int(e.attr("do_rotary", 0)):
        cos_cache = e.constant_input(7, "cos_cache")
        rotary_dim = 2 * int(cos_cache.shape[1])
        interleaved = bool(e.attr("rotary_interleaved", 0))
        cos = e.unsqueeze(e.one("Gather", [e.input(7), positions], axis=0), [1])
        sin = e.unsqueeze(e.one("Gather", [e.input(8), positions], axis=0), [1])
        q = _rotate(e, q, cos, sin, rotary_dim, head_size, interleaved)
        k = _rotate(e, k, cos, sin, rotary_dim, head_size, interleaved)

    in_place = bool(e.attr(IN_PLACE_CACHE, 0))
    if in_place and not (e.input(3) and e.input(4)):
        raise e.fail(f"{IN_PLACE_CACHE} needs the past_key and past_value inputs")
    # the present cache: past with the new rows written at past_b ..
    if in_place:
        past_len = e.dim(e.input(3), 2)
        k_all = e.one("Concat", [e.input(3), k], axis=2)
        v_all = e.one("Concat", [e.input(4), v], axis=2)
        slot_range = e.one("Range", [e.const(np.int64(0)),
                                     _scalar(e, e.one("Add", [past_len, seq])),
                                     e.const(np.int64(1))])
    elif e.input(3):
        past_len = e.dim(e.input(3), 2)
        slots = e.one("Max", [total_len, past_len])
        slot_range = e.one("Range", [e.const(np.int64(0)), _scalar(e, slots),
                                     e.const(np.int64(1))])
        target = e.unsqueeze(e.one("Add", [past_b, steps]), [1])  # [B, 1, S]
        hit = e.one("Equal", [e.unsqueeze(slot_range, [0, 2]), target])  # [B, T, S]
        onehot = e.unsqueeze(e.one("Cast", [hit], to=TensorProto.FLOAT), [1])  # [B,1,T,S]
        written = e.one("Greater", [e.reduce("ReduceMax", onehot, [-1]), e.f32(0.0)])
        # onnxruntime copies only each row's valid past (slots < past_b); the rest is 0
        kept = e.one("Less", [e.unsqueeze(slot_range, [0, 1, 3]), e.unsqueeze(past_b, [2, 3])])
        extra = e.one("Sub", [slots, past_len])
        presents = []
        for new, past, out in ((k, e.input(3), e.output(1)), (v, e.input(4), e.output(2))):
            zeros_shape = e.one("Concat", [e.dim(past, 0), e.dim(past, 1), extra,
                                           e.dim(new, 3)], axis=0)
            zeros = e.one("ConstantOfShape", [zeros_shape],
                          value=onnx.helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
            padded = e.one("Where", [kept, e.one("Concat", [past, zeros], axis=2), e.f32(0.0)])
            scattered = e.one("MatMul", [onehot, new])
            presents.append(e.one("Where", [written, scattered, padded], out or None))
        k_all, v_all = presents
    else:
        k_all = e.one("Identity", [k], e.output(1) or None)
        v_all = e.one("Identity", [v], e.output(2) or None)
        slot_range = steps

    group = heads // kv_heads
    if group > 1:
        def repeat(x: str) -> str:
            wide = e.one("Expand", [e.unsqueeze(x, [2]), e.i64([1, 1, group, 1, 1])])
            shape = e.one("Concat", [e.dim(x, 0), e.i64([heads]), e.dim(x, 2), e.dim(x, 3)],
                          axis=0)
            return e.one("Reshape", [wide, shape])
        k_all, v_all = repeat(k_all), repeat(v_all)

    scores = e.one("MatMul", [q, e.one("Transpose", [k_all], perm=[0, 1, 3, 2])])
    scores = e.one("Mul", [scores, e.f32(scale)])
    softcap = float(e.attr("softcap", 0.0))
    if softcap > 0:
        scores = e.one("Mul", [e.one("Tanh", [e.one("Div", [scores, e.f32(softcap)])]),
                               e.f32(softcap)])
    # key j is visible to query s of row b iff j <= past_b + s (and j < total_b)
    last = e.unsqueeze(e.one("Add", [past_b, steps]), [2])  # [B, S, 1]
    keys = e.unsqueeze(slot_range, [0, 1])  # [1, 1, T]
    visible = e.one("And", [e.one("LessOrEqual", [keys, last]),
                            e.one("Less", [keys, e.unsqueeze(total, [2])])])
    if in_place:  # the new keys are read at slot past_b of the cache, not appended
        visible = e.one("And", [visible, e.one("Less", [keys, past_len])])
    window = int(e.attr("local_window_size", -1))
    if window > 0:
        visible = e.one("And", [visible, e.one("Greater", [
            keys, e.one("Sub", [last, e.i64(window)])])])
    visible = e.unsqueeze(visible, [1])  # [B, 1, S, T]
    masked = e.one("Where", [visible, scores, e.f32(FLOAT_MIN)])
    probs = e.one("Softmax", [masked], axis=-1)
    context = e.one("Transpose", [e.one("MatMul", [probs, v_all])], perm=[0, 2, 1, 3])
    e.one("Reshape", [context, e.i64([0, 0, -1])], e.output(0))


def rotary_embedding(e: Expansion) -> None:
    """com.microsoft RotaryEmbedding: input [B, S, H*D] or [B, H, S, D], cos/sin caches."""
    if e.attr("is_packed_batching", 0):
        raise e.fail("is_packed_batching is not supported")
    if e.attr("interleaved", 0):
        raise e.fail("interleaved=1 is not supported")
    if float(e.attr("scale", 1.0)) != 1.0:
        raise e.fail("scale != 1 is not supported")
    x = e.input(0)
    rank = _rank(e, x)
    cos_cache = e.constant_input(2, "cos_cache")
    rotary_dim = int(e.attr("rotary_embedding_dim", 0)) or 2 * int(cos_cache.shape[-1])
    heads = int(e.attr("num_heads", 0))
    positions = e.input(1)
    if rank == 3:
        if not heads:
            hidden = e.last_dim(x)
            heads = hidden // rotary_dim if hidden else 0
        if not heads:
            raise e.fail("a 3-D input needs the num_heads attribute")
        x4 = e.one("Transpose", [e.one("Reshape", [x, e.i64([0, 0, heads, -1])])],
                   perm=[0, 2, 1, 3])
    else:
        x4 = x
    head_size = e.last_dim(x) // heads if rank == 3 and e.last_dim(x) else e.last_dim(x)
    cos = e.unsqueeze(e.one("Gather", [e.input(2), positions], axis=0), [1])
    sin = e.unsqueeze(e.one("Gather", [e.input(3), positions], axis=0), [1])
    y = _rotate(e, x4, cos, sin, rotary_dim, head_size, False)
    if rank == 3:
        y = e.one("Reshape", [e.one("Transpose", [y], perm=[0, 2, 1, 3]), e.i64([0, 0, -1])])
    e.one("Identity", [y], e.output(0))


def _padding_mask(e: Expansion, mask: str, keys: str, filter_value: float) -> str:
    """The additive ``[B, 1, S|1, T]`` mask of an Attention/MHA mask input (CPU semantics).

    ``[B]``: each row's key count (right padding: keys ``j >= len_b`` are masked); ``[B, T]``
    or ``[B, S, T]``: raw 0/1 masks (0 = masked). Masked keys get ``mask_filter_value``.
    """
    rank = _rank(e, mask)
    zero, fill = e.f32(0.0), e.f32(filter_value)
    if rank == 1:
        lengths = e.unsqueeze(e.one("Cast", [mask], to=TensorProto.INT64), [1, 2, 3])
        return e.one("Where", [e.one("Less", [e.unsqueeze(keys, [0, 1, 2]), lengths]), zero, fill])
    if rank in (2, 3):
        keep = e.one("Greater", [e.one("Cast", [mask], to=TensorProto.FLOAT), zero])
        additive = e.one("Where", [keep, zero, fill])
        return e.unsqueeze(additive, [1, 2] if rank == 2 else [1])
    raise e.fail(f"a mask of rank {rank} is not supported (only [B] lengths or [B, (S,) T] masks)")


def _multi_head(e: Expansion, q: str, k: str, v: str, heads: int, head_size: int | None,
                mask: str, output: str) -> None:
    """softmax(q kᵀ · scale + masks) v over ``heads``; q/k/v ``[B, S, heads * D]``."""
    scale = float(e.attr("scale", 0.0)) or (1.0 / np.sqrt(head_size) if head_size else 0.0)
    if not scale:
        raise e.fail("needs the head size (or a scale attribute) for the default scale")

    def heads_first(x: str) -> str:
        return e.one("Transpose", [e.one("Reshape", [x, e.i64([0, 0, heads, -1])])],
                     perm=[0, 2, 1, 3])

    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)
    scores = e.one("Mul", [e.one("MatMul", [qh, e.one("Transpose", [kh], perm=[0, 1, 3, 2])]),
                           e.f32(scale)])
    filter_value = float(e.attr("mask_filter_value", -10000.0))
    keys = e.one("Range", [e.const(np.int64(0)), _scalar(e, e.dim(k, 1)), e.const(np.int64(1))])
    if mask:
        scores = e.one("Add", [scores, _padding_mask(e, mask, keys, filter_value)])
    if int(e.attr("unidirectional", 0)):
        queries = e.one("Range", [e.const(np.int64(0)), _scalar(e, e.dim(q, 1)),
                                  e.const(np.int64(1))])
        later = e.one("Greater", [e.unsqueeze(keys, [0]), e.unsqueeze(queries, [1])])
        scores = e.one("Add", [scores, e.one("Where", [later, e.f32(filter_value),
                                                       e.f32(0.0)])])
    probs = e.one("Softmax", [scores], axis=-1)
    context = e.one("Transpose", [e.one("MatMul", [probs, vh])], perm=[0, 2, 1, 3])
    e.one("Reshape", [context, e.i64([0, 0, -1])], output)


def attention(e: Expansion) -> None:
    """com.microsoft Attention (the BERT/GPT-2 optimizer's fused self-attention), no past."""
    for index, what in ((4, "past"), (5, "attention_bias"), (6, "past_sequence_length")):
        if e.input(index):
            raise e.fail(f"the {what} input is not supported")
    if e.attr("do_rotary", 0) or e.attr("past_present_share_buffer", 0):
        raise e.fail("do_rotary / past_present_share_buffer are not supported")
    if len(e.node.output) > 1 and e.output(1):
        raise e.fail("the present output is not supported")
    heads = int(e.attr("num_heads"))
    weights = e.initializers.get(e.input(1))
    sizes = list(e.attr("qkv_hidden_sizes", []) or [])
    if not sizes:
        if weights is None:
            raise e.fail("needs qkv_hidden_sizes or constant weights")
        sizes = [int(weights.dims[1]) // 3] * 3
    qkv = e.one("MatMul", [e.input(0), e.input(1)])
    if e.input(2):
        qkv = e.one("Add", [qkv, e.input(2)])
    q, k, v = e.split(qkv, sizes, 2)
    _multi_head(e, q, k, v, heads, sizes[0] // heads, e.input(3), e.output(0))


def multi_head_attention(e: Expansion) -> None:
    """com.microsoft MultiHeadAttention with separate [B, S, hidden] q/k/v, no past."""
    for index, what in ((5, "attention_bias"), (6, "past_key"), (7, "past_value")):
        if e.input(index):
            raise e.fail(f"the {what} input is not supported")
    if any(e.output(i) for i in (1, 2)):
        raise e.fail("the present outputs are not supported")
    heads = int(e.attr("num_heads"))
    q, k, v = e.input(0), e.input(1), e.input(2)
    if not k or not v or _rank(e, k) != 3:
        raise e.fail("only separate 3-D query, key and value are supported (no packed QKV)")
    hidden = e.last_dim(q)
    if e.input(3):
        if hidden is None:
            raise e.fail("a bias needs the static hidden size of the query")
        kv_hidden = e.last_dim(k) or hidden
        bq, bk, bv = e.split(e.input(3), [hidden, kv_hidden, kv_hidden], 0)
        q, k, v = e.one("Add", [q, bq]), e.one("Add", [k, bk]), e.one("Add", [v, bv])
    _multi_head(e, q, k, v, heads, hidden // heads if hidden else None, e.input(4), e.output(0))


def embed_layer_norm(e: Expansion) -> None:
    """EmbedLayerNormalization: word + position (+ segment) embeddings, then LayerNorm.

    Output 1 (mask_index) is the per-row count of mask ones, as onnxruntime computes it.
    """
    ids, segments = e.input(0), e.input(1)
    words = e.one("Gather", [e.input(2), ids], axis=0)
    if e.input(8):
        positions = e.input(8)
    else:
        positions = e.unsqueeze(e.one("Range", [e.const(np.int64(0)), _scalar(e, e.dim(ids, 1)),
                                                e.const(np.int64(1))]), [0])
    total = e.one("Add", [words, e.one("Gather", [e.input(3), positions], axis=0)])
    if segments and e.input(4):
        total = e.one("Add", [total, e.one("Gather", [e.input(4), segments], axis=0)])
    if e.output(2):
        total = e.one("Identity", [total], e.output(2))
    e.layer_norm(total, e.input(5), e.input(6), float(e.attr("epsilon", 1e-12)), e.output(0))
    if e.output(1):
        if e.input(7):
            count = e.reduce("ReduceSum", e.one("Cast", [e.input(7)], to=TensorProto.INT32), [1], 0)
        else:
            count = e.one("Expand", [e.one("Cast", [e.dim(ids, 1)], to=TensorProto.INT32),
                                     e.dim(ids, 0)])
        e.one("Identity", [count], e.output(1))


EXPANSIONS: dict[tuple[str, str], Callable[[Expansion], None]] = {
    ("", "SimplifiedLayerNormalization"): simplified_layer_norm,
    (MS, "SimplifiedLayerNormalization"): simplified_layer_norm,
    (MS, "SkipSimplifiedLayerNormalization"): skip_simplified_layer_norm,
    ("", "LayerNormalization"): old_opset_layer_norm,
    (MS, "SkipLayerNormalization"): skip_layer_norm,
    (MS, "FastGelu"): fast_gelu,
    (MS, "BiasGelu"): bias_gelu,
    (MS, "QuickGelu"): quick_gelu,
    (MS, "FusedMatMul"): fused_matmul,
    (MS, "MatMulNBits"): matmul_nbits,
    (MS, "GroupQueryAttention"): group_query_attention,
    (MS, "RotaryEmbedding"): rotary_embedding,
    (MS, "Attention"): attention,
    (MS, "MultiHeadAttention"): multi_head_attention,
    (MS, "EmbedLayerNormalization"): embed_layer_norm,
}
"""(domain, op type) → the expansion into standard ONNX."""

STANDARD_SINCE: dict[tuple[str, str], int] = {("", "LayerNormalization"): 17}
"""Ops expanded only in models of an older default opset (standard ONNX from this one on)."""
