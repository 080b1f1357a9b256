"""Every script in examples/ runs as a user would run it: a subprocess, exit 0, < 30 s."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 300  # a hung example, not a slow machine (speed is measured under bench/)
LIBRARIES = {"my_passes.py"}  # imported by other examples, nothing to run

# What each example must print, so a script that "succeeds" silently still fails.
EXPECT = {
    "quickstart.py": ["PASS"],
    "compile_gpt2.py": ["model: ", "time per pass", "PASS"],
    "compare_formats.py": ["fp32", "mxfp4", "nvfp4"],
    "custom_pass.py": ["maia.unary{gelu}", "verify with the pass: PASS", "exit 0"],
    "inspect_trace.py": ["busiest engine:", "top ops"],
}


def scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in LIBRARIES)


def test_every_example_is_covered() -> None:
    assert set(scripts()) == set(EXPECT), "add the new example to EXPECT"


@pytest.mark.parametrize("name", scripts())
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert run.returncode == 0, f"{name} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    for needle in EXPECT.get(name, []):
        assert needle in run.stdout, f"{name}: {needle!r} not in output:\n{run.stdout}"
