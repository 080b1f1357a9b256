"""`shard`: tensor parallelism over ``chips`` chips — the tensor-level program of chip ``rank``.

Megatron-style (Shoeybi et al. 2019, §3): a matmul whose input every chip holds and whose
weight is a constant is split by output columns (*column parallel*: each chip computes
its slice of the features — attention heads, FFN columns, vocabulary); a matmul whose
input is split along its contraction axis is split by weight rows (*row parallel*: each
chip computes a partial sum) and followed by an ``all_reduce``. Elementwise ops, RoPE,
norms over unsplit axes and attention over a chip's own heads run on the slice. GQA: the
KV projections are split by KV heads when ``chips`` divides their count, else each group
of ``chips / kv_heads`` chips shares (replicates) one KV head.

The pass follows, for every value, whether chip ``rank`` holds all of it (replicated) or
chunk ``chunk`` of ``parts`` equal chunks of one axis (:class:`Split`). An op that cannot
work on a slice gets its split operands all-gathered first, so every program stays
correct; the price is communication, which the report shows. Function outputs split along
their last axis (logits) are all-gathered; outputs split along another axis (a KV cache
split by heads) stay on their chips, and so do inputs feeding them: the function's
``maia.shard`` attribute (program ``meta["shard"]``) says which slice each chip holds, and
the multi-chip runner slices and concatenates them on the host.

Run it on the fused tensor-level IR (after the ``fuse`` stage, before ``quantize``), once
per rank; maiac.driver does that for ``--chips N``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import Block, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.ir.resources import get_array, is_materializable, register_lazy, stored_shape
from maiac.ir.types import tensor_shape
from maiac.passes.shard_attention import (
    FusedQKV,
    fused_qkv_columns,
    plan_fused_qkv,
    shard_attention,
)
from maiac.passes.shard_views import (  # noqa: F401 (re-exported)
    Split,
    _indexed_shape,
    _retype,
    local_shape,
    shard_view,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import contiguous_strides

SHARD_ATTR = "maia.shard"


State = Split | None  # None: replicated (every chip holds the whole value)


# --------------------------------------------------------------------------- the pass

class Sharder:
    def __init__(self, fn: func.FuncOp, chips: int, rank: int) -> None:
        self.fn, self.chips, self.rank = fn, chips, rank
        self.block: Block = fn.body.block
        self.state: dict[SSAValue, State] = {}
        self.want: dict[Operation, int] = {}  # matmul -> parts of its column split
        self.shard_meta: dict[str, dict[str, dict[str, int]]] = {"inputs": {}, "outputs": {}}
        self.sharded_ops = 0
        self.gathered: dict[SSAValue, SSAValue] = {}
        self.gathers = 0
        self.fused_qkv: dict[Operation, FusedQKV] = {}  # attention -> its fused projection
        self.fused_mm: dict[Operation, FusedQKV] = {}   # that projection's matmul

    # -- helpers ------------------------------------------------------------------
    def st(self, v: SSAValue) -> State:
        return self.state.get(v)

    def full(self, v: SSAValue) -> tuple[int, ...]:
        """The shape of the whole value (``v`` may hold a chunk)."""
        shape = list(tensor_shape(v.type))
        s = self.st(v)
        if s is not None:
            shape[s.axis] *= s.parts
        return tuple(shape)

    def split_for(self, parts: int, axis: int = -1) -> Split:
        return Split(axis, parts, self.rank * parts // self.chips)

    def insert(self, op: Operation, before: Operation) -> Operation:
        self.block.insert_op_before(op, before)
        return op

    def gather(self, v: SSAValue, before: Operation) -> SSAValue:
        """``v`` whole on every chip (an all-gather of its split axis)."""
        s = self.st(v)
        if s is None:
            return v
        if v in self.gathered:
            return self.gathered[v]
        if s.parts != self.chips:
            raise MaiacError(f"shard: cannot all-gather a value split {s.parts} ways over "
                             f"{self.chips} chips (a KV head shared by several chips)")
        shape = tensor_shape(v.type)
        full = list(shape)
        full[s.axis] *= s.parts
        op = maia.AllGatherOp.create(
            operands=[v], result_types=[builtin.TensorType(v.type.element_type, full)],
            attributes={k: maia.to_attr(x) for k, x in {
                "op": f"all_gather:{self._label(v)}", "axis": s.axis % len(shape),
                "chips": self.chips, "rank": self.rank}.items()})
        self.insert(op, before)
        self.gathers += 1
        self.gathered[v] = op.results[0]
        return op.results[0]

    def localize(self, v: SSAValue, s: Split, before: Operation) -> SSAValue:
        """This chip's chunk ``s`` of ``v`` (replicated or already split as ``s``)."""
        cur = self.st(v)
        if cur == s:
            return v
        if cur is not None:
            v = self.gather(v, before)
        shape = tensor_shape(v.type)
        if isinstance(v, BlockArgument) and self._only_sliced(v):
            return self._shard_argument(v, s)
        st = contiguous_strides(tuple(shape))
        ax = s.axis % len(shape)
        chunk = shape[ax] // s.parts
        op = maia.ViewOp.create(
            operands=[v], result_types=[builtin.TensorType(v.type.element_type,
                                                            list(local_shape(shape, s)))],
            attributes={"op": maia.to_attr(f"shard_slice:{self._label(v)}"),
                        "offset": maia.to_attr(s.chunk * chunk * st[ax]),
                        "strides": maia.to_attr(list(st))})
        self.insert(op, before)
        self.state[op.results[0]] = s
        return op.results[0]

    def _only_sliced(self, arg: BlockArgument) -> bool:
        """An input every use of which is one concat with a split value: its chunk can
        come in from the host (a KV cache split by heads) instead of the whole tensor."""
        uses = list(arg.uses)
        return len(uses) == 1 and (isinstance(uses[0].operation, maia.ConcatOp)
                                   or isinstance(uses[0].operation, maia.CacheWriteOp)
                                   and uses[0].index == 0)

    def _shard_argument(self, arg: BlockArgument, s: Split) -> SSAValue:
        shape = tensor_shape(arg.type)
        ax = s.axis % len(shape)
        n = shape[ax] // s.parts
        name = self._arg_name(arg)
        self.shard_meta["inputs"][name] = {"axis": ax, "start": s.chunk * n,
                                           "stop": (s.chunk + 1) * n, "size": shape[ax]}
        _retype(arg, local_shape(shape, s))
        self.state[arg] = s
        return arg

    def _arg_name(self, arg: BlockArgument) -> str:
        attrs = self.fn.arg_attrs
        entry = attrs.data[arg.index] if attrs is not None else None
        name = entry.data.get("onnx.name") if isinstance(entry, builtin.DictionaryAttr) else None
        return name.data if isinstance(name, builtin.StringAttr) else f"input{arg.index}"

    def _label(self, v: SSAValue) -> str:
        owner = v.owner
        if isinstance(owner, Operation):
            return str(maia.attr(owner, "op", owner.name))
        return self._arg_name(v) if isinstance(v, BlockArgument) else "value"

    def const_of(self, v: SSAValue) -> Operation | None:
        owner = v.owner
        return owner if isinstance(owner, maia.ConstantOp) else None

    def sliced_const(self, const: Operation, index: Sequence[slice | np.ndarray], hint: str,
                     before: Operation) -> SSAValue:
        """A new constant: ``value[index]`` of ``const`` (lazy; shape-only stays shape-only)."""
        attr = const.attributes["value"]
        ttype = attr.get_type() if hasattr(attr, "get_type") else attr.type
        shape = tensor_shape(ttype)
        probe = np.empty(shape, np.bool_) if math.prod(shape) < 1 << 16 else None
        new_shape = probe[tuple(index)].shape if probe is not None else \
            _indexed_shape(shape, index)
        if isinstance(attr, builtin.DenseResourceAttr):
            handle = attr.resource_handle.data
            _, dtype = stored_shape(handle)
            idx = tuple(index)
            new_handle = register_lazy(
                lambda h=handle, i=idx: np.ascontiguousarray(get_array(h)[i]), new_shape,
                dtype, f"{handle}.{hint}", available=lambda h=handle: is_materializable(h))
            value: builtin.Attribute = builtin.DenseResourceAttr.from_params(
                new_handle, builtin.TensorType(ttype.element_type, list(new_shape)))
        else:
            from maiac.ir.resources import constant_attr, dense_value

            value = constant_attr(np.ascontiguousarray(dense_value(attr)[tuple(index)]), hint)
        op = maia.ConstantOp.create(
            result_types=[builtin.TensorType(ttype.element_type, list(new_shape))],
            attributes={"value": value, "op": maia.to_attr(f"{maia.attr(const, 'op', 'c')}.{hint}")})
        self.insert(op, before)
        return op.results[0]

    def rebuild(self, op: Operation, operands: Sequence[SSAValue], shape: Sequence[int],
                attrs: dict[str, object] | None = None, drop: Sequence[str] = ()) -> Operation:
        """``op`` again with new operands, result shape and attributes (old one erased)."""
        attributes = {k: v for k, v in op.attributes.items() if k not in drop}
        attributes.update({k: maia.to_attr(v) for k, v in (attrs or {}).items()})
        res = op.results[0]
        new = type(op).create(operands=list(operands),
                              result_types=[builtin.TensorType(res.type.element_type, list(shape))],
                              attributes=attributes)
        self.insert(new, op)
        res.replace_all_uses_with(new.results[0])
        op.detach()
        op.erase()
        return new

    def replicate(self, op: Operation) -> None:
        """Run ``op`` on whole operands (gathering split ones)."""
        for i, v in enumerate(list(op.operands)):
            if self.st(v) is not None:
                op.operands[i] = self.gather(v, op)

    # -- analysis -------------------------------------------------------------------
    def plan_heads(self) -> None:
        """Column-split parts of the q/k/v projections feeding each attention."""
        for op in self.block.ops:
            if not isinstance(op, maia.AttentionOp):
                continue
            fused = plan_fused_qkv(self, op)
            if fused is not None:  # GPT-2's c_attn: one matmul, split by heads
                mm = op.operands[0].owner
                self.fused_qkv[op], self.fused_mm[mm], self.want[mm] = fused, fused, self.chips
                continue
            b, hkv, g = maia.attr(op, "dims")[:3]
            h, c = hkv * g, self.chips
            p_kv = c if hkv % c == 0 else hkv if c % hkv == 0 else 0
            ok = h % c == 0 and p_kv > 0
            for v, p in zip(op.operands[:3], (c, p_kv, p_kv), strict=True):
                mm = self._projection(v)
                if mm is not None:
                    self.want[mm] = p if ok else 0

    def _projection(self, v: SSAValue) -> Operation | None:
        """The matmul a q/k/v operand comes from, through RoPE, reshapes and (decode)
        the concat of the cached keys with the new ones."""
        owner = v.owner
        for _ in range(8):
            if isinstance(owner, maia.RopeOp | maia.ReshapeOp | maia.ViewOp):
                owner = owner.operands[0].owner
            elif isinstance(owner, maia.ConcatOp) and len(owner.operands) == 2 \
                    or isinstance(owner, maia.CacheWriteOp):
                owner = owner.operands[1].owner  # the new keys/values
            else:
                break
        return owner if isinstance(owner, maia.MatMulOp) else None

    # -- driver ---------------------------------------------------------------------
    def run(self) -> None:
        if self.chips == 1:
            return
        self.plan_heads()
        ret = self.block.last_op
        assert isinstance(ret, func.ReturnOp)
        for op in list(self.block.ops):
            if op is ret:
                break
            handler = getattr(self, f"on_{type(op).__name__}", None)
            if handler is None:
                self.replicate(op)
            else:
                handler(op)
        self.finish(ret)

    def finish(self, ret: func.ReturnOp) -> None:
        names = []
        attrs = self.fn.res_attrs
        for i in range(len(ret.operands)):
            entry = attrs.data[i] if attrs is not None and i < len(attrs.data) else None
            name = entry.data.get("onnx.name") if isinstance(entry, builtin.DictionaryAttr) else None
            names.append(name.data if isinstance(name, builtin.StringAttr) else f"output{i}")
        for i, v in enumerate(list(ret.operands)):
            s = self.st(v)
            if s is None:
                continue
            shape = tensor_shape(v.type)
            ax = s.axis % len(shape)
            if ax == len(shape) - 1:
                ret.operands[i] = self.gather(v, ret)
            else:
                n = shape[ax]
                self.shard_meta["outputs"][names[i]] = {"axis": ax, "start": s.chunk * n,
                                                        "stop": (s.chunk + 1) * n,
                                                        "size": n * s.parts}
        self.fn.function_type = builtin.FunctionType.from_lists(
            [a.type for a in self.block.args], [v.type for v in ret.operands])
        self.fn.attributes[SHARD_ATTR] = builtin.StringAttr(json.dumps(
            {"chips": self.chips, "rank": self.rank, **self.shard_meta,
             "sharded_ops": self.sharded_ops, "gathers": self.gathers}))

    # -- ops ------------------------------------------------------------------------
    def on_ConstantOp(self, op: Operation) -> None:
        return

    def on_CacheWriteOp(self, op: Operation) -> None:
        """The in-place KV cache (passes/kv_cache_inplace.py): the chip writes its heads'
        new rows into its heads of the cache (an input split the same way)."""
        cache, new, pos = op.operands
        s = self.st(new)
        if s is None or self.st(pos) is not None or s.axis % 4 != 1 or self.st(cache) not in (None, s):
            self.replicate(op)
            return
        local = self.localize(cache, s, op)
        written = self.rebuild(op, [local, new, pos], local_shape(tensor_shape(op.results[0].type), s))
        self.state[written.results[0]] = s
        self.sharded_ops += 1

    def on_SendOp(self, op: Operation) -> None:
        """A pipeline stage's activation goes whole to the same rank of the next stage."""
        self.replicate(op)
        op.attributes.update({"tp": maia.to_attr(self.chips), "tp_rank": maia.to_attr(self.rank)})

    on_RecvOp = on_SendOp

    def on_UnaryOp(self, op: Operation) -> None:
        s = self.st(op.operands[0])
        if s is None:
            return
        new = self.rebuild(op, list(op.operands), local_shape(tensor_shape(op.results[0].type), s))
        self.state[new.results[0]] = s

    def elementwise(self, op: Operation) -> None:
        """Split operands must agree; whole ones broadcast along the split axis or are
        sliced to this chip's chunk."""
        splits = {self.st(v) for v in op.operands} - {None}
        if not splits:
            return
        out_shape = tensor_shape(op.results[0].type)
        if len(splits) > 1:
            self.replicate(op)
            return
        s = splits.pop()  # axes count from the end: the same for broadcast operands
        operands = []
        for v in op.operands:
            shape = tensor_shape(v.type)
            if self.st(v) is not None or len(shape) < -s.axis or shape[s.axis] == 1:
                operands.append(v)
            else:
                operands.append(self.localize(v, s, op))
        new = self.rebuild(op, operands, local_shape(out_shape, s))
        self.state[new.results[0]] = s
        self.sharded_ops += 1

    on_BinaryOp = elementwise
    on_WhereOp = elementwise

    def rowwise(self, op: Operation) -> None:
        """Norms, softmax, reductions act on the last axis: fine unless that is split."""
        s = self.st(op.operands[0])
        if s is None:
            self.replicate(op)
            return
        if s.axis == -1 or any(self.st(v) is not None for v in op.operands[1:]):
            self.replicate(op)
            return
        new = self.rebuild(op, list(op.operands), local_shape(tensor_shape(op.results[0].type), s))
        self.state[new.results[0]] = s
        self.sharded_ops += 1

    on_NormOp = rowwise
    on_SoftmaxOp = rowwise
    on_ReduceOp = rowwise

    def on_MatMulOp(self, op: Operation) -> None:
        a, b = op.operands[0], op.operands[1]
        residual_fn = maia.attr(op, "residual")
        glu = maia.attr(op, "glu")
        n_extra = len(op.operands) - 2
        bias = op.operands[2] if n_extra > (1 if residual_fn else 0) else None
        resid = op.operands[-1] if residual_fn else None
        wconst = self.const_of(b)
        sa = self.st(a)
        out_shape = tensor_shape(op.results[0].type)
        if wconst is not None and len(tensor_shape(b.type)) == 2 and self.st(b) is None:
            k, n_cols = tensor_shape(b.type)
            a_rank = len(tensor_shape(a.type))
            if sa is None:
                parts = self.want.get(op, self.chips)
                width = n_cols // 2 if glu else n_cols
                if parts > 1 and width % parts == 0 and (bias is None or self.st(bias) is None):
                    self.column_parallel(op, parts, width)
                    return
                if any(self.st(v) is not None for v in op.operands):
                    self.replicate(op)
                return
            if sa.axis % a_rank == a_rank - 1 and sa.parts == self.chips and not glu \
                    and maia.attr(op, "act") is None and residual_fn in (None, "add"):
                self.row_parallel(op, sa, bias, resid)
                return
            if sa.axis % a_rank < a_rank - 2 or (sa.axis % a_rank == a_rank - 2):
                # rows (or batch) split: each chip multiplies its own rows
                s = Split(sa.axis % a_rank - a_rank, sa.parts, sa.chunk)
                operands = [a, b] + [self.localize(v, s, op) if len(tensor_shape(v.type)) >= -s.axis
                                     and tensor_shape(v.type)[s.axis] != 1 else v
                                     for v in op.operands[2:]]
                new = self.rebuild(op, operands, local_shape(out_shape, s))
                self.state[new.results[0]] = s
                self.sharded_ops += 1
                return
        self.replicate(op)

    def column_parallel(self, op: Operation, parts: int, width: int) -> None:
        s = self.split_for(parts)
        lo, hi = s.chunk * width // parts, (s.chunk + 1) * width // parts
        b = op.operands[1]
        wconst = self.const_of(b)
        assert wconst is not None
        fused = self.fused_mm.get(op)
        cols: slice | np.ndarray = slice(lo, hi)
        if fused is not None:  # this chip's q heads | k heads | v heads
            cols = fused_qkv_columns(fused, parts, s.chunk)
        elif maia.attr(op, "glu"):
            cols = np.r_[lo:hi, width + lo:width + hi]
        w = self.sliced_const(wconst, (slice(None), cols), f"cols{s.chunk}of{parts}", op)
        bias_cols = cols if fused is not None else slice(lo, hi)
        operands = [op.operands[0], w]
        for v in op.operands[2:]:
            shape = tensor_shape(v.type)
            c = self.const_of(v)
            if c is not None and len(shape) == 1 and shape[0] == width:
                operands.append(self.sliced_const(c, (bias_cols,), f"cols{s.chunk}of{parts}", op))
            elif shape and shape[-1] == 1:
                operands.append(v)
            else:
                operands.append(self.localize(v, s, op))
        new = self.rebuild(op, operands, local_shape(tensor_shape(op.results[0].type), s))
        self.state[new.results[0]] = s
        self.sharded_ops += 1

    def row_parallel(self, op: Operation, sa: Split, bias: SSAValue | None,
                     resid: SSAValue | None) -> None:
        b = op.operands[1]
        wconst = self.const_of(b)
        assert wconst is not None
        k = tensor_shape(b.type)[0]
        lo, hi = sa.chunk * k // sa.parts, (sa.chunk + 1) * k // sa.parts
        w = self.sliced_const(wconst, (slice(lo, hi), slice(None)), f"rows{sa.chunk}of{sa.parts}", op)
        operands = [op.operands[0], w]
        drop: list[str] = []
        # bias and residual are added once: on rank 0, before the sum over chips
        for v in (bias, resid):
            if v is not None and self.st(v) is not None:
                v = self.gather(v, op)
            if v is not None and self.rank == 0:
                operands.append(v)
        if resid is not None and self.rank != 0:
            drop.append("residual")
        new = self.rebuild(op, operands, tensor_shape(op.results[0].type), drop=drop)
        partial = new.results[0]
        reduce = maia.AllReduceOp.create(
            operands=[partial], result_types=[partial.type],
            attributes={k: maia.to_attr(x) for k, x in {
                "op": f"all_reduce:{maia.attr(new, 'op', 'matmul')}", "chips": self.chips,
                "rank": self.rank}.items()})
        self.block.insert_op_after(reduce, new)
        for use in list(partial.uses):
            if use.operation is not reduce:
                use.operation.operands[use.index] = reduce.results[0]
        self.sharded_ops += 1

    def on_ReshapeOp(self, op: Operation) -> None:
        v = op.operands[0]
        s = self.st(v)
        if s is None:
            return
        src, out = self.full(v), tensor_shape(op.results[0].type)
        a = s.axis % len(src)
        # the split axis must survive the reshape: same elements before it and from it on
        inner = math.prod(src[a:])
        for bx in range(len(out)):
            if math.prod(out[:bx]) == math.prod(src[:a]) and math.prod(out[bx:]) == inner \
                    and out[bx] % s.parts == 0 and (out[bx] // s.parts) * math.prod(out[bx + 1:]) \
                    == (src[a] // s.parts) * math.prod(src[a + 1:]):
                ns = Split(bx - len(out), s.parts, s.chunk)
                new = self.rebuild(op, [v], local_shape(out, ns))
                self.state[new.results[0]] = ns
                return
        self.replicate(op)

    def on_ViewOp(self, op: Operation) -> None:
        v = op.operands[0]
        s = self.st(v)
        if s is None:
            return
        src, out = self.full(v), tensor_shape(op.results[0].type)
        for bx in range(len(out)):
            got = shard_view(src, s.axis, s.parts, maia.attr(op, "offset", 0),
                             maia.attr(op, "strides"), out, bx)
            if got is not None:
                ns = Split(bx - len(out), s.parts, s.chunk)
                new = self.rebuild(op, [v], local_shape(out, ns),
                                   {"offset": got[0], "strides": got[1]})
                self.state[new.results[0]] = ns
                self.sharded_ops += 1
                return
        self.replicate(op)

    def on_RopeOp(self, op: Operation) -> None:
        x = op.operands[0]
        s = self.st(x)
        if s is None or any(self.st(v) is not None for v in op.operands[1:]):
            self.replicate(op)
            return
        src, out = self.full(x), tensor_shape(op.results[0].type)
        offset, *strides = maia.attr(op, "x_view")
        for bx in range(len(out) - 1):  # never the rotated (last) axis
            got = shard_view(src, s.axis, s.parts, offset, strides, out, bx)
            if got is None:
                continue
            ns = Split(bx - len(out), s.parts, s.chunk)
            if any(len(tensor_shape(t.type)) >= -ns.axis and tensor_shape(t.type)[ns.axis] != 1
                   for t in op.operands[1:]):
                continue
            new = self.rebuild(op, list(op.operands), local_shape(out, ns),
                               {"x_view": [got[0], *got[1]]})
            self.state[new.results[0]] = ns
            self.sharded_ops += 1
            return
        self.replicate(op)

    def on_ConcatOp(self, op: Operation) -> None:
        splits = {self.st(v) for v in op.operands} - {None}
        if not splits:
            return
        out = tensor_shape(op.results[0].type)
        axis = maia.attr(op, "axis") % len(out)
        s = next(iter(splits))
        ax = s.axis % len(out)
        if len(splits) > 1 or ax == axis:
            self.replicate(op)
            return
        ns = Split(ax - len(out), s.parts, s.chunk)
        operands = [v if self.st(v) == ns else self.localize(v, ns, op) for v in op.operands]
        new = self.rebuild(op, operands, local_shape(out, ns))
        self.state[new.results[0]] = ns
        self.sharded_ops += 1

    def on_AttentionOp(self, op: Operation) -> None:
        if not self.attention(op):
            self.replicate(op)

    def attention(self, op: Operation) -> bool:
        """Each chip attends with its own query heads and the KV heads they read."""
        return shard_attention(self, op)


class ShardPass(ModulePass):
    """Tensor parallelism: the program of chip ``rank`` of ``chips`` (Megatron-style)."""

    name = "shard"

    chips: int = 1
    rank: int = 0

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        if self.chips < 1 or not 0 <= self.rank < self.chips:
            raise MaiacError(f"shard: rank {self.rank} is not in a group of {self.chips} chips")
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                Sharder(fn, self.chips, self.rank).run()
