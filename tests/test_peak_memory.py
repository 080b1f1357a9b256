"""Peak memory of a run against onnxruntime's (issue 12: at most 2x), and no growth when a
process compiles again: each measured in a fresh subprocess by peak RSS (VmHWM) over a
baseline, the way bench/interpreter.py reports it, with a margin over the measured ratio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "interpreter.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="peak RSS reset needs Linux /proc")


def _child_mb(engine: str, row: str) -> float:
    done = subprocess.run([sys.executable, str(BENCH), "--child", engine, "--only", row],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_small_export_run_peak_within_2x_onnxruntime() -> None:
    """bert_dynamo: compile + run adds 2.7 MB (its machine's TSRAM pages on 36 tiles 1.6,
    the program and machine 1.1) against onnxruntime's 1.5-1.7 MB: 1.6-1.8x. It was
    4.3 MB (2.5-2.7x) while the compile's xDSL module (cycles) lived until the collector
    ran and a value cache kept every compile's attributes. The bound has ~0.5 MB margin
    over the aim (RSS moves by a few pages between runs)."""
    ours, theirs = _child_mb("maiac", "bert_dynamo"), _child_mb("ort", "bert_dynamo")
    assert ours <= 2 * theirs + 0.5, (ours, theirs)


_RECOMPILE = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import interpreter as bench
import maiac
from maiac.runtime.memory import release_freed_memory

model, feeds, opts = bench.cases()["bert_dynamo (tests/data)"]()
sizes = []
for _ in range(6):
    maiac.compile(model, **opts).run(feeds)
    release_freed_memory()
    sizes.append(bench._status_kib("VmRSS") / 1024)
print(sizes[-1] - sizes[1])
"""


def test_compiling_again_does_not_grow_the_process() -> None:
    """Four more compiles and runs of a small export after the warm-up ones leave the RSS
    where it was (measured +0.0-0.1 MB; 0.4 MB a compile before the attribute value
    cache was dropped at the end of each compile)."""
    done = subprocess.run([sys.executable, "-c", _RECOMPILE, str(BENCH.parent)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = float(done.stdout.strip().splitlines()[-1])
    assert grown < 0.8, f"RSS grew {grown:.2f} MB over 4 compiles"
