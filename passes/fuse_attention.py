"""`fuse-attention`: scores → scale → mask → softmax → ·V chains → one ``maia.attention``.

Matches what the exporters write for scaled dot-product attention (GPT-2, BERT, Llama,
Qwen2, ViT; TorchScript and dynamo)::

    s = q @ kT            kT a transpose view of k (maia.view), q and kT maybe pre-scaled
    s = s * c | s / c     scalar constants fold into ``scale``
    s = s + mask          additive mask (padding/causal), any broadcast shape
      | where(cond, fill, s)   becomes the additive mask where(cond, fill, 0)
    p = softmax(s)
      | where(isnan(p), 0, p)  the exporters' NaN guard: ``empty_rows = "zero"``
    o = p @ v

**The NaN guard** (optimum's exports, from torch's SDPA): ``where(isnan(p), 0, p)``
between the softmax and ``· V``. On a softmax row that is not NaN it is the identity:
if every score of a row is finite or -inf and at least one is finite (some key
visible), the row max ``m`` is finite, every ``exp(s - m)`` is in [0, 1] and the one
with ``s = m`` is exactly 1, so the sum is >= 1 and every ``p`` is a finite number in
[0, 1]. The row is NaN exactly when all its scores are -inf (every key masked, e.g. a
padded query) -- the guard then makes its probabilities 0 and its output ``0 @ V = 0``
-- or when a score is NaN/+inf (non-finite activations). The fused attention with
``empty_rows = "zero"`` reproduces the first case exactly: its online softmax keeps
``m = -inf``, ``l = 0``, ``O = 0`` for a row with no visible key and divides by
``max(l, 1)`` instead of ``l`` (the same ``l`` for every other row, since there
``l >= 1``), so that row's output is 0; only NaN/+inf scores (which the guard would
also hide) stay NaN.

The operands are read through their view chains (passes/fuse_views.py), so the head
split/transposes and the GQA repeat (Unsqueeze → Expand → Reshape of K/V) are not
materialized: ``kv_groups`` query heads share one K/V head by a 0 stride. The scores
and probabilities must have no other users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern
from xdsl.rewriter import InsertPoint

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import (
    binary,
    commuted,
    constant_array,
    erase_dead,
    label,
    new_constant,
    new_op,
    only_used_by,
    producer,
    scalar,
    unary,
)
from maiac.passes.fuse_views import Strided, resolve
from maiac.passes.tiling.common import divisors
from maiac.runtime.isa import contiguous_strides

MASKED = -1e4  # an additive mask entry at or below this is "masked" (for `causal`)


@dataclass
class Scores:
    """``scale * (q @ kT)``: the operands before scaling and the ops that made them."""

    q: SSAValue
    kt: SSAValue
    scale: float
    ops: list[Operation]


def _unscaled(value: SSAValue) -> tuple[SSAValue, float, list[Operation]]:
    """``value = x * c`` or ``x / c`` with a scalar constant ``c``: (x, c or 1/c, ops)."""
    if (op := binary(value, "mul")) is not None:
        for x, c in commuted(op):
            if (factor := scalar(c)) is not None and tensor_shape(x.type) == tensor_shape(value.type):
                return x, factor, [op]
    if (op := binary(value, "div")) is not None:
        factor = scalar(op.operands[1])
        if factor and tensor_shape(op.operands[0].type) == tensor_shape(value.type):
            return op.operands[0], 1.0 / factor, [op]
    return value, 1.0, []


def match_scores(value: SSAValue) -> Scores | None:
    x, scale, ops = _unscaled(value)
    mm = producer(x, "maia.matmul")
    if mm is None or len(mm.operands) != 2 or maia.attr(mm, "act") or not x.has_one_use():
        return None
    q, q_scale, q_ops = _unscaled(mm.operands[0])
    kt, k_scale, k_ops = _unscaled(mm.operands[1])
    return Scores(q, kt, scale * q_scale * k_scale, [*ops, mm, *q_ops, *k_ops])


def _where_scores(where: Operation) -> tuple[SSAValue, SSAValue, float, bool] | None:
    """``where(c, fill, s)`` / ``where(c, s, fill)`` over scores: (s, c, fill, keep_when)."""
    cond, a, b = where.operands
    for s, fill, keep_when in ((b, a, False), (a, b, True)):
        fill_value = scalar(fill)
        if fill_value is not None and s.has_one_use() and _is_scores(s):
            return s, cond, fill_value, keep_when
    return None


def _additive_mask(where: Operation, cond: SSAValue, fill: float, keep_when: bool,
                   rewriter: PatternRewriter) -> SSAValue:
    """The additive mask equal to the where: ``fill`` where masked, else 0."""
    c = constant_array(cond, limit=1 << 24)
    if c is not None:
        masked = ~c.astype(bool) if keep_when else c.astype(bool)
        mask = new_constant(np.where(masked, np.float32(fill), np.float32(0)), "mask")
        rewriter.insert(mask, InsertPoint.before(where))
        return mask.results[0]
    zero = new_constant(np.zeros((), np.float32), "zero")
    fill_op = new_constant(np.array(fill, np.float32), "fill")
    args = [cond, zero.results[0], fill_op.results[0]] if keep_when else \
        [cond, fill_op.results[0], zero.results[0]]
    out_type = TensorType(where.results[0].type.get_element_type(),
                          list(tensor_shape(cond.type)))
    add = new_op(maia.WhereOp, args, out_type, op=label(where))
    rewriter.insert([zero, fill_op, add], InsertPoint.before(where))
    return add.results[0]


def _nan_guard(probs: SSAValue) -> tuple[SSAValue, list[Operation]] | None:
    """``probs = where(isnan(p), 0, p)``, the guard read only by ``· V``: (p, its ops)."""
    where = producer(probs, "maia.where")
    if where is None or not probs.has_one_use():
        return None
    cond, zero, p = where.operands
    isnan = unary(cond, "isnan")
    if isnan is None or isnan.operands[0] is not p or not cond.has_one_use() \
            or scalar(zero) != 0.0 or tensor_shape(p.type) != tensor_shape(probs.type):
        return None
    if not only_used_by(p, (isnan, where)) or len(list(p.uses)) != 2:
        return None
    return p, [where, isnan]


def _is_scores(value: SSAValue) -> bool:
    return match_scores(value) is not None


def _view_chain(value: SSAValue) -> list[Operation]:
    """The reshape/view ops a value is read through (candidates to erase once fused)."""
    ops = []
    while isinstance(value.owner, Operation) and value.owner.name in ("maia.reshape", "maia.view"):
        ops.append(value.owner)
        value = value.owner.operands[0]
    return ops


def _mask_view(mask: SSAValue, b: int, hkv: int, g: int, sq: int, sk: int) -> Strided | None:
    """The mask, broadcast to ``[B, H, Sq, Sk]``, as a 5-D strided view."""
    own = tensor_shape(mask.type)
    if len(own) > 4:
        return None
    own4 = (1,) * (4 - len(own)) + tuple(own)
    full = (b, hkv * g, sq, sk)
    if any(o not in (1, f) for o, f in zip(own4, full, strict=True)):
        return None
    heads = (hkv, g) if own4[1] != 1 else (1, 1)
    shape5 = (own4[0], *heads, own4[2], own4[3])
    view = resolve(mask, shape5)
    if view is None:
        return None
    strides = tuple(0 if e == 1 else s for e, s in zip(shape5, view.strides, strict=True))
    return Strided(view.base, view.offset, (b, hkv, g, sq, sk), strides)


CAUSAL_LIMIT = 1 << 28  # mask elements read at compile time to recognize a causal mask


def _future(sq: int, sk: int) -> np.ndarray:
    """``[sq, sk]``: True where key ``c`` comes after query ``r`` (``c > r + sk - sq``)."""
    # broadcast [sq, 1] against [1, sk]: only the bool result is materialized (np.indices
    # made two int64 [sq, sk] arrays: 4 GiB at 16k tokens, which the perf sweep runs)
    return np.arange(sk)[None, :] > np.arange(sq)[:, None] + (sk - sq)


def is_causal(mask: SSAValue, sq: int, sk: int) -> bool:
    """True if ``mask`` is a constant hiding exactly the keys after each query."""
    arr = constant_array(mask, limit=CAUSAL_LIMIT)
    if arr is None or arr.shape[-2:] != (sq, sk):
        return False
    future = _future(sq, sk)
    arr = arr.astype(np.float32)
    return bool(np.all(arr[..., future] <= MASKED) and np.all(arr[..., ~future] == 0))


def _causal_where(cond: SSAValue, fill: float, keep_when: bool, sq: int, sk: int) -> bool:
    """True if ``where(cond, ...)`` with ``fill`` hides exactly the keys after each query."""
    if fill > MASKED:
        return False
    c = constant_array(cond, limit=CAUSAL_LIMIT)
    if c is None or c.shape[-2:] != (sq, sk):
        return False
    c = np.asarray(c, dtype=bool)   # no copy when already bool
    future = _future(sq, sk)
    # hidden (= ~c when keep_when, else c) must equal future
    same = np.not_equal(c, future) if keep_when else np.equal(c, future)
    return bool(same.all())


class FuseAttention(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.matmul" or len(op.operands) != 2 or maia.attr(op, "act"):
            return
        probs, v = op.operands
        guard = _nan_guard(probs)
        if guard is not None:
            probs = guard[0]
        softmax = producer(probs, "maia.softmax", "softmax")
        if softmax is None or (guard is None and not probs.has_one_use()):
            return
        x = softmax.operands[0]
        if not x.has_one_use():
            return
        mask: SSAValue | None = None
        where_mask: tuple[Operation, SSAValue, float, bool] | None = None
        matched: list[Operation] = [*(guard[1] if guard else []), softmax]
        if (add := binary(x, "add")) is not None:
            for s, m in commuted(add):
                if _is_scores(s) and s.has_one_use():
                    x, mask = s, m
                    matched.append(add)
                    break
        elif (where := producer(x, "maia.where")) is not None:
            if (found := _where_scores(where)) is None:
                return
            x, where_mask = found[0], (where, *found[1:])
            matched.append(where)
        scores = match_scores(x)
        if scores is None:
            return
        shape = tensor_shape(x.type)
        out_shape = tensor_shape(op.results[0].type)
        if len(shape) not in (3, 4) or len(out_shape) != len(shape):
            return
        b, h = (1, shape[0]) if len(shape) == 3 else shape[:2]
        sq, sk = shape[-2:]
        d = tensor_shape(scores.q.type)[-1]
        if out_shape[-1] != d or tensor_shape(v.type)[-2:] != (sk, d):
            return
        views = self._operands(scores, v, b, h, sq, sk, d)
        if views is None:
            return
        q5, k5, v5, g = views
        ins = [q5.base, k5.base, v5.base]
        attrs: dict[str, object] = {
            "op": label(op), "dims": [b, h // g, g, sq, sk, d], "scale": float(scores.scale),
            "kv_groups": g, "causal": False,
            "q_view": _view_attr(q5), "k_view": _view_attr(k5), "v_view": _view_attr(v5)}
        if guard is not None:
            attrs["empty_rows"] = "zero"
        # a constant causal mask (with Sk >= Sq: every row sees a key) is not loaded at
        # all: the tiler generates it per block and skips the hidden key blocks
        if sk >= sq and ((where_mask is not None and _causal_where(*where_mask[1:], sq, sk))
                         or (mask is not None and is_causal(mask, sq, sk))):
            attrs["causal"] = True
            mask = where_mask = None
        if where_mask is not None:
            mask = _additive_mask(*where_mask, rewriter)
        if mask is not None:
            m5 = _mask_view(mask, b, h // g, g, sq, sk)
            if m5 is None:
                return
            ins.append(m5.base)
            attrs["mask_view"] = _view_attr(m5)
            attrs["causal"] = is_causal(mask, sq, sk)
        fused = new_op(maia.AttentionOp, ins, op.results[0].type, **attrs)
        rewriter.replace(op, fused)
        chains = [*_view_chain(scores.q), *_view_chain(scores.kt), *_view_chain(v)]
        erase_dead([*matched, *scores.ops, *chains], rewriter)

    @staticmethod
    def _operands(scores: Scores, v: SSAValue, b: int, h: int, sq: int, sk: int,
                  d: int) -> tuple[Strided, Strided, Strided, int] | None:
        """q, k, v as 5-D strided views, with the largest GQA group that shares K/V."""
        for g in reversed(divisors(h)):
            hkv = h // g
            kt = resolve(scores.kt, (b, hkv, g, d, sk))
            vv = resolve(v, (b, hkv, g, sk, d))
            if kt is None or vv is None:
                continue
            if g > 1 and (kt.strides[2] or vv.strides[2]):
                continue
            q = resolve(scores.q, (b, hkv, g, sq, d))
            if q is None:
                continue
            return q, kt.permuted((0, 1, 2, 4, 3)), vv, g
        return None


def _view_attr(view: Strided) -> list[int]:
    return [int(view.offset), *(int(s) for s in view.strides)]


def output_strides(view: Operation, dims: list[int]) -> list[int] | None:
    """Where a permuting ``maia.view`` of an attention result puts each logical element.

    The result is contiguous ``[B, Hkv, G, Sq, D]``; returns ``[0, s_B, s_Hkv, s_G, s_row,
    s_col]``, the strides of those dims in the view's (contiguous) result, or None unless
    the view is a bijection that keeps every dim whole (transposes, head merges).
    """
    b, hkv, g, sq, _, d = dims
    shape = (b, hkv, g, sq, d)
    in_strides = contiguous_strides(shape)
    out_shape = tensor_shape(view.results[0].type)
    if int(maia.attr(view, "offset", 0)) or math.prod(out_shape) != math.prod(shape):
        return None
    result = [0] * len(shape)
    covered: set[int] = set()
    for extent, stride, placed in zip(out_shape, maia.attr(view, "strides", ()),
                                      contiguous_strides(out_shape), strict=True):
        if extent == 1:
            continue
        found = [i for i, (n, c) in enumerate(zip(shape, in_strides, strict=True))
                 if n > 1 and c == stride]
        if not found:
            return None
        i, left = found[0], extent
        while left > 1:  # an output dim may merge input dims (the heads: Hkv x G)
            if i < 0 or i in covered or left % shape[i]:
                return None
            if shape[i] > 1:
                result[i], placed, left = placed, placed * shape[i], left // shape[i]
                covered.add(i)
            i -= 1
    if covered != {i for i, n in enumerate(shape) if n > 1}:
        return None
    return [0, *result]


class AttentionOutputView(RewritePattern):
    """``view(attention(...))`` (the head transpose after attention) → an attention that
    writes each ``[bq, D]`` block straight to its place in the view's layout."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.view":
            return
        source = op.operands[0]
        attention = producer(source, "maia.attention")
        if attention is None or not source.has_one_use() or "out_view" in attention.attributes:
            return
        strides = output_strides(op, list(maia.attr(attention, "dims")))
        if strides is None:
            return
        attrs = {k: maia.from_attr(v) for k, v in attention.attributes.items()}
        fused = new_op(maia.AttentionOp, list(attention.operands), op.results[0].type,
                       **attrs, out_view=strides)
        rewriter.replace(op, fused)
        rewriter.erase(attention)


@dataclass(frozen=True)
class FuseAttentionPass(ModulePass):
    """Scaled dot-product attention chains (incl. masks and GQA) → ``maia.attention``."""

    name = "fuse-attention"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseAttention(), apply_recursively=False).rewrite_module(op)
        PatternRewriteWalker(AttentionOutputView(), apply_recursively=False).rewrite_module(op)
