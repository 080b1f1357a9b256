"""`kv-cache-inplace`: a decode step's KV cache updated in place instead of concatenated.

A decoder exported "with past" attends over ``Concat(past, new)`` on the sequence axis.
Compiled as is, every decode step reads the whole cache, writes it out again one slot
longer and reads that copy in attention (and a ``--kv-cache bf16|fp8`` cache adds a
Cast that reads it once more and writes it in fp32): several times the bytes of the
cache per step. When the function has an input named ``cache_position`` ([batch]
integers: each sequence's length, added by ``maiac.kv_cache.cache_in_place``), this pass
rewrites, for every ``maia.attention`` whose keys and values are such a Concat::

    %k = concat(copy?(%past_k), %new_k)          %kc = cache_write(%past_k, %new_k, %pos)
    %v = concat(copy?(%past_v), %new_v)    →     %vc = cache_write(%past_v, %new_v, %pos)
    attention(%q, %k, %v, %mask)                 attention(%q, %kc, %vc, %mask)  [Sk = C]

``cache_write`` stores only the new rows at row ``pos[b]`` of the fixed-capacity cache
buffer (the input itself, in place; converted to the cache's element type as they are
stored); attention then reads the cache's ``C`` slots in their storage format (the cast
folded into its loads) and the mask's first ``C`` columns, so the slots not yet filled
stay hidden by ``attention_mask``. A step then moves the weights, the cache once and the
new rows. Only single-token steps (one new row) with a mask operand are rewritten; with a
``cache_position`` input, a past input that cannot be rewritten is an error naming it
(the caller falls back to the Concat).
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_match import new_op
from maiac.passes.tile import io_names
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import contiguous_strides

POSITION_INPUT = "cache_position"


def _past_source(value: SSAValue) -> tuple[BlockArgument, Operation | None] | None:
    """The function input a concat's first operand reads: itself or a cast (copy) of it."""
    if isinstance(value, BlockArgument):
        return value, None
    owner = value.owner
    if isinstance(owner, maia.UnaryOp) and maia.attr(owner, "fn") == "copy" \
            and isinstance(owner.operands[0], BlockArgument):
        return owner.operands[0], owner
    return None


def _is_past(arg: BlockArgument) -> bool:
    """A cache input: the first operand of a concat, directly or through a cast."""
    for use in arg.uses:
        user = use.operation
        if isinstance(user, maia.ConcatOp) and use.index == 0:
            return True
        if isinstance(user, maia.UnaryOp) and maia.attr(user, "fn") == "copy" and any(
                isinstance(u.operation, maia.ConcatOp) and u.index == 0
                for u in user.results[0].uses):
            return True
    return False


def _cache_view(view: tuple[int, ...], concat_shape: tuple[int, ...],
                cache_shape: tuple[int, ...], groups: int) -> list[int] | None:
    """An attention operand view ``[offset, s_B, s_Hkv, s_G, s_row, s_col]`` over the
    concat, re-expressed over the cache (same dims, one slot fewer), or None when it is
    not a plain walk of the concat's [B, Hkv, S, D] layout (``s_G`` is free when each
    K/V head has one query head: ``groups == 1``)."""
    offset, s_b, s_h, s_g, s_row, s_col = view
    old, new = contiguous_strides(concat_shape), contiguous_strides(cache_shape)
    if offset != 0 or (s_g != 0 and groups > 1) or s_row != old[2] or s_col != old[3]:
        return None
    out = [0]
    for stride, dim in ((s_b, 0), (s_h, 1)):
        if stride not in (0, old[dim]) and concat_shape[dim] > 1:
            return None
        out.append(0 if stride == 0 else new[dim])
    return [*out, 0, new[2], new[3]]


def rewrite_function(fn: func.FuncOp) -> int:
    """Rewrite ``fn``'s attention caches in place; returns how many K/V pairs."""
    block = fn.body.block
    names = io_names(fn.arg_attrs, len(block.args), "input")
    positions = [a for a, n in zip(block.args, names, strict=True) if n == POSITION_INPUT]
    if not positions:
        return 0
    pos = positions[0]
    pasts = {a for a in block.args if _is_past(a)}
    done: set[BlockArgument] = set()
    rewriter = Rewriter()
    for op in list(block.ops):
        if not isinstance(op, maia.AttentionOp) or len(op.operands) != 4:
            continue
        dims = list(maia.attr(op, "dims"))
        if dims[3] != 1:  # one query row: a decode step
            continue
        plan = []
        for index, view_name in ((1, "k_view"), (2, "v_view")):
            concat = op.operands[index].owner
            if not isinstance(concat, maia.ConcatOp) or len(concat.operands) != 2 \
                    or maia.attr(concat, "axis") not in (2, -2):
                break
            source = _past_source(concat.operands[0])
            new = concat.operands[1]
            if source is None or source[0] not in pasts:
                break
            cache_shape = tensor_shape(source[0].type)
            concat_shape = tensor_shape(concat.results[0].type)
            new_shape = tensor_shape(new.type)
            if new_shape[2] != 1 or dims[4] != cache_shape[2] + 1:
                break
            view = _cache_view(tuple(maia.attr(op, view_name)), concat_shape, cache_shape,
                               dims[2])
            if view is None:
                break
            plan.append((index, view_name, concat, source, new, view))
        if len(plan) != 2:
            continue
        attrs = {k: maia.from_attr(v) for k, v in op.attributes.items()}
        operands = list(op.operands)
        for index, view_name, concat, (past, _cast), new, view in plan:
            write = new_op(maia.CacheWriteOp, [past, new, pos], past.type,
                           op=f"{maia.attr(concat, 'op', 'cache')}/cache_write")
            rewriter.insert_op(write, InsertPoint.before(op))
            operands[index] = write.results[0]
            attrs[view_name] = view
            done.add(past)
        attrs["dims"] = [*dims[:4], dims[4] - 1, dims[5]]
        fused = new_op(maia.AttentionOp, operands, op.results[0].type, **attrs)
        rewriter.replace_op(op, fused)
        for _, _, concat, (_, cast), _, _ in plan:
            for dead in (concat, cast):
                if dead is not None and dead.parent is not None \
                        and all(not r.uses for r in dead.results):
                    rewriter.erase_op(dead)
    left = sorted(n for a, n in zip(block.args, names, strict=True) if a in pasts - done)
    if left:
        raise MaiacError(f"kv-cache-inplace: cache input {left[0]!r} is not read as "
                         f"Concat(past, new) by a single-query attention with a mask; "
                         f"its cache cannot be updated in place")
    return len(done) // 2


class KVCacheInPlacePass(ModulePass):
    """Decode-step attention over Concat(past, new) → an in-place cache write + attention
    over the fixed-capacity cache (needs a ``cache_position`` input)."""

    name = "kv-cache-inplace"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                rewrite_function(fn)
