"""Run every FileCheck test in tests/filecheck under plain pytest.

A test file holds its input, its pipeline and its expected output side by side. Its
``// RUN:`` line is one of

    // RUN: opt -p 'PIPELINE'                        the file's own IR is the input
    // RUN: import inputs/NAME.onnx [--shape N=AxB]... [-p 'PIPELINE']

The runner does the work in-process (parse or import, run the passes, verify, print),
then pipes the printed IR through the ``filecheck`` package with the test file as the
check file. The output also must re-parse: printed IR is always parseable.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp

from maiac.importer import import_model
from maiac.ir.onnx import make_context, parse_module
from maiac.passes.registry import parse_pipeline

HERE = Path(__file__).parent / "filecheck"
TESTS = sorted(HERE.glob("*.mlir"))


def _run_line(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith("// RUN:"):
            return shlex.split(line[len("// RUN:") :])
    raise AssertionError(f"{path.name}: no // RUN: line")


def run_test_input(path: Path) -> str:
    """The IR text the RUN line of ``path`` produces."""
    words = _run_line(path)
    command, args = words[0], words[1:]
    pipeline, shapes, model = "", {}, None
    while args:
        flag = args.pop(0)
        if flag == "-p":
            pipeline = args.pop(0)
        elif flag == "--shape":
            name, dims = args.pop(0).split("=")
            shapes[name] = tuple(int(d) for d in dims.split("x"))
        else:
            model = flag
    if command == "opt":
        module: ModuleOp = parse_module(path.read_text(), make_context())
    elif command == "import":
        module = import_model(path.parent / model, shapes)
    else:
        raise AssertionError(f"{path.name}: unknown RUN command {command!r}")
    module.verify()
    for p in parse_pipeline(pipeline) if pipeline else []:
        p.apply(Context(), module)
        module.verify()
    return str(module)


@pytest.mark.parametrize("path", TESTS, ids=[p.name for p in TESTS])
def test_filecheck(path: Path) -> None:
    output = run_test_input(path)
    parse_module(output).verify()  # printed IR re-parses
    result = subprocess.run(
        [sys.executable, "-m", "filecheck", str(path)],
        input=output, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"{result.stderr}\n--- output was ---\n{output}"
