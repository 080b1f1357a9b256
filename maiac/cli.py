"""The ``maiac`` command line: the click group and its commands, each in its own module
(compile_cmd, run_cmd, verify_cmd, report_cmd, opt_cmd, passes_cmd, perf_cli, ...; the
options they share are in cli_options).

Conventions (docs/cli.md, maiac/cli_errors.py): user errors (``MaiacError``) print one
``error: ...`` line on stderr and exit 2; click usage errors exit 2; a failed
verification exits 1; anything else is a bug: one ``internal error`` line, exit 3 (the
traceback with ``--debug``); SIGINT/SIGTERM exit 130/143. Outputs are written atomically.
Progress goes to stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

from typing import Any

import click

# Re-exported: examples and other modules import these from maiac.cli.
from maiac.cli_options import (  # noqa: F401
    check_target,
    existing_file,
    load_plugins,
    parse_kv,
    parse_shape,
    parse_shapes,
    progress,
)
from maiac.compile_cmd import format_pass_timing  # noqa: F401
from maiac.opt_cmd import make_context  # noqa: F401
from maiac.outputs import atomic_path, check_output, write_text_atomic  # noqa: F401
from maiac.report_view import format_report  # noqa: F401


class _Group(click.Group):
    """A click group whose every ending is one line and its exit code (maiac/cli_errors.py)."""

    def invoke(self, ctx: click.Context) -> Any:
        from maiac.cli_errors import guarded
        from maiac.runtime import limits

        limits.set_max_memory(None)  # --max-memory applies to this invocation only
        return guarded(ctx, lambda: super(_Group, self).invoke(ctx),
                       bool(ctx.params.get("debug")))


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


def _register_commands() -> None:
    """Every command, each from its own module (``maiac --help`` lists them by name)."""
    from maiac.compile_cmd import compile_cmd
    from maiac.eval_cli import eval_cmd
    from maiac.generate_cli import generate_cmd
    from maiac.ops_cmd import ops_cmd
    from maiac.opt_cmd import opt_cmd
    from maiac.passes_cmd import passes_cmd
    from maiac.perf_cli import perf_cmd
    from maiac.report_cmd import report_cmd
    from maiac.run_cmd import run_cmd
    from maiac.target_cmd import target_cmd
    from maiac.verify_cmd import verify_cmd

    for cmd in (compile_cmd, run_cmd, verify_cmd, opt_cmd, passes_cmd, generate_cmd, perf_cmd,
                target_cmd, ops_cmd, eval_cmd, report_cmd):
        main.add_command(cmd)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
