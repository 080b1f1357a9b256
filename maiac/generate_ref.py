"""onnxruntime's generation loop over the same decoder, to check `maiac generate` against.

The reference runs the graph as exported: a KV-cache decoder with a past that grows by one
slot per step (zero-length past at prefill), a recompute decoder on the exact sequence
(padded only when its sequence length is static). :func:`compare` reports how many
generated tokens agree, the first divergent position, and per step the cosine between
maiac's logits and onnxruntime's logits for the same context (maiac's own tokens, fed to
onnxruntime in one teacher-forced pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maiac.generate import Decoder, GenerationResult, _kv_shapes, load_decoder
from maiac.onnx_model import open_model, ort_session


def _rows(x: list[int], batch: int) -> np.ndarray:
    return np.repeat(np.asarray(x, np.int64)[None], batch, axis=0)


def _forward(sess: Any, dec: Decoder, new: list[int], length: int,
             past: dict[str, np.ndarray] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [seq, vocab] for ``new`` tokens ending at ``length``, and the new cache."""
    b = dec.batch
    if dec.pairs:
        feeds: dict[str, np.ndarray] = {dec.ids: _rows(new, b),
                                        dec.mask: np.ones((b, length), np.int64)}
        if dec.positions:
            feeds[dec.positions] = _rows(list(range(length - len(new), length)), b)
        for pair in dec.pairs:
            if past is None:
                shape = _kv_shapes(dec, len(new), 0)[pair.past]
                feeds[pair.past] = np.zeros(shape, np.float32)
            else:
                feeds[pair.past] = past[pair.past]
        names = [dec.logits, *(p.present for p in dec.pairs)]
        outs = dict(zip(names, sess.run(names, feeds), strict=True))
        return outs[dec.logits][0], {p.past: outs[p.present] for p in dec.pairs}
    size = dec.max_length or length
    feeds = {dec.ids: _rows(new + [0] * (size - length), b)}
    if dec.mask:
        feeds[dec.mask] = _rows([1] * length + [0] * (size - length), b)
    if dec.positions:
        feeds[dec.positions] = _rows(list(range(size)), b)
    return sess.run([dec.logits], feeds)[0][0, :length], {}


def onnxruntime_greedy(model: str | Path | onnx.ModelProto, prompt: list[int],
                       max_new_tokens: int) -> list[int]:
    """onnxruntime's greedy tokens after ``prompt``."""
    dec, sess = load_decoder(model), ort_session(open_model(model), what="generation reference")
    seq, tokens = list(prompt), []
    new, past = list(prompt), None
    for _ in range(max_new_tokens):
        context = seq if not dec.pairs else new
        logits, past = _forward(sess, dec, context, len(seq), past)
        token = int(np.argmax(logits[-1]))
        tokens.append(token)
        seq.append(token)
        new = [token]
    return tokens


def onnxruntime_step_logits(model: str | Path | onnx.ModelProto, prompt: list[int],
                            tokens: list[int]) -> np.ndarray:
    """onnxruntime's logits [len(tokens), vocab] before each of ``tokens`` (teacher forced)."""
    dec, sess = load_decoder(model), ort_session(open_model(model), what="generation reference")
    seq = list(prompt) + list(tokens[:-1])
    logits, _ = _forward(sess, dec, seq, len(seq), None)
    return logits[len(prompt) - 1:]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else float(np.array_equal(a64, b64))


def compare(model: str | Path | onnx.ModelProto, result: GenerationResult) -> dict[str, Any]:
    """Tokens matched against onnxruntime's greedy loop, first divergence, logit cosines.

    ``result`` must have been generated with ``keep_logits=True`` for the cosines.
    """
    ref = onnxruntime_greedy(model, result.prompt_ids, len(result.tokens))
    diverge = next((i for i, (a, b) in enumerate(zip(result.tokens, ref, strict=True))
                    if a != b), None)
    cosines: list[float] = []
    if result.logits:
        ref_logits = onnxruntime_step_logits(model, result.prompt_ids, result.tokens)
        cosines = [_cosine(m, r) for m, r in zip(result.logits, ref_logits, strict=True)]
    return {"reference_tokens": ref,
            "tokens_matched": len(ref) if diverge is None else diverge,
            "first_divergence": diverge, "logit_cosine": cosines,
            "min_logit_cosine": min(cosines) if cosines else None}
