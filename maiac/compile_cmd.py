"""``maiac compile``: an ONNX model to a `.maia` program (or its IR with ``--emit``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from maiac.cli_options import (
    _compile_kwargs,
    _driver,
    compile_options,
    existing_file,
    load_plugins,
    plugin_option,
    progress,
    quiet_option,
)
from maiac.outputs import atomic_path, check_output, write_text_atomic
from maiac.runtime.errors import MaiacError
from maiac.shape_errors import shape_errors_explained

EMITS = ("onnx", "maia", "tiled", "asm")


@click.command("compile")
@click.argument("model")
@click.option("-o", "--output", metavar="OUT", default=None,
              help="Output file: a .maia program, or the IR text with --emit (- or none: "
                   "stdout).")
@compile_options
@click.option("--emit", type=click.Choice(EMITS), default=None,
              help="Print the IR at this stage instead of writing a program.")
@click.option("--emit-weights", metavar="DIR", default=None,
              help="With --emit: write the IR's weights to DIR (.npy files and weights.json), "
                   "so `maiac compile OUT.mlir` can finish the compile.")
@click.option("--weights", metavar="DIR", default=None,
              help="MODEL.mlir's weights folder (default: the one its maia.weights attribute "
                   "names).")
@click.option("--print-ir-after-all", is_flag=True,
              help="Print the IR after every pass (on stderr).")
@click.option("--print-ir-after", metavar="PASS", multiple=True,
              help="Print the IR after this pass (repeatable; on stderr).")
@click.option("--verify-each/--no-verify-each", default=True, show_default=True,
              help="Verify the IR after every pass, naming the pass that broke it.")
@click.option("--shape-only", is_flag=True,
              help="Compile without weight data (for report / timing only).")
@click.option("--pass-timing", is_flag=True, help="Print the time of each pass on stderr.")
@click.option("--chips", type=click.IntRange(1), default=1, show_default=True,
              help="Tensor parallelism over N chips: writes OUT.chip0.maia .. OUT.chip{N-1}.maia.")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True,
              help="Pipeline parallelism over P stages of layers (x --chips each): writes "
                   "OUT.stage0.maia .. (docs/chips.md).")
@click.option("--micro-batches", type=click.IntRange(1), default=1, show_default=True,
              help="With --pp: micro-batches the report's pipeline fill and bubble assume.")
@click.option("--inputs", "inputs_file", metavar="IN.npz", default=None,
              help="Take the input shapes from these arrays (one per input, by name).")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was written (inputs, outputs, weights, instructions, time per "
                   "pass) as JSON.")
@plugin_option
@quiet_option
def compile_cmd(model: str, output: str | None, quant: str | None, shape: tuple[str, ...],
                target: str, target_param: tuple[str, ...], pipeline: str | None,
                calib: str | None, emit: str | None, emit_weights: str | None,
                weights: str | None, print_ir_after_all: bool,
                print_ir_after: tuple[str, ...], verify_each: bool, shape_only: bool,
                pass_timing: bool, chips: int, pp: int, micro_batches: int,
                inputs_file: str | None, as_json: bool, plugins: tuple[str, ...]) -> None:
    """Compile MODEL (.onnx, or .mlir from --emit) to a Maia 200 program (-o OUT.maia), or
    print its IR (--emit)."""
    existing_file(model, "model file")
    is_ir = model.endswith(".mlir")
    if is_ir:
        _check_ir_options(emit, quant, shape, target, target_param, calib, inputs_file,
                          chips, pp)
    elif weights is not None:
        raise click.UsageError("--weights names the weights of a MODEL.mlir; MODEL.onnx "
                               "holds its own")
    if emit_weights is not None and emit is None:
        raise click.UsageError("--emit-weights goes with --emit (a .maia program holds its "
                               "weights)")
    if as_json and (emit is not None or chips > 1 or pp > 1):
        raise click.UsageError("--json describes one written program: not with --emit, "
                               "--chips or --pp")
    if emit is None and output is None:
        raise click.UsageError("missing -o OUT.maia (or use --emit to print IR)")
    inputs = (model, calib, *plugins)
    if output is not None:  # before the compile, not after it; IR text may go to stdout
        check_output(output, "-o", inputs, text=emit is not None)
    load_plugins(plugins)
    if is_ir:
        compiled = _compile_ir(model, output, inputs, pipeline, weights, shape_only,
                               print_ir_after_all, print_ir_after, verify_each, pass_timing)
        if as_json:
            _print_json(model, output, compiled, compiled.program.meta.get("quant"),
                        compiled.program.target.get("name"))
        return
    kw = _compile_kwargs(quant, shape, target, target_param, pipeline, calib)
    if inputs_file is not None:
        from maiac.shapes import model_input_shapes

        kw["shapes"] = model_input_shapes(model, kw["shapes"], existing_file(inputs_file,
                                                                             "inputs file"))
    kw["shape_only"] = shape_only
    driver = _driver()
    with shape_errors_explained(kw["shapes"]):
        compiled = _compile(driver, model, output, kw, inputs, emit, emit_weights,
                            print_ir_after_all, print_ir_after, verify_each, pass_timing,
                            chips, pp, micro_batches)
    if as_json and compiled is not None:
        _print_json(model, output, compiled, kw.get("quant"), kw.get("target"))


def _print_json(model: str, output: str | None, compiled: Any, quant: str | None,
                target: str | None) -> None:
    """``compile --json``: what was written."""
    prog = compiled.program

    def specs(ts: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]
    click.echo(json.dumps({
        "model": model, "output": output, "quant": quant,
        "target": target, "compile_s": compiled.compile_s,
        "inputs": specs(prog.inputs), "outputs": specs(prog.outputs),
        "weight_bytes": sum(b.nbytes for b in prog.buffers if b.kind == "const"),
        "instructions": len(prog.instructions),
        "passes": [{"name": r.name, "seconds": r.seconds}
                   for r in getattr(compiled.log, "passes", [])]}, indent=2))


def _check_ir_options(emit: str | None, quant: str | None, shape: tuple[str, ...],
                      target: str, target_param: tuple[str, ...], calib: str | None,
                      inputs_file: str | None, chips: int, pp: int) -> None:
    """The options that shape an ONNX import, which IR from --emit has already had."""
    given = [name for name, on in (
        ("--emit", emit is not None), ("--quant", quant is not None), ("--shape", shape),
        ("--target", target != "maia200"), ("--target-param", target_param),
        ("--calib", calib is not None), ("--inputs", inputs_file is not None),
        ("--chips", chips > 1), ("--pp", pp > 1)) if on]
    if given:
        raise click.UsageError(f"{given[0]} applies to an ONNX model; MODEL.mlir was "
                               f"compiled with its own (its maia.emitted attribute records "
                               f"the passes left: change them with --pipeline)")


def _compile_ir(model: str, output: str | None, inputs: tuple[Any, ...],
                pipeline: str | None, weights: str | None, shape_only: bool,
                print_ir_after_all: bool, print_ir_after: tuple[str, ...], verify_each: bool,
                pass_timing: bool) -> Any:
    """``compile MODEL.mlir``: finish the compile of IR from --emit, write the program."""
    from maiac.ir_file import compile_ir

    assert output is not None
    progress(f"compiling {model}")
    t0 = time.perf_counter()
    compiled = compile_ir(model, pipeline=pipeline, weights=weights, shape_only=shape_only,
                          verify_each=verify_each, print_ir_after_all=print_ir_after_all,
                          print_ir_after=print_ir_after, out=sys.stderr)
    with atomic_path(output, "-o", (*inputs, weights)) as tmp:
        compiled.save(tmp)
    progress(f"wrote {output} in {time.perf_counter() - t0:.2f} s")
    if pass_timing:
        click.echo(format_pass_timing(compiled.log), err=True)
    return compiled


def _compile(driver: Any, model: str, output: str | None, kw: dict[str, Any],
             inputs: tuple[Any, ...], emit: str | None, emit_weights: str | None,
             print_ir_after_all: bool,
             print_ir_after: tuple[str, ...], verify_each: bool, pass_timing: bool,
             chips: int, pp: int, micro_batches: int) -> Any:
    """The compile itself; returns the CompiledModel written (None for --emit, chips)."""
    compiled = None
    # IR dumps after passes go to stderr (as in mlir-opt); stdout keeps the final IR.
    debug = dict(print_ir_after=print_ir_after, verify_each=verify_each, out=sys.stderr)
    log = driver.CompileLog()
    t0 = time.perf_counter()
    if emit is not None and (chips > 1 or pp > 1):
        raise click.UsageError("--emit prints one chip's IR: use --pipeline with "
                               "'shard{chips=N rank=R}' after the fusions instead of --chips")
    if emit is not None:
        progress(f"compiling {model} to {emit} IR")
        text = driver.compile_to_ir(model, emit=emit, print_ir_after_all=print_ir_after_all,
                                    log=log, weights_dir=emit_weights, ir_path=output, **debug,
                                    **_supported(driver.compile_to_ir, kw))
        if not text.endswith("\n"):
            text += "\n"
        if output is None or output == "-":
            click.echo(text, nl=False)
        else:
            write_text_atomic(output, text, "-o", inputs)
    else:
        assert output is not None
        progress(f"compiling {model}")
        if chips > 1 or pp > 1:
            from maiac.chips_cli import compile_group

            compile_group(driver, model, output, chips, kw, pp, micro_batches)
            return None
        if print_ir_after_all:
            compiled = _compile_printing_ir(driver, model, log, {**kw, **debug})
        else:
            compiled = driver.compile(model, **debug, **kw)
            log = compiled.log
        with atomic_path(output, "-o", inputs) as tmp:
            compiled.save(tmp)
        progress(f"wrote {output} in {time.perf_counter() - t0:.2f} s")
    if pass_timing:
        click.echo(format_pass_timing(log), err=True)
    return compiled


def _supported(fn: Callable[..., Any], kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` minus unset options ``fn`` does not take; a set one it does not take is an error."""
    import inspect

    params = inspect.signature(fn).parameters
    out = {}
    for k, v in kw.items():
        if k in params:
            out[k] = v
        elif v not in (None, False):
            raise MaiacError(f"--{k.replace('_', '-')} is not supported with this combination "
                             f"of options (--emit / --print-ir-after-all)")
    return out


def format_pass_timing(log: Any) -> str:
    """Time per pass of a compile (a driver ``CompileLog``), slowest first, with the total."""
    records = list(getattr(log, "passes", []) or [])
    total = sum(r.seconds for r in records)
    lines = [f"{'pass':<28} {'time':>10} {'share':>7}"]
    for rec in sorted(records, key=lambda r: -r.seconds):
        share = rec.seconds / total if total else 0.0
        lines.append(f"{rec.name:<28} {rec.seconds * 1e3:>8.1f}ms {share:>7.1%}")
    lines.append(f"{'total':<28} {total * 1e3:>8.1f}ms")
    return "\n".join(lines)


def _compile_printing_ir(driver: Any, model: str, log: Any, kw: dict[str, Any]) -> Any:
    """``driver.compile`` with the IR printed to stderr after every pass."""
    from maiac.passes.emit import emit_program

    t0 = time.perf_counter()
    module = driver.compile_module(model, print_ir_after_all=True, log=log,
                                   **_supported(driver.compile_module, kw))
    program = emit_program(module, {"model": str(model), "quant": kw.get("quant") or "fp32"})
    return driver.CompiledModel(program, time.perf_counter() - t0, log)
