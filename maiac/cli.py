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

import importlib
import sys
from typing import Any

import click

# name -> (module, attribute): each command is imported when it is used, so `maiac
# --version` or `maiac run` does not import onnx, ml_dtypes and xDSL for the others
COMMANDS = {
    "compile": ("maiac.compile_cmd", "compile_cmd"), "run": ("maiac.run_cmd", "run_cmd"),
    "verify": ("maiac.verify_cmd", "verify_cmd"), "opt": ("maiac.opt_cmd", "opt_cmd"),
    "passes": ("maiac.passes_cmd", "passes_cmd"),
    "generate": ("maiac.generate_cli", "generate_cmd"),
    "perf": ("maiac.perf_cli", "perf_cmd"), "target": ("maiac.target_cmd", "target_cmd"),
    "ops": ("maiac.ops_cmd", "ops_cmd"), "eval": ("maiac.eval_cli", "eval_cmd"),
    "report": ("maiac.report_cmd", "report_cmd"),
}

# Re-exported (examples and other modules import these from maiac.cli), imported on use.
REEXPORTS = {
    **dict.fromkeys(("check_target", "existing_file", "load_plugins", "parse_kv",
                     "parse_shape", "parse_shapes", "progress"), "maiac.cli_options"),
    "format_pass_timing": "maiac.compile_cmd", "make_context": "maiac.opt_cmd",
    **dict.fromkeys(("atomic_path", "check_output", "write_text_atomic"), "maiac.outputs"),
    "format_report": "maiac.report_view",
}


def __getattr__(name: str) -> Any:
    if name in REEXPORTS:
        return getattr(importlib.import_module(REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Group(click.Group):
    """A click group whose every ending is one line and its exit code (maiac/cli_errors.py),
    and whose commands (``COMMANDS``) are imported when one is looked up (click's lazy
    group). ``commands`` is every command, importing them all (``maiac --help``, docs)."""

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        for name in COMMANDS:
            self._command(name)
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = dict(value)

    def _command(self, name: str) -> click.Command | None:
        if name not in self._loaded and name in COMMANDS:
            module, attribute = COMMANDS[name]
            if module not in sys.modules:  # onnx, xDSL, ml_dtypes: up to ~2 s on a terminal
                from maiac import progress

                with progress.step(f"load the {name} command"):
                    importlib.import_module(module)
            self._loaded[name] = getattr(sys.modules[module], attribute)
        return self._loaded.get(name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        # the command's own -q is parsed only once its module is loaded: the display while
        # it loads obeys -q before or after the command's name already
        given = args[:args.index("--")] if "--" in args else args
        if ctx.params.get("quiet") or {"-q", "--quiet"} & set(given):
            from maiac import progress

            progress.set_quiet(True)
        return super().resolve_command(ctx, args)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._loaded[name] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._command(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._loaded, *COMMANDS})

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


if __name__ == "__main__":  # pragma: no cover
    main()
