"""``maiac opt``: run passes on textual IR, as mlir-opt / xdsl-opt do.

IR printed by ``maiac compile --emit`` references its weights by handle only (the bytes
stay in the compiling process's resource store), so passes that need weight *values*
(``WEIGHT_PASSES``: quantize, gptq, rotate-hadamard) would see placeholders; ``opt``
refuses to run them on such IR unless ``--shape-only`` says placeholders are meant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from maiac.outputs import check_output, write_text_atomic
from maiac.runtime.errors import MaiacError

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


def absent_weights(module: Any) -> list[str]:
    """Handles of the constants in ``module`` whose bytes this process does not hold."""
    from xdsl.dialects.builtin import DenseResourceAttr

    from maiac.ir.resources import is_materializable

    absent = []
    for op in module.walk():
        value = op.attributes.get("value")
        if isinstance(value, DenseResourceAttr):
            handle = value.resource_handle.data
            if not is_materializable(handle):
                absent.append(handle)
    return absent


def _read_ir(file: str) -> str:
    from maiac.cli_options import existing_file

    if file == "-":
        return sys.stdin.read()
    existing_file(file, "IR file")
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MaiacError(f"{file}: not UTF-8 text (byte {err.start}): not an IR file") from None


@click.command("opt")
@click.argument("file", metavar="FILE.mlir")
@click.option("-p", "--passes", "pipeline", default="", metavar="'p1,p2{opt=v}'",
              help="Passes to run, in order (xdsl-opt syntax).")
@click.option("-o", "--output", default=None, metavar="OUT.mlir",
              help="Write the IR here (- or none: stdout).")
@click.option("--print-ir-after-all", is_flag=True, help="Print the IR after every pass (on stderr).")
@click.option("--pass-timing", is_flag=True, help="Print the time of each pass on stderr.")
@click.option("--shape-only", is_flag=True,
              help="Run weight-dependent passes (quantize, gptq, rotate-hadamard) on IR whose "
                   "weights are absent, with placeholder values.")
@click.option("--load-pass-plugin", "plugins", metavar="FILE.py", multiple=True,
              help="Import a Python file whose @register_pass passes become "
                   "usable by name (repeatable).")
def opt_cmd(file: str, pipeline: str, output: str | None, print_ir_after_all: bool,
            pass_timing: bool, shape_only: bool, plugins: tuple[str, ...]) -> None:
    """Parse IR (FILE.mlir, or - for stdin), run passes, print the result."""
    from maiac.cli_options import load_plugins
    from maiac.compile_cmd import format_pass_timing

    if output is not None and output != "-":
        check_output(output, "-o", (file, *plugins))
    load_plugins(plugins)
    text = _read_ir(file)

    from xdsl.parser import Parser
    from xdsl.printer import Printer
    from xdsl.utils.exceptions import ParseError, VerifyException

    from maiac.driver import CompileLog, run_passes
    from maiac.passes.registry import parse_pipeline

    ctx = make_context()
    passes = parse_pipeline(pipeline) if pipeline.strip() else []
    try:
        module = Parser(ctx, text, file).parse_module()
    except ParseError as e:
        raise MaiacError(f"{file}: cannot parse IR:\n{e}") from None
    except RecursionError:
        raise MaiacError(f"{file}: cannot parse IR: nested too deeply") from None
    try:
        module.verify()
    except VerifyException as e:
        raise MaiacError(f"{file}: input IR does not verify: {e}") from None
    needs = sorted({p.name for p in passes} & WEIGHT_PASSES)
    absent = absent_weights(module) if needs and not shape_only else []
    if absent:
        raise MaiacError(
            f"{file}: pass {needs[0]!r} needs the weights' values, but {len(absent)} "
            f"constant(s) of this IR (first: {absent[0]!r}) are handles without data (IR "
            f"text from --emit holds no weights); run the passes from the model instead "
            f"(maiac compile MODEL.onnx --pipeline ... --emit maia), or pass --shape-only to "
            f"use placeholder values")
    log = CompileLog()
    run_passes(module, passes, print_after=(lambda _: True) if print_ir_after_all else None,
               out=sys.stderr, log=log)
    import io

    buf = io.StringIO()
    Printer(stream=buf).print_op(module)
    out = buf.getvalue().rstrip("\n") + "\n"
    if output is None or output == "-":
        click.echo(out, nl=False)
    else:
        write_text_atomic(output, out, "-o", (file, *plugins))
    if pass_timing:
        click.echo(format_pass_timing(log), err=True)
