"""Regenerate tests/data/toolchain: small random-weight models as deployment toolchains write them.

Each toolchain pins its own versions, so each runs in its own venv (torch==2.13.0 CPU in all;
the project venv never gets torch)::

    optimum  (optimum-onnx, transformers < 4.58):  KV-cache decoders, text-generation-with-past
    genai    (onnxruntime-genai 0.18, transformers 5.x): model builder, fp32 and int4
    ortopt   (onnxruntime only): onnxruntime.transformers.optimizer contrib-op graphs
    ortquant (onnxruntime only): QDQ / dynamic int8 / QOperator / MatMulNBits quantization
    quark    (amd-quark, onnx 1.22): MX quantization
    onnxqdq  (onnx >= 1.18, the project venv): the standard-opset MX QDQ form (opset 24)

    python -m venv /work/venvs/deployed-optimum
    /work/venvs/deployed-optimum/bin/pip install torch==2.13.0 optimum-onnx onnxruntime
    /work/venvs/deployed-optimum/bin/python scripts/export_toolchain_models.py optimum
    (genai: onnxruntime-genai==0.18.0 'transformers>=5'; quark: amd-quark 'onnx==1.22.*')

Every source model is built from a transformers config (no hub download) with a fixed torch
seed (2 layers, hidden 64) and saved to a temporary folder, which the toolchain reads like
a downloaded checkpoint. For each model, tests/data/toolchain gets ``<name>.onnx`` (one
self-contained file), ``<name>.inputs.npz``, ``<name>.ref.npz`` (onnxruntime's outputs for
those inputs) and an entry in MANIFEST.json (toolchain versions, the ops it contains).
Decoders with a KV cache get inputs for a *decode* step: a batch of 2 whose past comes from
an onnxruntime prefill of the prompt, row 1 left-padded (optimum) or shorter (genai), so the
cache positions differ per row. Tests never import torch.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "toolchain"
VOCAB = 256
SEED = 0
PROMPT = 6  # prompt tokens before the decode step
STEP = 1  # new tokens in the stored decode step


# -- source models (transformers configs, random weights) --------------------------------

def _llama_like(model_type: str) -> dict[str, Any]:
    return {"vocab_size": VOCAB, "hidden_act": "silu", "max_position_embeddings": 128,
            "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, "model_type": model_type}


def source_config(family: str) -> dict[str, Any]:
    """The transformers config (as a dict) of a family's source model."""
    if family == "gpt2":
        return {"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 128, "n_embd": 64,
                "n_layer": 2, "n_head": 4, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0}
    if family == "phi3":
        config = _llama_like("phi3")
        config.update(num_key_value_heads=4, pad_token_id=0, resid_pdrop=0.0,
                      original_max_position_embeddings=128,
                      embd_pdrop=0.0, attention_dropout=0.0)
        return config
    return _llama_like(family)


def save_source(family: str, folder: Path) -> dict[str, Any]:
    """Build the random-weight model and save it (config + safetensors) like a checkpoint."""
    import torch
    import transformers

    config_dict = source_config(family)
    config = transformers.AutoConfig.for_model(**config_dict)
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    save_tokenizer(folder)
    return {"library": f"transformers {transformers.__version__}",
            "class": type(model).__name__, "config": config_dict,
            "torch": torch.__version__, "seed": SEED}


def save_tokenizer(folder: Path) -> None:
    """A byte-level word tokenizer of VOCAB entries: the genai builder copies one along."""
    import tokenizers
    import transformers

    vocab = {f"<{i}>": i for i in range(VOCAB)}
    model = tokenizers.models.WordLevel(vocab, unk_token="<0>")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<0>",
                                                bos_token="<1>", eos_token="<2>")
    fast.save_pretrained(folder)


# -- inputs and references ---------------------------------------------------------------

def _ids(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, VOCAB, (rows, cols)).astype(np.int64)


def _elem_dtype(value: Any) -> np.dtype:
    return {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64),
            "tensor(int32)": np.dtype(np.int32), "tensor(float16)": np.dtype(np.float16)}[value.type]


