"""Accuracy as users measure it: a decoder's perplexity on a text, an encoder's embeddings.

* :func:`perplexity` cuts the token ids of a text into windows of ``seq`` tokens, runs each
  window through the machine model (fp32 and every quantization spec asked for) and
  scores next-token prediction: ``ppl = exp(mean NLL)`` over the scored positions.
  Calibration (static activation scales, GPTQ's Hessians) uses the *first* window, which
  is then not scored, so no format is calibrated on the tokens it is judged on.
* :func:`embedding_agreement` compares an encoder's sentence embeddings per format with
  fp32's: mean/min cosine and retrieval agreement (each sentence's nearest neighbour among
  the others is the same as fp32's).

Token ids come from a local ``tokenizers`` file (never downloaded). ``maiac eval`` is the
command line (maiac/eval_cli.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maiac.ir.resources import scoped_store
from maiac.onnx_model import open_model
from maiac.runtime.errors import MaiacError

Progress = Callable[[str], None]


@dataclass
class FormatScore:
    """One row of the perplexity table."""

    quant: str
    ppl: float
    nll: float
    tokens: int
    windows: int
    compile_s: float
    run_s: float
    delta_ppl: float = 0.0
    delta_pct: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def text_token_ids(text_path: str | Path, tokenizer: Any) -> np.ndarray:
    """int64 ids of a UTF-8 text file under a `tokenizers` Tokenizer (no special tokens)."""
    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MaiacError(f"{text_path}: cannot read the text ({err})") from None
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) < 2:
        raise MaiacError(f"{text_path}: the text has fewer than 2 tokens")
    return np.asarray(ids, np.int64)


def decoder_feeds(model: onnx.ModelProto, window: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of a decoder graph for one window of ids ([1, seq]): input_ids, plus an
    all-ones attention_mask and 0..seq-1 position_ids when the graph takes them."""
    inits = {i.name for i in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    seq = window.size
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        name = inp.name
        if "past" in name or "cache" in name:
            raise MaiacError(f"eval: input {name!r} is a KV cache; give the decoder's prefill "
                             "graph (no past inputs), as exported without past")
        if "mask" in name:
            feeds[name] = np.ones((1, seq), np.int64)
        elif "position" in name:
            feeds[name] = np.arange(seq, dtype=np.int64)[None]
        elif inp.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            feeds[name] = window[None].astype(np.int64)
        else:
            raise MaiacError(f"eval: decoder input {name!r} is neither token ids, an attention "
                             "mask nor position ids")
    if not any(v.shape == (1, seq) and "mask" not in k and "position" not in k
               for k, v in feeds.items()):
        raise MaiacError("eval: the model has no token-id input")
    dtypes = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    return {k: v.astype(np.int32) if dtypes.get(k) == onnx.TensorProto.INT32 else v
            for k, v in feeds.items()}


def logits_of(outputs: dict[str, np.ndarray], vocab: int | None = None) -> np.ndarray:
    """The [seq, vocab] logits among a decoder's outputs ('logits', else the first rank-3)."""
    arr = outputs.get("logits")
    if arr is None:
        arr = next((a for a in outputs.values() if a.ndim == 3), None)
    if arr is None or arr.ndim != 3 or arr.shape[0] != 1:
        raise MaiacError("eval: the model has no [1, seq, vocab] logits output")
    return np.asarray(arr[0], np.float64)


def window_nll(logits: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of window[1:] under logits[:-1] (one row per position)."""
    z = logits[:-1]
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -logp[np.arange(window.size - 1), window[1:]]


def windows_of(ids: np.ndarray, seq: int, max_windows: int | None) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of ``seq`` ids (the last partial one dropped)."""
    if seq < 2:
        raise MaiacError(f"eval: --seq must be at least 2, got {seq}")
    n = ids.size // seq
    if n < 1:
        raise MaiacError(f"eval: the text has {ids.size} tokens, fewer than one window "
                         f"of --seq {seq}")
    wins = [ids[i * seq:(i + 1) * seq] for i in range(n)]
    return wins[:max_windows] if max_windows else wins


def perplexity(model: str | Path | onnx.ModelProto, ids: np.ndarray, *,
               quants: Sequence[str | None] = (None,), seq: int = 128,
               max_windows: int | None = None, progress: Progress | None = None,
               **compile_options: Any) -> list[FormatScore]:
    """Perplexity of ``model`` on ``ids`` per quantization spec (None = fp32 first).

    With two or more windows the first calibrates and the rest are scored; with one, it
    does both (said in the result's ``windows`` = 1).
    """
    from maiac.driver import compile as maiac_compile

    proto = open_model(model).proto
    wins = windows_of(ids, seq, None if max_windows is None else max_windows + 1)
    calib_win, scored = (wins[0], wins[1:]) if len(wins) > 1 else (wins[0], wins)
    calib = decoder_feeds(proto, calib_win)
    shapes = {k: v.shape for k, v in calib.items()}
    rows: list[FormatScore] = []
    for q in ([None] + [q for q in quants if q not in (None, "fp32")]):
        label = q or "fp32"
        if progress:
            progress(f"eval {label}: compiling")
        t0 = time.perf_counter()
        with scoped_store():  # each format's weight copies go once its program exists
            compiled = maiac_compile(model, quant=q, shapes=shapes, calib=calib,
                                     **compile_options)
        compile_s = time.perf_counter() - t0
        nll: list[np.ndarray] = []
        t0 = time.perf_counter()
        for i, win in enumerate(scored):
            if progress:
                progress(f"eval {label}: window {i + 1}/{len(scored)}")
            out = compiled.run(decoder_feeds(proto, win))
            nll.append(window_nll(logits_of(out), win))
        run_s = time.perf_counter() - t0
        all_nll = np.concatenate(nll)
        mean = float(all_nll.mean())
        rows.append(FormatScore(label, math.exp(mean), mean, int(all_nll.size), len(scored),
                                compile_s, run_s))
    base = rows[0].ppl
    for r in rows:
        r.delta_ppl = r.ppl - base
        r.delta_pct = 100.0 * (r.ppl / base - 1.0)
    return rows


def format_perplexity(rows: Sequence[FormatScore], title: str = "") -> str:
    """The perplexity table as text."""
    lines = [title] if title else []
    head = (f"{'quant':<28} {'ppl':>9} {'Δppl':>8} {'Δ%':>7} {'tokens':>7} "
            f"{'compile s':>9} {'run s':>7}")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.quant[:28]:<28} {r.ppl:>9.3f} {r.delta_ppl:>+8.3f} "
                     f"{r.delta_pct:>+6.2f}% {r.tokens:>7} {r.compile_s:>9.1f} {r.run_s:>7.1f}")
    return "\n".join(lines)


