"""`fuse-swiglu`: the gated MLP of Llama/Qwen2, ``silu(x @ Wg) * (x @ Wu)``, in one matmul.

First ``x * sigmoid(x)`` becomes ``maia.unary {fn = silu}``. Then, when the gate and
the up projection are matmuls of the same ``x`` with constant ``[K, N]`` weights, both
become one matmul over the concatenated weight ``[K, 2N]`` with ``glu = mul`` and
``act = silu`` (when ``x`` has at least ``merge_min_rows`` rows: prefill, not decode): each job computes a gate block and the matching up block from one read
(and one quantization) of its ``x`` block, and stores ``silu(gate) * up`` — the up
projection's output never exists in memory. Otherwise the product of a gate matmul's
SiLU with anything of the same shape becomes the gate matmul with ``act = silu`` and the
``residual = mul`` epilogue: the up block is read back and multiplied in TSRAM before
the gate result is stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import DenseResourceAttr, ModuleOp, TensorType, f32
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from maiac.ir import maia
from maiac.ir.resources import register_array, register_lazy, resource_attr
from maiac.ir.types import tensor_shape
from maiac.passes.fuse_epilogue import matmul_source, rebuild
from maiac.passes.fuse_match import commuted, erase_dead, label, new_op, same_shape, unary
from maiac.passes.quantize import constant_of, constant_type
from maiac.runtime.errors import MaiacError


class FuseSilu(RewritePattern):
    """``x * sigmoid(x)`` → ``silu(x)``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        for x, s in commuted(op):
            sig = unary(s, "sigmoid")
            if sig is not None and sig.operands[0] is x and same_shape(x, op.results[0]):
                rewriter.replace(op, new_op(maia.UnaryOp, [x], op.results[0].type,
                                               op=label(op), fn="silu"))
                erase_dead([sig], rewriter)
                return


class FuseGatedMatmul(RewritePattern):
    """``silu(x @ Wg) * u`` → ``matmul(x, Wg) {act = silu, residual = mul}(u)``."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        out = tensor_shape(op.results[0].type)
        for gate, up in commuted(op):
            act = unary(gate, "silu")
            if act is None or not gate.has_one_use() or tensor_shape(up.type) != out:
                continue
            src = matmul_source(act.operands[0])
            if src is None or src.act or src.residual or tensor_shape(gate.type) != out:
                continue
            rebuild(op, src, rewriter, act="silu", residual=("mul", up), consumed=(act,))
            return


class FuseGateUp(RewritePattern):
    """``silu(x @ Wg) * (x @ Wu)`` → ``matmul(x, [Wg | Wu]) {act = silu, glu = mul}``
    when ``x`` has at least ``min_rows`` rows."""

    def __init__(self, min_rows: int = 1) -> None:
        self.min_rows = min_rows

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.name != "maia.binary" or maia.attr(op, "fn") != "mul":
            return
        for gate, up in commuted(op):
            act = unary(gate, "silu")
            if act is None or not gate.has_one_use():
                continue
            g, u = matmul_source(act.operands[0]), matmul_source(up)
            if g is None or u is None or g.op is u.op or not _plain(g.op) or not _plain(u.op):
                continue
            if g.op.operands[0] is not u.op.operands[0]:
                continue
            if math.prod(tensor_shape(g.op.operands[0].type)[:-1]) < self.min_rows:
                continue
            g_shape = tensor_shape(g.op.results[0].type)
            if g_shape != tensor_shape(u.op.results[0].type):
                continue
            w = _concat_weights(g.op.operands[1], u.op.operands[1],
                                f"{label(g.op)}+{label(u.op)}")
            if w is None:
                continue
            fused = new_op(maia.MatMulOp, [g.op.operands[0], w.results[0]],
                           g.op.results[0].type, op=label(g.op), act="silu", glu="mul",
                           up_op=label(u.op))
            new_ops: list[Operation] = [w, fused]
            result = fused.results[0]
            if g_shape != tensor_shape(op.results[0].type):
                back = new_op(maia.ReshapeOp, [result], op.results[0].type, op=label(op))
                new_ops.append(back)
                result = back.results[0]
            rewriter.replace(op, new_ops, [result])
            erase_dead([act, *g.reshapes, *u.reshapes, g.op, u.op], rewriter)
            return


def _plain(mm: Operation) -> bool:
    """A matmul of two operands, without epilogue or quantization."""
    return (len(mm.operands) == 2 and not maia.attr(mm, "act")
            and not maia.attr(mm, "residual") and not maia.attr(mm, "glu"))


def _concat_weights(wg: SSAValue, wu: SSAValue, hint: str) -> Operation | None:
    """A constant ``[K, 2N]``: gate columns, then up columns (None unless both weights are
    constant fp32 ``[K, N]``). Weights without data (shape-only) give one without data."""
    tg, tu = constant_type(wg), constant_type(wu)
    if tg is None or tu is None or tg != tu or tg.get_element_type() != f32:
        return None
    shape = tuple(int(d) for d in tg.get_shape())
    if len(shape) != 2:
        return None
    k, n = shape
    ttype = TensorType(f32, [k, 2 * n])
    g, u = constant_of(wg), constant_of(wu)
    if g is not None and u is not None:
        handle = register_array(np.ascontiguousarray(np.concatenate([g, u], axis=1),
                                                     np.float32), hint)
    elif g is None and u is None:
        handle = register_lazy(_no_data(hint), (k, 2 * n), np.float32, hint,
                               available=lambda: False)
    else:
        return None
    attr: DenseResourceAttr = resource_attr(handle, ttype)
    return maia.ConstantOp.create(result_types=[ttype],
                                  attributes={"value": attr, "op": maia.to_attr(hint)})


def _no_data(hint: str) -> Callable[[], np.ndarray]:
    def unavailable() -> np.ndarray:
        raise MaiacError(f"weight '{hint}' has no data (shape-only model)")
    return unavailable


@dataclass(frozen=True)
class FuseSwigluPass(ModulePass):
    """SiLU and the SwiGLU gate product → one gated ``maia.matmul``."""

    name = "fuse-swiglu"

    merge: bool = True  # gate and up projection in one matmul when they can be
    # ... and x has this many rows: with a few rows (decode) the matmuls stream weights,
    # and two kernels of half the weight each prefetch better during the ops before them
    merge_min_rows: int = 64

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        patterns = ((FuseSilu(), FuseGateUp(self.merge_min_rows), FuseGatedMatmul())
                    if self.merge else (FuseSilu(), FuseGatedMatmul()))
        for pattern in patterns:
            PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