def optimum_feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Decode-step feeds for an optimum KV-cache decoder: prefill with onnxruntime, then 1 token.

    Row 1's prompt is left-padded by 2 (optimum's convention: attention_mask zeros on the
    left, position_ids from the mask's cumulative sum), so its positions differ from row 0's.
    """
    names = {i.name: i for i in session.get_inputs()}
    pasts = [n for n in names if n.startswith("past_key_values")]
    mask = np.ones((2, PROMPT), np.int64)
    mask[1, :2] = 0
    ids = _ids(2, PROMPT, 1) * mask
    feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in names:
        feeds["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    for n in pasts:  # [batch, kv_heads, 0, head_dim]
        shape = [2 if d == "batch_size" or not isinstance(d, int) and "batch" in str(d) else d
                 for d in names[n].shape]
        dims = [2, shape[1], 0, shape[3]]
        feeds[n] = np.zeros(dims, _elem_dtype(names[n]))
    outputs = session.run(None, feeds)
    present = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    step_mask = np.concatenate([mask, np.ones((2, STEP), np.int64)], axis=1)
    step: dict[str, np.ndarray] = {"input_ids": _ids(2, STEP, 2), "attention_mask": step_mask}
    if "position_ids" in names:
        step["position_ids"] = (np.cumsum(step_mask, axis=1) - 1)[:, -STEP:]
    for n in pasts:
        step[n] = present[n.replace("past_key_values", "present")]
    return step


def genai_feeds(session: ort.InferenceSession, head_size: int) -> dict[str, np.ndarray]:
    """Decode-step feeds for a genai builder decoder (GroupQueryAttention, past buffers).

    Row 0 has a 6-token prompt; row 1 only 4 (right-padded in the prefill), so the real
    ``seqlens_k`` of the decode step differ per row: positions come from those, not from the
    past tensor's shape.
    """
    names = {i.name: i for i in session.get_inputs()}
    pasts = [n for n in names if n.startswith("past_key_values")]
    lengths = np.array([PROMPT, PROMPT - 2])
    mask = (np.arange(PROMPT)[None, :] < lengths[:, None]).astype(np.int64)
    feeds: dict[str, np.ndarray] = {"input_ids": _ids(2, PROMPT, 1) * mask,
                                    "attention_mask": mask}
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(PROMPT)[None, :].repeat(2, 0).astype(np.int64)
    for n in pasts:
        shape = names[n].shape
        feeds[n] = np.zeros((2, shape[1], 0, head_size), _elem_dtype(names[n]))
    outputs = session.run(None, feeds)
    present = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    # the next token of each row goes right after its own prompt
    step_mask = np.concatenate([mask, np.zeros((2, STEP), np.int64)], axis=1)
    for row, length in enumerate(lengths):
        step_mask[row, length:length + STEP] = 1
    step: dict[str, np.ndarray] = {"input_ids": _ids(2, STEP, 2), "attention_mask": step_mask}
    if "position_ids" in names:
        step["position_ids"] = (lengths[:, None] + np.arange(STEP)[None, :]).astype(np.int64)
    for n in pasts:
        step[n] = present[n.replace("past_key_values", "present")]
    return step


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    counts = collections.Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in model.graph.node)
    return dict(sorted(counts.items()))


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def write(name: str, model_path: Path, feeds_for: Callable[[ort.InferenceSession],
          dict[str, np.ndarray]], entry: dict[str, Any], custom_op_lib: str | None = None,
          onnx_reference: bool = False) -> dict[str, Any]:
    """Copy the model in as one file, run onnxruntime on the feeds, store both.

    ``onnx_reference``: the outputs come from the ONNX reference implementation
    (``onnx.reference``) instead, for ops the installed onnxruntime does not run;
    ``feeds_for`` then gets the session None."""
    model = onnx.load(str(model_path))  # external data, if any, is loaded and embedded
    for node in model.graph.node:
        del node.metadata_props[:]
    DATA.mkdir(parents=True, exist_ok=True)
    target = DATA / f"{name}.onnx"
    onnx.save_model(model, str(target), save_as_external_data=False)
    if onnx_reference:
        from onnx.reference import ReferenceEvaluator

        feeds = feeds_for(None)  # type: ignore[arg-type]
        start = time.perf_counter()
        outputs = ReferenceEvaluator(model).run(None, feeds)
        entry["onnx_reference_s"] = round(time.perf_counter() - start, 4)
        refs = dict(zip([o.name for o in model.graph.output], outputs, strict=True))
    else:
        options = ort.SessionOptions()
        if custom_op_lib:
            options.register_custom_ops_library(custom_op_lib)
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        feeds = feeds_for(session)
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        entry["onnxruntime_s"] = round(time.perf_counter() - start, 4)
        refs = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    np.savez(DATA / f"{name}.inputs.npz", **feeds)
    np.savez(DATA / f"{name}.ref.npz", **refs)
    entry.update({
        "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ops": _ops(model),
        "inputs": [{"name": i.name, "dims": _dims(i), "stored": list(feeds[i.name].shape)}
                   for i in model.graph.input if i.name in feeds],
        "outputs": [{"name": o.name, "dims": _dims(o)} for o in model.graph.output],
        "bytes": target.stat().st_size,
    })
    print(f"{name}: {entry['bytes'] / 1e3:.0f} kB, ops {entry['ops']}", file=sys.stderr)
    record(name, entry)
    return entry


# -- toolchains --------------------------------------------------------------------------

def export_optimum(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """optimum-onnx ``text-generation-with-past``: one decoder with past_key_values inputs."""
    import optimum
    import transformers
    from optimum.exporters.onnx import main_export

    entries = {}
    for family in ("llama", "qwen2", "gpt2"):
        if only and f"optimum_{family}_kv" not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "src", Path(tmp) / "out"
            source = save_source(family, src)
            start = time.perf_counter()
            main_export(str(src), output=str(out), task="text-generation-with-past",
                        no_post_process=False, do_validation=False, device="cpu")
            export_s = time.perf_counter() - start
            version = getattr(optimum, "__version__", None) or _dist_version("optimum-onnx")
            entry = {"toolchain": "optimum-onnx", "family": family, "source": source,
                     "task": "text-generation-with-past", "export_s": round(export_s, 2),
                     "versions": {"optimum-onnx": _dist_version("optimum-onnx"),
                                  "optimum": version,
                                  "transformers": transformers.__version__},
                     "step": "decode: batch 2, past 6 (row 1 left-padded by 2), 1 new token"}
            entries[f"optimum_{family}_kv"] = write(f"optimum_{family}_kv",
                                                    out / "model.onnx", optimum_feeds, entry)
    return entries


GENAI_MODELS: dict[str, tuple[str, str, dict[str, str]]] = {
    # name -> (family, precision, extra builder options)
    "genai_llama_fp32": ("llama", "fp32", {}),
    "genai_qwen2_fp32": ("qwen2", "fp32", {}),
    "genai_phi3_fp32": ("phi3", "fp32", {}),
    # the builder's CPU default: block 32, accuracy_level 4 (int8 activations in onnxruntime)
    "genai_llama_int4": ("llama", "int4", {"block_size": "32"}),
    # fp32 activations (accuracy_level 1): onnxruntime dequantizes and multiplies in fp32;
    # asymmetric: uint4 codes with zero points
    "genai_qwen2_int4_b16": ("qwen2", "int4", {"block_size": "16", "accuracy_level": "1",
                                                "is_symmetric": "false"}),
    "genai_llama_int8": ("llama", "int8", {"accuracy_level": "1"}),
}


def export_genai(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """onnxruntime-genai's model builder (``-e cpu``): GroupQueryAttention, MatMulNBits, ..."""
    import subprocess

    import transformers

    entries = {}
    for name, (family, precision, extra) in GENAI_MODELS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src, out, cache = Path(tmp) / "src", Path(tmp) / "out", Path(tmp) / "cache"
            source = save_source(family, src)
            command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src),
                       "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
            if extra:
                command += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
            start = time.perf_counter()
            subprocess.run(command, check=True)
            export_s = time.perf_counter() - start
            entry = {"toolchain": "onnxruntime-genai", "family": family, "source": source,
                     "precision": precision, "builder_options": extra,
                     "export_s": round(export_s, 2),
                     "versions": {"onnxruntime-genai": _dist_version("onnxruntime-genai"),
                                  "transformers": transformers.__version__},
                     "step": "decode: batch 2, prompts of 6 and 4 tokens, 1 new token"}
            genai_config = out / "genai_config.json"
            if genai_config.is_file():
                entry["genai_config"] = json.loads(genai_config.read_text())["model"]["decoder"]
            head_size = entry["genai_config"]["head_size"]
            entries[name] = write(name, out / "model.onnx",
                                  lambda session, h=head_size: genai_feeds(session, h), entry)
    return entries


