"""The ``maiac`` command line: compile, run, verify, report, opt, passes, ops.

Conventions (docs/cli.md, maiac/cli_errors.py): user errors (``MaiacError``) print one
``error: ...`` line on stderr and exit 2; click usage errors exit 2; a failed
verification exits 1; anything else is a bug: one ``internal error`` line, exit 3 (the
traceback with ``--debug``); SIGINT/SIGTERM exit 130/143. Outputs are written atomically. Progress goes to
stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from maiac.opt_cmd import make_context, opt_cmd  # noqa: F401  (make_context: re-exported)
from maiac.outputs import atomic_path, check_output, write_text_atomic
from maiac.report_view import _report_json, _time, format_report  # noqa: F401 (examples import format_report from here)
from maiac.runtime.errors import MaiacError
from maiac.shape_errors import shape_errors_explained

EMITS = ("onnx", "maia", "tiled", "asm")


# ----------------------------------------------------------------------------- helpers


class _Group(click.Group):
    """A click group whose every ending is one line and its exit code (maiac/cli_errors.py)."""

    def invoke(self, ctx: click.Context) -> Any:
        from maiac.cli_errors import guarded
        from maiac.runtime import limits

        limits.set_max_memory(None)  # --max-memory applies to this invocation only
        return guarded(ctx, lambda: super(_Group, self).invoke(ctx),
                       bool(ctx.params.get("debug")))


def progress(msg: str) -> None:
    """A progress line on stderr, only on a terminal and without --quiet (maiac/progress.py)."""
    from maiac import progress as live

    live.note(msg)


def existing_file(path: str, what: str = "file") -> str:
    """``path`` if it is an existing regular file, else a ``MaiacError``."""
    p = Path(path)
    if not p.exists():
        raise MaiacError(f"{path}: no such {what}")
    if not p.is_file():
        raise MaiacError(f"{path}: not a regular file")
    return path


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"input_ids=1x128"`` -> ``("input_ids", (1, 128))``; ``"x="`` is a scalar."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise MaiacError(f"--shape {text!r}: expected NAME=DIMS, e.g. input_ids=1x128")
    dims = dims.strip()
    if not dims:
        return name, ()
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise MaiacError(
            f"--shape {text!r}: dims must be positive integers joined by 'x', e.g. {name}=1x128"
        ) from None
    if any(d <= 0 for d in shape):
        raise MaiacError(f"--shape {text!r}: every dim must be a positive integer")
    from maiac.runtime.target import Target

    hbm = Target().hbm_bytes  # one byte per element would already fill the HBM
    if math.prod(shape) > hbm:
        raise MaiacError(f"--shape {text!r}: {math.prod(shape)} elements do not fit the "
                         f"{hbm} bytes of HBM of a Maia 200")
    return name, shape


def parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """All ``--shape`` options as a dict (None when there are none); duplicates are errors."""
    out: dict[str, tuple[int, ...]] = {}
    for v in values:
        name, shape = parse_shape(v)
        if name in out:
            raise MaiacError(f"--shape given twice for input {name!r}")
        out[name] = shape
    return out or None


def parse_kv(values: tuple[str, ...], option: str) -> dict[str, str] | None:
    """``("k=v", ...)`` -> ``{"k": "v"}`` for ``option`` (named in errors)."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not key or not val:
            raise MaiacError(f"{option} {v!r}: expected KEY=VALUE")
        out[key] = val
    return out or None


def check_target(target: str, params: dict[str, str] | None) -> None:
    """Fail early, before compiling, on an unknown target or target parameter."""
    try:
        from maiac.runtime.target import get_target
    except ImportError:  # target module not built yet: the driver checks instead
        return
    get_target(target, params or {})


def _compile_kwargs(quant: str | None, shape: tuple[str, ...], target: str,
                    target_param: tuple[str, ...], pipeline: str | None,
                    calib: str | None) -> dict[str, Any]:
    params = parse_kv(target_param, "--target-param")
    if calib is not None:
        existing_file(calib, "calibration file")
    check_target(target, params)
    return dict(quant=quant, shapes=parse_shapes(shape), target=target, target_params=params,
                pipeline=pipeline, calib=calib)


