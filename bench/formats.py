"""Element casts and quantization throughput against ml_dtypes' plain cast, in one run.

    python bench/formats.py [--n 4194304]

Prints per format: maiac's saturating ``formats.cast``, ``formats.quantize`` (scales +
codes + packing) and ml_dtypes' plain ``astype`` (no saturation), best of 5, with the
ratio to the plain cast. The claim this checks: cast costs about one ml_dtypes cast
(the clip is the only extra pass).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from maiac import progress
from maiac.runtime import formats as F


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 22, help="elements per array")
    args = ap.parse_args()
    x = (np.random.default_rng(0).standard_normal(args.n) * 3).astype(np.float32)
    print(f"{'format':<11} {'astype ms':>10} {'cast ms':>9} {'ratio':>6} "
          f"{'quantize ms':>12} {'ratio':>6}")
    for fmt in progress.track(("fp8e4m3", "fp8e5m2", "mxfp8e4m3", "mxfp6e2m3", "mxfp4", "nvfp4"),
                              "formats", label=str):
        f = F.get_format(fmt)
        plain = best_of(lambda f=f: x.astype(f.elem))
        cast = best_of(lambda f=f: F.cast(x, f.elem))
        quant = best_of(lambda fmt=fmt: F.quantize(x, fmt))
        print(f"{fmt:<11} {plain * 1e3:>10.1f} {cast * 1e3:>9.1f} {cast / plain:>6.2f} "
              f"{quant * 1e3:>12.1f} {quant / plain:>6.2f}")


if __name__ == "__main__":
    main()
