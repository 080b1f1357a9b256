"""``maiac run``: a `.maia` program on the machine model (the interpreter), with its
inputs from files or seeded random ones."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from maiac.cli_options import existing_file, max_memory_option, progress, quiet_option
from maiac.outputs import STDOUT, atomic_path, check_output, stdout_claimed
from maiac.report_view import _report_json, _time
from maiac.run_result import RunResult
from maiac.runtime.errors import MaiacError


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


@click.command("run")
@click.argument("program_file", metavar="MODEL.maia")
@click.option("--inputs", metavar="IN.npz", default=None, help="Input arrays by name.")
@click.option("--input", "input_items", metavar="NAME=FILE.npy", multiple=True,
              help="One input array (repeatable; overrides --inputs).")
@click.option("-o", "--output", metavar="OUT.npz", default=None, help="Write the outputs here.")
@click.option("--trace", metavar="TRACE.json", default=None,
              help="Write a Chrome/Perfetto trace of the modeled timeline (- : stdout).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for random inputs.")
@max_memory_option
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Chip programs (--chips): all in this process, or one "
                                      "Ray actor per chip (pip install maiac[ray]).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join (default: $RAY_ADDRESS, else a new local one).")
@click.option("--json", "as_json", is_flag=True,
              help="Print inputs, outputs (name, shape, dtype, range), run time and files "
                   "written as JSON.")
@quiet_option
def run_cmd(program_file: str, inputs: str | None, input_items: tuple[str, ...],
            output: str | None, trace: str | None, seed: int, backend: str,
            ray_address: str | None, as_json: bool) -> None:
    """Run a compiled program on the machine model (random seeded inputs if none given)."""
    existing_file(program_file, "program file")
    sources = (program_file, inputs, *(i.partition("=")[2] for i in input_items))
    for opt, path in (("-o", output), ("--trace", trace)):
        if path is not None:  # before the run: a bad path costs nothing
            check_output(path, opt, sources, text=opt == "--trace")  # .npz: not stdout
    on_stdout = stdout_claimed((("--trace", trace),), "--json" if as_json else None)
    say = (lambda _line: None) if as_json else \
        (lambda line: click.echo(line, err=on_stdout))  # stderr when the trace has stdout
    if output is not None and trace is not None and Path(output).resolve() == \
            Path(trace).resolve():
        raise MaiacError(f"-o and --trace name the same file {output}")
    from maiac.chips_cli import run_group

    result = run_group(program_file, inputs, input_items, output, trace, seed, backend,
                       ray_address, say)
    if result is None:  # not a chip group: one program
        result = _run_one(program_file, inputs, input_items, output, trace, seed, sources, say)
    if as_json:
        random = inputs is None and not input_items
        click.echo(json.dumps(result.to_json(program_file, random, seed), indent=2))


def _run_one(program_file: str, inputs: str | None, input_items: tuple[str, ...],
             output: str | None, trace: str | None, seed: int, sources: tuple[Any, ...],
             say: Callable[[str], None]) -> RunResult:
    """``maiac run`` on one chip's program."""
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
            tmp = stack.enter_context(atomic_path(trace, "--trace", sources, text=True))
            write_chrome_trace(rep, tmp)
            modeled = _report_json(rep)["modeled_time_s"]
            written.append(trace)
    for path in (p for p in written if p != STDOUT):
        say(f"wrote {path}" + (f" (modeled time {_time(modeled)})" if path == trace else ""))
    return RunResult(feeds, outs, dt, written,
                     {"modeled_time_s": modeled} if trace is not None else {})