def compile_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``compile`` and ``verify`` share."""
    opts = [
        click.option("--quant", metavar="SPEC", default=None,
                     help="Quantization: a preset (fp8, mxfp8, mxfp6, mxfp4, nvfp4, w4a8, bf16), "
                          "w=FMT,a=FMT (w=FMT alone: weight-only), scale=floor|ceil|rceil, "
                          "calib=max|percentile=P, per-layer PATTERN=FMT|none overrides "
                          "('mxfp4;lm_head=mxfp8;layers.0.*=none'). Default: fp32."),
        click.option("--shape", metavar="NAME=1x128", multiple=True,
                     help="Bind an input's shape (input_ids=1x128) or one symbolic dim "
                          "wherever it appears (sequence=128) (repeatable)."),
        click.option("--target", default="maia200", show_default=True,
                     help="Target machine description."),
        click.option("--target-param", metavar="KEY=VALUE", multiple=True,
                     help="Override a target parameter (repeatable)."),
        click.option("-p", "--pipeline", metavar="'p1,p2{opt=v}'", default=None,
                     help="Pass pipeline to run instead of the default one."),
        click.option("--calib", metavar="DATA.npz", default=None,
                     help="Calibration inputs (.npz, one array per model input; an extra "
                          "leading axis = samples) for static activation scales (fp8, nvfp4); "
                          "default: seeded random inputs."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _set_max_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from maiac.runtime import limits

    limits.set_max_memory(None if value is None else limits.parse_size(value))


def max_memory_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-memory SIZE``: host memory a loaded program may use (runtime/limits.py)."""
    return click.option("--max-memory", metavar="SIZE", default=None, expose_value=False,
                        callback=_set_max_memory,
                        help="Host memory the program may use, e.g. 16GiB (default: "
                             "MAIAC_MAX_MEMORY, else half the RAM, at most 8 GiB).")(f)


def plugin_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--load-pass-plugin FILE.py`` (repeatable): passes registered by a user's module."""
    return click.option("--load-pass-plugin", "plugins", metavar="FILE.py", multiple=True,
                        help="Import a Python file whose @register_pass passes become "
                             "usable by name (repeatable).")(f)


def load_plugins(paths: tuple[str, ...]) -> None:
    """Import each pass plugin file (errors name the file)."""
    if not paths:
        return
    from maiac.passes.registry import load_pass_plugin

    for path in paths:
        load_pass_plugin(path)


def _driver() -> Any:
    import maiac.driver

    return maiac.driver


# ----------------------------------------------------------------------------- main


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maiac", prog_name="maiac")
@click.option("--debug", is_flag=True,
              help="Print the traceback of an error (also MAIAC_DEBUG=1).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress on stderr (also MAIAC_QUIET=1; none without a terminal).")
def main(debug: bool, quiet: bool) -> None:
    """maiac: compile ONNX transformers for the Microsoft Maia 200 machine model."""
    from maiac import progress as live

    live.set_quiet(quiet)


@main.command("compile")
@click.argument("model")
@click.option("-o", "--output", metavar="OUT", default=None,
              help="Output file: a .maia program, or the IR text with --emit.")
@compile_options
@click.option("--emit", type=click.Choice(EMITS), default=None,
              help="Print the IR at this stage instead of writing a program.")
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
def compile_cmd(model: str, output: str | None, quant: str | None, shape: tuple[str, ...],
                target: str, target_param: tuple[str, ...], pipeline: str | None,
                calib: str | None, emit: str | None, print_ir_after_all: bool,
                print_ir_after: tuple[str, ...], verify_each: bool, shape_only: bool,
                pass_timing: bool, chips: int, pp: int, micro_batches: int,
                inputs_file: str | None, as_json: bool, plugins: tuple[str, ...]) -> None:
    """Compile MODEL (.onnx) to a Maia 200 program (-o OUT.maia), or print its IR (--emit)."""
    existing_file(model, "model file")
    if as_json and (emit is not None or chips > 1 or pp > 1):
        raise click.UsageError("--json describes one written program: not with --emit, "
                               "--chips or --pp")
    if emit is None and output is None:
        raise click.UsageError("missing -o OUT.maia (or use --emit to print IR)")
    inputs = (model, calib, *plugins)
    if output is not None and output != "-":
        check_output(output, "-o", inputs)  # before the compile, not after it
    load_plugins(plugins)
    kw = _compile_kwargs(quant, shape, target, target_param, pipeline, calib)
    if inputs_file is not None:
        from maiac.shapes import model_input_shapes

        kw["shapes"] = model_input_shapes(model, kw["shapes"], existing_file(inputs_file,
                                                                             "inputs file"))
    kw["shape_only"] = shape_only
    driver = _driver()
    with shape_errors_explained(kw["shapes"]):
        compiled = _compile(driver, model, output, kw, inputs, emit, print_ir_after_all,
                            print_ir_after, verify_each, pass_timing, chips, pp,
                            micro_batches)
    if as_json and compiled is not None:
        prog = compiled.program

        def specs(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]
        click.echo(json.dumps({
            "model": model, "output": output, "quant": kw.get("quant"),
            "target": kw.get("target"), "compile_s": compiled.compile_s,
            "inputs": specs(prog.inputs), "outputs": specs(prog.outputs),
            "weight_bytes": sum(b.nbytes for b in prog.buffers if b.kind == "const"),
            "instructions": len(prog.instructions),
            "passes": [{"name": r.name, "seconds": r.seconds}
                       for r in getattr(compiled.log, "passes", [])]}, indent=2))


