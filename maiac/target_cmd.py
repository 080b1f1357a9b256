"""``maiac target``: the machine model's parameters with their status and source."""

from __future__ import annotations

import json

import click

from maiac.runtime.target import TARGETS, get_target


@click.command("target")
@click.option("--target", "name", default="maia200", show_default=True,
              type=click.Choice(TARGETS), help="Which named target.")
@click.option("--target-param", metavar="KEY=VALUE", multiple=True,
              help="Override a parameter (repeatable); shown with status 'override'.")
@click.option("--target-params", "param_file", metavar="FILE", default=None,
              help="A JSON or TOML file of parameter overrides.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def target_cmd(name: str, target_param: tuple[str, ...], param_file: str | None,
               as_json: bool) -> None:
    """Print every target parameter: value, unit, status (public with its source,
    fitted to which published figure, assumed, or override) and the derived peaks."""
    from maiac.cli_options import parse_kv

    target = get_target(name, parse_kv(target_param, "--target-param"), param_file)
    if as_json:
        click.echo(json.dumps({"target": target.name, "n_tiles": target.n_tiles,
                               "fit": "runtime/maia200_fit.py" if name == "maia200" else None,
                               "parameters": target.params_table()}, indent=1))
    else:
        click.echo(target.describe())
