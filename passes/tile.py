"""`tile`: tensor-level `maia` ops → buffers and per-op kernels of SPMD instructions.

Every tensor value gets a ``maia.buffer`` (inputs, outputs, constants, activations;
``maia.reshape`` results alias their operand's buffer). Every other tensor op becomes a
``maia.kernel`` built by the tiler of its family (passes/tiling/). Afterwards the
function has no tensor values left: its body is buffers, kernels and a bare return.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.ir.resources import constant_attr
from maiac.ir.types import tensor_dtype, tensor_shape
from maiac.passes.tiling import decode_attention, narrow_act, norm_quant
from maiac.passes.tiling.attention import tile_attention
from maiac.passes.tiling.cache_write import tile_cache_write
from maiac.passes.tiling.collective import tile_collective, tile_p2p
from maiac.passes.tiling.common import Budget, Kernel, Tensor, align, broadcast_strides
from maiac.passes.tiling.elementwise import tile_elementwise
from maiac.passes.tiling.layout import tile_concat, tile_copy, tile_gather, tile_view
from maiac.passes.tiling.matmul import MatmulQuant, RopeEpilogue, tile_matmul, ttu_speedup
from maiac.runtime.errors import MaiacError
from maiac.runtime.target import Target, get_target

TARGET_ATTR = "maia.target"


def module_target(module: builtin.ModuleOp) -> Target:
    """The target the driver attached to the module (``maia.target``), else maia200."""
    attr = module.attributes.get(TARGET_ATTR)
    if isinstance(attr, builtin.StringAttr):
        return Target.from_json(json.loads(attr.data))
    return get_target("maia200")


def budget_of(target: Target) -> Budget:
    return Budget(
        n_tiles=target.n_tiles,
        tsram_bytes=target.tsram_bytes,
        tile_flops=target.ttu_flops["f32"] / target.n_tiles,
        tile_bw=target.hbm_sustained_bw / target.n_tiles,
        csram_bw=target.csram_bw,
        csram_bytes=target.n_clusters * target.csram_bytes,
        tile_noc_bw=target.noc_bw / target.n_tiles,
        instr_overhead_s=target.instr_latency_s,
        dma_latency_s=target.dma_latency_s,
        tile_vec=target.tvp_flops / target.n_tiles,
        fmt_speedup=tuple((f, v / target.ttu_flops["f32"]) for f, v in target.ttu_flops.items()),
        native_m=target.ttu_block_m,
        native_n=target.ttu_block_n,
        native_ks=tuple((f, target.ttu_block_k(f)) for f in target.ttu_macs),
    )


def operand_format(fmt: str, a: Tensor, b: Tensor) -> str:
    """The TTU format of a matmul: the quantize pass's, else that of narrow operands both
    stored in one TTU type (bf16 x bf16 runs at the bf16 peak, f8 x f8 at fp8's)."""
    if fmt != "f32" or a.dtype != b.dtype:
        return fmt
    if a.dtype == "bf16":
        return "bf16"
    return "fp8" if a.dtype.startswith("f8") else fmt


def io_names(attrs: builtin.ArrayAttr | None, count: int, prefix: str) -> list[str]:
    """The ONNX names the importer left in the function's arg/res attributes."""
    names = []
    for i in range(count):
        entry = attrs.data[i] if attrs is not None and i < len(attrs.data) else None
        name = entry.data.get("onnx.name") if isinstance(entry, builtin.DictionaryAttr) else None
        names.append(name.data if isinstance(name, builtin.StringAttr) else f"{prefix}{i}")
    return names


def activation_quant(op: Operation) -> MatmulQuant | None:
    """The activation quantization the `quantize` pass gave matmul ``op`` (MX/NVFP4
    blocks, or FP8 with its static scale), or None."""
    if not isinstance(op, maia.MatMulOp):
        return None
    q = MatmulQuant(a_fmt=maia.attr(op, "a_fmt", ""), a_scale=maia.attr(op, "a_scale"),
                    a_tensor_scale=maia.attr(op, "a_tensor_scale"),
                    scale_mode=maia.attr(op, "scale_mode", "floor"))
    af = q.fmt("a")
    if af is None or (not af.is_blocked and q.a_scale is None):
        return None
    return q


# ASSUMED: plan-memory first-fits activations into CSRAM by liveness; one that takes at
# most a quarter of it nearly always finds room beside the others live with it (prefill
# of an 8B model: the 32 MiB hidden states, their norm and the residual), a bigger one
# (the 112 MiB FFN activation) often does not. Only the tilers' cost models use this.
CSRAM_SHARE = 0.25
# RoPE in the q/k projections' epilogue (`FunctionTiler._rope_epilogue`); False: the rope
# op runs as a kernel of its own (tests compare the two)
ROPE_EPILOGUE = True


@dataclass
class FunctionTiler:
    budget: Budget
    full_budget: Budget | None = None  # fallback when ``budget`` is a share of TSRAM
    values: dict[SSAValue, Tensor] = field(default_factory=dict)
    buffers: list[Operation] = field(default_factory=list)
    kernels: list[Operation] = field(default_factory=list)
    buffer_kind: dict[str, str] = field(default_factory=dict)
    output_buffers: list[str] = field(default_factory=list)
    counter: int = 0
    # matmul results stored in their consumer's activation format (`narrow_act`): buffer
    # -> (the consumer's activation quantization, the narrow tensor)
    narrow_results: dict[str, tuple[MatmulQuant, Tensor]] = field(default_factory=dict)
    # fp32 activations quantized by a kernel of their own: (buffer, offset, shape, format)
    # -> the narrow tensor
    quantized_acts: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    # matmuls whose one reader, a ``maia.rope``, runs in their epilogue (the rope op
    # then has no kernel of its own): matmul -> the epilogue
    rope_epilogues: dict[Operation, RopeEpilogue] = field(default_factory=dict)

    def new_buffer(self, name: str, ssa: SSAValue, kind: str, **extra: object) -> Tensor:
        dtype, shape = tensor_dtype(ssa.type), tensor_shape(ssa.type)
        tensor = Tensor(name, dtype, shape)
        self.buffer_kind[name] = kind
        self.buffers.append(maia.instruction(
            maia.BufferOp, sym=name, level="hbm", nbytes=align(max(tensor.nbytes, 1)), kind=kind,
            dtype=dtype, shape=list(shape), **extra))
        self.values[ssa] = tensor
        return tensor

    def _narrow_consumer(self, op: Operation) -> MatmulQuant | None:
        """The activation quantization of the one quantized matmul that reads ``op``'s
        fp32 result as its ``a``, when ``op`` is a matmul that can store it in that format
        (`narrow_act`; not in the naive baseline), else None."""
        if not isinstance(op, maia.MatMulOp) or self.budget.fixed_block:
            return None
        result = op.results[0]
        uses = list(result.uses)
        if len(uses) != 1 or uses[0].index != 0 or tensor_dtype(result.type) != "f32":
            return None
        q = activation_quant(uses[0].operation)
        if q is None or tensor_shape(result.type)[-1] % narrow_act.column_granule(q):
            return None
        return q

    def _narrow_activation(self, op: Operation, ins: list[Tensor], label: str
                           ) -> list[Tensor]:
        """``ins`` with a quantized matmul's large fp32 activation replaced by its codes,
        quantized by a kernel of its own (`narrow_act.tile_quantize`, appended before the
        matmul's; shared by every matmul reading the same tensor in the same format):
        each row block is then quantized once, not once per column block of the result,
        and the K steps stream 1/4-1/8 of the bytes. Activations of fewer rows than one
        native block per tile (decode) keep the in-loop quantize (the extra kernel's
        fixed costs would outweigh it), and so do matmuls bound by storing their result
        (an LM head's fp32 logits: shorter K steps gain nothing there)."""
        q = self._quantized_activation(op, ins)
        if q is None:
            return ins
        a = ins[0]
        key = (a.buf, a.off, tuple(a.shape), q)
        narrow = self.quantized_acts.get(key)
        if narrow is None:
            name = f"{a.buf}@{a.off}.{q.a_fmt}"
            shape, dtype = narrow_act.narrow_shape(q, a.shape), narrow_act.narrow_dtype(q)
            kernel = Kernel(op=label, kind="matmul", uid=f"k{self.counter}.quantize")
            try:
                narrow_act.tile_quantize(kernel, a, Tensor(name, dtype, shape), q, self.budget)
            except MaiacError:  # rows too long for its blocks: the in-loop quantize then
                return ins
            narrow = self.act_buffer(name, shape, dtype)
            self.kernels.append(kernel.build())
            self.quantized_acts[key] = narrow
        return [narrow, *ins[1:]]

    def _quantized_activation(self, op: Operation, ins: list[Tensor]) -> MatmulQuant | None:
        """The activation format matmul ``op`` reads its fp32 ``a`` (``ins[0]``) in from a
        narrow tensor quantized once (`_narrow_activation`), or None: it quantizes its
        own blocks."""
        q = activation_quant(op)
        a = ins[0]
        if q is None or a.dtype != "f32" or self.budget.fixed_block \
                or self._store_bound(op, ins):
            return None
        rows = math.prod(a.shape[:-1])
        if (rows < self.budget.n_tiles * self.budget.native_m
                or a.shape[-1] % narrow_act.column_granule(q)):
            return None
        return q

    def _norm_to_narrow(self, op: Operation, ins: list[Tensor], label: str) -> bool:
        """Tile a norm whose result quantized matmuls read (their ``a``, all in one
        activation format, each quantizing it once: `_quantized_activation`) as one kernel
        storing the codes (`norm_quant`); the fp32 rows too when something else reads
        them. False (nothing done): the norm is tiled as usual."""
        if not isinstance(op, maia.NormOp) or self.budget.fixed_block \
                or not norm_quant.applies(ins):
            return False
        result = op.results[0]
        shape = tensor_shape(result.type)
        if tensor_dtype(result.type) != "f32":
            return False
        fp32 = Tensor("", "f32", shape)
        formats, others = set(), False
        for use in result.uses:
            user = use.operation
            if use.index != 0 or not isinstance(user, maia.MatMulOp):
                others = True
                continue
            # the weights may not have buffers yet: their types say all it needs
            q = self._quantized_activation(user, [fp32, *(
                Tensor("", tensor_dtype(v.type), tensor_shape(v.type))
                for v in user.operands[1:])])
            if q is None:
                others = True
            else:
                formats.add(q)
        if len(formats) != 1:
            return False
        (q,) = formats
        name = f"t{self.counter}:{label}"
        narrow = Tensor(f"{name}.{q.a_fmt}", narrow_act.narrow_dtype(q),
                        narrow_act.narrow_shape(q, shape))
        out = Tensor(name, "f32", shape)
        kernel = Kernel(op=label, kind=op.name.removeprefix("maia."), uid=f"k{self.counter}")
        try:
            norm_quant.tile_norm_quantize(kernel, maia.attr(op, "fn"), ins,
                                          {"eps": maia.attr(op, "eps")}, narrow, q,
                                          self.budget, out if others else None)
        except MaiacError:  # rows too long for its blocks: the norm, then the quantize
            return False
        if others:
            out = self.new_buffer(name, result, "act")
        else:  # no buffer: only the matmuls read it, as the codes
            self.values[result] = out
        self.act_buffer(narrow.buf, narrow.shape, narrow.dtype)
        self.quantized_acts[(out.buf, out.off, tuple(out.shape), q)] = narrow
        self.kernels.append(kernel.build())
        return True

    def _rope_epilogue(self, op: Operation) -> RopeEpilogue | None:
        """The RoPE epilogue of matmul ``op`` (`RopeEpilogue`; not in the naive baseline),
        when its fp32 ``[B, S, H * D]`` result (a plain product or with a bias) is read
        only by a ``maia.rope`` that reads it as ``[B, H, S, D]`` heads (the q/k
        projections) with cos/sin tables the same for every head and already computed;
        else None. The rope's result buffer is made here."""
        if not ROPE_EPILOGUE or not isinstance(op, maia.MatMulOp) or self.budget.fixed_block \
                or maia.attr(op, "residual") or maia.attr(op, "glu"):
            return None
        result = op.results[0]
        uses = list(result.uses)
        if len(uses) != 1 or uses[0].index != 0 or tensor_dtype(result.type) != "f32":
            return None
        rope = uses[0].operation
        if not isinstance(rope, maia.RopeOp) or tensor_dtype(rope.results[0].type) != "f32":
            return None
        shape, x_shape = tensor_shape(rope.results[0].type), tensor_shape(result.type)
        if len(shape) != 4 or len(tensor_shape(op.operands[1].type)) != 2:
            return None
        b, h, s, d = shape
        offset, *strides = maia.attr(rope, "x_view")
        if x_shape != (b, s, h * d) or offset != 0 or tuple(strides[1:]) != (d, h * d, 1) \
                or strides[0] not in (s * h * d, 0 if b == 1 else -1):
            return None
        tables = [self.values.get(v) for v in rope.operands[1:]]
        if any(t is None or t.dtype != "f32" for t in tables):
            return None
        if any(broadcast_strides(t.shape, shape)[1] for t in tables):
            return None  # a table per head
        out = self.new_buffer(f"t{self.counter}:{maia.attr(rope, 'op', 'rope')}",
                              rope.results[0], "act")
        return RopeEpilogue(tables[0], tables[1], out)

    def _store_bound(self, op: Operation, ins: list[Tensor]) -> bool:
        """Whether storing matmul ``op``'s result (as it is stored: fp32 or narrow; in HBM,
        too big for CSRAM) takes longer at the sustained HBM rate than its product takes
        the TTU at its format's peak."""
        result = op.results[0]
        shape = tensor_shape(result.type)
        out = Tensor("", tensor_dtype(result.type), shape)
        consumer = self._narrow_consumer(op)
        stored = out if consumer is None else Tensor(
            "", narrow_act.narrow_dtype(consumer), narrow_act.narrow_shape(consumer, shape))
        if self.budget.csram_bytes and stored.nbytes <= CSRAM_SHARE * self.budget.csram_bytes:
            return False
        halves = 2 if maia.attr(op, "glu") else 1
        flops = 2 * out.size * ins[0].shape[-1] * halves
        fmt = operand_format(maia.attr(op, "fmt", "f32"), ins[0], ins[1])
        compute = flops / (self.budget.n_tiles * self.budget.tile_flops
                           * ttu_speedup(fmt, self.budget))
        return stored.nbytes / (self.budget.n_tiles * self.budget.tile_bw) > compute

    def narrow_buffer(self, name: str, ssa: SSAValue, q: MatmulQuant) -> Tensor:
        """The buffer of ``ssa``'s value in ``q``'s activation format; returns its fp32
        view for the producer's tiler (the consumer gets the narrow tensor)."""
        shape = tensor_shape(ssa.type)
        narrow = self.act_buffer(name, narrow_act.narrow_shape(q, shape),
                                 narrow_act.narrow_dtype(q))
        self.values[ssa] = narrow
        self.narrow_results[name] = (q, narrow)
        return Tensor(name, "f32", shape)

    def likely_on_chip(self, tensor: Tensor) -> bool:
        """Whether plan-memory will likely put ``tensor`` in CSRAM: an activation of at
        most ``CSRAM_SHARE`` of it (see there)."""
        return (self.buffer_kind.get(tensor.buf) == "act"
                and tensor.nbytes <= CSRAM_SHARE * self.budget.csram_bytes)

    def act_buffer(self, name: str, shape: tuple[int, ...], dtype: str = "f32") -> Tensor:
        """An activation buffer of the tiler's own (no tensor value: e.g. partial results
        one kernel's instructions pass between its phases)."""
        tensor = Tensor(name, dtype, shape)
        self.buffer_kind[name] = "act"
        self.buffers.append(maia.instruction(
            maia.BufferOp, sym=name, level="hbm", nbytes=align(max(tensor.nbytes, 1)),
            kind="act", dtype=dtype, shape=list(shape)))
        return tensor

    def tile_op(self, op: Operation) -> None:
        label = maia.attr(op, "op", op.name)
        self.counter += 1
        if isinstance(op, maia.ConstantOp):
            if not op.results[0].uses:
                return  # a leftover shape constant: no buffer, no bytes in the program
            self.new_buffer(f"const{self.counter}:{label}", op.results[0], "const",
                            value=op.attributes["value"])
            return
        if isinstance(op, maia.RopeOp) and op.results[0] in self.values:
            return  # in its producer's epilogue (`_rope_epilogue`)
        ins = [self.values[v] for v in op.operands]
        if isinstance(op, maia.ReshapeOp):
            src = ins[0]
            self.values[op.results[0]] = Tensor(src.buf, src.dtype,
                                                tensor_shape(op.results[0].type), src.off)
            return
        if isinstance(op, maia.SendOp):  # the result is the operand (never read)
            self.values[op.results[0]] = ins[0]
            kernel = Kernel(op=label, kind="send", uid=f"k{self.counter}")
            tile_p2p(kernel, op, ins[0])
            self.kernels.append(kernel.build())
            return
        if any(0 in t.shape for t in ins) or 0 in tensor_shape(op.results[0].type):
            raise MaiacError(f"op '{label}': zero-size tensors are not supported")
        kind = op.name.removeprefix("maia.")
        if isinstance(op, maia.CacheWriteOp):  # in place: the result is the cache's buffer
            self.values[op.results[0]] = ins[0]
            kernel = Kernel(op=label, kind=kind, uid=f"k{self.counter}")
            tile_cache_write(kernel, ins[0], ins[1], ins[2], self.budget)
            self.kernels.append(kernel.build())
            return
        if isinstance(op, maia.MatMulOp):
            ins = self._narrow_activation(op, ins, label)
        elif self._norm_to_narrow(op, ins, label):
            return
        consumer = self._narrow_consumer(op)
        rope = self._rope_epilogue(op) if consumer is None else None
        if consumer is not None:
            out = self.narrow_buffer(f"t{self.counter}:{label}", op.results[0], consumer)
        elif rope is not None:  # no buffer: the rope's result is what it stores
            self.rope_epilogues[op] = rope
            out = Tensor("", "f32", tensor_shape(op.results[0].type))
            self.values[op.results[0]] = out
        else:
            out = self.new_buffer(f"t{self.counter}:{label}", op.results[0], "act")
        kernel = Kernel(op=label, kind=kind, uid=f"k{self.counter}")
        fn = maia.attr(op, "fn")
        try:
            try:
                extra = self._fill(kernel, op, fn, ins, out)
            except MaiacError:
                if self.full_budget is None:
                    raise
                # too big for the share of TSRAM kept for double buffering and
                # prefetch: tile it with all of TSRAM (it then runs unbuffered)
                kernel = Kernel(op=label, kind=kind, uid=f"k{self.counter}")
                budget, self.budget = self.budget, self.full_budget
                try:
                    extra = self._fill(kernel, op, fn, ins, out)
                finally:
                    self.budget = budget
        except MaiacError as err:
            raise MaiacError(f"{err} [op '{label}', {kind}]") from None
        self.kernels.append(kernel.build())
        self.kernels.extend(k.build() for k in extra)

    def positions(self, n: int) -> Tensor:
        """A constant f32 ``arange(n)`` (row/column positions for generated causal masks),
        one buffer per length per function."""
        name = f"const:positions{n}"
        if name not in self.buffer_kind:
            self.buffer_kind[name] = "const"
            value = constant_attr(np.arange(n, dtype=np.float32), f"positions{n}")
            self.buffers.append(maia.instruction(
                maia.BufferOp, sym=name, level="hbm", kind="const", dtype="f32",
                nbytes=align(4 * n), shape=[n], value=value))
        return Tensor(name, "f32", (n,))

    def _fill(self, kernel: Kernel, op: Operation, fn: str | None, ins: list[Tensor],
              out: Tensor) -> list[Kernel]:
        """Tile ``op`` into ``kernel``; returns further kernels to run after it."""
        if isinstance(op, maia.MatMulOp):
            rope = self.rope_epilogues.get(op)
            residual_fn = maia.attr(op, "residual")
            residual = ins[-1] if residual_fn else None
            bias = ins[2] if len(ins) > (3 if residual_fn else 2) else None
            return tile_matmul(kernel, ins[0], ins[1], out, self.budget, bias=bias,
                               act=maia.attr(op, "act"),
                               fmt=operand_format(maia.attr(op, "fmt", "f32"), ins[0], ins[1]),
                               residual=residual, residual_fn=residual_fn or "add",
                               quant=self._matmul_quant(op), glu=maia.attr(op, "glu"),
                               on_chip=self.likely_on_chip,
                               out_quant=self.narrow_results.get(out.buf), rope=rope)
        elif isinstance(op, maia.AttentionOp) and not self.budget.fixed_block and \
                decode_attention.applies(maia.attr(op, "dims"), len(ins),
                                         bool(maia.attr(op, "causal", False))):
            views = {name: maia.attr(op, f"{name}_view") for name in ("q", "k", "v", "mask")}
            decode_attention.tile_decode_attention(
                kernel, ins[0], ins[1], ins[2], ins[3] if len(ins) > 3 else None, out,
                self.budget, maia.attr(op, "dims"), views, maia.attr(op, "scale", 1.0),
                partial=lambda name, shape: self.act_buffer(f"{kernel.uid}/{name}", shape),
                out_view=maia.attr(op, "out_view"),
                zero_empty_rows=maia.attr(op, "empty_rows", "nan") == "zero",
                fmt=maia.attr(op, "fmt", "f32"))
        elif isinstance(op, maia.AttentionOp):
            views = {name: maia.attr(op, f"{name}_view") for name in ("q", "k", "v", "mask")}
            causal = bool(maia.attr(op, "causal", False)) and len(ins) == 3
            return tile_attention(
                kernel, ins[0], ins[1], ins[2], ins[3] if len(ins) > 3 else None, out,
                self.budget, maia.attr(op, "dims"), views, maia.attr(op, "scale", 1.0),
                causal=causal, positions=self.positions(maia.attr(op, "dims")[4])
                if causal else None, out_view=maia.attr(op, "out_view"),
                fmt=maia.attr(op, "fmt", "f32"),
                zero_empty_rows=maia.attr(op, "empty_rows", "nan") == "zero")
        elif isinstance(op, maia.UnaryOp | maia.BinaryOp):
            params = {"fmod": 1} if maia.attr(op, "fmod") else None
            if maia.attr(op, "params"):  # e.g. isinf's detect_positive/negative
                params = {**(params or {}), **maia.attr(op, "params")}
            tile_elementwise(kernel, fn, ins, out, self.budget, params,
                             on_chip=self.likely_on_chip)
        elif isinstance(op, maia.RowOp):
            tile_elementwise(kernel, fn, ins, out, self.budget, maia.attr(op, "params"),
                             row=True, on_chip=self.likely_on_chip)
        elif isinstance(op, maia.WhereOp):
            tile_elementwise(kernel, "where", ins, out, self.budget,
                             on_chip=self.likely_on_chip)
        elif isinstance(op, maia.ReduceOp | maia.SoftmaxOp):
            tile_elementwise(kernel, fn or "softmax", ins, out, self.budget, row=True,
                             on_chip=self.likely_on_chip)
        elif isinstance(op, maia.NormOp):
            tile_elementwise(kernel, fn, ins, out, self.budget, {"eps": maia.attr(op, "eps")},
                             row=True, on_chip=self.likely_on_chip)
        elif isinstance(op, maia.RopeOp):
            offset, *strides = maia.attr(op, "x_view")
            tile_elementwise(kernel, "rope", ins, out, self.budget, row=True,
                             views={0: (offset, strides)}, on_chip=self.likely_on_chip)
        elif isinstance(op, maia.GatherOp):
            tile_gather(kernel, ins[0], ins[1], out, self.budget)
        elif isinstance(op, maia.ViewOp):
            tile_view(kernel, ins[0], out, maia.attr(op, "offset", 0), maia.attr(op, "strides"))
        elif isinstance(op, maia.ConcatOp):
            tile_concat(kernel, ins, out, maia.attr(op, "axis"))
        elif isinstance(op, maia.AllReduceOp | maia.AllGatherOp):
            tile_collective(kernel, op, ins[0], out)
        elif isinstance(op, maia.RecvOp):
            tile_p2p(kernel, op, out)
        else:
            raise MaiacError(f"no tiler for {op.name}")
        return []

    def _matmul_quant(self, op: Operation) -> MatmulQuant | None:
        """The quantized operands the `quantize` pass recorded on a matmul (or None)."""
        if "w_fmt" not in op.attributes and "a_fmt" not in op.attributes:
            return None
        scales = None
        if "w_scales" in op.attributes:
            attr = op.attributes["w_scales"]
            ttype = attr.get_type() if hasattr(attr, "get_type") else attr.type
            dtype, shape = tensor_dtype(ttype), tensor_shape(ttype)
            name = maia.attr(op, "w_scales_buffer")  # set when tiled once already (retry)
            if name is None:
                self.counter += 1
                name = f"const{self.counter}:{maia.attr(op, 'op', 'matmul')}.w_scales"
                op.attributes["w_scales_buffer"] = maia.to_attr(name)
                self.buffer_kind[name] = "const"
                self.buffers.append(maia.instruction(
                    maia.BufferOp, sym=name, level="hbm", kind="const", dtype=dtype,
                    nbytes=align(max(Tensor(name, dtype, shape).nbytes, 1)), shape=list(shape),
                    value=attr))
            scales = Tensor(name, dtype, shape)
        return MatmulQuant(
            w_fmt=maia.attr(op, "w_fmt", ""), w_scales=scales,
            w_tensor_scale=maia.attr(op, "w_tensor_scale"), a_fmt=maia.attr(op, "a_fmt", ""),
            a_scale=maia.attr(op, "a_scale"), a_tensor_scale=maia.attr(op, "a_tensor_scale"),
            scale_mode=maia.attr(op, "scale_mode", "floor"))

    def finish_outputs(self, results: list[SSAValue], names: list[str]) -> None:
        """Outputs get buffers of their own: an act is renamed in place, anything else
        (an input, a constant, an alias at an offset, a repeated output) is copied."""
        claimed: set[str] = set()
        for value, name in zip(results, names, strict=True):
            tensor = self.values[value]
            own = (self.buffer_kind.get(tensor.buf) == "act" and tensor.off == 0
                   and tensor.buf not in claimed)
            if own:
                claimed.add(tensor.buf)
                for buf in self.buffers:
                    if maia.attr(buf, "sym") == tensor.buf:
                        buf.attributes["kind"] = maia.to_attr("output")
                        buf.attributes["tensor"] = maia.to_attr(name)
                        buf.attributes["shape"] = maia.to_attr(list(tensor.shape))
                self.buffer_kind[tensor.buf] = "output"
                self.output_buffers.append(tensor.buf)
                continue
            out = self.new_buffer(f"out:{name}", value, "output", tensor=name)
            claimed.add(out.buf)
            self.output_buffers.append(out.buf)
            kernel = Kernel(op=f"output:{name}", kind="copy", uid=f"out:{name}")
            tile_copy(kernel, tensor, out)
            self.kernels.append(kernel.build())


def tile_function(fn: func.FuncOp, budget: Budget, buffers: int = 1, fixed: int = 0) -> None:
    """Tile ``fn``; ``buffers`` > 1: blocks sized for 1/buffers of TSRAM when they can be
    (room for double-buffer twins and the next kernel's prefetched blocks); ``fixed`` > 0:
    matmul blocks of at most ``fixed`` rows/columns/depth, no cost model (the naive
    baseline), and no split-K decode attention."""
    if fixed:
        budget = dataclasses.replace(budget, fixed_block=fixed)
    if buffers > 1:
        share = dataclasses.replace(budget, tsram_bytes=budget.tsram_bytes // buffers)
        tiler = FunctionTiler(share, budget)
    else:
        tiler = FunctionTiler(budget)
    block = fn.body.block
    in_names = io_names(fn.arg_attrs, len(block.args), "input")
    for arg, name in zip(block.args, in_names, strict=True):
        tiler.new_buffer(f"in:{name}", arg, "input", tensor=name)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp), "tile expects a function ending in func.return"
    for op in list(block.ops):
        if op is ret:
            break
        if not op.name.startswith("maia."):
            raise MaiacError(f"tile: op {op.name} was not lowered to maia")
        tiler.tile_op(op)
    out_names = io_names(fn.res_attrs, len(ret.operands), "output")
    tiler.finish_outputs(list(ret.operands), out_names)
    for op in reversed(list(block.ops)):
        op.detach()
        op.erase(safe_erase=False)
    while block.args:
        block.erase_arg(block.args[-1], safe_erase=False)
    block.add_ops([*tiler.buffers, *tiler.kernels, func.ReturnOp()])
    fn.function_type = builtin.FunctionType.from_lists([], [])
    fn.arg_attrs = None
    fn.res_attrs = None
    fn.attributes["maia.flops"] = maia.to_attr(int(sum(
        maia.attr(k, "flops", 0) for k in tiler.kernels)))
    fn.attributes["maia.inputs"] = maia.to_attr([f"in:{n}" for n in in_names])
    fn.attributes["maia.outputs"] = maia.to_attr(tiler.output_buffers)


class TilePass(ModulePass):
    """Cut every tensor op into SPMD instructions over TSRAM-sized blocks."""

    name = "tile"

    buffers: int = 1  # size blocks for TSRAM / buffers (double buffering + prefetch: 4)
    fixed: int = 0  # > 0: fixed blocks of this size, no cost model (naive baseline: 128)

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        budget = budget_of(module_target(op))
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                tile_function(fn, budget, max(1, self.buffers), max(0, self.fixed))
