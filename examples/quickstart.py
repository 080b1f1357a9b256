"""Quick start: build a 2-layer transformer, compile it for Maia 200, run it, verify it
against onnxruntime and print the modeled-performance report.

    python examples/quickstart.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

import maiac
from maiac.cli import format_report
from maiac.inputs import random_inputs
from maiac.verify import format_table, verify


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=None, help="where to write model.onnx / model.maia")
    args = ap.parse_args()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="maiac-quickstart-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. An example model: a 2-layer decoder-only transformer with random weights.
    from maiac import models

    model = models.transformer(layers=2)
    onnx_path = out_dir / "transformer.onnx"
    onnx.save(model, onnx_path)
    print(f"[1/4] built {onnx_path} "
          f"({len(model.graph.node)} ONNX nodes, inputs: "
          f"{', '.join(i.name for i in model.graph.input)})")

    # 2. Compile it for the Maia 200 machine model and save the program.
    compiled = maiac.compile(str(onnx_path))
    maia_path = out_dir / "transformer.maia"
    compiled.save(maia_path)
    print(f"[2/4] compiled to {maia_path} in {compiled.compile_s:.2f} s "
          f"({len(compiled.program.instructions)} instructions)")

    # 3. Run it on seeded random inputs (token ids stay inside the vocabulary).
    feeds = random_inputs(model, None, seed=0)
    outputs = compiled.run(feeds)
    for name, value in outputs.items():
        print(f"[3/4] ran: output {name} shape {tuple(value.shape)} dtype {value.dtype}")

    # 4. Verify against onnxruntime (fp32: rtol 1e-4, atol 1e-5) and report.
    result = verify(str(onnx_path), inputs=feeds)
    print("[4/4] verify against onnxruntime:\n")
    print(format_table(result))
    print("\nmodeled performance on maia200:\n")
    print(format_report(compiled.report(), top=10))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
