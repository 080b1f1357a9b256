"""``maiac report``: the timing model's view of a compiled program (text, JSON, HTML,
Chrome/Perfetto trace). Needs no data: shape-only programs work."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maiac.cli_options import existing_file, max_memory_option, progress, quiet_option
from maiac.outputs import STDOUT, check_output, stdout_claimed, write_text_atomic
from maiac.report_view import _report_json, _timeline, annotate, format_report, render_html
from maiac.runtime.errors import MaiacError


@click.command("report")
@click.argument("program_file", metavar="MODEL.maia")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable keys: added, never renamed).")
@click.option("--html", "html_out", metavar="REPORT.html", default=None,
              help="Write a self-contained HTML page: roofline, timeline, memory over time, ops table "
                   "(- : stdout).")
@click.option("--top", default=30, show_default=True, type=click.IntRange(0),
              help="Ops shown in the table (0 = all).")
@click.option("--trace", metavar="TRACE.json", default=None,
              help="Write a Chrome/Perfetto trace of the modeled timeline (no data needed: "
                   "works for --shape-only programs; - : stdout).")
@click.option("--tokens-per-run", type=click.IntRange(1), default=None,
              help="Tokens one run produces, for tokens/s (default: from the graph when it "
                   "is a KV-cache decoder: batch for a decode step, batch x seq for a prefill).")
@max_memory_option
@quiet_option
def report_cmd(program_file: str, as_json: bool, html_out: str | None, top: int,
               trace: str | None, tokens_per_run: int | None) -> None:
    """Model the time of a compiled program: roofline fraction, memory, per-engine, per-op."""
    existing_file(program_file, "program file")
    outputs = (("--html", html_out), ("--trace", trace))
    for opt, path in outputs:
        if path is not None:
            check_output(path, opt, (program_file,), text=True)
    on_stdout = stdout_claimed(outputs, "--json" if as_json else None)
    if html_out is not None and trace is not None and Path(html_out).resolve() == \
            Path(trace).resolve():
        raise MaiacError(f"--html and --trace name the same file {trace}")
    from maiac.chips_cli import report_group
    from maiac.runtime.program import load_program
    from maiac.runtime.timing import simulate

    if report_group(program_file, as_json, html_out, top, trace, tokens_per_run, on_stdout):
        return
    program = load_program(program_file, keep_constants=False)  # timing needs no data
    progress(f"simulating {program_file}")
    rep = simulate(program)
    r = annotate(_report_json(rep), program.meta, rep.events, tokens_per_run)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:  # on stderr when a file output has stdout
        click.echo(format_report(r, top), err=on_stdout)
    if html_out is not None:
        from maiac.runtime.memory_use import memory_use

        page = render_html(r, _timeline(rep, r), f"maiac report: {Path(program_file).name}",
                           program.target, memory_use(program, rep.events, rep.modeled_time_s))
        write_text_atomic(html_out, page, "--html", (program_file,))
        wrote(html_out, as_json, on_stdout)
    if trace is not None:
        from maiac.runtime.trace import chrome_trace

        write_text_atomic(trace, json.dumps(chrome_trace(rep), separators=(",", ":")),
                          "--trace", (program_file,))
        wrote(trace, as_json, on_stdout)


def wrote(path: str, as_json: bool, on_stdout: bool, note: str = "") -> None:
    """The ``wrote FILE`` line of an output (none for stdout or with --json; on stderr
    when an output has stdout)."""
    if path != STDOUT and not as_json:
        click.echo(f"wrote {path}{note}", err=on_stdout)
