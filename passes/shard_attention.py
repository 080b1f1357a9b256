"""Attention under `shard` (passes/shard.py): each chip attends with its own query heads
and the KV heads they read, and the q/k/v projections are planned to give it exactly
those.

Separate q/k/v projections (Llama) are column-split by heads. A fused QKV projection
(GPT-2's ``c_attn``: one matmul ``[hidden, (H + 2 Hkv) d]`` whose output the attention
reads three times at the q, k and v column offsets) is split by heads too: the weight's
columns are permuted so that chip j's contiguous chunk is its q heads, then its k heads,
then its v heads (:func:`fused_qkv_columns`), and the attention's views are rewritten for
that local layout, so the QKV output is never all-gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from xdsl.ir import Operation

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.shard_views import local_shape, shard_view
from maiac.runtime.errors import MaiacError

if TYPE_CHECKING:
    from maiac.passes.shard import Sharder


@dataclass(frozen=True)
class FusedQKV:
    """Where q, k and v sit in a fused projection's ``width`` output columns."""

    width: int
    heads: int
    kv_heads: int
    head_dim: int
    q_col: int
    k_col: int
    v_col: int


def fused_qkv_columns(f: FusedQKV, parts: int, chunk: int) -> np.ndarray:
    """The weight columns of chip ``chunk`` of ``parts``: its q heads | k heads | v heads."""
    qn, kn = f.heads * f.head_dim // parts, f.kv_heads * f.head_dim // parts
    return np.r_[f.q_col + chunk * qn:f.q_col + (chunk + 1) * qn,
                 f.k_col + chunk * kn:f.k_col + (chunk + 1) * kn,
                 f.v_col + chunk * kn:f.v_col + (chunk + 1) * kn]


def plan_fused_qkv(sh: Sharder, op: Operation) -> FusedQKV | None:
    """``op`` (an attention) reads q, k and v from one constant-weight matmul whose only
    reader it is, heads contiguous in the columns, and ``chips`` divides both head
    counts: the plan to split that matmul by heads (else None)."""
    q, k, v = op.operands[:3]
    bsz, hkv, g, sq, sk, d = maia.attr(op, "dims")
    h, c = hkv * g, sh.chips
    mm = q.owner
    if not (q is k is v) or not isinstance(mm, maia.MatMulOp) or h % c or hkv % c:
        return None
    if sh.const_of(mm.operands[1]) is None or maia.attr(mm, "glu") or maia.attr(mm, "residual"):
        return None
    if any(u.operation is not op for u in q.uses) or len(tensor_shape(mm.operands[1].type)) != 2:
        return None
    width = tensor_shape(q.type)[-1]
    if width != (h + 2 * hkv) * d:
        return None
    cols = {}
    for name, heads in (("q", h), ("k", hkv), ("v", hkv)):
        off, s_b, s_hkv, s_g, s_r, s_c = maia.attr(op, f"{name}_view")
        if s_c != 1 or s_r % width or s_b % width or off < 0:
            return None
        if name == "q":  # head h = i_hkv * g + i_g at i_hkv * s_hkv + i_g * s_g
            if (g > 1 and s_g != d) or (hkv > 1 and s_hkv != g * d):
                return None
        elif s_g != 0 or (hkv > 1 and s_hkv != d):
            return None
        col = off % width
        if col + heads * d > width:
            return None
        cols[name] = col
    spans = sorted((cols[n], cols[n] + n_h * d) for n, n_h in (("q", h), ("k", hkv), ("v", hkv)))
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
        return None
    return FusedQKV(width, h, hkv, d, cols["q"], cols["k"], cols["v"])


