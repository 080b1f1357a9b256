"""Emission: a planned tiled module → a runtime ``Program`` (the `.maia` contents)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from xdsl.dialects import builtin, func
from xdsl.ir import Operation

from maiac.ir import maia
from maiac.ir.resources import constant_value
from maiac.ir.types import NUMPY_DTYPES
from maiac.passes.tile import module_target
from maiac.runtime import isa, limits
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import itemsize
from maiac.runtime.program import Buffer, Program, TensorSpec, validate_program

SHAPE_ONLY_KEEP_BYTES = 1 << 16  # small tables (RoPE, masks, scalars) keep their bytes


def emit_program(module: builtin.ModuleOp, meta: dict[str, Any] | None = None,
                 shape_only: bool = False) -> Program:
    """Flatten the (tiled, planned) ``main`` function into a Program.

    ``shape_only``: weights are left out (only small constants keep their bytes), so a
    program of an 8B model never touches its weights; it can be reported, not run.
    """
    fn = next((op for op in module.walk() if isinstance(op, func.FuncOp)), None)
    if fn is None:
        raise MaiacError("emit: the module has no function")
    buffers: dict[str, Buffer] = {}
    buffer_ops: dict[str, Operation] = {}
    for op in fn.walk():
        if isinstance(op, maia.BufferOp):
            if "addr" not in op.attributes:
                raise MaiacError("emit: run plan-memory first (buffer without address)")
            name = maia.attr(op, "sym")
            buffers[name] = Buffer(name, maia.attr(op, "level"), maia.attr(op, "addr"),
                                   maia.attr(op, "nbytes"), maia.attr(op, "kind"))
            buffer_ops[name] = op
    instructions: list[isa.Instr] = []
    op_table: dict[str, dict[str, Any]] = {}
    for kernel in fn.body.block.ops:
        if not isinstance(kernel, maia.KernelOp | maia.BufferOp | func.ReturnOp):
            # an op no pass tiled would silently vanish from the program
            name = kernel.attributes.get("name") or kernel.attributes.get("sym_name")
            label = f" ({name})" if name is not None else ""
            raise MaiacError(f"emit: op {kernel.name}{label} was not tiled into machine "
                             f"instructions: the pipeline must lower, tile and plan memory "
                             f"(see `maiac passes --pipeline`)")
        if isinstance(kernel, maia.KernelOp):
            label = maia.attr(kernel, "op")
            row = op_table.setdefault(label, {"kind": maia.attr(kernel, "kind"), "flops": 0})
            row["flops"] += maia.attr(kernel, "flops", 0)
            instructions.extend(_instructions(kernel.body.block.ops, buffers, label))
    constants: dict[str, Any] = {}
    missing = False
    for name, op in buffer_ops.items():
        if buffers[name].kind != "const":
            continue
        if shape_only and buffers[name].nbytes > SHAPE_ONLY_KEEP_BYTES:
            missing = True
            continue
        value = constant_value(op.attributes["value"])
        if value is None:
            missing = True
            continue
        dtype = NUMPY_DTYPES[maia.attr(op, "dtype")]
        constants[name] = constant_bytes(value, dtype)

    def spec(name: str) -> TensorSpec:
        op = buffer_ops[name]
        return TensorSpec(maia.attr(op, "tensor"), maia.attr(op, "dtype"),
                          tuple(maia.attr(op, "shape")), name)

    program = Program(
        target=module_target(module).to_json(),
        inputs=[spec(n) for n in maia.attr(fn, "maia.inputs", [])],
        outputs=[spec(n) for n in maia.attr(fn, "maia.outputs", [])],
        buffers=list(buffers.values()),
        instructions=instructions,
        constants=constants,
        meta={**(meta or {}), "ops": op_table, "shape_only": missing,
              **({"async": True} if maia.attr(fn, "maia.async", False) else {}),
              **({"shard": json.loads(maia.attr(fn, "maia.shard"))}  # passes/shard.py
                 if "maia.shard" in fn.attributes else {}),
              **({"pipeline": json.loads(maia.attr(fn, "maia.pipeline"))}  # passes/pipeline.py
                 if "maia.pipeline" in fn.attributes else {}),
              "flops": maia.attr(fn, "maia.flops", 0)},
    )
    check_emitted(program)
    return program


def constant_bytes(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A constant's bytes as a flat ``uint8`` array, without a copy where its values are
    already stored that way: weights mapped from an external-data file stay mapped
    (file pages, not a copy in process memory) until the machine holds them
    (runtime/memory.py ``share_constant``), as onnxruntime maps them."""
    return np.asarray(np.ascontiguousarray(value, dtype=dtype)).reshape(-1).view(np.uint8)


