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


_MACHINE_BUILD = r"""
from pathlib import Path
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import maiac
from maiac.runtime.interpreter import _machine
from maiac.runtime.memory import release_freed_memory

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

rng = np.random.default_rng(0)
weights = [numpy_helper.from_array(rng.standard_normal((1024, 1024)).astype(np.float32)
                                   / 32, f"w{i}") for i in range(8)]  # 8 x 4 MiB
nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"],
                          [f"h{i + 1}" if i < 7 else "y"]) for i in range(8)]
graph = helper.make_graph(
    nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1024])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1024])], weights)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
del weights
program = maiac.compile(model).program
del model
release_freed_memory()
before = kib("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
_machine(program)
print((kib("VmHWM") - kib("VmRSS")) / 1024)
"""


def test_machine_build_holds_the_weights_once() -> None:
    """Building a machine writes each constant into its memory and lets the program's
    copy go, returning freed heap every 8 MiB of constants, so its peak is its end state
    plus about that: 8 weights of 4 MiB peak 7.9 MB over the built machine (32.5 MB while
    the liveness pass flagged every weight byte first, making all weight pages resident
    while the program still held its copy)."""
    done = subprocess.run([sys.executable, "-c", _MACHINE_BUILD],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    over = float(done.stdout.strip().splitlines()[-1])
    assert over < 20, f"machine build peaked {over:.1f} MB over its end state"
