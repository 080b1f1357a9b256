"""`pipeline-stage`: pipeline parallelism over layers — the tensor-level program of stage
``stage`` of ``stages``.

The function's ops (in program order; constants aside) are cut into ``stages`` contiguous
runs balanced by weight bytes (the matmuls' constant operands: what a decode step streams
and, times the tokens, what a prefill computes). Where a cut goes: among the positions
whose cost prefix lies within half a stage of the balanced target, the one where the
fewest bytes cross (for a transformer, the residual stream between two layers), then one
between two layers (op names ``layers.N`` / ``h.N`` / ``blocks.N``), then the one
closest to the target. So any layer count splits over any ``stages`` up to the number of
ops; uneven counts give stages one layer apart, and the plan (``meta["pipeline"]``) says
which ops, layers and bytes each stage has.

Stage ``s`` keeps its own ops, the constants they read and the function inputs they read
(a KV cache input goes to the stage of its layer); a value another stage made comes in by
``maia.recv`` from that stage, and a value a later stage reads goes out by ``maia.send``
right after it is made (the k-th send from stage a to b pairs with the k-th recv of b
from a: both sides order them by the op that made the value). Each function output is
returned by the stage that makes it. The tile pass lowers send/recv to point-to-point
``isa.Collective`` instructions on the network engine (runtime/isa.py).

Run it on the fused tensor-level IR (after the ``fuse`` stage, before ``shard`` and
``quantize``), once per stage; maiac/pipeline.py does that for ``--pp P``.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.ir.types import tensor_dtype, tensor_shape
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize

PIPELINE_ATTR = "maia.pipeline"
_LAYER = re.compile(r"(?:^|[./_])(?:layers?|h|blocks?)[._](\d+)(?:$|[./_])")


def _nbytes(v: SSAValue) -> int:
    shape = tensor_shape(v.type)
    return math.prod(shape) * itemsize(tensor_dtype(v.type))


def op_cost(op: Operation) -> int:
    """Weight bytes of ``op``: its constant matmul operands (1 for any other op, so a run of
    weightless ops still spreads)."""
    if isinstance(op, maia.MatMulOp) and isinstance(op.operands[1].owner, maia.ConstantOp):
        return _nbytes(op.operands[1]) + 1
    return 1


def layer_of(op: Operation) -> int | None:
    found = _LAYER.search(str(maia.attr(op, "op", "")))
    return int(found.group(1)) if found else None


@dataclass
class StagePlan:
    """Where the cuts go: stage s runs ``work[bounds[s]:bounds[s + 1]]``."""

    bounds: list[int]
    costs: list[int]
    crossing: list[int]  # bytes live across each cut
    layers: list[list[int] | None]  # first and last layer number of each stage


def plan_stages(work: Sequence[Operation], stages: int) -> StagePlan:
    n = len(work)
    if stages > n:
        raise MaiacError(f"--pp {stages}: the model has only {n} ops to split into stages "
                         f"(at most {n} stages)")
    pos = {op: i for i, op in enumerate(work)}
    # bytes sent across cut i (between work[i-1] and work[i]): made before, read by an
    # op at/after it (a function output is returned by the stage that makes it)
    delta = [0] * (n + 2)
    for i, op in enumerate(work):
        for res in op.results:
            last = max((pos.get(u.operation, -1) for u in res.uses), default=-1)
            if last > i:
                delta[i + 1] += _nbytes(res)
                delta[last + 1] -= _nbytes(res)
    crossing = [0] * (n + 1)
    acc = 0
    for i in range(n + 1):
        acc += delta[i]
        crossing[i] = acc
    cost = [op_cost(op) for op in work]
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    total = prefix[-1]
    layers: list[int | None] = []
    cur: int | None = None
    for op in work:
        cur = layer_of(op) if layer_of(op) is not None else cur
        layers.append(cur)
    bounds = [0]
    for k in range(1, stages):
        target = total * k / stages
        lo_i, hi_i = bounds[-1] + 1, n - (stages - k)  # every stage keeps >= 1 op
        window = [i for i in range(lo_i, hi_i + 1)
                  if abs(prefix[i] - target) <= total / (2 * stages)]
        if not window:
            window = [min(range(lo_i, hi_i + 1), key=lambda i: abs(prefix[i] - target))]

        def score(i: int, target: float = target) -> tuple[int, int, float]:
            between = layers[i - 1] is not None and layers[i] != layers[i - 1]
            return crossing[i], 0 if between else 1, abs(prefix[i] - target)

        bounds.append(min(window, key=score))
    bounds.append(n)
    spans = []
    for s in range(stages):
        nums = [x for x in layers[bounds[s]:bounds[s + 1]] if x is not None]
        spans.append([min(nums), max(nums)] if nums else None)
    return StagePlan(bounds, [prefix[bounds[s + 1]] - prefix[bounds[s]] for s in range(stages)],
                     [crossing[b] for b in bounds[1:-1]], spans)


class Stager:
    def __init__(self, fn: func.FuncOp, stages: int, stage: int) -> None:
        self.fn, self.stages, self.stage = fn, stages, stage
        self.block = fn.body.block

    def _name(self, attrs: builtin.ArrayAttr | None, i: int, prefix: str) -> str:
        entry = attrs.data[i] if attrs is not None and i < len(attrs.data) else None
        name = entry.data.get("onnx.name") if isinstance(entry, builtin.DictionaryAttr) else None
        return name.data if isinstance(name, builtin.StringAttr) else f"{prefix}{i}"

    def run(self) -> None:
        ret = self.block.last_op
        assert isinstance(ret, func.ReturnOp)
        ops = [op for op in self.block.ops if op is not ret]
        work = [op for op in ops if not isinstance(op, maia.ConstantOp)]
        plan = plan_stages(work, self.stages)
        where = {op: bisect.bisect_right(plan.bounds, i) - 1 for i, op in enumerate(work)}
        me = self.stage
        p2p = {"tp": 1, "tp_rank": 0, "stages": self.stages, "stage": me}
        sends, recvs = [], []
        first = next((op for op in work if where[op] == me), None)
        assert first is not None  # plan_stages keeps every stage non-empty
        for op in work:
            d = where[op]
            for res in op.results:
                readers = sorted({where[u.operation] for u in res.uses
                                  if u.operation in where and where[u.operation] != d})
                if d == me:  # goes out to every later stage that reads it
                    for t in readers:
                        send = maia.SendOp.create(
                            operands=[res], result_types=[res.type],
                            attributes={k: maia.to_attr(v) for k, v in {
                                **p2p, "peer": t, "op": f"send:{maia.attr(op, 'op', op.name)}"
                            }.items()})
                        self.block.insert_op_after(send, op)
                        sends.append({"peer": t, "bytes": _nbytes(res), "value":
                                      maia.attr(op, "op", op.name)})
                elif me in readers:  # comes in from stage d
                    recv = maia.RecvOp.create(
                        result_types=[res.type],
                        attributes={k: maia.to_attr(v) for k, v in {
                            **p2p, "peer": d, "op": f"recv:{maia.attr(op, 'op', op.name)}"
                        }.items()})
                    self.block.insert_op_before(recv, first)
                    for use in list(res.uses):
                        if where.get(use.operation) == me:
                            use.operation.operands[use.index] = recv.results[0]
                    recvs.append({"peer": d, "bytes": _nbytes(res), "value":
                                  maia.attr(op, "op", op.name)})
        sends.sort(key=lambda x: x["peer"])  # the instruction order is by value per peer
        # outputs: each returned by the stage that makes it (inputs/constants: the last)
        keep, out_names = [], []
        all_outputs = [self._name(self.fn.res_attrs, i, "output") for i in range(len(ret.operands))]
        for i, v in enumerate(ret.operands):
            owner = v.owner
            home = where.get(owner, self.stages - 1) if isinstance(owner, Operation) else \
                self.stages - 1
            if home == me:
                keep.append(i)
                out_names.append(all_outputs[i])
        new_ret = func.ReturnOp(*[ret.operands[i] for i in keep])
        self.block.insert_op_before(new_ret, ret)
        res_attrs = self.fn.res_attrs
        ret.detach()
        ret.erase()
        for op in reversed(work):
            if where[op] != me:
                op.detach()
                op.erase(safe_erase=False)
        for op in reversed(ops):
            if isinstance(op, maia.ConstantOp) and not op.results[0].uses:
                op.detach()
                op.erase()
        in_names = [self._name(self.fn.arg_attrs, i, "input") for i in range(len(self.block.args))]
        arg_attrs = self.fn.arg_attrs
        kept_args = [a.index for a in self.block.args if a.uses]
        for a in reversed(list(self.block.args)):
            if not a.uses:
                self.block.erase_arg(a)
        if arg_attrs is not None:
            self.fn.arg_attrs = builtin.ArrayAttr([arg_attrs.data[i] for i in kept_args])
        if res_attrs is not None:
            self.fn.res_attrs = builtin.ArrayAttr([res_attrs.data[i] for i in keep])
        self.fn.function_type = builtin.FunctionType.from_lists(
            [a.type for a in self.block.args], [v.type for v in new_ret.operands])
        self.fn.attributes[PIPELINE_ATTR] = builtin.StringAttr(json.dumps({
            "stages": self.stages, "stage": me, "ops": plan.bounds[me + 1] - plan.bounds[me],
            "layers": plan.layers[me], "weight_bytes": plan.costs[me],
            "cut_bytes": plan.crossing, "sends": sends, "recvs": recvs,
            "inputs": [in_names[i] for i in kept_args], "outputs": out_names,
            "model_outputs": all_outputs}))


class PipelineStagePass(ModulePass):
    """Pipeline parallelism: the program of stage ``stage`` of ``stages`` (layers cut into
    balanced runs, activations sent between stages)."""

    name = "pipeline-stage"

    stages: int = 1
    stage: int = 0

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        if self.stages < 1 or not 0 <= self.stage < self.stages:
            raise MaiacError(f"pipeline-stage: stage {self.stage} is not in a pipeline of "
                             f"{self.stages} stages")
        if self.stages == 1:
            return
        for fn in list(op.walk()):
            if isinstance(fn, func.FuncOp):
                Stager(fn, self.stages, self.stage).run()
