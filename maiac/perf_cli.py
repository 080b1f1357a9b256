"""`maiac perf MODEL`: the command line and the text/HTML views of maiac/perf.py."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import click

from maiac.cli_options import check_target, parse_kv, progress, quiet_option
from maiac.outputs import check_output, stdout_claimed, write_text_atomic
from maiac.runtime.errors import MaiacError


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MaiacError(f"{option} {text!r}: expected comma-separated integers") from None


def _names(text: str) -> list[str]:
    return [t for t in text.replace(" ", "").split(",") if t]


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.4g}"


def _given(names: tuple[str, ...]) -> set[str]:
    """Which of these options the command line gave (not their defaults)."""
    ctx = click.get_current_context()
    return {n for n in names
            if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE}


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


def _usd(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """The sweep as an aligned text table (one row per point, comparisons indented)."""
    head = (f"{'batch':>5} {'ctx':>6} {'quant':>6} {'kv':>4} {'TTFT ms':>9} {'TPOT ms':>9} "
            f"{'tok/s':>9} {'W GB':>6} {'KV GB':>6} {'fits':>4} {'maxB':>5} {'bound':>5} "
            f"{'J/tok':>7} {'$/Mtok':>7}")
    lines = [f"{result['model']} on {result['target']} ({result['layers']} layers, "
             f"{result['layers_mode']}); HBM {_gb(result['hbm_capacity_bytes'])} GB, "
             f"energy at {result['tdp_w']:.0f} W TDP", head]
    for p in result["points"]:
        key = f"{p['batch']:>5} {p['context']:>6} {p['quant']:>6} {p['kv_cache']:>4}"
        if "pp" in p:
            key = f"{p['pp']}x{p['tensor_parallel']:<2}pp {key}"
        elif "chips" in p:
            key = f"{p['chips']:>3}x {key}"
        if "error" in p:
            lines.append(f"{key} error: {p['error']}")
            continue
        lines.append(
            f"{key} {_ms(p['ttft_s']):>9} {_ms(p['tpot_s']):>9} {p['tokens_per_s']:>9,.0f} "
            f"{_gb(p['weight_bytes']):>6} {_gb(p['kv_cache_bytes']):>6} "
            f"{'yes' if p['fits'] else 'NO':>4} {p['max_batch']:>5} {p['bound']:>5} "
            f"{p['energy_per_token_j']:>7.3f} {_usd(p['usd_per_million_tokens']):>7}"
            + (f"  {p['tokens_per_s_per_chip']:,.0f} tok/s/chip, net {p['collective_share']:.0%}"
               + (f", efficiency {p['scaling_efficiency']:.0%}" if "scaling_efficiency" in p
                  else "") if "chips" in p else "")
            + (f", {p['micro_batches']} micro-batches, bubble {p['bubble_fraction']:.0%}, "
               f"layers/stage {p['layers_per_stage']}" if "pp" in p else ""))
        for c in p.get("compare", []):
            if "error" in c:
                continue
            energy = "-" if c["energy_per_token_j"] is None else f"{c['energy_per_token_j']:.3f}"
            lines.append(
                f"{'':>5} {'':>6} {'':>6} {'':>4} {_ms(c['ttft_s']):>9} {_ms(c['tpot_s']):>9} "
                f"{c['tokens_per_s']:>9,.0f} {'':>6} {'':>6} {'yes' if c['fits'] else 'NO':>4} "
                f"{c['max_batch'] if c['max_batch'] is not None else '-':>5} "
                f"{c['bound'][:5]:>5} {energy:>7} {_usd(c['usd_per_million_tokens']):>7}"
                f"  <- {c['accelerator']} (roofline estimate"
                f"{', peak assumed' if c['peak_assumed'] else ''})")
    if "paper" in result:
        lines += _paper_lines(result["paper"])
    return "\n".join(lines)


def _paper_lines(pp: dict[str, Any]) -> list[str]:
    published = pp["published_tokens_per_s"]
    ratio = (f"ratio {pp['ratio']:.3f}" if pp["ratio"] is not None else
             "not the paper's point: no ratio")
    lines = [f"published: {published:,.0f} tokens/s ({pp['source']}); modeled at batch "
             f"{pp['modeled_batch']}: {pp['modeled_tokens_per_s']:,.0f} tokens/s ({ratio})"]
    swept = pp["swept_batches"]
    if pp["implied_batch"] is not None:
        lines.append(f"the published figure is reached at batch {pp['implied_batch']:.1f} "
                     f"(modeled, linear between the swept batches {', '.join(map(str, swept))})")
    elif swept:
        why = f"no swept batch ({', '.join(map(str, swept))}) reaches it"
        ceiling = pp["batch1_ceiling_tokens_per_s"]
        if ceiling is not None and ceiling < published:
            why += (f"; at batch 1 the {_gb(pp['weight_bytes'])} GB of weights, read once per "
                    f"token at the {pp['hbm_peak_bytes_per_s'] / 1e12:.1f} TB/s HBM peak, cap "
                    f"any compiler at {ceiling:,.0f} tokens/s: the published figure is a "
                    f"batched one (its batch is not stated)")
        top = max(swept)
        more = "1,8,16,32" if top == 1 else f"{top},{2 * top}"
        lines.append(f"{why}; --batch {more} sweeps for the batch that reaches it")
    return lines


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def render_html(result: dict[str, Any]) -> str:
    """A self-contained page: tokens/s vs batch per context, TPOT vs context, the table."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MaiacError("--html needs matplotlib (pip install 'maiac[llm]')") from None
    points = [p for p in result["points"] if "error" not in p]
    series = sorted({(p["quant"], p["kv_cache"]) for p in points})
    contexts = sorted({p["context"] for p in points})
    plots = []
    fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 3.6), squeeze=False)
    for ax, c in zip(axes[0], contexts, strict=True):
        for q, kv in series:
            rows = sorted((p["batch"], p["tokens_per_s"]) for p in points
                          if p["context"] == c and p["quant"] == q and p["kv_cache"] == kv)
            if rows:
                ax.plot(*zip(*rows, strict=True), marker="o", label=f"{q}, kv {kv}")
        ax.set(xscale="log", xlabel="batch", ylabel="tokens/s", title=f"context {c:,}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plots.append(_svg(fig))
    plt.close(fig)
    batches = sorted({p["batch"] for p in points})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for q, kv in series:
        for b in batches:
            rows = sorted((p["context"], p["tpot_s"] * 1e3) for p in points
                          if p["batch"] == b and p["quant"] == q and p["kv_cache"] == kv)
            if rows:
                ax.plot(*zip(*rows, strict=True), marker="o", label=f"b{b} {q} kv {kv}")
    ax.set(xscale="log", xlabel="context", ylabel="TPOT (ms)", title="time per output token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    plots.append(_svg(fig))
    plt.close(fig)
    table = html.escape(format_table(result))
    data = base64.b64encode(json.dumps(result).encode()).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>maiac perf "
            f"{html.escape(result['model'])}</title><style>body{{font-family:sans-serif;"
            "margin:2em}} pre{{font-size:12px}}</style></head><body>"
            f"<h1>maiac perf: {html.escape(result['model'])} on "
            f"{html.escape(result['target'])}</h1>"
            "<p>Modeled by maiac's timing model (shape-only programs); comparison rows are "
            "roofline estimates from public numbers, not simulations.</p>"
            + "".join(f"<div>{svg}</div>" for svg in plots)
            + f"<pre>{table}</pre>"
            f"<script type='application/json' id='data'>{data}</script></body></html>")


@click.command("perf")
@click.argument("model", metavar="MODEL", required=False)
@click.option("--preset", type=click.Choice(["paper"]), default=None,
              help="paper: Qwen2.5-7B, context 16,384, BF16, one chip, beside the published "
                   "2,434 tokens/s (--batch/--context/--quant/--kv-cache given change "
                   "the point).")
@click.option("--batch", default="1,8,32,128", show_default=True)
@click.option("--context", default="1024,8192,32768", show_default=True)
@click.option("--quant", default="fp8,mxfp4", show_default=True, help="Quant specs (comma list).")
@click.option("--kv-cache", default="bf16,fp8", show_default=True, help="KV formats (comma list).")
@click.option("--layers", type=click.Choice(["extrapolate", "all"]), default="extrapolate",
              show_default=True, help="Presets: compile 1 and 2 layers and extrapolate, or all.")
@click.option("--chips", "chips_text", default="1", show_default=True,
              help="Tensor-parallel chip counts (comma list): TPOT, tokens/s per chip, "
                   "scaling efficiency.")
@click.option("--kv-update", type=click.Choice(["in-place", "copy"]), default="in-place",
              show_default=True, help="Decode cache update: in place (new rows written into "
              "the cache) or the graph's Concat copy (the old program, for comparison).")
@click.option("--pp", "pp_text", default="1", show_default=True,
              help="Pipeline stages (comma list; x --chips each): stage times, TPOT, tokens/s "
                   "and bubble with --micro-batches in flight (maiac/perf_pipeline.py).")
@click.option("--micro-batches", type=click.IntRange(1), default=None,
              help="With --pp: micro-batches in flight (default: the stage count).")
@click.option("--price-per-hour", type=float, default=None, help="$ per chip-hour (for $/M tokens).")
@click.option("--compare", "compare_specs", metavar="SPEC.toml", multiple=True,
              help="Roofline estimate for another accelerator (a TOML spec, or a shipped name: "
                   "h100, h200, b200, trainium3, tpu_v7; repeatable).")
@click.option("--jobs", default=0, show_default=True, help="Parallel compiles (0 = cores, <= 4).")
@click.option("--cache-dir", default=None, help="Result cache (default ~/.cache/maiac/perf).")
@click.option("--no-cache", is_flag=True, help="Recompile every point.")
@click.option("--target", default="maia200", show_default=True)
@click.option("--target-param", metavar="KEY=VALUE", multiple=True)
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
@click.option("--html", "html_out", metavar="OUT.html", default=None,
              help="Write a self-contained page with plots (- : stdout).")
@quiet_option
def perf_cmd(model: str | None, preset: str | None, batch: str, context: str, quant: str,
             kv_cache: str, layers: str, chips_text: str, kv_update: str, pp_text: str,
             micro_batches: int | None, price_per_hour: float | None,
             compare_specs: tuple[str, ...], jobs: int, cache_dir: str | None, no_cache: bool,
             target: str, target_param: tuple[str, ...], as_json: bool,
             html_out: str | None) -> None:
    """Serving numbers of MODEL (a preset or a KV-cache decoder .onnx) over a sweep."""
    from maiac.perf import PAPER, PRESETS, PerfOptions, paper_comparison, sweep
    from maiac.perf_compare import estimate, load_spec, maia_roofline_spec
    from maiac.runtime.target import get_target

    params = parse_kv(target_param, "--target-param")
    check_target(target, params)
    if html_out is not None:  # before the sweep: a bad path costs nothing
        check_output(html_out, "--html", (model,), text=True)
    on_stdout = stdout_claimed((("--html", html_out),), "--json" if as_json else None)
    if preset == "paper":  # the paper's point, but for what the command line gives
        model = model or PAPER["model"]
        given = _given(("batch", "context", "quant", "kv_cache"))
        batch_list = _ints(batch, "--batch") if "batch" in given else list(PAPER["batch"])
        context_list = (_ints(context, "--context") if "context" in given
                        else [PAPER["context"]])
        quant_list = _names(quant) if "quant" in given else [PAPER["quant"]]
        kv_list = _names(kv_cache) if "kv_cache" in given else [PAPER["kv_cache"]]
    else:
        if model is None:
            raise MaiacError(f"give MODEL (a preset: {', '.join(PRESETS)}, or an .onnx) "
                             f"or --preset paper")
        batch_list, context_list = _ints(batch, "--batch"), _ints(context, "--context")
        quant_list, kv_list = _names(quant), _names(kv_cache)
    specs = [load_spec(s) for s in compare_specs]
    opts = PerfOptions(batch=batch_list, context=context_list, quant=quant_list,
                       kv_cache=kv_list, layers=layers, target=target, target_params=params,
                       price_per_hour=price_per_hour, jobs=jobs, cache_dir=cache_dir,
                       use_cache=not no_cache, chips=_ints(chips_text, "--chips"),
                       kv_update=kv_update, pp=_ints(pp_text, "--pp"),
                       micro_batches=micro_batches)
    result = sweep(model, opts, progress=progress)
    if specs:
        maia = maia_roofline_spec(get_target(target, params), result["tdp_w"], price_per_hour)
        for p in result["points"]:
            p["compare"] = [estimate(acc, p) for acc in [maia, *specs]]
        result["compare_sources"] = {acc.name: acc.sources for acc in specs}
    if preset == "paper":
        result["paper"] = paper_comparison(result["points"], PAPER,
                                           get_target(target, params).hbm_bw)
    if html_out:
        page = render_html(result)
        write_text_atomic(html_out, page, "--html", (model,))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:  # on stderr when the page has stdout
        click.echo(format_table(result), err=on_stdout)
