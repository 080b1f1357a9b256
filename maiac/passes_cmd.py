"""``maiac passes``: every registered pass with its options, or the default pipeline."""

from __future__ import annotations

import json
from typing import Any

import click

from maiac.cli_options import _driver, load_plugins, plugin_option


def _pass_info(entry: Any) -> tuple[str, list[str]]:
    """One-line description and option strings (``name: type = default``) of a pass."""
    from maiac.passes.registry import pass_options

    desc = getattr(entry, "description", None)
    if not isinstance(desc, str) or not desc:
        doc = (getattr(entry, "__doc__", None) or "").strip()
        desc = doc.splitlines()[0] if doc else ""
    return desc.replace("``", "`"), pass_options(entry)


def _pass_json(name: str, entry: Any) -> dict[str, Any]:
    """``maiac passes --json`` row: name, description, options as name/type/default."""
    from maiac.passes.registry import get_pass_option_infos

    desc, _ = _pass_info(entry)
    return {"name": name, "description": desc,
            "options": [{"name": i.name.replace("_", "-"),
                         "type": i.expected_type.strip("'"), "default": i.default_value}
                        for i in get_pass_option_infos(entry)]}


@click.command("passes")
@click.option("--pipeline", "show_pipeline", is_flag=True,
              help="Print the default pipeline (for --quant) in --pipeline syntax, to edit "
                   "and pass back.")
@click.option("--quant", metavar="SPEC", default=None,
              help="With --pipeline: the quantization spec the pipeline is for.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: each pass's name, description and options (name, type, "
                   "default); with --pipeline, the pipeline string.")
@plugin_option
def passes_cmd(show_pipeline: bool, quant: str | None, as_json: bool,
               plugins: tuple[str, ...]) -> None:
    """List every registered pass with its description and options."""
    from maiac.passes.registry import PASSES

    load_plugins(plugins)
    if show_pipeline:
        text = _driver().default_pipeline(quant)
        click.echo(json.dumps({"quant": quant, "pipeline": text}, indent=2) if as_json
                   else text)
        return
    if quant is not None:
        raise click.UsageError("--quant needs --pipeline")
    if as_json:
        click.echo(json.dumps([_pass_json(name, entry) for name, entry in sorted(PASSES.items())],
                              indent=2, default=str))
        return
    for name, entry in sorted(PASSES.items()):
        desc, opts = _pass_info(entry)
        click.echo(f"{name:<28} {desc}")
        for o in opts:
            click.echo(f"{'':<30}{o}")
