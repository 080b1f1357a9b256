"""Progress on stderr: live on a terminal (a pseudo-tty here), absent without one or with
``--quiet``."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from maiac import progress

DATA = Path(__file__).parent / "data"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def spawn(cmd: list[str], tty: bool) -> tuple[int, bytes, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal or a pipe, stdout on a pipe. Returns
    the exit code, stdout and stderr with the terminal's control sequences removed."""
    env = {k: v for k, v in os.environ.items() if k != "MAIAC_QUIET"}
    env.update(TERM="xterm", COLUMNS="120")
    if not tty:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                           timeout=600)
        return p.returncode, p.stdout, ANSI.sub(b"", p.stderr).decode(errors="replace")
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=slave,
                                env=env)
        os.close(slave)
        data = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        os.close(master)
        rc = proc.wait(timeout=600)
        stdout.seek(0)
        return rc, stdout.read(), ANSI.sub(b"", bytes(data)).decode(errors="replace")


def _run(args: list[str], tty: bool) -> tuple[int, str]:
    """Run ``python -m maiac ARGS``: the exit code and stderr (see ``spawn``)."""
    rc, _, err = spawn([sys.executable, "-m", "maiac", *args], tty)
    return rc, err


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_cli import invoke

    out = tmp_path_factory.mktemp("progress") / "gpt2.maia"
    assert invoke("compile", str(DATA / "gpt2_dynamo.onnx"), "-o", str(out)).exit_code == 0
    return out


SLOW_PASS = '''import time

from xdsl.passes import ModulePass

from maiac.passes import register_pass


@register_pass
class SlowPass(ModulePass):
    """Takes a second: the display must show it by name while it runs."""

    name = "slow-pass"

    def apply(self, ctx, op) -> None:
        time.sleep(1.0)
'''


def test_compile_progress_on_a_terminal(tmp_path: Path) -> None:
    from maiac.driver import default_pipeline

    plugin = tmp_path / "slow.py"  # compiles got fast (0.2 s for GPT-2): a pass that is not
    plugin.write_text(SLOW_PASS)
    rc, err = _run(["compile", str(DATA / "gpt2_dynamo.onnx"), "-o", str(tmp_path / "a.maia"),
                    "--load-pass-plugin", str(plugin), "-p",
                    f"slow-pass,{default_pipeline()}"], tty=True)
    assert rc == 0, err
    assert "maiac: compiling" in err  # the note line
    # the live display: step name, pass name, count of passes, elapsed time
    assert re.search(r"maiac compile: slow-pass .* \d+/\d+ \d:\d\d:\d\d", err), err[-2000:]


def test_run_shows_a_bar_over_instructions(program: Path) -> None:
    rc, err = _run(["run", str(program)], tty=True)
    assert rc == 0, err
    assert "maiac: running" in err and "maiac run on the machine model" in err


def test_no_progress_without_a_terminal(program: Path) -> None:
    rc, err = _run(["run", str(program)], tty=False)
    assert rc == 0, err
    assert "maiac" not in err and "running" not in err


def test_no_progress_with_quiet(program: Path) -> None:
    rc, err = _run(["--quiet", "run", str(program)], tty=True)
    assert rc == 0, err
    assert "maiac" not in err and "running" not in err


def test_step_is_a_no_op_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIAC_QUIET", "1")
    assert not progress.enabled()
    with progress.step("x", total=3) as bar:
        bar.update("y", completed=1)
        bar.advance()
    assert progress._live is None



def test_no_progress_with_quiet_after_the_command(program: Path) -> None:
    rc, err = _run(["run", "-q", str(program)], tty=True)
    assert rc == 0, err
    assert "maiac" not in err and "running" not in err


# each command's required arguments (parsed only: nothing runs)
LONG_RUNNING = {"compile": ["m.onnx"], "run": ["m.maia"], "verify": ["m.onnx"],
                "report": ["m.maia"], "perf": ["llama3-8b"], "generate": ["m.onnx"],
                "eval": ["m.onnx", "--text", "t.txt", "--tokenizer", "tokenizer.json"]}


@pytest.mark.parametrize("command", sorted(LONG_RUNNING))
@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_every_long_running_command_takes_quiet(command: str, flag: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quiet``/``-q`` after the command silences progress as ``maiac -q`` does."""
    from maiac.cli import main

    monkeypatch.setattr(progress, "_quiet", False)
    ctx = main.make_context("maiac", [command])
    cmd = main.get_command(ctx, command)
    assert cmd is not None
    cmd.make_context(command, [*LONG_RUNNING[command], flag], parent=ctx)
    assert progress._quiet, f"maiac {command} {flag}"