def _compile(driver: Any, model: str, output: str | None, kw: dict[str, Any],
             inputs: tuple[Any, ...], emit: str | None, print_ir_after_all: bool,
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
                                    log=log, **debug, **_supported(driver.compile_to_ir, kw))
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


# ----------------------------------------------------------------------------- run


def _read_inputs(inputs: str | None, input_items: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays from ``--inputs IN.npz`` and ``--input NAME=FILE.npy`` (the latter win)."""
    out: dict[str, np.ndarray] = {}
    if inputs is not None:
        existing_file(inputs, "inputs file")
        try:
            with np.load(inputs, allow_pickle=False) as npz:
                out.update({k: npz[k] for k in npz.files})
        except Exception as e:
            raise MaiacError(f"{inputs}: not a readable .npz file ({e})") from None
    for item in input_items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MaiacError(f"--input {item!r}: expected NAME=FILE.npy")
        existing_file(path, "input file")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except Exception as e:
            raise MaiacError(f"{path}: not a readable .npy file ({e})") from None
    return out


def _check_inputs(program: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match user arrays to the program's inputs by name, shape and dtype kind."""
    from maiac.inputs import np_dtype
    from maiac.runtime.conversions import convert_input

    names = [s.name for s in program.inputs]
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise MaiacError(f"unknown input {extra[0]!r}; program inputs: {', '.join(names)}")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise MaiacError(f"no value given for program input {missing[0]!r}")
    out = {}
    for s in program.inputs:
        a = np.asarray(feeds[s.name])
        want = np_dtype(s.dtype)
        if tuple(a.shape) != tuple(s.shape):
            raise MaiacError(f"input {s.name!r}: shape {list(a.shape)}, program expects "
                             f"{list(s.shape)}")
        if a.dtype != want:
            a_kind = "f" if a.dtype.kind == "f" else a.dtype.kind
            w_kind = "f" if (want.kind == "f" or want.name == "bfloat16") else want.kind
            if a_kind != w_kind and not (a_kind in "iu" and w_kind in "iu"):
                raise MaiacError(f"input {s.name!r}: dtype {a.dtype}, program expects {s.dtype}")
            a = convert_input(s.name, a, want, s.dtype)  # range-checked (runtime/conversions.py)
        out[s.name] = a
    return out


def _summary(name: str, a: np.ndarray) -> str:
    a = np.asarray(a)
    shape = "x".join(str(d) for d in a.shape) or "scalar"
    if a.size and (a.dtype.kind in "fiub" or a.dtype.name == "bfloat16"):
        f = a.astype(np.float64)
        stats = f"min {f.min():.4g}  max {f.max():.4g}  mean {f.mean():.4g}"
    else:
        stats = ""
    return f"{name:<24} {shape:<16} {a.dtype.name:<9} {stats}"


@main.command("run")
@click.argument("program_file", metavar="MODEL.maia")
@click.option("--inputs", metavar="IN.npz", default=None, help="Input arrays by name.")
@click.option("--input", "input_items", metavar="NAME=FILE.npy", multiple=True,
              help="One input array (repeatable; overrides --inputs).")
@click.option("-o", "--output", metavar="OUT.npz", default=None, help="Write the outputs here.")
@click.option("--trace", metavar="TRACE.json", default=None,
              help="Write a Chrome/Perfetto trace of the modeled timeline.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for random inputs.")
@max_memory_option
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Chip programs (--chips): all in this process, or one "
                                      "Ray actor per chip (pip install maiac[ray]).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join (default: ray.init() starts a local one).")
