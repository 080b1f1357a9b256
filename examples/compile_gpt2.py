"""Compile a GPT-2 export for Maia 200, show the time per pass, and verify it.

Uses the Hugging Face GPT-2 exported by torch.onnx in tests/data (random weights, see
tests/data/MANIFEST.json) with its stored inputs and torch reference outputs. When no
export is there, or maiac cannot compile it yet, it builds a GPT-2-shaped decoder with
``maiac.models.transformer`` instead and says so.

    python examples/compile_gpt2.py [--model PATH.onnx]

The same from the command line:

    maiac compile tests/data/gpt2_dynamo.onnx -o gpt2.maia --shape input_ids=2x8 \\
        --shape attention_mask=2x8 --pass-timing
    maiac verify tests/data/gpt2_dynamo.onnx --inputs tests/data/gpt2_dynamo.inputs.npz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

import maiac
from maiac.cli import format_pass_timing, format_report
from maiac.runtime.errors import MaiacError
from maiac.verify import format_table, verify

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
EXPORTS = ("gpt2_dynamo.onnx", "gpt2_torchscript.onnx")


def stored_inputs(model: Path) -> dict[str, np.ndarray] | None:
    """The inputs saved next to an export (``NAME.inputs.npz``), if any."""
    path = model.with_name(model.stem + ".inputs.npz")
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def compile_export(path: Path) -> tuple[maiac.driver.CompiledModel, dict[str, np.ndarray] | None]:
    """Compile ``path`` with shapes bound from its stored inputs."""
    feeds = stored_inputs(path)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()} if feeds else None
    return maiac.compile(str(path), shapes=shapes), feeds


def pick_model(explicit: str | None, tmp: Path) -> tuple[Path, maiac.driver.CompiledModel,
                                                          dict[str, np.ndarray] | None]:
    """The first GPT-2 export that compiles, else a ``maiac.models.transformer``."""
    candidates = [Path(explicit)] if explicit else [DATA / name for name in EXPORTS]
    for path in candidates:
        if not path.is_file():
            print(f"note: {path} does not exist")
            continue
        try:
            compiled, feeds = compile_export(path)
        except MaiacError as err:
            print(f"note: maiac cannot compile {path.name} yet: {err}")
            continue
        print(f"model: {path} (Hugging Face GPT-2 exported by torch.onnx)")
        return path, compiled, feeds
    from maiac import models

    path = tmp / "gpt2_like.onnx"
    onnx.save(models.transformer(layers=2, seq=8, d_model=64, heads=4, vocab=256), path)
    print(f"model: {path} (maiac.models.transformer: a GPT-2-shaped decoder, no export used)")
    return path, maiac.compile(str(path)), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a GPT-2 .onnx (default: tests/data export)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="maiac-gpt2-"))

    path, compiled, feeds = pick_model(args.model, tmp)
    print(f"\ncompiled in {compiled.compile_s:.2f} s, "
          f"{len(compiled.program.instructions)} instructions; time per pass:\n")
    print(format_pass_timing(compiled.log))

    # Run on the machine model and compare with onnxruntime on the same inputs.
    result = verify(str(path), shapes={k: v.shape for k, v in feeds.items()} if feeds else None,
                    inputs=feeds)
    print("\nverify against onnxruntime:\n")
    print(format_table(result))

    # The export also stored what torch computed: compare with that too.
    ref_path = path.with_name(path.stem + ".ref.npz")
    if feeds is not None and ref_path.is_file():
        outputs = compiled.run(feeds)
        with np.load(ref_path) as ref:
            for name in ref.files:
                if name in outputs:
                    diff = float(np.max(np.abs(outputs[name] - ref[name])))
                    print(f"\nvs torch ({ref_path.name}): {name} max |diff| = {diff:.2e}")

    print("\nmodeled performance on maia200:\n")
    print(format_report(compiled.report(), top=8))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