def check_emitted(program: Program) -> None:
    """The checks the loader makes, at compile time: a program that does not fit the
    target (buffers past HBM or SRAM capacity, accesses outside buffers) or the bounds of
    runtime/limits.py is an error naming the cause, never a file the loader rejects."""
    try:
        validate_program(program, MaiacError)
        limits.check_structure(program)
    except MaiacError as err:
        raise MaiacError(f"the compiled program does not fit the target: {err}") from None


def _instructions(ops: Any, buffers: dict[str, Buffer], label: str) -> list[isa.Instr]:
    out: list[isa.Instr] = []
    for op in ops:
        if isinstance(op, maia.BufferOp):
            continue
        if isinstance(op, maia.LoopOp):
            out.append(isa.Loop(tuple(maia.attr(op, "trips")),
                                _instructions(op.body.block.ops, buffers, label), label))
            continue

        def acc(key: str, op: Operation = op) -> isa.Access:
            return _access(maia.attr(op, key), buffers)

        grid = tuple(maia.attr(op, "grid", (1,)))
        if isinstance(op, maia.DmaOp):
            out.append(isa.Dma(acc("src"), acc("dst"), grid, maia.attr(op, "queue", 0), label))
        elif isinstance(op, maia.MmOp):
            quant = {f"{x}_fmt": maia.attr(op, f"{x}_fmt", "") for x in "ab"}
            quant.update({f"{x}_tensor_scale": maia.attr(op, f"{x}_tensor_scale")
                          for x in "ab"})
            quant.update({f"{x}_scale": acc(f"{x}_scale") for x in "ab"
                          if f"{x}_scale" in op.attributes})
            out.append(isa.MatMul(acc("a"), acc("b"), acc("c"), maia.attr(op, "accumulate"),
                                  maia.attr(op, "fmt", "f32"), grid, label, **quant))
        elif isinstance(op, maia.VecOp):
            ins = [_access(a, buffers) for a in maia.attr(op, "ins")]
            out.append(isa.Vec(maia.attr(op, "fn"), ins, acc("out"),
                               maia.attr(op, "params", {}) or {}, grid, label))
        elif isinstance(op, maia.CollectiveOp):
            out.append(isa.Collective(maia.attr(op, "collective"), acc("src"), acc("dst"),
                                      maia.attr(op, "chips"), maia.attr(op, "rank"), grid,
                                      0, label, peer=maia.attr(op, "peer", -1)))
        elif isinstance(op, maia.GatherRowsOp):
            out.append(isa.Gather(acc("table"), acc("indices"), acc("dst"), grid,
                                  maia.attr(op, "queue", 0), label))
        elif isinstance(op, maia.SyncOp):
            out.append(isa.Sync(maia.attr(op, "engine"), label))
        elif isinstance(op, maia.ScatterRowsOp):
            out.append(isa.Scatter(acc("dst"), acc("indices"), acc("src"), grid,
                                   maia.attr(op, "queue", 0), label))
        else:
            raise MaiacError(f"emit: unexpected op {op.name} in kernel '{label}'")
        if "waits" in op.attributes:  # set by the sync pass (passes/schedule.py)
            out[-1].waits = dict(maia.attr(op, "waits"))
    return out


def _access(data: dict[str, Any], buffers: dict[str, Buffer]) -> isa.Access:
    buf = buffers[data["buf"]]
    return isa.Access(
        level=buf.level, addr=buf.addr + data["off"] * itemsize(data["dtype"]),
        dtype=data["dtype"], shape=tuple(data["shape"]), strides=tuple(data["strides"]),
        tile_strides=tuple(data["ts"]), loop_strides=tuple(data["ls"]))