@click.option("--json", "as_json", is_flag=True,
              help="Print inputs, outputs (name, shape, dtype, range), run time and files "
                   "written as JSON.")
def run_cmd(program_file: str, inputs: str | None, input_items: tuple[str, ...],
            output: str | None, trace: str | None, seed: int, backend: str,
            ray_address: str | None, as_json: bool) -> None:
    """Run a compiled program on the machine model (random seeded inputs if none given)."""
    say = (lambda _line: None) if as_json else click.echo
    existing_file(program_file, "program file")
    sources = (program_file, inputs, *(i.partition("=")[2] for i in input_items))
    for opt, path in (("-o", output), ("--trace", trace)):
        if path is not None:
            check_output(path, opt, sources)  # before the run: a bad path costs nothing
    if output is not None and trace is not None and Path(output).resolve() == \
            Path(trace).resolve():
        raise MaiacError(f"-o and --trace name the same file {output}")
    from maiac.chips_cli import run_group

    if run_group(program_file, inputs, input_items, output, trace, seed, backend, ray_address):
        return
    from maiac import progress as live_progress
    from maiac.inputs import random_inputs_for_specs
    from maiac.runtime.program import load_program

    program = load_program(program_file, in_place=True)  # weights inflate into HBM once
    if (program.meta or {}).get("shape_only"):
        # its weights have no values: nothing to run (and no HBM image worth allocating)
        raise MaiacError(f"{program_file} is shape-only (compiled with --shape-only): it can "
                         f"be timed but not run; use `maiac report {program_file} --trace "
                         f"{trace or 'TRACE.json'}` for its trace")
    if inputs is None and not input_items:
        ranges = (program.meta or {}).get("input_ranges") or {}
        feeds = random_inputs_for_specs(program.inputs, seed, ranges)
        say(f"no inputs given: using random inputs (seed {seed})")
        for k, v in feeds.items():
            say("  " + _summary(k, v))
    else:
        feeds = _check_inputs(program, _read_inputs(inputs, input_items))
    progress(f"running {program_file}")
    t0 = time.perf_counter()
    outs = live_progress.run_program(program, feeds)  # a bar on a terminal
    dt = time.perf_counter() - t0
    say(f"outputs ({dt:.3f} s on the machine model):")
    for k, v in outs.items():
        say("  " + _summary(k, v))
    written = []
    # both files are written to temporaries first and moved into place only when both
    # succeeded: a failure of either leaves neither
    with contextlib.ExitStack() as stack:
        if output is not None:
            tmp = stack.enter_context(atomic_path(output, "-o", sources))
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in outs.items()})
            written.append(output)
        if trace is not None:
            from maiac.runtime.timing import simulate
            from maiac.runtime.trace import write_chrome_trace

            rep = simulate(program)
            tmp = stack.enter_context(atomic_path(trace, "--trace", sources))
            write_chrome_trace(rep, tmp)
            modeled = _report_json(rep)["modeled_time_s"]
            written.append(trace)
    for path in written:
        say(f"wrote {path}" + (f" (modeled time {_time(modeled)})" if path == trace else ""))
    if as_json:
        click.echo(json.dumps({
            "program": program_file, "random_inputs": inputs is None and not input_items,
            "seed": seed, "run_s": dt, "inputs": [_array_json(k, v) for k, v in feeds.items()],
            "outputs": [_array_json(k, v) for k, v in outs.items()], "written": written,
            **({"modeled_time_s": modeled} if trace is not None else {})}, indent=2))


def _array_json(name: str, value: Any) -> dict[str, Any]:
    """``run --json``: an array's name, shape, dtype and finite range."""
    arr = np.asarray(value)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind in "fc" else arr
    return {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "nonfinite": int(arr.size - finite.size)}




# ----------------------------------------------------------------------------- verify


@main.command("verify")
@click.argument("model")
@compile_options
@click.option("--inputs", metavar="IN.npz", default=None,
              help="Inputs by name (default: seeded random inputs).")
@click.option("--rtol", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--atol", type=click.FloatRange(0), default=1e-5, show_default=True)
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=0.99, show_default=True,
              help="Pass threshold per output when --quant is set.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--reference", metavar="OUT.npz", default=None,
              help="Compare against stored outputs instead of running onnxruntime.")
