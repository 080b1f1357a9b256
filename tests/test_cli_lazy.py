"""``maiac`` imports a command's module only when that command runs (click's lazy group):
``maiac --version`` and the light commands do not pay for onnx, ml_dtypes and xDSL."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

import maiac.cli as cli

HEAVY = ("onnx", "ml_dtypes", "xdsl")


def _imports_after(code: str) -> set[str]:
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    probe = (f"import sys\n{code}\n"
             f"print('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("imported:"))
    return set(filter(None, line.removeprefix("imported:").split(",")))


def test_the_cli_and_version_import_no_heavy_package() -> None:
    code = ("from maiac.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0")
    assert _imports_after(code) == set()


def test_a_light_command_imports_only_its_module() -> None:
    code = ("import click\nfrom maiac.cli import main\n"
            "ctx = main.make_context('maiac', ['target'])\n"
            "assert main.get_command(ctx, 'target').name == 'target'")
    assert _imports_after(code) == set()


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_no_command_module_imports_a_heavy_package(name: str) -> None:
    """Loading a command (``maiac perf --help``, the line that says it loads) costs no
    onnx / xDSL / ml_dtypes import (~1 s): a command imports them when it runs."""
    assert _imports_after(f"import {cli.COMMANDS[name][0]}") == set()


def test_generate_lists_the_kv_formats_of_kv_cache() -> None:
    from maiac.generate_cli import KV_FORMATS
    from maiac.kv_cache import KV_DTYPES

    assert KV_FORMATS == tuple(KV_DTYPES)


def test_every_command_loads_under_its_name() -> None:
    ctx = click.Context(cli.main)
    assert cli.main.list_commands(ctx) == sorted(cli.COMMANDS)
    for name in cli.COMMANDS:
        cmd = cli.main.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
    assert sorted(cli.main.commands) == sorted(cli.COMMANDS)  # the docs and tests walk it
    assert cli.main.get_command(ctx, "no-such-command") is None


def test_reexports_are_importable_and_others_are_not() -> None:
    from maiac.cli import format_pass_timing, format_report, parse_shape

    assert callable(format_report) and callable(format_pass_timing)
    assert parse_shape("x=1x2") == ("x", (1, 2))
    for name in cli.REEXPORTS:
        assert getattr(cli, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        cli.no_such_name  # noqa: B018


@pytest.mark.parametrize("quiet", [[], ["-q", "compile"], ["compile", "-q"],
                                   ["compile", "--quiet"]])
def test_loading_a_command_shows_progress_unless_quiet(quiet: list[str]) -> None:
    """On a terminal a line names the command while its module loads (up to ~2 s for the
    ones that import onnx); ``-q`` before or after the command's name silences it."""
    from tests.test_progress import spawn

    args = [*quiet, "--help"] if quiet else ["compile", "--help"]
    rc, out, err = spawn([sys.executable, "-m", "maiac", *args], tty=True)
    assert rc == 0 and b"Usage: maiac compile" in out, err
    if quiet:
        assert err == "", err
    else:
        assert "maiac load the compile command" in err, err