TESTS_DATA = DATA.parent  # the torch.onnx exports the ORT tools start from


def _stored_feeds(source: str) -> Callable[[ort.InferenceSession], dict[str, np.ndarray]]:
    def feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
        with np.load(TESTS_DATA / f"{source}.inputs.npz") as npz:
            stored = {k: npz[k] for k in npz.files}
        return {i.name: stored[i.name] for i in session.get_inputs()}
    return feeds


ORTOPT_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name -> (tests/data source export, model_type, FusionOptions overrides)
    "ortopt_bert": ("bert_torchscript", "bert", {}),
    "ortopt_bert_mha": ("bert_torchscript", "bert", {"use_multi_head_attention": True}),
    "ortopt_gpt2": ("gpt2_torchscript", "gpt2", {}),
}


def export_ortopt(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """onnxruntime.transformers.optimizer (offline, opt_level 0: the Python fusions only)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    entries = {}
    for name, (source, model_type, overrides) in ORTOPT_MODELS.items():
        if only and name not in only:
            continue
        options = FusionOptions(model_type)
        for key, value in overrides.items():
            setattr(options, key, value)
        start = time.perf_counter()
        optimized = optimize_model(str(TESTS_DATA / f"{source}.onnx"), model_type=model_type,
                                   num_heads=4, hidden_size=64, optimization_options=options,
                                   opt_level=0, use_gpu=False)
        export_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            optimized.save_model_to_file(str(path))
            entry = {"toolchain": "onnxruntime.transformers.optimizer", "source": source,
                     "model_type": model_type, "fusion_options": overrides,
                     "export_s": round(export_s, 2), "fused": optimized.get_fused_operator_statistics()}
            entries[name] = write(name, path, _stored_feeds(source), entry)
    return entries


def _calibration(source: str):
    from onnxruntime.quantization import CalibrationDataReader

    with np.load(TESTS_DATA / f"{source}.inputs.npz") as npz:
        stored = {k: npz[k] for k in npz.files}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(7)
            batches = [stored]
            for _ in range(3):
                batch = dict(stored)
                if "input_ids" in batch:
                    batch["input_ids"] = rng.integers(1, VOCAB, stored["input_ids"].shape)
                batches.append(batch)
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def _quant_static(source: str, out: Path, **kwargs: Any) -> None:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(TESTS_DATA / f"{source}.onnx"), str(out), _calibration(source), **kwargs)


def _quant_dynamic(source: str, out: Path, **kwargs: Any) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(TESTS_DATA / f"{source}.onnx"), str(out), **kwargs)


def _quant_nbits(source: str, out: Path, **kwargs: Any) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    quant_format = kwargs.pop("quant_format", None)
    config = DefaultWeightOnlyQuantConfig(**kwargs, **({"quant_format": quant_format}
                                                       if quant_format is not None else {}))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(TESTS_DATA / f"{source}.onnx")),
                                     algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def _ortquant_models() -> dict[str, tuple[str, Callable[..., None], dict[str, Any]]]:
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        # QDQ, int8 weights per output channel, int8 activations (static scales)
        "ortquant_llama_qdq_s8": ("llama_torchscript", _quant_static, {
            "quant_format": QuantFormat.QDQ, "per_channel": True,
            "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            "op_types_to_quantize": ["MatMul"]}),
        # QDQ, uint8 activations, int8 weights per tensor
        "ortquant_bert_qdq_u8": ("bert_torchscript", _quant_static, {
            "quant_format": QuantFormat.QDQ, "per_channel": False,
            "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "op_types_to_quantize": ["MatMul"]}),
        # QOperator: QLinearMatMul
        "ortquant_bert_qlinear": ("bert_torchscript", _quant_static, {
            "quant_format": QuantFormat.QOperator, "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8, "op_types_to_quantize": ["MatMul"]}),
        # dynamic: DynamicQuantizeLinear + MatMulInteger
        "ortquant_gpt2_dynamic": ("gpt2_torchscript", _quant_dynamic, {
            "weight_type": QuantType.QInt8, "op_types_to_quantize": ["MatMul"]}),
        # weight-only int4 with zero points (asymmetric), block 32: MatMulNBits
        "ortquant_llama_int4_zp": ("llama_torchscript", _quant_nbits, {
            "block_size": 32, "is_symmetric": False, "accuracy_level": 0}),
        # weight-only int4, block 64, as blocked QDQ (DequantizeLinear INT4, opset 21; from the
    # opset-18 export: the tool bumps the opset without rewriting ReduceMean axes attributes)
        "ortquant_llama_int4_qdq": ("llama_dynamo", _quant_nbits, {
            "block_size": 64, "is_symmetric": True, "quant_format": QuantFormat.QDQ}),
    }


def export_ortquant(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """onnxruntime.quantization on the tests/data exports: QDQ, QOperator, dynamic, int4."""
    entries = {}
    for name, (source, run, kwargs) in _ortquant_models().items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            start = time.perf_counter()
            run(source, path, **dict(kwargs))
            entry = {"toolchain": "onnxruntime.quantization", "source": source,
                     "method": run.__name__.lstrip("_"),
                     "options": {k: str(v) for k, v in kwargs.items()},
                     "export_s": round(time.perf_counter() - start, 2)}
            entries[name] = write(name, path, _stored_feeds(source), entry)
    return entries


QUARK_MODELS: dict[str, str] = {
    # name -> Quark's MX element dtype (MXAttributes.element_dtype; block 32, E8M0 scales)
    "quark_llama_mxfp8": "fp8_e4m3",
    "quark_llama_mxfp6": "fp6_e2m3",
    "quark_llama_mxfp4": "fp4_e2m1",
}
QUARK_SOURCE = "llama_torchscript"
QUARK_ELEMENT_DTYPES = ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1")


def _quark_library() -> str:
    """Quark's onnxruntime custom-op library (com.amd.quark ops), JIT-built on first use."""
    from quark.onnx.operators.custom_ops import get_library_path

    return get_library_path("CPU")


def _quark_config(element_dtype: str, source: onnx.ModelProto) -> Any:
    """Quark's MX config for the element dtype, restricted as LLM deployments use it: the
    linear layers' MatMuls (weights and input activations MX, block 32 along K), not the
    attention's activation x activation MatMuls, no MX on the MatMul outputs."""
    import dataclasses

    from quark.onnx.quantization.config import custom_config

    base = {"fp8_e4m3": custom_config.MXFP8E4M3_CONFIG,
            "fp8_e5m2": custom_config.MXFP8E5M2_CONFIG,
            "fp6_e3m2": custom_config.MXFP6E3M2_CONFIG,
            "fp6_e2m3": custom_config.MXFP6E2M3_CONFIG,
            "fp4_e2m1": custom_config.MXFP4E2M1_CONFIG}[element_dtype]
    weights = {t.name for t in source.graph.initializer}
    activation_matmuls = [n.name for n in source.graph.node
                          if n.op_type == "MatMul" and n.input[1] not in weights]
    return dataclasses.replace(
        base, op_types_to_quantize=["MatMul"], nodes_to_exclude=activation_matmuls,
        extra_options={**base.extra_options, "OpTypesToExcludeOutputQuantization": ["MatMul"]})


def export_quark(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """AMD Quark's ONNX quantizer (ModelQuantizer) to MXFP8 / MXFP6 / MXFP4 on the Llama
    export, references from onnxruntime with Quark's custom-op library; plus
    ``quark_mx_elements``: one MXQuantizeDequantize per element dtype on edge-case values
    (ties, saturation, zeros, 2^±100 blocks) for the element-by-element comparison."""
    from quark.onnx import ModelQuantizer
    from quark.onnx.quantization.config.config import Config

    library = _quark_library()
    source = onnx.load(str(TESTS_DATA / f"{QUARK_SOURCE}.onnx"))
    feeds = _stored_feeds(QUARK_SOURCE)
    entries = {}
    for name, element_dtype in QUARK_MODELS.items():
        if only and name not in only:
            continue
        config = _quark_config(element_dtype, source)

        class Reader:  # calibration: the stored inputs (MX needs no activation statistics)
            def __init__(self) -> None:
                self.rewind()

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

            def rewind(self) -> None:
                with np.load(TESTS_DATA / f"{QUARK_SOURCE}.inputs.npz") as npz:
                    self.batches = iter([{k: npz[k] for k in npz.files}])

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            start = time.perf_counter()
            with contextlib.chdir(tmp):  # Quark writes a quantized_info.csv into the cwd
                ModelQuantizer(Config(global_quant_config=config)).quantize_model(
                    str(TESTS_DATA / f"{QUARK_SOURCE}.onnx"), str(path), Reader())
            entry = {"toolchain": "amd-quark", "source": QUARK_SOURCE,
                     "element_dtype": element_dtype,
                     "config": {"op_types_to_quantize": ["MatMul"],
                                "nodes_to_exclude": config.nodes_to_exclude,
                                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                                "MXAttributes": config.extra_options["MXAttributes"]},
                     "export_s": round(time.perf_counter() - start, 2),
                     "versions": {"amd-quark": _dist_version("amd-quark")},
                     "reference": "onnxruntime with Quark's custom-op library"}
            entries[name] = write(name, path, feeds, entry, custom_op_lib=library)
    if not only or "quark_mx_elements" in only:
        entries["quark_mx_elements"] = _export_quark_elements(library)
    return entries


def mx_edge_values(rows: int = 8, block: int = 32) -> np.ndarray:
    """[rows, 4 * block] fp32 values whose MX quantization exercises the rule's corners."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((rows, 4 * block)).astype(np.float32)
    x *= np.float32(2.0) ** rng.integers(-12, 12, (rows, 4, 1)).repeat(block, 2).reshape(rows, -1)
    x[0, :block] = 0.0  # an all-zero block
    ladder = np.float32(2.0) ** np.arange(-8, 3, dtype=np.float32)
    x[1, :block] = np.resize(np.concatenate([ladder * 1.5, -ladder * 1.25]), block)  # ties
    x[2, :block] = np.linspace(-7.99, 7.99, block, dtype=np.float32)  # saturation (amax < 8)
    x[3, :block] = np.float32(2.0 ** 100) * rng.standard_normal(block).astype(np.float32)
    x[3, block:2 * block] = np.float32(2.0 ** -100) * rng.standard_normal(block).astype(np.float32)
    x[4, :block] = np.float32(1.0) + np.arange(block, dtype=np.float32) / 64  # fine steps
    return x


def _export_quark_elements(library: str) -> dict[str, Any]:
    """One MXQuantizeDequantize per element dtype (axis -1 and axis 0) on mx_edge_values."""
    x = mx_edge_values()
    nodes, outputs = [], []
    for dtype in QUARK_ELEMENT_DTYPES:
        for axis in (-1, 0):
            out = f"{dtype}_axis{axis % 2}"
            nodes.append(onnx.helper.make_node(
                "MXQuantizeDequantize", ["x"], [out], f"mx_{out}", domain="com.amd.quark",
                element_dtype=dtype, axis=axis, block_size=32, rounding_mode=2))
            outputs.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                              list(x.shape)))
    graph = onnx.helper.make_graph(
        nodes, "quark_mx_elements",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))], outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("com.amd.quark", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        entry = {"toolchain": "amd-quark", "element_dtypes": list(QUARK_ELEMENT_DTYPES),
                 "versions": {"amd-quark": _dist_version("amd-quark")},
                 "reference": "onnxruntime with Quark's custom-op library"}
        return write("quark_mx_elements", path, lambda session: {"x": x}, entry,
                     custom_op_lib=library)


ONNX_MX_MODELS: dict[str, tuple[int, int]] = {
    # name -> (element type of the weights, emax of that element type); E8M0 block scales
    "onnxqdq_llama_mxfp4": (onnx.TensorProto.FLOAT4E2M1, 2),
    "onnxqdq_llama_mxfp8": (onnx.TensorProto.FLOAT8E4M3FN, 8),
}
ONNX_MX_SOURCE = "llama_dynamo"


def _mx_weight_nodes(name: str, w: np.ndarray, element_type: int, emax: int
                     ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``DequantizeLinear(codes, e8m0 scales, axis=0, block_size=32)`` of the [K, N] weight:
    scales by the OCP rule (2^(floor(log2 amax) - emax) per block of 32 along K), codes by
    the ONNX reference's QuantizeLinear (round half to even, saturate)."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    k, n = w.shape
    amax = np.abs(w.reshape(k // 32, 32, n)).max(axis=1)
    exponent = np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - emax
    exponent = np.where(amax > 0, exponent, -127).clip(-127, 127)
    scales = (2.0 ** exponent).astype(ml_dtypes.float8_e8m0fnu)
    quantize = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s"], ["q"], axis=0, block_size=32,
                          output_dtype=element_type)], "q", [],
        [helper.make_tensor_value_info("q", element_type, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scales, "s")]),
        opset_imports=[helper.make_opsetid("", 24)])
    codes = ReferenceEvaluator(quantize).run(None, {})[0]
    node = helper.make_node("DequantizeLinear", [f"{name}_codes", f"{name}_scales"],
                            [f"{name}_dequantized"], f"{name}_DequantizeLinear", axis=0,
                            block_size=32, output_dtype=onnx.TensorProto.FLOAT)
    return ([node], [numpy_helper.from_array(codes, f"{name}_codes"),
                     numpy_helper.from_array(scales, f"{name}_scales")], f"{name}_dequantized")


def export_onnxqdq(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The standard-opset MX QDQ form (opset 24): every linear layer's weight as FLOAT4E2M1 /
    FLOAT8E4M3FN codes with FLOAT8E8M0 block scales through DequantizeLinear. onnxruntime
    1.32's CPU provider has no kernel for these types, so the references come from the ONNX
    reference implementation (``onnx.reference``)."""
    from onnx import version_converter

    entries = {}
    for name, (element_type, emax) in ONNX_MX_MODELS.items():
        if only and name not in only:
            continue
        model = version_converter.convert_version(
            onnx.load(str(TESTS_DATA / f"{ONNX_MX_SOURCE}.onnx")), 24)
        inits = {t.name: t for t in model.graph.initializer}
        nodes: list[onnx.NodeProto] = []
        replaced: set[str] = set()
        for node in model.graph.node:
            weight = node.input[1] if node.op_type == "MatMul" else ""
            if weight in inits and len(inits[weight].dims) == 2:
                w = onnx.numpy_helper.to_array(inits[weight]).astype(np.float32)
                dq, tensors, out = _mx_weight_nodes(weight, w, element_type, emax)
                nodes.extend(dq)
                model.graph.initializer.extend(tensors)
                replaced.add(weight)
                node.input[1] = out
            nodes.append(node)
        kept = [t for t in model.graph.initializer if t.name not in replaced]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            entry = {"toolchain": "onnx (standard MX QDQ)", "source": ONNX_MX_SOURCE,
                     "weights": onnx.TensorProto.DataType.Name(element_type),
                     "scales": "FLOAT8E8M0, block 32 along K (OCP floor rule)",
                     "mx_weights": len(replaced),
                     "reference": f"onnx.reference (onnx {onnx.__version__}); onnxruntime "
                                  f"{ort.__version__} has no CPU kernel for these types"}
            with np.load(TESTS_DATA / f"{ONNX_MX_SOURCE}.inputs.npz") as npz:
                stored = {k: npz[k] for k in npz.files}
            entries[name] = write(name, path, lambda _session, feeds=stored: feeds, entry,
                                  onnx_reference=True)
    return entries


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


TOOLCHAINS: dict[str, Callable[..., dict[str, dict[str, Any]]]] = {
    "optimum": export_optimum,
    "genai": export_genai,
    "ortopt": export_ortopt,
    "ortquant": export_ortquant,
    "quark": export_quark,
    "onnxqdq": export_onnxqdq,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("toolchain", choices=sorted(TOOLCHAINS))
    parser.add_argument("--only", nargs="*", help="model names (default: all of the toolchain)")
    args = parser.parse_args(argv)
    exporter = TOOLCHAINS[args.toolchain]
    exporter(args.only)
    return 0


def record(name: str, entry: dict[str, Any]) -> None:
    """Add one model's entry to MANIFEST.json (written after every model)."""
    manifest_path = DATA / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.setdefault("models", {})[name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    manifest["script"] = "scripts/export_toolchain_models.py"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
