"""maiac eval: perplexity per format on a text, embedding agreement for encoders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import maiac.models as M
from maiac import eval as ev
from maiac.cli import main

TEXT = Path(__file__).parent / "data" / "text" / "austen_pride_and_prejudice_ch1.txt"


def byte_tokenizer(path: Path) -> Path:
    """A tokenizers WordLevel tokenizer over lowercase words (ids < 256), saved as JSON."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = TEXT.read_text().lower().split()
    vocab = {"[UNK]": 0}
    for w in words:
        if w not in vocab and len(vocab) < 256:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


@pytest.fixture(scope="module")
def decoder() -> object:
    return M.llama_decoder(M.LLAMA_TINY, seq=32)


def test_perplexity_fp32_equals_onnxruntime(decoder: object, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(byte_tokenizer(tmp_path)))
    ids = ev.text_token_ids(TEXT, tok)
    rows = ev.perplexity(decoder, ids, quants=["mxfp4"], seq=32, max_windows=3)
    assert [r.quant for r in rows] == ["fp32", "mxfp4"]
    assert rows[0].tokens == 3 * 31 and rows[0].windows == 3
    # the same windows (after the calibration window) through onnxruntime
    sess = ort.InferenceSession(decoder.SerializeToString())
    nll = []
    for win in ev.windows_of(ids, 32, 4)[1:]:
        logits = sess.run(None, ev.decoder_feeds(decoder, win))[0]
        nll.append(ev.window_nll(np.asarray(logits[0], np.float64), win))
    want = math.exp(float(np.concatenate(nll).mean()))
    assert abs(rows[0].ppl - want) <= 1e-4 * want
    assert rows[1].ppl != rows[0].ppl and rows[1].delta_ppl == rows[1].ppl - rows[0].ppl


def test_eval_cli_json(decoder: object, tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "tiny.onnx"
    onnx.save(decoder, path)
    tok = byte_tokenizer(tmp_path)
    res = CliRunner().invoke(main, ["eval", str(path), "--text", str(TEXT), "--tokenizer",
                                    str(tok), "--quant", "mxfp8", "--seq", "32",
                                    "--max-windows", "1", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["task"] == "lm" and [r["quant"] for r in data["rows"]] == ["fp32", "mxfp8"]
    assert all(r["ppl"] > 1 for r in data["rows"])
    # errors name the option or file
    bad = CliRunner().invoke(main, ["eval", str(path), "--text", str(TEXT), "--tokenizer",
                                    str(tok), "--seq", "4096"])
    assert bad.exit_code == 2 and "fewer than one window" in bad.output


def test_embedding_agreement_on_an_encoder(tmp_path: Path) -> None:
    model = M.transformer(layers=1, batch=6, seq=8, d_model=64)  # its [6, 8, 128] output
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 128, (6, 8))}
    rows = ev.embedding_agreement(model, feeds, quants=["bf16", "mxfp4"])
    assert rows[0] == {"quant": "fp32", "mean_cosine": pytest.approx(1.0),
                       "min_cosine": pytest.approx(1.0), "retrieval_agreement": 1.0,
                       "sentences": 6}
    assert rows[1]["mean_cosine"] > 0.999 and rows[2]["mean_cosine"] < rows[1]["mean_cosine"]
