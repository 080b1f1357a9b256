"""``maiac opt``: run passes on textual IR, as mlir-opt / xdsl-opt do.

IR printed by ``maiac compile --emit`` names its weights by handle only; with
``--emit-weights DIR`` their values are in DIR and ``opt`` loads them (maiac/ir_file.py).
Without them, a pass that needs a weight's value would see none: ``opt`` refuses the
passes known to (``WEIGHT_PASSES``) before running, and any other pass that read an
absent weight after it ran, unless ``--shape-only`` says placeholders are meant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from maiac.outputs import check_output, write_text_atomic

WEIGHT_PASSES = frozenset({"quantize", "gptq", "rotate-hadamard"})
"""Passes whose result depends on the values of constant weights."""


def make_context() -> Any:
    """An xDSL context with the builtin, func, arith, onnx, maia and scf dialects loaded."""
    from xdsl.dialects.scf import Scf

    from maiac.ir.maia import Maia
    from maiac.ir.onnx import make_context as onnx_context

    ctx = onnx_context()  # builtin (with its own resource table), func, arith, onnx
    for d in (Maia, Scf):
        if d.name not in ctx.registered_dialect_names:
            ctx.load_dialect(d)
    return ctx


@click.command("opt")
@click.argument("file", metavar="FILE.mlir")
@click.option("-p", "--passes", "pipeline", default="", metavar="'p1,p2{opt=v}'",
              help="Passes to run, in order (xdsl-opt syntax).")
@click.option("-o", "--output", default=None, metavar="OUT.mlir",
              help="Write the IR here (- or none: stdout).")
@click.option("--weights", metavar="DIR", default=None,
              help="The IR's weights folder (default: the one its maia.weights attribute "
                   "names, written by --emit-weights).")
@click.option("--emit-weights", metavar="DIR", default=None,
              help="Write the output IR's weights to DIR (.npy files and weights.json).")
@click.option("--print-ir-after-all", is_flag=True, help="Print the IR after every pass (on stderr).")
@click.option("--pass-timing", is_flag=True, help="Print the time of each pass on stderr.")
@click.option("--shape-only", is_flag=True,
              help="Run passes that read weight values (quantize, gptq, rotate-hadamard, ...) "
                   "on IR whose weights are absent, with placeholder values.")
@click.option("--load-pass-plugin", "plugins", metavar="FILE.py", multiple=True,
              help="Import a Python file whose @register_pass passes become "
                   "usable by name (repeatable).")
def opt_cmd(file: str, pipeline: str, output: str | None, weights: str | None,
            emit_weights: str | None, print_ir_after_all: bool, pass_timing: bool,
            shape_only: bool, plugins: tuple[str, ...]) -> None:
    """Parse IR (FILE.mlir, or - for stdin), run passes, print the result."""
    from maiac.cli_options import load_plugins
    from maiac.compile_cmd import format_pass_timing
    from maiac.driver import CompileLog, run_passes
    from maiac.ir.resources import absent_reads
    from maiac.ir_file import (
        attach_weights,
        module_text,
        parse_ir,
        read_ir,
        record_folder,
        refuse_absent,
        rename_handles,
        write_weights,
    )
    from maiac.passes.registry import parse_pipeline

    if output is not None and output != "-":
        check_output(output, "-o", (file, *plugins))
    load_plugins(plugins)
    module = parse_ir(read_ir(file), file)
    passes = parse_pipeline(pipeline) if pipeline.strip() else []
    mapping, absent = attach_weights(module, file, weights)
    needs = sorted({p.name for p in passes} & WEIGHT_PASSES)
    if absent and needs and not shape_only:
        refuse_absent(file, module, absent, f"pass {needs[0]!r}")
    log = CompileLog()
    with absent_reads() as read:
        run_passes(module, passes, print_after=(lambda _: True) if print_ir_after_all else None,
                   out=sys.stderr, log=log)
    if read and not shape_only:
        refuse_absent(file, module, sorted(read), f"pipeline '{pipeline}'")
    if emit_weights is not None:
        write_weights(module, emit_weights, output)
    else:  # unchanged weights keep the names the folder's index knows them by
        rename_handles(module, {new: old for old, new in mapping.items()})
        if weights is not None and mapping:  # the folder named by hand, from where OUT is
            record_folder(module, Path(weights), output)
    out = module_text(module)
    if output is None or output == "-":
        click.echo(out, nl=False)
    else:
        write_text_atomic(output, out, "-o", (file, *plugins))
    if pass_timing:
        click.echo(format_pass_timing(log), err=True)
