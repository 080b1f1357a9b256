"""Write a fusion pass and plug it in: ``fuse-erf-gelu`` from examples/my_passes.py.

Compiles a 2-layer ``maiac.models.transformer`` twice, with and without the pass, and
shows what changed: ops in the `maia` IR, instructions in the program, modeled time, the
pass's time (``--pass-timing``) and that the outputs still match onnxruntime. First
through the Python API, then through the CLI with ``--load-pass-plugin``.

    python examples/custom_pass.py

The guide that walks through my_passes.py line by line is docs/pass-authors.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

import maiac
from maiac import models
from maiac.cli import format_pass_timing
from maiac.driver import compile_to_ir
from maiac.verify import verify

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import my_passes  # noqa: E402  (importing registers fuse-erf-gelu)

BASE = "fold-constants,canonicalize,lower-onnx-to-maia,tile,plan-memory"
FUSED = BASE.replace("lower-onnx-to-maia", "lower-onnx-to-maia,fuse-erf-gelu")


def maia_ops(path: Path, pipeline: str) -> dict[str, int]:
    """Count of each op in the `maia` tensor IR (``--emit maia``) under ``pipeline``."""
    text = compile_to_ir(str(path), emit="maia", pipeline=pipeline)
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if '= "maia.' in line:
            op = line.split('= "', 1)[1].split('"', 1)[0]
            fn = line.split('fn = "', 1)[1].split('"', 1)[0] if 'fn = "' in line else ""
            key = f"{op}{{{fn}}}" if fn else op
            counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="maiac-custom-pass-"))
    path = tmp / "transformer.onnx"
    onnx.save(models.transformer(layers=2), path)

    # 1. The Python API: a pipeline string naming the pass, or a list with a pass object.
    print(f"pipeline without the pass: {BASE}\npipeline with it:          {FUSED}\n")
    plain = maiac.compile(str(path), pipeline=BASE)
    fused = maiac.compile(str(path), pipeline=[*BASE.split(",")[:3],
                                               my_passes.FuseErfGeluPass(tol=1e-5),
                                               *BASE.split(",")[3:]])
    before, after = maia_ops(path, BASE), maia_ops(path, FUSED)
    print(f"{'maia op':<26} {'before':>7} {'after':>7}")
    for key in sorted(set(before) | set(after)):
        if before.get(key, 0) != after.get(key, 0):
            print(f"{key:<26} {before.get(key, 0):>7} {after.get(key, 0):>7}")
    print(f"{'all ops':<26} {sum(before.values()):>7} {sum(after.values()):>7}")
    t0, t1 = plain.report()["modeled_time_s"], fused.report()["modeled_time_s"]
    print(f"{'instructions':<26} {len(plain.program.instructions):>7} "
          f"{len(fused.program.instructions):>7}")
    print(f"{'modeled time (us)':<26} {t0 * 1e6:>7.2f} {t1 * 1e6:>7.2f}\n")
    print(format_pass_timing(fused.log))
    result = verify(str(path), pipeline=FUSED)
    print(f"\nverify with the pass: {'PASS' if result['ok'] else 'FAIL'} "
          f"(cosine {result['outputs'][0]['cosine']:.6f})\n")

    # 2. The CLI: load the plugin file, name the pass in --pipeline, print the IR after it.
    cmd = [sys.executable, "-m", "maiac", "compile", str(path), "-o", str(tmp / "m.maia"),
           "--load-pass-plugin", str(HERE / "my_passes.py"), "--pipeline", FUSED,
           "--print-ir-after=fuse-erf-gelu", "--pass-timing"]
    print("$ maiac compile transformer.onnx -o m.maia --load-pass-plugin examples/my_passes.py "
          f"\\\n    --pipeline '{FUSED}' \\\n    --print-ir-after=fuse-erf-gelu --pass-timing")
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    gelu = [line.strip() for line in run.stderr.splitlines() if 'fn = "gelu"' in line]
    print(f"exit {run.returncode}; IR after fuse-erf-gelu has {len(gelu)} gelu ops, e.g.\n"
          f"  {gelu[0] if gelu else '(none)'}")
    print("\n".join(line for line in run.stderr.splitlines()
                    if line.startswith(("pass ", "fuse-erf-gelu ", "total "))))
    ok = run.returncode == 0 and len(gelu) == 2 and result["ok"]
    ok = ok and sum(after.values()) < sum(before.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
