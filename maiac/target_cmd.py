"""``maiac target``: the machine model's parameters with their status and source."""

from __future__ import annotations

import json

import click

from maiac.runtime.target import TARGETS, get_target


@click.command("target")
@click.argument("positional_name", metavar="[NAME]", required=False, type=click.Choice(TARGETS))
@click.option("--target", "name", default=None, type=click.Choice(TARGETS),
              help="Which named target (or give it as NAME)  [default: maia200]")
@click.option("--target-param", metavar="KEY=VALUE", multiple=True,
              help="Override a parameter (repeatable); shown with status 'override'.")
@click.option("--target-params", "param_file", metavar="FILE", default=None,
              help="A JSON or TOML file of parameter overrides.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def target_cmd(positional_name: str | None, name: str | None, target_param: tuple[str, ...],
               param_file: str | None, as_json: bool) -> None:
    """Print every target parameter: value, unit, status (public with its source,
    fitted to which published figure, assumed, or override) and the derived peaks."""
    from maiac.cli_options import parse_kv

    if positional_name and name and positional_name != name:
        raise click.UsageError(f"two targets given: {positional_name} and --target {name}")
    name = positional_name or name or "maia200"
    target = get_target(name, parse_kv(target_param, "--target-param"), param_file)
    if as_json:
        click.echo(json.dumps({"target": target.name, "n_tiles": target.n_tiles,
                               "fit": "runtime/maia200_fit.py" if name == "maia200" else None,
                               "parameters": target.params_table()}, indent=1))
    else:
        click.echo(target.describe())
