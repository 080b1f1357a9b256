"""`maiac eval MODEL --text FILE --tokenizer tokenizer.json`: the command line of maiac/eval.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from maiac.cli_options import check_target, existing_file, parse_kv, progress, quiet_option
from maiac.generate_cli import load_tokenizer
from maiac.runtime.errors import MaiacError

if TYPE_CHECKING:  # onnx is imported when the command runs (tests/test_cli_lazy.py)
    import onnx

MAX_SENTENCES = 256


def _task(proto: onnx.ModelProto, task: str) -> str:
    if task != "auto":
        return task
    return "lm" if any(o.name == "logits" for o in proto.graph.output) else "embed"


def encoder_feeds(proto: onnx.ModelProto, tokenizer: Any, sentences: list[str]
                  ) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids of sentences padded to the longest."""
    enc = tokenizer.encode_batch(sentences)
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    inits = {i.name for i in proto.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        if "mask" in inp.name:
            feeds[inp.name] = mask
        elif "type" in inp.name:
            feeds[inp.name] = np.zeros_like(ids)
        else:
            feeds[inp.name] = ids
    return feeds


@click.command("eval")
@click.argument("model")
@click.option("--text", "text_path", metavar="FILE", required=True,
              help="UTF-8 text: scored as one token stream (lm), or one sentence per line "
                   "(embed).")
@click.option("--tokenizer", metavar="tokenizer.json", required=True,
              help="A local Hugging Face `tokenizers` file.")
@click.option("--quant", "quants", metavar="SPEC[,SPEC...]", default="fp8,mxfp8,mxfp4",
              show_default=True, help="Quantization specs to score beside fp32 "
              "(';' separates specs that contain commas).")
@click.option("--task", type=click.Choice(["auto", "lm", "embed"]), default="auto",
              show_default=True, help="lm: perplexity (a model with a 'logits' output); "
              "embed: embedding cosine and retrieval agreement against fp32.")
@click.option("--seq", type=click.IntRange(2, 1 << 16), default=128, show_default=True,
              help="lm: tokens per window.")
@click.option("--max-windows", type=click.IntRange(1, 1 << 16), default=None,
              help="lm: score at most this many windows (after the calibration window).")
@click.option("--target", default="maia200", show_default=True)
@click.option("--target-param", "target_param", metavar="KEY=VALUE", multiple=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_option
def eval_cmd(model: str, text_path: str, tokenizer: str, quants: str, task: str, seq: int,
             max_windows: int | None, target: str, target_param: tuple[str, ...],
             as_json: bool) -> None:
    """Accuracy as users measure it: perplexity per format of a decoder on a text, or
    an encoder's embedding agreement with fp32 (cosine, nearest-neighbour retrieval)."""
    from maiac import eval as ev
    from maiac.onnx_model import open_model

    existing_file(model, "model")
    existing_file(text_path, "text file")
    params = parse_kv(target_param, "--target-param")
    check_target(target, params)
    tok = load_tokenizer(tokenizer)
    specs = [s.strip() for s in (quants.split(";") if ";" in quants else quants.split(","))]
    specs = [s for s in specs if s]
    proto = open_model(model).proto
    kind = _task(proto, task)
    options = {"target": target, "target_params": params}
    if kind == "lm":
        ids = ev.text_token_ids(text_path, tok)
        rows = ev.perplexity(model, ids, quants=specs, seq=seq, max_windows=max_windows,
                             progress=progress, **options)
        if as_json:
            click.echo(json.dumps({"model": model, "task": "lm", "text": text_path,
                                   "seq": seq, "rows": [r.to_json() for r in rows]}, indent=2))
        else:
            click.echo(ev.format_perplexity(
                rows, f"model: {model}   text: {text_path} ({ids.size} tokens)   seq: {seq}"))
        return
    sentences = [s.strip() for s in Path(text_path).read_text(encoding="utf-8").splitlines()
                 if s.strip()]
    if len(sentences) < 2:
        raise MaiacError(f"{text_path}: embed needs at least 2 non-empty lines (sentences)")
    sentences = sentences[:MAX_SENTENCES]
    feeds = encoder_feeds(proto, tok, sentences)
    emb = ev.embedding_agreement(model, feeds, quants=specs, progress=progress, **options)
    if as_json:
        click.echo(json.dumps({"model": model, "task": "embed", "text": text_path,
                               "rows": emb}, indent=2))
    else:
        click.echo(ev.format_embeddings(emb))