@click.option("--ort-custom-op-lib", metavar="PATH", default=None,
              help="Custom-op library onnxruntime registers before loading MODEL.")
@plugin_option
def verify_cmd(model: str, quant: str | None, shape: tuple[str, ...], target: str,
               target_param: tuple[str, ...], pipeline: str | None, calib: str | None,
               inputs: str | None, rtol: float, atol: float, min_cosine: float, seed: int,
               as_json: bool, reference: str | None, ort_custom_op_lib: str | None,
               plugins: tuple[str, ...]) -> None:
    """Compile MODEL, run it and onnxruntime on the same inputs, compare (exit 1 on mismatch)."""
    from maiac.verify import format_table, verify

    existing_file(model, "model file")
    load_plugins(plugins)
    if inputs is not None:
        existing_file(inputs, "inputs file")
    kw = _compile_kwargs(quant, shape, target, target_param, pipeline, calib)
    progress(f"verifying {model}")
    if reference is not None:
        existing_file(reference, "reference file")
    with shape_errors_explained(kw["shapes"]):
        result = verify(model, inputs=inputs, rtol=rtol, atol=atol, min_cosine=min_cosine,
                        seed=seed, reference=reference, ort_custom_op_lib=ort_custom_op_lib,
                        **kw)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
    if not result["ok"]:
        sys.exit(1)


# ----------------------------------------------------------------------------- opt / passes

main.add_command(opt_cmd)  # maiac/opt_cmd.py


def _pass_info(entry: Any) -> tuple[str, list[str]]:
    """One-line description and option strings (``name: type = default``) of a pass."""
    from maiac.passes.registry import pass_options

    desc = getattr(entry, "description", None)
    if not isinstance(desc, str) or not desc:
        doc = (getattr(entry, "__doc__", None) or "").strip()
        desc = doc.splitlines()[0] if doc else ""
    return desc.replace("``", "`"), pass_options(entry)


def _pass_json(name: str, entry: Any) -> dict[str, Any]:
    """``maiac passes --json`` row: name, description, options as name/type/default."""
    from maiac.passes.registry import get_pass_option_infos

    desc, _ = _pass_info(entry)
    return {"name": name, "description": desc,
            "options": [{"name": i.name.replace("_", "-"),
                         "type": i.expected_type.strip("'"), "default": i.default_value}
                        for i in get_pass_option_infos(entry)]}


@main.command("passes")
@click.option("--pipeline", "show_pipeline", is_flag=True,
              help="Print the default pipeline (for --quant) in --pipeline syntax, to edit "
                   "and pass back.")
@click.option("--quant", metavar="SPEC", default=None,
              help="With --pipeline: the quantization spec the pipeline is for.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: each pass's name, description and options (name, type, "
                   "default); with --pipeline, the pipeline string.")
@plugin_option
def passes_cmd(show_pipeline: bool, quant: str | None, as_json: bool,
               plugins: tuple[str, ...]) -> None:
    """List every registered pass with its description and options."""
    from maiac.passes.registry import PASSES

    load_plugins(plugins)
    if show_pipeline:
        text = _driver().default_pipeline(quant)
        click.echo(json.dumps({"quant": quant, "pipeline": text}, indent=2) if as_json
                   else text)
        return
    if quant is not None:
        raise click.UsageError("--quant needs --pipeline")
    if as_json:
        click.echo(json.dumps([_pass_json(name, entry) for name, entry in sorted(PASSES.items())],
                              indent=2, default=str))
        return
    for name, entry in sorted(PASSES.items()):
        desc, opts = _pass_info(entry)
        click.echo(f"{name:<28} {desc}")
        for o in opts:
            click.echo(f"{'':<30}{o}")



def _register_commands() -> None:
    """Commands that live in their own modules (imported here, after main exists)."""
    from maiac.eval_cli import eval_cmd
    from maiac.generate_cli import generate_cmd
    from maiac.ops_cmd import ops_cmd
    from maiac.perf_cli import perf_cmd
    from maiac.report_cmd import report_cmd
    from maiac.target_cmd import target_cmd

    main.add_command(generate_cmd)
    main.add_command(perf_cmd)
    main.add_command(target_cmd)
    main.add_command(ops_cmd)
    main.add_command(eval_cmd)
    main.add_command(report_cmd)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
