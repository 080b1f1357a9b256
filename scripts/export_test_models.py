"""Regenerate tests/data: small random-weight Hugging Face transformers exported to ONNX.

Needs torch==2.13.0, transformers (5.x), onnx, onnxscript and onnxruntime, e.g. in a
separate venv (the project venv must not get torch):

    python -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 transformers onnx onnxruntime onnxscript numpy
    /work/torchvenv/bin/python scripts/export_test_models.py [--only NAME ...]

Every model is built from a config (no hub downloads) with a fixed torch seed, put in
eval() mode, wrapped so it returns one tensor (logits / last_hidden_state) and exported
twice: with the dynamo exporter (opset 18) and the TorchScript exporter (opset 17, with
an explicit attention_mask; DESIGN §7). Each export is checked against torch and
onnxruntime; tests/data gets ``<name>.onnx``, ``<name>.inputs.npz``, ``<name>.ref.npz``
(onnxruntime outputs) and MANIFEST.json. Tests never import torch.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
TOLERANCE = 1e-4  # torch vs onnxruntime, max abs diff
DYNAMO_OPSET = 18
TORCHSCRIPT_OPSET = 17  # default; some models use an older one (see MODELS)
VOCAB = 256
SEED = 0


@dataclass
class Spec:
    """One source model: how to build it, its inputs, and which output to export."""

    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict[str, torch.Tensor]]
    output: str  # "logits" or "last_hidden_state"
    config: dict[str, Any] = field(default_factory=dict)


class OneOutput(torch.nn.Module):
    """Call a HF model with keyword inputs and return only one output tensor."""

    def __init__(self, model: torch.nn.Module, names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.output = output
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(zip(self.names, args, strict=True))
        if self.no_cache:
            kwargs["use_cache"] = False
        return getattr(self.model(**kwargs), self.output)


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g, dtype=torch.int64)


def _decoder_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(2, 8, 1), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}


def _bert_inputs() -> dict[str, torch.Tensor]:
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0  # row 1 is padded: its last 4 tokens are masked out
    ids = _ids(2, 12, 2)
    ids[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _vit_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}


def _image224_inputs() -> dict[str, torch.Tensor]:
    """One 224x224 image: 14x14 patches of 16 -> 196 tokens + [CLS] (+ DeiT's distillation
    token), the sequence lengths (197, 198) of the ViT/DeiT checkpoints people use."""
    g = torch.Generator().manual_seed(4)
    return {"pixel_values": torch.randn(1, 3, 224, 224, generator=g)}


def _seq2seq_inputs() -> dict[str, torch.Tensor]:
    inputs = _bert_inputs()
    inputs["decoder_input_ids"] = _ids(2, 5, 5)
    return inputs


def _configs() -> dict[str, tuple[str, Any, Callable[[], dict[str, torch.Tensor]], str]]:
    """family → (model class name, config, inputs, output)."""
    t = transformers
    common = {"vocab_size": VOCAB, "hidden_act": "silu", "max_position_embeddings": 64,
              "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False}
    return {
        "gpt2": ("GPT2LMHeadModel",
                 t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
                 _decoder_inputs, "logits"),
        "bert": ("BertModel",
                 t.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128,
                              max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0),
                 _bert_inputs, "last_hidden_state"),
        "llama": ("LlamaForCausalLM", t.LlamaConfig(**common), _decoder_inputs, "logits"),
        "qwen2": ("Qwen2ForCausalLM", t.Qwen2Config(**common), _decoder_inputs, "logits"),
        "vit": ("ViTModel",
                t.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                _vit_inputs, "last_hidden_state"),
        # families of issue 10: what users' checkpoints are made of, at small widths
        "vit224": ("ViTModel",
                   t.ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=64,
                               num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0),
                   _image224_inputs, "last_hidden_state"),
        "deit": ("DeiTModel",
                 t.DeiTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=64,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                 _image224_inputs, "last_hidden_state"),
        "t5_encoder": ("T5EncoderModel",
                       t.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128,
                                  num_layers=2, num_heads=4, dropout_rate=0.0,
                                  feed_forward_proj="gated-gelu"),
                       _bert_inputs, "last_hidden_state"),
        "t5": ("T5ForConditionalGeneration",
               t.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                          num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
                          decoder_start_token_id=0),
               _seq2seq_inputs, "logits"),
        "mpnet": ("MPNetModel",
                  t.MPNetConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128,
                                max_position_embeddings=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0),
                  _bert_inputs, "last_hidden_state"),
        "distilbert": ("DistilBertModel",
                       t.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4,
                                          hidden_dim=128, max_position_embeddings=64,
                                          dropout=0.0, attention_dropout=0.0),
                       _bert_inputs, "last_hidden_state"),
        "phi": ("PhiForCausalLM",
                t.PhiConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, partial_rotary_factor=0.5,
                            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
                _decoder_inputs, "logits"),
    }


def build(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """The eval()-mode wrapper module, its inputs and a description of the source model."""
    cls_name, config, make_inputs, output = _configs()[family]
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    pooled = ("vit", "bert", "vit224", "deit", "mpnet")
    extra = {"add_pooling_layer": False} if family in pooled else {}
    model = getattr(transformers, cls_name)(config, **extra).eval()
    inputs = make_inputs()
    wrapper = OneOutput(model, list(inputs), output).eval()
    source = {"library": f"transformers {transformers.__version__}", "class": cls_name,
              "config": {k: v for k, v in config.to_diff_dict().items()
                         if isinstance(v, int | float | str | bool) and k != "transformers_version"},
              "output": output, "torch": torch.__version__, "seed": SEED}
    return wrapper, inputs, source


# name → (family, exporter, opset, symbolic batch/sequence dims?). Opsets below 17 have no
# LayerNormalization: the TorchScript exporter decomposes it (ReduceMean/Sub/Pow/Sqrt/Div).
MODELS: dict[str, tuple[str, str, int, bool]] = {
    "gpt2_dynamo": ("gpt2", "dynamo", DYNAMO_OPSET, False),
    "gpt2_torchscript": ("gpt2", "torchscript", TORCHSCRIPT_OPSET, True),
    "bert_dynamo": ("bert", "dynamo", DYNAMO_OPSET, False),
    "bert_torchscript": ("bert", "torchscript", 14, False),
    "llama_dynamo": ("llama", "dynamo", DYNAMO_OPSET, False),
    "llama_dynamo_dynamic": ("llama", "dynamo", DYNAMO_OPSET, True),
    "llama_torchscript": ("llama", "torchscript", TORCHSCRIPT_OPSET, False),
    "qwen2_dynamo": ("qwen2", "dynamo", DYNAMO_OPSET, False),
    "qwen2_torchscript": ("qwen2", "torchscript", TORCHSCRIPT_OPSET, False),
    "vit_dynamo": ("vit", "dynamo", DYNAMO_OPSET, False),
    "vit_torchscript": ("vit", "torchscript", 16, False),
    "vit224_dynamo": ("vit224", "dynamo", DYNAMO_OPSET, False),
    "deit_dynamo": ("deit", "dynamo", DYNAMO_OPSET, False),
    "t5_encoder_dynamo": ("t5_encoder", "dynamo", DYNAMO_OPSET, False),
    "t5_dynamo": ("t5", "dynamo", DYNAMO_OPSET, False),
    "mpnet_dynamo": ("mpnet", "dynamo", DYNAMO_OPSET, False),
    "mpnet_torchscript": ("mpnet", "torchscript", TORCHSCRIPT_OPSET, True),
    "distilbert_dynamo": ("distilbert", "dynamo", DYNAMO_OPSET, False),
    "distilbert_torchscript": ("distilbert", "torchscript", TORCHSCRIPT_OPSET, True),
    "phi_dynamo": ("phi", "dynamo", DYNAMO_OPSET, False),
}


STRIPPED_METADATA = "pkg.torch.onnx.stack_trace"

# What it took to export (torch 2.13, transformers 5.x); written to MANIFEST.json.
NOTES = [
    "TorchScript exporter: pass an explicit attention_mask (without one transformers calls "
    "torch.diff, which it cannot export) and export a wrapper in eval() mode (else dropout "
    "is exported and outputs differ from torch).",
    "Both exporters: config._attn_implementation='eager' (no SDPA), use_cache=False, a "
    "wrapper returning one tensor (logits / last_hidden_state); BERT/ViT without pooler.",
    "Dynamo exporter with dynamic_shapes: forward(*args) is one varargs parameter, so "
    "dynamic_shapes is a 1-tuple holding one spec per input.",
    "TorchScript opset 14 (BERT) and 16 (ViT) have no LayerNormalization: it is exported "
    "decomposed (ReduceMean/Sub/Pow/Add/Sqrt/Div).",
    "Dynamo exports: per-node pkg.torch.onnx.stack_trace metadata is removed (machine "
    "paths, a third of the bytes); initializers are always stored inside the .onnx file.",
]


def strip_stack_traces(model: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node Python stack traces.

    They hold this machine's paths and this script's line numbers (so any edit would change
    every file) and a third of a small model's bytes. The other per-node metadata (module
    namespace, class hierarchy, FX node) stays: it is what real exports carry.
    """
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != STRIPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def export(wrapper: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path,
           exporter: str, opset: int, symbolic: bool, output: str) -> None:
    """Export to ``path`` as one self-contained file."""
    names = list(inputs)
    args = tuple(inputs.values())
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        if exporter == "dynamo":
            kwargs: dict[str, Any] = {}
            if symbolic:
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                # forward(*args): one varargs parameter holding every input
                kwargs["dynamic_shapes"] = (tuple({0: batch, 1: seq} for _ in names),)
            torch.onnx.export(wrapper, args, str(raw), dynamo=True, opset_version=opset,
                              input_names=names, output_names=[output], **kwargs)
        else:
            kwargs = {}
            if symbolic:
                axes = {n: {0: "batch", 1: "sequence"} for n in names}
                axes[output] = {0: "batch", 1: "sequence"}
                kwargs["dynamic_axes"] = axes
            torch.onnx.export(wrapper, args, str(raw), dynamo=False,
                              opset_version=opset, input_names=names,
                              output_names=[output], do_constant_folding=True, **kwargs)
        model = onnx.load(str(raw), load_external_data=True)
    for init in model.graph.initializer:  # make sure nothing still points outside the file
        del init.external_data[:]
        init.data_location = onnx.TensorProto.DEFAULT
    strip_stack_traces(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path), save_as_external_data=False)


