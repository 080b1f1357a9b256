"""A readable assembly listing of a Program (``maiac compile --emit asm``)."""

from __future__ import annotations

from maiac.runtime import isa
from maiac.runtime.program import Program


def format_access(a: isa.Access) -> str:
    text = f"{a.level}[{a.addr:#x}] {a.dtype}{list(a.shape)}/{list(a.strides)}"
    if any(a.tile_strides):
        text += f" tile{list(a.tile_strides)}"
    if a.loop_strides:
        text += f" loop{list(a.loop_strides)}"
    return text


def format_instr(instr: isa.Instr, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(instr, isa.Loop):
        lines = [f"{pad}loop {list(instr.trips)} {{   // {instr.op}"]
        for inner in instr.body:
            lines += format_instr(inner, indent + 1)
        return lines + [f"{pad}}}"]
    grid = f"grid{list(instr.grid)}"
    if isinstance(instr, isa.Sync):  # a barrier: no operands, no grid
        body, grid = f"{instr.engine}.sync", ""
    elif isinstance(instr, isa.Collective):
        body = (f"net.{instr.collective}[{instr.rank}/{instr.chips}] "
                f"{format_access(instr.dst)} <- {format_access(instr.src)}")
    elif isinstance(instr, isa.Dma):
        body = f"dma.q{instr.queue} {format_access(instr.dst)} <- {format_access(instr.src)}"
    elif isinstance(instr, isa.Gather):
        body = (f"gather {format_access(instr.dst)} <- {format_access(instr.table)}"
                f" by {format_access(instr.indices)}")
    elif isinstance(instr, isa.Scatter):
        body = (f"scatter {format_access(instr.table)} <- {format_access(instr.src)}"
                f" by {format_access(instr.indices)}")
    elif isinstance(instr, isa.MatMul):
        op = "ttu.matmul.acc" if instr.accumulate else "ttu.matmul"
        def operand(x: isa.Access, fmt: str, sc: isa.Access | None) -> str:
            text = format_access(x) + (f":{fmt}" if fmt else "")
            return text + (f" scale {format_access(sc)}" if sc is not None else "")

        body = (f"{op}.{instr.fmt} {format_access(instr.c)} <- "
                f"{operand(instr.a, instr.a_fmt, instr.a_scale)}, "
                f"{operand(instr.b, instr.b_fmt, instr.b_scale)}")
    else:
        args = ", ".join(format_access(a) for a in instr.ins)
        extra = "".join(f" {k}={v}" for k, v in instr.attrs.items())
        body = f"tvp.{instr.fn} {format_access(instr.out)} <- {args}{extra}"
    waits = "".join(f" wait({e}<={n})" for e, n in (instr.waits or {}).items())
    return [f"{pad}{' '.join(x for x in (body, grid) if x)}{waits}   // {instr.op}"]


def format_program(program: Program) -> str:
    """Memory map, then one line per instruction (loops indented)."""
    lines = [f"// target {program.target.get('name', '?')}", "// memory map"]
    for b in program.buffers:
        if b.kind != "scratch":
            lines.append(f"//   {b.level:<5} {b.addr:#012x} {b.nbytes:>12}  {b.kind:<6} {b.name}")
    for spec in program.inputs:
        lines.append(f"// input  {spec.name}: {spec.dtype}{list(spec.shape)} @ {spec.buffer}")
    for spec in program.outputs:
        lines.append(f"// output {spec.name}: {spec.dtype}{list(spec.shape)} @ {spec.buffer}")
    for instr in program.instructions:
        lines += format_instr(instr)
    return "\n".join(lines) + "\n"
