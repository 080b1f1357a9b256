"""The CLI side of ``--chips``: compile, run and report a tensor-parallel group.

``maiac compile --chips N`` writes one program per chip; ``maiac run`` and ``maiac report``
given any of them work on the whole group (the other files are found beside it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np

from maiac.chips import ChipGroup, load_group
from maiac.pipeline import PipelineGroup, load_pipeline
from maiac.run_result import RunResult
from maiac.runtime.errors import MaiacError
from maiac.runtime.program import Program, TensorSpec


def compile_group(driver: Any, model: str, output: str, chips: int, kw: dict[str, Any],
                  pp: int = 1, micro_batches: int = 1) -> None:
    from maiac.cli_options import progress

    t0 = time.perf_counter()
    group: ChipGroup | PipelineGroup = (
        driver.compile(model, chips=chips, pp=pp, micro_batches=micro_batches, **kw)
        if pp > 1 or micro_batches > 1 else driver.compile(model, chips=chips, **kw))
    paths = group.save(output)
    progress(f"wrote {len(paths)} chip programs ({paths[0].name} .. {paths[-1].name}) in "
             f"{time.perf_counter() - t0:.2f} s")
    click.echo("\n".join(str(p) for p in paths))


def load_any_group(path: str, keep_constants: bool = True) -> ChipGroup | PipelineGroup | None:
    """The tensor-parallel group or pipeline ``path`` belongs to (None: one chip)."""
    pipe = load_pipeline(path, keep_constants)
    return pipe if pipe is not None else load_group(path, keep_constants)


def group_input_specs(group: ChipGroup | PipelineGroup) -> list[TensorSpec]:
    """The whole inputs of a group (a pipeline's: every stage's, once each)."""
    firsts = ([s[0] for s in group.stages] if isinstance(group, PipelineGroup)
              else [group.programs[0]])
    seen: dict[str, TensorSpec] = {}
    for prog in firsts:
        for spec in full_input_specs(prog):
            seen.setdefault(spec.name, spec)
    return list(seen.values())


def full_input_specs(program: Program) -> list[TensorSpec]:
    """The group's inputs: a chip's specs with sharded axes at their whole size."""
    cuts = ((program.meta or {}).get("shard") or {}).get("inputs", {})
    out = []
    for spec in program.inputs:
        cut = cuts.get(spec.name)
        if cut is None:
            out.append(spec)
            continue
        shape = list(spec.shape)
        shape[cut["axis"]] = cut["size"]
        out.append(dataclasses.replace(spec, shape=tuple(shape)))
    return out


def run_group(program_file: str, inputs: str | None, input_items: tuple[str, ...],
              output: str | None, trace: str | None, seed: int, backend: str,
              ray_address: str | None, say: Callable[[str], None] = click.echo
              ) -> RunResult | None:
    """``maiac run`` on a group member: run the group (None: not a group); ``say``
    prints its lines."""
    from maiac.cli_options import progress
    from maiac.inputs import random_inputs_for_specs
    from maiac.outputs import STDOUT, atomic_path
    from maiac.run_cmd import _read_inputs, _summary

    if ray_address is not None:
        check_ray_address(ray_address)
    group = load_any_group(program_file)
    if group is None:
        if backend != "local":
            raise click.UsageError("--backend ray runs the programs of `compile --chips N` or `--pp P`")
        return None
    first = group.programs[0]
    if inputs is None and not input_items:
        ranges = (first.meta or {}).get("input_ranges") or {}
        feeds = random_inputs_for_specs(group_input_specs(group), seed, ranges)
        say(f"no inputs given: using random inputs (seed {seed})")
    else:
        feeds = _read_inputs(inputs, input_items)
    n = group.total_chips if isinstance(group, PipelineGroup) else group.chips
    progress(f"running {n} chips ({backend})")
    t0 = time.perf_counter()
    outs = group.run(feeds, backend=backend, ray_address=ray_address)
    dt = time.perf_counter() - t0
    say(f"outputs ({dt:.3f} s on the machine model, {n} chips, {backend}):")
    for k, v in outs.items():
        say("  " + _summary(k, v))
    written = []
    if output is not None:
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in outs.items()})
        say(f"wrote {output}")
        written.append(output)
    if trace is not None:
        with atomic_path(trace, "--trace", text=True) as tmp:
            group.write_trace(tmp)
        if trace != STDOUT:
            say(f"wrote {trace} (one process per chip)")
        written.append(trace)
    return RunResult(feeds, outs, dt, written, {"chips": n, "backend": backend})


def check_ray_address(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) Ray address answers, checked in a few
    seconds: ``ray.init`` retries an address where nothing listens for minutes."""
    import socket

    hostport = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in hostport:
        return  # ray resolves these itself (RAY_ADDRESS, a local cluster file)
    host, _, port = hostport.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MaiacError(f"--ray-address {address!r}: expected HOST:PORT, e.g. "
                         f"10.0.0.1:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise MaiacError(f"--ray-address {address!r}: no Ray cluster answers there "
                         f"({err.strerror or err})") from None