def embedding_agreement(model: str | Path | onnx.ModelProto,
                        feeds: dict[str, np.ndarray], *, quants: Sequence[str | None],
                        output: str | None = None, progress: Progress | None = None,
                        **compile_options: Any) -> list[dict[str, Any]]:
    """Per format: cosine of each sentence embedding with fp32's (mean, min) and the
    fraction of sentences whose nearest neighbour (cosine, among the others) is fp32's.

    ``feeds``: the encoder's inputs for a batch of sentences; the embedding is ``output``
    (default the first output), mean-pooled over tokens when it has a sequence axis.
    """
    from maiac.driver import compile as maiac_compile

    proto = open_model(model).proto
    name = output or proto.graph.output[0].name
    shapes = {k: v.shape for k, v in feeds.items()}
    mask = next((v for k, v in feeds.items() if "mask" in k), None)

    def embed(q: str | None) -> np.ndarray:
        if progress:
            progress(f"eval {q or 'fp32'}: compiling and running")
        with scoped_store():
            compiled = maiac_compile(model, quant=q, shapes=shapes, calib=feeds,
                                     **compile_options)
        out = compiled.run(feeds)
        if name not in out:
            raise MaiacError(f"eval: the model has no output {name!r}")
        e = np.asarray(out[name], np.float64)
        if e.ndim == 3:  # [batch, tokens, d]: mean over (unmasked) tokens
            w = np.ones(e.shape[:2]) if mask is None else mask.astype(np.float64)
            e = (e * w[..., None]).sum(1) / np.maximum(w.sum(1, keepdims=True), 1)
        return e.reshape(e.shape[0], -1)

    def unit(e: np.ndarray) -> np.ndarray:
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = unit(e) @ unit(e).T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    ref = embed(None)
    ref_nn = neighbours(ref)
    rows = []
    for q in ([None] + [q for q in quants if q not in (None, "fp32")]):
        e = ref if q is None else embed(q)
        cos = (unit(e) * unit(ref)).sum(axis=1)
        rows.append({"quant": q or "fp32", "mean_cosine": float(cos.mean()),
                     "min_cosine": float(cos.min()),
                     "retrieval_agreement": float((neighbours(e) == ref_nn).mean()),
                     "sentences": int(e.shape[0])})
    return rows


def format_embeddings(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'quant':<28} {'mean cos':>9} {'min cos':>9} {'retrieval':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['quant'][:28]:<28} {r['mean_cosine']:>9.5f} {r['min_cosine']:>9.5f} "
                     f"{r['retrieval_agreement']:>9.3f}")
    return "\n".join(lines)
