"""Converting a user's input array to the dtype a program takes: exact, or an error.

The rules (docs/cli.md "Inputs"): integers convert only when every value fits the
program's integer type (a uint64 id >= 2^63 is not silently read as a negative one);
floats convert to a narrower float by rounding to nearest, and a finite value that
overflows it (1e300 into float32) is an error, not an infinity; any other conversion
(float to int, int to float) must be lossless. Out-of-vocabulary ids are caught by the
machine's gather, which names the op and the table size.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from maiac.runtime.errors import MaiacError


def _limits(dt: np.dtype) -> tuple[float, float]:
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return info.min, info.max
    return -float(np.finfo(dt).max), float(np.finfo(dt).max)


def convert_input(name: str, arr: np.ndarray, want: np.dtype, want_name: str) -> np.ndarray:
    """``arr`` as ``want`` (see the module docstring); ``MaiacError`` naming input ``name``."""
    arr = np.asarray(arr)
    if arr.dtype == want:
        return arr
    src = arr.dtype
    if src.kind not in "biuf" and src.name != "bfloat16":
        raise MaiacError(f"input {name!r}: dtype {src} cannot be converted to {want_name}")
    if arr.size and src.kind in "iu" and want.kind in "iu":
        lo, hi = _limits(want)
        amin, amax = arr.min(), arr.max()
        if int(amin) < lo or int(amax) > hi:
            bad = int(amax) if int(amax) > hi else int(amin)
            raise MaiacError(f"input {name!r}: value {bad} of dtype {src} does not fit "
                             f"{want_name} (range [{lo}, {hi}])")
        return arr.astype(want)
    wide = arr.astype(np.float64) if src.name == "bfloat16" else arr
    is_float = want.kind == "f" or want.name == "bfloat16"
    if arr.size and (src.kind == "f" or src.name == "bfloat16") and is_float:
        finite = np.isfinite(wide)
        if finite.any():
            big = float(np.abs(wide[finite]).max())
            lim = float(ml_dtypes.finfo(want).max)
            if big > lim:
                raise MaiacError(f"input {name!r}: value {big:.4g} of dtype {src} overflows "
                                 f"{want_name} (largest {lim:.4g})")
        with np.errstate(all="ignore"):
            return arr.astype(want)  # rounded to nearest: documented
    with np.errstate(all="ignore"):
        conv = arr.astype(want)
        same = np.array_equal(conv.astype(src), arr, equal_nan=src.kind == "f")
    if not same:
        raise MaiacError(f"input {name!r} has dtype {src} which does not convert "
                         f"losslessly to {want_name}")
    return conv