def format_group(r: dict[str, Any]) -> str:
    """The per-chip and collective lines under a group's report."""
    from maiac.report_view import _time

    lines = ["", f"chips              {r['chips']} (tensor parallel; modeled time = slowest chip)",
             f"collective share   {r['collective_share']:.1%} of the time on the network engine"]
    for c in r["per_chip"]:
        ranks = c.get("stands_for_ranks")
        who = f"chips {ranks[0]}-{ranks[1]}" if ranks else f"chip {c['rank']}"
        lines.append(f"  {who:<14} {_time(c['modeled_time_s']):>12}   net busy "
                     f"{_time(c['net_busy_s'])}   weights {c['weight_bytes'] / 1e6:.4g} MB")
    by_kind: dict[tuple[str, str], list[float]] = {}
    for c in r["collectives"]:
        by_kind.setdefault((c["collective"], c["algorithm"]), []).append(c["time_s"])
    for (kind, algo), ts in sorted(by_kind.items()):
        lines.append(f"  {len(ts):>4} x {kind:<14} {algo:<13} {_time(sum(ts))} total")
    return "\n".join(lines)


def format_pipeline(r: dict[str, Any]) -> str:
    """The per-stage and pipeline lines under a pipeline's report."""
    from maiac.report_view import _time

    p = r["pipeline"]
    lines = ["", f"pipeline           {p['stages']} stages x {r['tensor_parallel']} chips = "
                 f"{r['chips']} chips; {p['micro_batches']} micro-batches (GPipe)",
             f"  fill             {_time(p['fill_s'])} (one micro-batch through every stage)",
             f"  steady state     one micro-batch every {_time(p['steady_interval_s'])} "
             f"({p['micro_batches_per_s']:,.0f}/s); stage balance {p['balance']:.0%}",
             f"  total            {_time(p['total_s'])}; bubble {p['bubble_fraction']:.1%} of "
             f"chip-time idle"]
    for row in r["per_stage"]:
        layers = row["layers"]
        span = f"layers {layers[0]}-{layers[1]}" if layers else "no layer names"
        lines.append(f"  stage {row['stage']:<3} {_time(row['modeled_time_s']):>12}   "
                     f"{row['ops']} ops, {span}, weights {row['weight_bytes'] / 1e6:.4g} MB, "
                     f"sends {row['sent_bytes'] / 1e3:.4g} kB (p2p {_time(row['p2p_time_s'])})")
    return "\n".join(lines)


def report_group(program_file: str, as_json: bool, html_out: str | None, top: int,
                 trace: str | None = None, tokens_per_run: int | None = None,
                 on_stdout: bool = False) -> bool:
    """``maiac report`` on a group member (False: not a group); ``on_stdout``: an output
    has stdout, so the text report goes to stderr."""
    from maiac.cli_options import progress
    from maiac.outputs import atomic_path, write_text_atomic
    from maiac.report_cmd import wrote
    from maiac.report_view import annotate, format_report, render_html
    from maiac.runtime.memory_use import memory_use

    group = load_any_group(program_file, keep_constants=False)  # timing needs no data
    if group is None:
        return False
    pipe = isinstance(group, PipelineGroup)
    n = group.total_chips if pipe else group.chips
    progress(f"simulating {n} chips")
    reports = [x for stage in group.timing() for x in stage] if pipe else group.timing()
    r = annotate(group.report(), group.programs[0].meta,
                 [ev for rep in reports for ev in rep.events], tokens_per_run)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        click.echo(format_report(r, top) + (format_pipeline(r) if pipe else format_group(r)),
                   err=on_stdout)
    if html_out is not None:
        events = [{"engine": f"chip{rank}/{ev.engine}", "name": ev.name, "start_s": ev.start,
                   "dur_s": ev.dur, "kind": ev.kind} for rank, rep in enumerate(reports)
                  for ev in rep.events]
        memory = memory_use(group.programs[0], reports[0].events, reports[0].modeled_time_s)
        write_text_atomic(html_out, render_html(r, events, f"maiac report: {n} chips",
                                                group.programs[0].target, memory),
                          "--html", (program_file,))
        wrote(html_out, as_json, on_stdout)
    if trace is not None:
        with atomic_path(trace, "--trace", (program_file,), text=True) as tmp:
            group.write_trace(tmp)
        wrote(trace, as_json, on_stdout, " (one process per chip)")
    return True