def check_other_shape(wrapper: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      path: Path) -> dict[str, Any]:
    """A symbolic-dim export must also match torch at another batch/sequence size."""
    other = {k: v[:1, : v.shape[1] - 3].contiguous() for k, v in inputs.items()}
    with torch.no_grad():
        expected = wrapper(*other.values()).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: other[i.name].numpy() for i in session.get_inputs()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff < TOLERANCE:
        raise AssertionError(f"{path.name}: at shape {list(got.shape)} onnxruntime differs "
                             f"from torch by {diff:.3g}")
    return {"shapes": {k: list(v.shape) for k, v in other.items()}, "max_abs_diff": diff}


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value
            for d in value.type.tensor_type.shape.dim]


def describe(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
             ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inputs/outputs, symbolic dims and the op histogram of an exported model."""
    ops = collections.Counter(n.op_type for n in model.graph.node)
    symbolic: dict[str, int] = {}
    inputs = []
    for value in model.graph.input:
        dims = _dims(value)
        shape = list(feeds[value.name].shape)
        for d, n in zip(dims, shape, strict=True):
            if isinstance(d, str):
                symbolic[d] = n
        inputs.append({"name": value.name,
                       "dtype": onnx.helper.tensor_dtype_to_np_dtype(
                           value.type.tensor_type.elem_type).name,
                       "shape": dims, "stored_shape": shape})
    outputs = [{"name": v.name, "shape": _dims(v), "stored_shape": list(ref[v.name].shape),
                "dtype": str(ref[v.name].dtype)} for v in model.graph.output]
    return {
        "opsets": {d.domain or "ai.onnx": d.version for d in model.opset_import},
        "inputs": inputs, "outputs": outputs, "symbolic_dims": symbolic,
        "shapes": ({i["name"]: i["stored_shape"] for i in inputs} if symbolic else {}),
        "nodes": len(model.graph.node), "initializers": len(model.graph.initializer),
        "op_histogram": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def make(name: str, data: Path) -> dict[str, Any]:
    """Export one model and write its files into ``data``; returns its MANIFEST.json entry."""
    family, exporter, opset, symbolic = MODELS[name]
    wrapper, inputs, source = build(family)
    entry: dict[str, Any] = {"family": family, "exporter": exporter, "opset": opset,
                             "source": source, "stripped_node_metadata": [STRIPPED_METADATA]}
    with torch.no_grad():
        expected = wrapper(*inputs.values()).numpy()
    path = data / f"{name}.onnx"
    start = time.perf_counter()
    export(wrapper, inputs, path, exporter, opset, symbolic, source["output"])
    entry["export_s"] = round(time.perf_counter() - start, 2)
    if symbolic:
        entry["torch_vs_ort_other_shape"] = check_other_shape(wrapper, inputs, path)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}  # unused inputs dropped
    out_names = [o.name for o in session.get_outputs()]
    ref = dict(zip(out_names, session.run(None, feeds), strict=True))
    diff = float(np.max(np.abs(ref[out_names[0]] - expected)))
    entry["torch_vs_ort_max_abs_diff"] = diff
    if not diff < TOLERANCE:
        path.unlink()
        raise AssertionError(f"{name}: onnxruntime differs from torch by {diff:.3g}")
    np.savez(data / f"{name}.inputs.npz", **feeds)
    np.savez(data / f"{name}.ref.npz", **ref)
    entry.update(describe(onnx.load(str(path)), feeds, ref))
    entry["files"] = {f"{name}{ext}": (data / f"{name}{ext}").stat().st_size
                      for ext in (".onnx", ".inputs.npz", ".ref.npz")}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="model names to regenerate")
    parser.add_argument("--out", type=Path, default=DATA,
                        help="output directory (default tests/data; another one to compare)")
    args = parser.parse_args(argv)
    data: Path = args.out
    data.mkdir(parents=True, exist_ok=True)
    manifest_path = data / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    models = manifest.setdefault("models", {})
    failed = manifest.setdefault("failed_exports", {})
    for name in args.only or list(MODELS):
        print(f"== {name}", flush=True)
        keep = {k: v for k, v in models.get(name, {}).items() if k == "maiac_status"}
        try:
            entry = make(name, data)
        except Exception as err:  # record why, keep going with the other models
            traceback.print_exc()
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            models.pop(name, None)
            continue
        failed.pop(name, None)
        models[name] = {**entry, **keep}
        print(f"   opset {entry['opset']}, {entry['nodes']} nodes, "
              f"torch vs ort {entry['torch_vs_ort_max_abs_diff']:.2e}", flush=True)
    manifest["generator"] = "scripts/export_test_models.py"
    manifest["notes"] = NOTES
    manifest["total_bytes"] = sum(sum(m["files"].values()) for m in models.values())
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    print(f"total {manifest['total_bytes'] / 1e6:.2f} MB; failed: {sorted(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
