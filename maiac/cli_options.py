"""Options and argument parsing the ``maiac`` commands share (``compile``, ``run``, ``verify``,
``report``, ``perf``, ...): paths, ``--shape``, ``KEY=VALUE``, targets, plugins, progress.

Every problem is a ``MaiacError`` naming the option, which the CLI prints as one
``error:`` line with exit code 2 (maiac/cli_errors.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from maiac.runtime.errors import MaiacError


def progress(msg: str) -> None:
    """A progress line on stderr, only on a terminal and without --quiet (maiac/progress.py)."""
    from maiac import progress as live

    live.note(msg)


def existing_file(path: str, what: str = "file") -> str:
    """``path`` if it is an existing regular file, else a ``MaiacError``."""
    p = Path(path)
    if not p.exists():
        raise MaiacError(f"{path}: no such {what}")
    if not p.is_file():
        raise MaiacError(f"{path}: not a regular file")
    return path


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"input_ids=1x128"`` -> ``("input_ids", (1, 128))``; ``"x="`` is a scalar."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise MaiacError(f"--shape {text!r}: expected NAME=DIMS, e.g. input_ids=1x128")
    dims = dims.strip()
    if not dims:
        return name, ()
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise MaiacError(
            f"--shape {text!r}: dims must be positive integers joined by 'x', e.g. {name}=1x128"
        ) from None
    if any(d <= 0 for d in shape):
        raise MaiacError(f"--shape {text!r}: every dim must be a positive integer")
    from maiac.runtime.target import Target

    hbm = Target().hbm_bytes  # one byte per element would already fill the HBM
    if math.prod(shape) > hbm:
        raise MaiacError(f"--shape {text!r}: {math.prod(shape)} elements do not fit the "
                         f"{hbm} bytes of HBM of a Maia 200")
    return name, shape


def parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """All ``--shape`` options as a dict (None when there are none); duplicates are errors."""
    out: dict[str, tuple[int, ...]] = {}
    for v in values:
        name, shape = parse_shape(v)
        if name in out:
            raise MaiacError(f"--shape given twice for input {name!r}")
        out[name] = shape
    return out or None


def parse_kv(values: tuple[str, ...], option: str) -> dict[str, str] | None:
    """``("k=v", ...)`` -> ``{"k": "v"}`` for ``option`` (named in errors)."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not key or not val:
            raise MaiacError(f"{option} {v!r}: expected KEY=VALUE")
        out[key] = val
    return out or None


def check_target(target: str, params: dict[str, str] | None) -> None:
    """Fail early, before compiling, on an unknown target or target parameter."""
    try:
        from maiac.runtime.target import get_target
    except ImportError:  # target module not built yet: the driver checks instead
        return
    get_target(target, params or {})


def _compile_kwargs(quant: str | None, shape: tuple[str, ...], target: str,
                    target_param: tuple[str, ...], pipeline: str | None,
                    calib: str | None) -> dict[str, Any]:
    params = parse_kv(target_param, "--target-param")
    if calib is not None:
        existing_file(calib, "calibration file")
    check_target(target, params)
    return dict(quant=quant, shapes=parse_shapes(shape), target=target, target_params=params,
                pipeline=pipeline, calib=calib)


def compile_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``compile`` and ``verify`` share."""
    opts = [
        click.option("--quant", metavar="SPEC", default=None,
                     help="Quantization: a preset (fp8, mxfp8, mxfp6, mxfp4, nvfp4, w4a8, bf16), "
                          "w=FMT,a=FMT (w=FMT alone: weight-only), scale=floor|ceil|rceil, "
                          "calib=max|percentile=P, per-layer PATTERN=FMT|none overrides "
                          "('mxfp4;lm_head=mxfp8;layers.0.*=none'). Default: fp32."),
        click.option("--shape", metavar="NAME=1x128", multiple=True,
                     help="Bind an input's shape (input_ids=1x128) or one symbolic dim "
                          "wherever it appears (sequence=128) (repeatable)."),
        click.option("--target", default="maia200", show_default=True,
                     help="Target machine description."),
        click.option("--target-param", metavar="KEY=VALUE", multiple=True,
                     help="Override a target parameter (repeatable)."),
        click.option("-p", "--pipeline", metavar="'p1,p2{opt=v}'", default=None,
                     help="Pass pipeline to run instead of the default one."),
        click.option("--calib", metavar="DATA.npz", default=None,
                     help="Calibration inputs (.npz, one array per model input; an extra "
                          "leading axis = samples) for static activation scales (fp8, nvfp4); "
                          "default: seeded random inputs."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _set_max_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from maiac.runtime import limits

    limits.set_max_memory(None if value is None else limits.parse_size(value))


def max_memory_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-memory SIZE``: host memory a loaded program may use (runtime/limits.py)."""
    return click.option("--max-memory", metavar="SIZE", default=None, expose_value=False,
                        callback=_set_max_memory,
                        help="Host memory the program may use, e.g. 16GiB (default: "
                             "MAIAC_MAX_MEMORY, else half the RAM, at most 8 GiB).")(f)


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:  # never un-quiets a `maiac --quiet` given before the command
        from maiac import progress as live

        live.set_quiet(True)


def quiet_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--quiet/-q`` on a long-running command: as ``maiac --quiet``, no progress."""
    return click.option("--quiet", "-q", is_flag=True, expose_value=False,
                        callback=_set_quiet,
                        help="No progress on stderr (as `maiac --quiet`; none without a "
                             "terminal).")(f)


def plugin_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--load-pass-plugin FILE.py`` (repeatable): passes registered by a user's module."""
    return click.option("--load-pass-plugin", "plugins", metavar="FILE.py", multiple=True,
                        help="Import a Python file whose @register_pass passes become "
                             "usable by name (repeatable).")(f)


def load_plugins(paths: tuple[str, ...]) -> None:
    """Import each pass plugin file (errors name the file)."""
    if not paths:
        return
    from maiac.passes.registry import load_pass_plugin

    for path in paths:
        load_pass_plugin(path)


def _driver() -> Any:
    """``maiac.driver``, imported on first use (xDSL, onnx, ml_dtypes: ~1 s) under a progress
    line, so a terminal shows what the compile is doing from its start."""
    import sys

    if "maiac.driver" not in sys.modules:
        from maiac import progress as live

        with live.step("load the compiler"):
            import maiac.driver  # noqa: F401
    return sys.modules["maiac.driver"]
