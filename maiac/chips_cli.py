"""The CLI side of ``--chips``: compile, run and report a tensor-parallel group.

``maiac compile --chips N`` writes one program per chip; ``maiac run`` and ``maiac report``
given any of them work on the whole group (the other files are found beside it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import click
import numpy as np

from maiac.chips import ChipGroup, load_group
from maiac.runtime.program import Program, TensorSpec


def compile_group(driver: Any, model: str, output: str, chips: int, kw: dict[str, Any]) -> None:
    from maiac.cli import progress

    t0 = time.perf_counter()
    group: ChipGroup = driver.compile(model, chips=chips, **kw)
    paths = group.save(output)
    progress(f"wrote {len(paths)} chip programs ({paths[0].name} .. {paths[-1].name}) in "
             f"{time.perf_counter() - t0:.2f} s")
    click.echo("\n".join(str(p) for p in paths))


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
              ray_address: str | None) -> bool:
    """``maiac run`` on a group member: run the group (False: not a group)."""
    from maiac.cli import _read_inputs, _summary, atomic_path, progress
    from maiac.inputs import random_inputs_for_specs

    group = load_group(program_file)
    if group is None:
        if backend != "local":
            raise click.UsageError("--backend ray runs the programs of `compile --chips N`")
        return False
    first = group.programs[0]
    if inputs is None and not input_items:
        ranges = (first.meta or {}).get("input_ranges") or {}
        feeds = random_inputs_for_specs(full_input_specs(first), seed, ranges)
        click.echo(f"no inputs given: using random inputs (seed {seed})")
    else:
        feeds = _read_inputs(inputs, input_items)
    progress(f"running {group.chips} chips ({backend})")
    t0 = time.perf_counter()
    outs = group.run(feeds, backend=backend, ray_address=ray_address)
    dt = time.perf_counter() - t0
    click.echo(f"outputs ({dt:.3f} s on the machine model, {group.chips} chips, {backend}):")
    for k, v in outs.items():
        click.echo("  " + _summary(k, v))
    if output is not None:
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in outs.items()})
        click.echo(f"wrote {output}")
    if trace is not None:
        with atomic_path(trace) as tmp:
            group.write_trace(tmp)
        click.echo(f"wrote {trace} (one process per chip)")
    return True


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


def report_group(program_file: str, as_json: bool, html_out: str | None, top: int,
                 trace: str | None = None) -> bool:
    """``maiac report`` on a group member (False: not a group)."""
    from maiac.cli import atomic_path, progress, write_text_atomic
    from maiac.report_view import annotate, format_report, render_html
    from maiac.runtime.memory_use import memory_use

    group = load_group(program_file, keep_constants=False)  # timing needs no data
    if group is None:
        return False
    progress(f"simulating {group.chips} chips")
    reports = group.timing()
    r = annotate(group.report(), group.programs[0].meta,
                 [ev for rep in reports for ev in rep.events])
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        click.echo(format_report(r, top) + format_group(r))
    if html_out is not None:
        events = [{"engine": f"chip{rank}/{ev.engine}", "name": ev.name, "start_s": ev.start,
                   "dur_s": ev.dur, "kind": ev.kind} for rank, rep in enumerate(reports)
                  for ev in rep.events]
        memory = memory_use(group.programs[0], reports[0].events, reports[0].modeled_time_s)
        write_text_atomic(html_out, render_html(r, events, f"maiac report: {group.chips} chips",
                                                group.programs[0].target, memory))
        if not as_json:
            click.echo(f"wrote {html_out}")
    if trace is not None:
        with atomic_path(trace, "--trace", (program_file,)) as tmp:
            group.write_trace(tmp)
        if not as_json:
            click.echo(f"wrote {trace} (one process per chip)")
    return True
