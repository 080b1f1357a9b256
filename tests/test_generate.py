"""`maiac generate`: greedy tokens equal onnxruntime's loop; cache formats; sampling; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from maiac import models
from maiac.cli import main
from maiac.generate import SamplingOptions, choose_token, generate, load_decoder
from maiac.generate_ref import compare, onnxruntime_greedy
from maiac.runtime.errors import MaiacError

DATA = Path(__file__).parent / "data"
PROMPT = [3, 17, 42, 5, 99]


@pytest.fixture(scope="module")
def kv_model() -> onnx.ModelProto:
    return models.kv_decoder()


def test_kv_cache_greedy_equals_onnxruntime(kv_model: onnx.ModelProto) -> None:
    result = generate(kv_model, PROMPT, max_new_tokens=32)
    assert result.mode == "kv-cache"
    assert result.tokens == onnxruntime_greedy(kv_model, PROMPT, 32)
    # two programs whatever the number of tokens: prefill and one fixed-capacity decode
    assert sorted(p.role for p in result.programs) == ["decode", "prefill"]
    assert result.capacity == 64
    assert result.ttft_s > 0 and result.tpot_s > 0
    assert result.tokens_per_s == pytest.approx(32 / (result.ttft_s + 31 * result.tpot_s))


@pytest.mark.parametrize("name", ["optimum_llama_kv", "optimum_qwen2_kv", "optimum_gpt2_kv"])
def test_optimum_kv_decoders_greedy_equal_onnxruntime(name: str) -> None:
    """optimum-onnx text-generation-with-past exports (GPT-2: positions from the mask),
    their NaN-guarded softmax fused (passes/fuse_attention.py), so the cache is updated in
    place."""
    path = DATA / "toolchain" / f"{name}.onnx"
    result = generate(path, PROMPT, max_new_tokens=32)
    assert result.mode == "kv-cache" and len(result.programs) == 2
    assert result.kv_update == "in-place"
    assert result.tokens == onnxruntime_greedy(path, PROMPT, 32)


def test_genai_decoder_greedy_equals_onnxruntime() -> None:
    """onnxruntime-genai builder export: GroupQueryAttention writes the new keys at the
    sequence length (valid slots first), head_dim symbolic (taken from the QKV width); the
    decode step writes them into the resident cache in place (maiac/kv_cache.py marks the
    op, its expansion reads Concat(past, new), passes/kv_cache_inplace.py rewrites it)."""
    path = DATA / "toolchain" / "genai_phi3_fp32.onnx"
    result = generate(path, PROMPT, max_new_tokens=32)
    assert result.mode == "kv-cache" and len(result.programs) == 2
    assert result.kv_update == "in-place"
    assert result.tokens == onnxruntime_greedy(path, PROMPT, 32)


def test_genai_narrow_cache_is_updated_in_place() -> None:
    """A bf16 cache of a GroupQueryAttention decoder (the op reads the past through its
    load Cast) is in place too, and its decode step moves fewer bytes than the copy."""
    from maiac import generate as gen_module

    path = DATA / "toolchain" / "genai_llama_fp32.onnx"
    result = generate(path, PROMPT, max_new_tokens=4, kv_cache="bf16", capacity=512)
    assert result.kv_update == "in-place"
    dec = gen_module.load_decoder(path)
    copy, _ = gen_module._program(dec, "decode", gen_module._kv_shapes(dec, 1, 512),
                                  gen_module.GenerateOptions(kv_cache="bf16"), [])
    in_place = {p.role: p for p in result.programs}["decode"]
    from maiac.runtime.timing import simulate

    assert in_place.hbm_bytes < simulate(copy).hbm_bytes
    assert result.tokens[:1] == onnxruntime_greedy(path, PROMPT, 1)


def test_recompute_greedy_equals_onnxruntime() -> None:
    path = DATA / "gpt2_torchscript.onnx"
    result = generate(path, PROMPT, max_new_tokens=32)
    assert result.mode == "recompute"
    assert result.tokens == onnxruntime_greedy(path, PROMPT, 32)
    # length buckets 16/32/64: at most log2(length) programs
    assert [p.shapes["input_ids"][1] for p in result.programs] == [16, 32, 64]


def test_mxfp8_reports_divergence_and_cosine(kv_model: onnx.ModelProto) -> None:
    result = generate(kv_model, PROMPT, max_new_tokens=16, quant="mxfp8", keep_logits=True)
    cmp = compare(kv_model, result)
    assert len(cmp["logit_cosine"]) == 16
    assert cmp["min_logit_cosine"] > 0.95
    assert cmp["tokens_matched"] == (16 if cmp["first_divergence"] is None
                                     else cmp["first_divergence"])
    assert result.tokens[:cmp["tokens_matched"]] == cmp["reference_tokens"][:cmp["tokens_matched"]]


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_narrow_kv_cache_is_stored_narrow(kv_model: onnx.ModelProto, fmt: str) -> None:
    base = generate(kv_model, PROMPT, max_new_tokens=4)
    narrow = generate(kv_model, PROMPT, max_new_tokens=4, kv_cache=fmt)
    assert narrow.kv_cache == fmt
    decode = {p.role: p for p in narrow.programs}["decode"]
    decode32 = {p.role: p for p in base.programs}["decode"]
    assert decode.hbm_bytes < decode32.hbm_bytes   # the cache is read in its storage format
    assert narrow.tokens[0] == base.tokens[0]      # prefill logits do not read the cache


def test_sampling_is_seeded_and_top_k_1_is_greedy(kv_model: onnx.ModelProto) -> None:
    greedy = generate(kv_model, PROMPT, max_new_tokens=6)
    top1 = generate(kv_model, PROMPT, max_new_tokens=6, temperature=0.7, top_k=1)
    assert top1.tokens == greedy.tokens
    a = generate(kv_model, PROMPT, max_new_tokens=6, temperature=1.5, seed=3)
    b = generate(kv_model, PROMPT, max_new_tokens=6, temperature=1.5, seed=3)
    assert a.tokens == b.tokens
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    opts = SamplingOptions(temperature=1.0, top_p=0.5)
    assert {choose_token(logits, opts, rng) for _ in range(50)} == {1}


def test_eos_stops(kv_model: onnx.ModelProto) -> None:
    first = generate(kv_model, PROMPT, max_new_tokens=8).tokens
    stopped = generate(kv_model, PROMPT, max_new_tokens=8, eos_token_id=first[2])
    assert stopped.tokens == first[:first.index(first[2]) + 1]


def test_bad_inputs_are_named(kv_model: onnx.ModelProto) -> None:
    with pytest.raises(MaiacError, match="top-k"):
        generate(kv_model, PROMPT, top_k=5)
    with pytest.raises(MaiacError, match="outside the vocabulary"):
        generate(kv_model, [1, 100000])
    with pytest.raises(MaiacError, match="capacity"):
        generate(kv_model, PROMPT, max_new_tokens=8, capacity=4)
    no_mask = onnx.ModelProto()
    no_mask.CopyFrom(kv_model)
    no_mask.graph.input[1].name = "mask"
    with pytest.raises(MaiacError, match="'mask'"):
        load_decoder(no_mask)


def _tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {f"w{i}": i for i in range(256)}
    tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


def test_cli_json_and_text_prompt(kv_model: onnx.ModelProto, tmp_path: Path) -> None:
    model = tmp_path / "decoder.onnx"
    onnx.save(kv_model, str(model))
    runner = CliRunner()
    res = runner.invoke(main, ["generate", str(model), "--prompt-ids", "3,17,42,5,99",
                               "--max-new-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tokens"] == generate(kv_model, PROMPT, max_new_tokens=5).tokens
    assert {"ttft_s", "tpot_s", "tokens_per_s", "compile_count"} <= set(out)
    tok = _tokenizer(tmp_path)
    res = runner.invoke(main, ["generate", str(model), "--prompt", "w3 w17 w42 w5 w99",
                               "--tokenizer", str(tok), "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    words = [f"w{t}" for t in out["tokens"][:3]]
    assert res.stdout.split() == words
    res = runner.invoke(main, ["generate", str(model), "--prompt", "w1"])
    assert res.exit_code == 2 and "--tokenizer" in res.output


def _analytic_decode_bytes(weights_from_hbm: int, capacity: int, kv_bytes: int) -> float:
    """The weights a step reads from HBM + the KV cache read once + this step's new rows
    written, for one sequence."""
    config = models.LLAMA_TINY
    head_dim = config.hidden // config.heads
    row = 2 * config.layers * config.kv_heads * head_dim * kv_bytes   # K and V, all layers
    return weights_from_hbm + row * capacity + row


@pytest.mark.parametrize(("fmt", "size"), [("fp32", 4), ("bf16", 2), ("fp8", 1)])
def test_in_place_decode_moves_weights_kv_once_and_new_rows(kv_model: onnx.ModelProto,
                                                           fmt: str, size: int) -> None:
    """The in-place cache (passes/kv_cache_inplace.py): a decode step's modeled HBM
    traffic is within 1.1x of the weights it streams + the cache read once in its storage
    format + the new rows, and greedy tokens still equal onnxruntime's (fp32). (This
    model's weights fit CSRAM and stay resident, so the cache is nearly all of it; the
    Concat it replaced read the cache 3x, 4.5x for a narrow cache with its Cast.)"""
    capacity = 2048
    result = generate(kv_model, PROMPT, max_new_tokens=8, kv_cache=fmt, capacity=capacity)
    assert result.kv_update == "in-place"
    decode = {p.role: p for p in result.programs}["decode"]
    analytic = _analytic_decode_bytes(decode.weight_bytes - decode.resident_weight_bytes,
                                      capacity, size)
    assert analytic <= decode.hbm_bytes <= 1.1 * analytic
    if fmt == "fp32":
        assert result.tokens == onnxruntime_greedy(kv_model, PROMPT, 8)
