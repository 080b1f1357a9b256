"""`maiac generate MODEL.onnx`: the command line of maiac/generate.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from maiac.cli_options import check_target, existing_file, parse_kv, quiet_option
from maiac.runtime.errors import MaiacError

# maiac.kv_cache.KV_DTYPES's names, without importing onnx to list them
# (tests/test_cli_lazy.py checks both agree)
KV_FORMATS = ("fp32", "bf16", "fp8")


def parse_ids(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (MaiacError naming --prompt-ids otherwise)."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MaiacError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    if not ids:
        raise MaiacError("--prompt-ids is empty")
    return ids


def load_tokenizer(path: str) -> Any:
    """A `tokenizers` Tokenizer from a local tokenizer.json (never downloaded)."""
    existing_file(path, "tokenizer file")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MaiacError("--tokenizer needs the 'tokenizers' package (pip install "
                         "'maiac[llm]')") from None
    try:
        return Tokenizer.from_file(str(Path(path)))
    except Exception as err:
        raise MaiacError(f"{path}: not a tokenizers tokenizer.json ({err})") from None


class _Stream:
    """Prints ids, or the text they decode to, as they are produced."""

    def __init__(self, tokenizer: Any, enabled: bool) -> None:
        self.tokenizer, self.enabled = tokenizer, enabled
        self.tokens: list[int] = []
        self.shown = ""

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        if not self.enabled:
            return
        if self.tokenizer is None:
            sys.stdout.write(("" if len(self.tokens) == 1 else ",") + str(token))
        else:  # decode the whole suffix so multi-token characters print once complete
            text = self.tokenizer.decode(self.tokens)
            if text.startswith(self.shown) and not text.endswith("\ufffd"):
                sys.stdout.write(text[len(self.shown):])
                self.shown = text
        sys.stdout.flush()


@click.command("generate")
@click.argument("model", metavar="MODEL.onnx")
@click.option("--prompt-ids", metavar="1,2,3", default=None, help="Prompt token ids.")
@click.option("--prompt", metavar="TEXT", default=None, help="Prompt text (needs --tokenizer).")
@click.option("--tokenizer", metavar="tokenizer.json", default=None,
              help="A local Hugging Face `tokenizers` file to encode --prompt and decode output.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="Sample among the k likeliest (0 = all).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--eos-token-id", type=int, default=None, help="Stop at this token.")
@click.option("--quant", metavar="SPEC", default=None, help="Quantization spec (as compile).")
@click.option("--kv-cache", type=click.Choice(KV_FORMATS), default="fp32",
              show_default=True, help="Storage format of the KV cache in HBM.")
@click.option("--capacity", type=int, default=None,
              help="KV-cache positions (default: prompt + new tokens, rounded up to 64).")
@click.option("--target", default="maia200", show_default=True)
@click.option("--target-param", metavar="KEY=VALUE", multiple=True)
@click.option("--compare-onnxruntime", is_flag=True,
              help="Also run onnxruntime's greedy loop: tokens matched, first divergent "
                   "position, per-step logit cosine.")
@click.option("--chips", type=click.IntRange(1), default=1, show_default=True,
              help="Tensor parallelism over N chips (KV cache split by KV heads; docs/chips.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
@quiet_option
def generate_cmd(model: str, prompt_ids: str | None, prompt: str | None, tokenizer: str | None,
                 max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                 eos_token_id: int | None, quant: str | None, kv_cache: str,
                 capacity: int | None, target: str, target_param: tuple[str, ...],
                 compare_onnxruntime: bool, chips: int, as_json: bool) -> None:
    """Prefill and decode token by token on the machine model; modeled TTFT/TPOT/tokens/s."""
    from maiac.generate import GenerateOptions, SamplingOptions, generate

    if (prompt_ids is None) == (prompt is None):
        raise MaiacError("give exactly one of --prompt-ids and --prompt")
    tok = load_tokenizer(tokenizer) if tokenizer else None
    if prompt is not None:
        if tok is None:
            raise MaiacError("--prompt needs --tokenizer tokenizer.json")
        ids = tok.encode(prompt).ids
    else:
        ids = parse_ids(prompt_ids or "")
    params = parse_kv(target_param, "--target-param")
    check_target(target, params)
    opts = GenerateOptions(
        max_new_tokens=max_new_tokens, quant=quant, kv_cache=kv_cache, capacity=capacity,
        eos_token_id=eos_token_id, target=target, target_params=params,
        sampling=SamplingOptions(temperature, top_k, top_p, seed),
        keep_logits=compare_onnxruntime, chips=chips)
    stream = _Stream(tok, enabled=not as_json)
    result = generate(model, ids, options=opts, on_token=stream)
    if tok is not None:
        result.text = tok.decode(result.tokens)
    out = result.to_json()
    if chips > 1:
        out["chips"] = chips
    if compare_onnxruntime:
        from maiac.generate_ref import compare

        out["onnxruntime"] = compare(model, result)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("")
    compiled = sum(not p.cached for p in result.programs)
    click.echo(f"{len(result.tokens)} tokens, {result.mode}"
               + (f" (capacity {result.capacity}, cache {result.kv_cache}, "
                  f"updated {result.kv_update})"
                  if result.mode == "kv-cache" else " (no KV cache: every step re-runs the "
                                                    "whole sequence)")
               + f", {compiled} program(s) compiled, {result.wall_s:.1f} s wall", err=True)
    tpot = f"{result.tpot_s * 1e3:.3f} ms" if result.tpot_s else "-"
    click.echo(f"modeled on {target}: TTFT {result.ttft_s * 1e3:.3f} ms, TPOT {tpot}, "
               f"{result.tokens_per_s:,.0f} tokens/s", err=True)
    if compare_onnxruntime:
        ref = out["onnxruntime"]
        cos = ref["min_logit_cosine"]
        click.echo(f"onnxruntime: {ref['tokens_matched']}/{len(result.tokens)} tokens match, "
                   f"first divergence {ref['first_divergence']}, min logit cosine "
                   f"{cos:.6f}" if cos is not None else "", err=True)
