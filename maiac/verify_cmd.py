"""``maiac verify``: compile, run, and compare with onnxruntime (exit 1 on a mismatch)."""

from __future__ import annotations

import json
import sys

import click

from maiac.cli_options import (
    _compile_kwargs,
    compile_options,
    existing_file,
    load_plugins,
    plugin_option,
    progress,
    quiet_option,
)
from maiac.shape_errors import shape_errors_explained


@click.command("verify")
@click.argument("model")
@compile_options
@click.option("--inputs", metavar="IN.npz", default=None,
              help="Inputs by name (default: seeded random inputs).")
@click.option("--rtol", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--atol", type=click.FloatRange(0), default=1e-5, show_default=True)
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=0.99, show_default=True,
              help="Pass threshold per output when --quant is set.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--reference", metavar="OUT.npz", default=None,
              help="Compare against stored outputs instead of running onnxruntime.")
@click.option("--ort-custom-op-lib", metavar="PATH", default=None,
              help="Custom-op library onnxruntime registers before loading MODEL.")
@plugin_option
@quiet_option
def verify_cmd(model: str, quant: str | None, shape: tuple[str, ...], target: str,
               target_param: tuple[str, ...], pipeline: str | None, calib: str | None,
               inputs: str | None, rtol: float, atol: float, min_cosine: float, seed: int,
               as_json: bool, reference: str | None, ort_custom_op_lib: str | None,
               plugins: tuple[str, ...]) -> None:
    """Compile MODEL, run it and onnxruntime on the same inputs, compare (exit 1 on mismatch)."""
    from maiac.verify import format_table, verify

    existing_file(model, "model file")
    if ort_custom_op_lib is not None:  # before compiling: a wrong path costs nothing
        existing_file(ort_custom_op_lib, "--ort-custom-op-lib library")
    load_plugins(plugins)
    if inputs is not None:
        existing_file(inputs, "inputs file")
    kw = _compile_kwargs(quant, shape, target, target_param, pipeline, calib)
    progress(f"verifying {model}")
    if reference is not None:
        existing_file(reference, "reference file")
    with shape_errors_explained(kw["shapes"]):
        result = verify(model, inputs=inputs, rtol=rtol, atol=atol, min_cosine=min_cosine,
                        seed=seed, reference=reference, ort_custom_op_lib=ort_custom_op_lib,
                        **kw)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
    if not result["ok"]:
        sys.exit(1)
