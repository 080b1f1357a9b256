"""``maiac ops [MODEL.onnx]``: the supported ONNX ops, or per op type of a model whether
maiac supports it (registered in cli.py)."""

from __future__ import annotations

import json

import click


@click.command("ops")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ops_cmd(model: str | None, as_json: bool) -> None:
    """List the supported ONNX ops with their opsets; with MODEL, each op type of the model
    with its count, first node and whether maiac supports it (exit 1 if one is not)."""
    from maiac.op_support import model_table, supported_table

    if model is None:
        rows = supported_table()
        if as_json:
            click.echo(json.dumps({"ops": rows}, indent=1))
            return
        for row in rows:
            versions = ", ".join(map(str, row["opsets"]))
            click.echo(f"{row['op']:<30} {row['how']:<8} opsets {versions}")
        click.echo(f"{len(rows)} op types (lowered: run on runtime data; folded: evaluated "
                   "at compile time)")
        return
    rows = model_table(model)
    missing = [r for r in rows if not r["supported"]]
    if as_json:
        click.echo(json.dumps({"model": model, "ok": not missing, "ops": rows}, indent=1))
    else:
        for row in rows:
            status = "yes" if row["supported"] else "NO"
            click.echo(f"{row['op']:<30} {row['count']:>6}  {status:<4} {row['how']:<32} "
                       f"first '{row['first']}'")
        click.echo(f"{model}: {len(rows)} op types, {len(missing)} unsupported"
                   + (f" ({', '.join(str(r['op']) for r in missing)})" if missing else ""))
    if missing:
        raise SystemExit(1)
