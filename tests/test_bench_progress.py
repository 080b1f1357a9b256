"""Every bench script shows progress the way the ``maiac`` commands do (maiac/progress.py):
a live display on a terminal, ``--quiet``/``-q`` to silence it, nothing without a
terminal, and the printed results the same bytes either way."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from maiac import progress
from tests.test_progress import spawn

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py")
                 if any(isinstance(n, ast.FunctionDef) and n.name == "main"
                        for n in ast.parse(p.read_text()).body))


def _calls(tree: ast.AST) -> set[str]:
    """``module.function`` of every call of an attribute of a name (``progress.step``)."""
    return {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)}


def test_there_are_bench_scripts() -> None:
    assert len(SCRIPTS) >= 13, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_bench_script_uses_the_shared_progress(script: Path) -> None:
    """A new bench script fails here until it parses its options with
    ``progress.argument_parser`` (so it takes ``--quiet``) and shows its long steps with
    ``progress.track`` or ``progress.step``."""
    calls = _calls(ast.parse(script.read_text()))
    assert "argparse.ArgumentParser" not in calls, \
        f"{script.name}: use progress.argument_parser (it adds --quiet/-q)"
    assert "progress.argument_parser" in calls, script.name
    assert calls & {"progress.track", "progress.step"}, \
        f"{script.name}: no progress.track/progress.step around its long steps"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_bench_script_takes_quiet(script: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Its parser, as built by its own main (``--help`` stops before any work), has
    ``-q/--quiet``."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # fit_paper.py adds bench/ to it
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 0
    assert "-q, --quiet" in capsys.readouterr().out, script.name


def test_quiet_option_silences_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in ("-q", "--quiet"):
        monkeypatch.setattr(progress, "_quiet", False)
        parser = progress.argument_parser("x")
        parser.add_argument("--n", type=int, default=1)
        args = parser.parse_args([flag, "--n", "3"])
        assert args.quiet and args.n == 3 and progress._quiet
    monkeypatch.setattr(progress, "_quiet", False)
    assert not progress.argument_parser("x").parse_args([]).quiet
    assert not progress._quiet


def test_track_yields_every_item_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIAC_QUIET", "1")
    assert list(progress.track([3, 1, 2], "x", label=str)) == [3, 1, 2]
    assert progress._live is None


NETWORK = [sys.executable, str(BENCH / "paper_network.py"), "--json"]


def test_bench_progress_on_a_terminal_beside_json_on_stdout() -> None:
    """On a terminal the display names the step and counts it; the JSON on stdout is the
    same bytes as without a terminal, and ``-q`` leaves stderr empty."""
    rc, out, err = spawn(NETWORK, tty=True)
    assert rc == 0, err
    assert re.search(r"maiac paper_network: all-gather on 8 chips.* \d+/8 \d:\d\d:\d\d", err), err
    rc_pipe, out_pipe, err_pipe = spawn(NETWORK, tty=False)
    assert rc_pipe == 0 and out_pipe == out and "maiac" not in err_pipe
    assert out.startswith(b"{") and b"maiac" not in out
    rc, out_quiet, err_quiet = spawn([*NETWORK, "-q"], tty=True)
    assert rc == 0 and out_quiet == out and err_quiet == "", err_quiet


PRINTS_WHILE_LIVE = """import time
from maiac import progress
for i in progress.track(["a", "b"], "rows", label=str):
    time.sleep(0.3)
    print(f"row {i}", flush=True)
"""


def test_rows_printed_while_the_display_is_live_reach_stdout_unchanged() -> None:
    """A table printed row by row under a live display (bench/chips.py) still goes to
    stdout, byte for byte, not to the terminal the display draws on."""
    rc, out, err = spawn([sys.executable, "-c", PRINTS_WHILE_LIVE], tty=True)
    assert rc == 0, err
    assert out == b"row a\nrow b\n" and "row a" not in err
    assert re.search(r"maiac rows: [ab] .* [01]/2", err), err