def fused_views(sh: Sharder, op: Operation, f: FusedQKV) -> dict[str, list[int]] | None:
    """The q/k/v views of ``op`` over this chip's chunk of the permuted fused output."""
    c = sh.chips
    q = op.operands[0]
    s = sh.st(q)
    if s is None or s.parts != c or s.axis != -1:
        return None
    w_l = f.width // c
    local_col = {"q": 0, "k": f.heads * f.head_dim // c,
                 "v": (f.heads + f.kv_heads) * f.head_dim // c}
    views = {}
    for name in ("q", "k", "v"):
        off, s_b, s_hkv, s_g, s_r, _ = maia.attr(op, f"{name}_view")
        row = off // f.width
        views[name] = [row * w_l + local_col[name], s_b // f.width * w_l, s_hkv, s_g,
                       s_r // f.width * w_l, 1]
    return views


def separate_views(sh: Sharder, op: Operation) -> tuple[dict[str, list[int]], int, int] | None:
    """Views of q/k/v each split by heads (their projections column-split), with the
    local KV heads and group size (None: not on a slice)."""
    bsz, hkv, g, sq, sk, d = maia.attr(op, "dims")
    h, c = hkv * g, sh.chips
    q, k, v = op.operands[:3]
    sq_, sk_, sv_ = sh.st(q), sh.st(k), sh.st(v)
    if sq_ is None or sk_ is None or sv_ is None or sq_.parts != c or h % c:
        return None
    p_kv = sk_.parts
    if sv_.parts != p_kv or p_kv not in (c, hkv) or (p_kv == hkv and c % hkv):
        return None
    hkv_l = hkv // c if p_kv == c else 1
    g_l = h // c // hkv_l
    views = {}
    # q and out: heads h = hkv * G + g as one axis (needs s_Hkv = G * s_G)
    for name, val, s, parts in (("q", q, sq_, c), ("k", k, sk_, p_kv), ("v", v, sv_, p_kv)):
        off, s_b, s_hkv, s_g, s_r, s_c = maia.attr(op, f"{name}_view")
        src = sh.full(val)
        if name == "q" and g == 1:
            s_g = s_hkv  # one query head per KV head: the heads step by s_hkv
        if name == "q":
            if hkv > 1 and s_hkv != g * s_g:
                return None
            got = shard_view(src, s.axis, parts, off, [s_b, s_g, s_r, s_c], [bsz, h, sq, d], 1)
            if got is None:
                return None
            o, (nb, ng, nr, nc) = got
            views[name] = [o, nb, g_l * ng, ng, nr, nc]
        else:
            if s_g != 0:
                return None
            got = shard_view(src, s.axis, parts, off, [s_b, s_hkv, s_r, s_c],
                             [bsz, hkv, sk, d], 1)
            if got is None:
                return None
            o, (nb, nh, nr, nc) = got
            views[name] = [o, nb, nh, 0, nr, nc]
    return views, hkv_l, g_l


def shard_attention(sh: Sharder, op: Operation) -> bool:
    """Rewrite ``op`` for this chip's heads (False: it must run whole)."""
    hkv, g, c = maia.attr(op, "dims")[1], maia.attr(op, "dims")[2], sh.chips
    fused = sh.fused_qkv.get(op)
    if fused is not None:
        views = fused_views(sh, op, fused)
        if views is None or not _finish(sh, op, views, hkv // c, g):
            # the projection's columns are already permuted: gathering them would mix
            # heads, so this must not fall back to running whole
            raise MaiacError(f"shard: the fused QKV attention {maia.attr(op, 'op', '')!r} "
                             f"could not be split by heads (a bug in the plan)")
        return True
    got = separate_views(sh, op)
    if got is None:
        return False
    views, hkv_l, g_l = got
    return _finish(sh, op, views, hkv_l, g_l)


def _finish(sh: Sharder, op: Operation, views: dict[str, list[int]], hkv_l: int,
            g_l: int) -> bool:
    """The mask and output views, then ``op`` rebuilt for the chip's heads."""
    bsz, hkv, g, sq, sk, d = maia.attr(op, "dims")
    h, c = hkv * g, sh.chips
    extra = list(op.operands[3:])
    if extra:
        moff, mb, mh, mg, mr, mc = maia.attr(op, "mask_view")
        if mh or mg or sh.st(extra[0]) is not None:
            return False
        views["mask"] = [moff, mb, 0, 0, mr, mc]
    out_full = tensor_shape(op.results[0].type)
    out_view = maia.attr(op, "out_view")
    if out_view is None:
        res_axis = 1
        new_out_view = None
    else:
        off, s_b, s_hkv, s_g, s_r, s_c = out_view
        if g == 1:
            s_g = s_hkv  # one query head per KV head: the heads step by s_hkv
        if hkv > 1 and s_hkv != g * s_g:
            return False
        res_axis, new_out_view = -1, None
        for ax in range(len(out_full)):
            got = shard_view(out_full, ax, c, off, [s_b, s_g, s_r, s_c], [bsz, h, sq, d], 1)
            if got is not None:
                o, (nb, ng, nr, nc) = got
                res_axis, new_out_view = ax, [o, nb, g_l * ng, ng, nr, nc]
                break
        if res_axis < 0:
            return False
    ns = sh.split_for(c, res_axis - len(out_full))
    attrs: dict[str, object] = {"dims": [bsz, hkv_l, g_l, sq, sk, d], "kv_groups": g_l,
                                **{f"{n}_view": vv for n, vv in views.items()}}
    if new_out_view is not None:
        attrs["out_view"] = new_out_view
    new = sh.rebuild(op, list(op.operands), local_shape(out_full, ns), attrs)
    sh.state[new.results[0]] = ns
    sh.sharded_ops += 1
    return True
