"""Transformer graphs built with ``onnx.helper``: examples, tests, and big shape-only models.

Every builder returns an ``onnx.ModelProto`` (opset 17, IR version 8 so the installed
onnxruntime runs it) with seeded random weights, using the op patterns exporters emit
(erf-decomposed GELU, LayerNormalization, Reshape/Transpose head splits, causal masks
via Where, decomposed RMSNorm, rotate-half RoPE, GQA by Expand/Reshape).

``llama_decoder(..., weights="shape_only")`` makes Llama-3-8B/70B-shaped graphs whose
initializers are external data pointing at a file that is never written: the graph
costs kilobytes, and `maiac compile --shape-only` / `maiac report` work on it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers; names are unique and readable."""

    seed: int = 0
    shape_only: bool = False
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0
    external_offset: int = 0
    # trained weights by hint name (``layers.0.self_attn.q_proj.weight``, maiac's [in, out]
    # orientation); when set, ``weight`` takes every array from here instead of drawing it
    checkpoint: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def name(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, name: str | None = None,
           **attrs: object) -> str | list[str]:
        node_name = name or self.name(op_type.lower())
        outs = [node_name if n_out == 1 else f"{node_name}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], hint: str, scale: float | None = None,
               value: float | None = None) -> str:
        """A float32 weight: random (scaled by 1/sqrt(fan_in)), constant, shape-only, or
        the checkpoint's array named ``hint``."""
        name = self.name(hint)
        if self.checkpoint is not None:
            if hint not in self.checkpoint:
                raise KeyError(f"checkpoint has no weight {hint!r}")
            array = np.asarray(self.checkpoint[hint], dtype=np.float32)
            if array.shape != tuple(shape):
                raise ValueError(f"checkpoint weight {hint!r} has shape {array.shape}, "
                                 f"the graph needs {tuple(shape)}")
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        if self.shape_only:
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            nbytes = 4 * math.prod(shape)
            for key, val in (("location", "never_written.bin"),
                             ("offset", str(self.external_offset)), ("length", str(nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, val
            self.external_offset += nbytes
            self.inits.append(tensor)
            return name
        if value is not None:
            array = np.full(shape, value, dtype=np.float32)
        else:
            std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
            array = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def model(self, name: str, inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=IR_VERSION, producer_name="maiac.models")
        return model

    # -- patterns as exporters write them ---------------------------------------------
    def linear(self, x: str, d_in: int, d_out: int, hint: str, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight((d_in, d_out), f"{hint}.weight")],
                    name=self.name(f"{hint}/MatMul"))
        if bias:
            y = self.op("Add", [y, self.weight((d_out,), f"{hint}.bias", scale=0.02)],
                        name=self.name(f"{hint}/Add"))
        return y

    def gelu_erf(self, x: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))), the TorchScript exporter's GELU."""
        inner = self.op("Div", [x, self.const(np.array(math.sqrt(2.0), np.float32))])
        erf = self.op("Erf", [inner])
        one_plus = self.op("Add", [erf, self.const(np.array(1.0, np.float32))])
        half_x = self.op("Mul", [x, self.const(np.array(0.5, np.float32))])
        return self.op("Mul", [half_x, one_plus])

    def layer_norm(self, x: str, d: int, hint: str) -> str:
        return self.op("LayerNormalization", [x, self.weight((d,), f"{hint}.weight", value=1.0),
                                              self.weight((d,), f"{hint}.bias", value=0.0)],
                       axis=-1, epsilon=1e-5, name=self.name(hint))

    def rms_norm(self, x: str, d: int, hint: str, eps: float = 1e-5) -> str:
        """x / sqrt(mean(x^2) + eps) * w, decomposed as Llama exports it."""
        sq = self.op("Pow", [x, self.const(np.array(2.0, np.float32))])
        mean = self.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        shifted = self.op("Add", [mean, self.const(np.array(eps, np.float32))])
        root = self.op("Sqrt", [shifted])
        inv = self.op("Reciprocal", [root])
        normed = self.op("Mul", [x, inv])
        return self.op("Mul", [normed, self.weight((d,), f"{hint}.weight", value=1.0)],
                       name=self.name(hint))

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.op("Reshape", [x, self.const(np.array(shape, np.int64), "shape")])


def _input(name: str, dtype: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def mlp(batch: int = 4, width: int = 64, hidden: int | None = None, layers: int = 2,
        seed: int = 0, symbolic: bool = False) -> onnx.ModelProto:
    """Residual MLP blocks: LayerNorm → Linear → GELU(erf) → Linear → + x. Input "x"."""
    hidden = hidden or 4 * width
    b = GraphBuilder(seed)
    x = "x"
    for i in range(layers):
        h = b.layer_norm(x, width, f"layers.{i}.norm")
        h = b.linear(h, width, hidden, f"layers.{i}.fc1")
        h = b.gelu_erf(h)
        h = b.linear(h, hidden, width, f"layers.{i}.fc2")
        x = b.op("Add", [x, h], name=f"layers.{i}.residual")
    b.op("Identity", [x], name="y")
    batch_dim: int | str = "batch" if symbolic else batch
    return b.model("mlp", [_input("x", TensorProto.FLOAT, [batch_dim, width])],
                   [_input("y", TensorProto.FLOAT, [batch_dim, width])])


def _attention(b: GraphBuilder, x: str, batch: int, seq: int, d_model: int, heads: int,
               hint: str, causal: bool) -> str:
    hd = d_model // heads
    parts = []
    for t in ("q", "k", "v"):
        y = b.linear(x, d_model, d_model, f"{hint}.{t}_proj")
        y = b.reshape(y, [batch, seq, heads, hd])
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        parts.append(b.op("Transpose", [y], perm=perm))
    q, kt, v = parts
    scores = b.op("MatMul", [q, kt], name=b.name(f"{hint}/scores"))
    scores = b.op("Div", [scores, b.const(np.array(math.sqrt(hd), np.float32))])
    if causal:
        mask = np.triu(np.ones((seq, seq), dtype=bool), 1)
        scores = b.op("Where", [b.const(mask, "causal_mask"),
                                b.const(np.array(-1e9, np.float32)), scores])
    probs = b.op("Softmax", [scores], axis=-1, name=b.name(f"{hint}/softmax"))
    ctx = b.op("MatMul", [probs, v])
    ctx = b.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = b.reshape(ctx, [batch, seq, d_model])
    return b.linear(ctx, d_model, d_model, f"{hint}.o_proj")


def _block(b: GraphBuilder, x: str, batch: int, seq: int, d_model: int, heads: int,
           ffn: int, hint: str, causal: bool) -> str:
    h = b.layer_norm(x, d_model, f"{hint}.ln_1")
    x = b.op("Add", [x, _attention(b, h, batch, seq, d_model, heads, f"{hint}.attn", causal)],
             name=f"{hint}.residual_1")
    h = b.layer_norm(x, d_model, f"{hint}.ln_2")
    h = b.gelu_erf(b.linear(h, d_model, ffn, f"{hint}.mlp.fc"))
    h = b.linear(h, ffn, d_model, f"{hint}.mlp.proj")
    return b.op("Add", [x, h], name=f"{hint}.residual_2")


def transformer_block(batch: int = 1, seq: int = 16, d_model: int = 64, heads: int = 4,
                      ffn: int | None = None, causal: bool = True, seed: int = 0) -> onnx.ModelProto:
    """One pre-norm GPT-style block on input "x" [batch, seq, d_model] → "y"."""
    b = GraphBuilder(seed)
    y = _block(b, "x", batch, seq, d_model, heads, ffn or 4 * d_model, "block", causal)
    b.op("Identity", [y], name="y")
    shape = [batch, seq, d_model]
    return b.model("transformer_block", [_input("x", TensorProto.FLOAT, shape)],
                   [_input("y", TensorProto.FLOAT, shape)])


def transformer(layers: int = 2, batch: int = 1, seq: int = 16, d_model: int = 64,
                heads: int = 4, vocab: int = 128, ffn: int | None = None,
                seed: int = 0) -> onnx.ModelProto:
    """A GPT-style decoder: token + position embeddings, blocks, final norm, lm_head."""
    b = GraphBuilder(seed)
    tokens = b.op("Gather", [b.weight((vocab, d_model), "wte", scale=0.02), "input_ids"],
                  axis=0, name="embed_tokens")
    positions = b.weight((seq, d_model), "wpe", scale=0.02)
    x = b.op("Add", [tokens, positions], name="embed_positions")
    for i in range(layers):
        x = _block(b, x, batch, seq, d_model, heads, ffn or 4 * d_model, f"h.{i}", True)
    x = b.layer_norm(x, d_model, "ln_f")
    b.op("MatMul", [x, b.weight((d_model, vocab), "lm_head.weight")], name="logits")
    return b.model("transformer", [_input("input_ids", TensorProto.INT64, [batch, seq])],
                   [_input("logits", TensorProto.FLOAT, [batch, seq, vocab])])


@dataclass(frozen=True)
class LlamaConfig:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float = 500000.0


LLAMA3_8B = LlamaConfig("llama3-8b", 4096, 32, 32, 8, 14336, 128256)
LLAMA3_70B = LlamaConfig("llama3-70b", 8192, 80, 64, 8, 28672, 128256)
LLAMA_TINY = LlamaConfig("llama-tiny", 64, 2, 4, 2, 128, 256)
# Qwen2.5-7B's shape as arXiv 2608.24664 benchmarks it (28 layers, hidden 3584, FFN 18,944,
# 28 heads / 4 KV heads); its q/k/v biases (0.01 % of the bytes) are left out
QWEN2_5_7B = LlamaConfig("qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, 1e6)


def _rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, ...]:
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(positions, inv)
    emb = np.concatenate([angles, angles], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rotate_half(b: GraphBuilder, x: str, head_dim: int) -> str:
    half = head_dim // 2
    starts = [b.const(np.array([v], np.int64)) for v in (0, half, head_dim)]
    axis = b.const(np.array([-1], np.int64))
    x1 = b.op("Slice", [x, starts[0], starts[1], axis])
    x2 = b.op("Slice", [x, starts[1], starts[2], axis])
    return b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)


def _rope(b: GraphBuilder, x: str, cos: str, sin: str, head_dim: int) -> str:
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [_rotate_half(b, x, head_dim), sin])])


def _o_proj_and_mlp(b: GraphBuilder, x: str, ctx: str, config: LlamaConfig, p: str) -> str:
    """A Llama layer after attention: o_proj + residual, RMSNorm, SwiGLU MLP + residual."""
    d, hd = config.hidden, config.hidden // config.heads
    x = b.op("Add", [x, b.linear(ctx, config.heads * hd, d, f"{p}.self_attn.o_proj",
                                 bias=False)], name=f"{p}.residual_1")
    hn = b.rms_norm(x, d, f"{p}.post_attention_layernorm")
    gate = b.linear(hn, d, config.ffn, f"{p}.mlp.gate_proj", bias=False)
    up = b.linear(hn, d, config.ffn, f"{p}.mlp.up_proj", bias=False)
    act = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
    down = b.linear(b.op("Mul", [act, up]), config.ffn, d, f"{p}.mlp.down_proj", bias=False)
    return b.op("Add", [x, down], name=f"{p}.residual_2")


def _final_norm_and_head(b: GraphBuilder, x: str, config: LlamaConfig) -> None:
    x = b.rms_norm(x, config.hidden, "norm")
    b.op("MatMul", [x, b.weight((config.hidden, config.vocab), "lm_head.weight")],
         name="logits")


def llama_decoder(config: LlamaConfig = LLAMA_TINY, mode: str = "prefill", batch: int = 1,
                  seq: int = 128, context: int = 4096, weights: str = "random",
                  layers: int | None = None, seed: int = 0,
                  kv_outputs: bool = False,
                  checkpoint: Mapping[str, np.ndarray] | None = None,
                  kv_dtype: str = "f32") -> onnx.ModelProto:
    """A Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU, causal attention) → "logits".

    ``mode="prefill"``: input_ids [batch, seq] at positions 0..seq-1 (``context`` unused).
    ``mode="decode"``: one token per sequence (input_ids [batch, 1]) at position
    ``context``, attending to ``context`` cached positions plus itself; the cache comes in
    as past_key_i / past_value_i [batch, kv_heads, context, head_dim] (keys after RoPE,
    as transformers caches them). ``layers`` overrides ``config.layers``.

    ``weights="shape_only"``: every weight is an external-data initializer (location
    ``never_written.bin``, offset, length) whose file is never written, so an 8B/70B graph
    is built in about a second and weighs megabytes (the RoPE tables and the causal mask
    are real constants). onnxruntime cannot run it; check it with :func:`check_model`.
    Weights are created in the same order whatever the mode, so prefill and decode graphs
    with the same seed share weights. ``kv_outputs`` adds present_key_i/present_value_i
    outputs (the cache including this step's keys and values), as exporters do.
    ``kv_dtype="bf16"``: the decode KV cache is stored in bf16 (this step's keys and values
    are cast before the concat), as serving stacks keep it.
    """
    kv_type = {"f32": TensorProto.FLOAT, "bf16": TensorProto.BFLOAT16}[kv_dtype]
    if mode not in ("prefill", "decode") or weights not in ("random", "shape_only"):
        raise ValueError("mode must be prefill|decode and weights random|shape_only")
    b = GraphBuilder(seed, shape_only=weights == "shape_only", checkpoint=checkpoint)
    d, h, kvh = config.hidden, config.heads, config.kv_heads
    hd, groups = d // h, h // kvh
    n_layers = layers or config.layers
    q_len = seq if mode == "prefill" else 1
    kv_len = seq if mode == "prefill" else context + 1
    positions = np.arange(q_len) if mode == "prefill" else np.array([context])
    cos_np, sin_np = _rope_tables(positions, hd, config.rope_theta)
    cos, sin = b.const(cos_np, "rope_cos"), b.const(sin_np, "rope_sin")
    mask_np = np.triu(np.ones((q_len, kv_len), dtype=bool), 1 + kv_len - q_len)
    mask = b.const(mask_np, "causal_mask")  # one initializer shared by every layer
    inputs = [_input("input_ids", TensorProto.INT64, [batch, q_len])]
    outputs: list[onnx.ValueInfoProto] = []
    x = b.op("Gather", [b.weight((config.vocab, d), "embed_tokens", scale=0.02), "input_ids"],
             axis=0, name="embed_tokens")
    for i in range(n_layers):
        p = f"layers.{i}"
        hn = b.rms_norm(x, d, f"{p}.input_layernorm")
        q = b.reshape(b.linear(hn, d, h * hd, f"{p}.self_attn.q_proj", bias=False),
                      [batch, q_len, h, hd])
        k = b.reshape(b.linear(hn, d, kvh * hd, f"{p}.self_attn.k_proj", bias=False),
                      [batch, q_len, kvh, hd])
        v = b.reshape(b.linear(hn, d, kvh * hd, f"{p}.self_attn.v_proj", bias=False),
                      [batch, q_len, kvh, hd])
        q = _rope(b, b.op("Transpose", [q], perm=[0, 2, 1, 3]), cos, sin, hd)
        k = _rope(b, b.op("Transpose", [k], perm=[0, 2, 1, 3]), cos, sin, hd)
        v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
        if mode == "decode":
            past_k, past_v = f"past_key_{i}", f"past_value_{i}"
            inputs += [_input(n, kv_type, [batch, kvh, context, hd])
                       for n in (past_k, past_v)]
            if kv_dtype != "f32":
                k = b.op("Cast", [k], to=kv_type)
                v = b.op("Cast", [v], to=kv_type)
            k = b.op("Concat", [past_k, k], axis=2)
            v = b.op("Concat", [past_v, v], axis=2)
        if kv_outputs:
            for kind, t in (("key", k), ("value", v)):
                b.op("Identity", [t], name=f"present_{kind}_{i}")
                outputs.append(_input(f"present_{kind}_{i}", TensorProto.FLOAT,
                                      [batch, kvh, kv_len, hd]))
        # GQA: repeat each kv head `groups` times, as transformers' repeat_kv exports it
        rep = []
        for t in (k, v):
            t5 = b.op("Unsqueeze", [t, b.const(np.array([2], np.int64))])
            t5 = b.op("Expand", [t5, b.const(np.array([batch, kvh, groups, kv_len, hd],
                                                      np.int64))])
            rep.append(b.reshape(t5, [batch, h, kv_len, hd]))
        kt = b.op("Transpose", [rep[0]], perm=[0, 1, 3, 2])
        scores = b.op("MatMul", [q, kt], name=b.name(f"{p}.self_attn/scores"))
        scores = b.op("Mul", [scores, b.const(np.array(1 / math.sqrt(hd), np.float32))])
        scores = b.op("Where", [mask, b.const(np.array(-1e9, np.float32)), scores])
        probs = b.op("Softmax", [scores], axis=-1, name=b.name(f"{p}.self_attn/softmax"))
        ctx = b.op("MatMul", [probs, rep[1]])
        ctx = b.reshape(b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), [batch, q_len, h * hd])
        x = _o_proj_and_mlp(b, x, ctx, config, p)
    _final_norm_and_head(b, x, config)
    outputs.insert(0, _input("logits", TensorProto.FLOAT, [batch, q_len, config.vocab]))
    model = b.model(f"{config.name}-{mode}", inputs, outputs)
    model.metadata_props.add(key="maiac.mode", value=mode)
    model.metadata_props.add(key="maiac.tokens", value=str(batch * q_len))
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Save, moving weights to ``<path>.data`` when the proto would pass protobuf's 2 GB."""
    path = Path(path)
    large = model.ByteSize() > (1 << 31) - (1 << 20)
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def check_model(model: onnx.ModelProto, full_check: bool = True) -> None:
    """``onnx.checker.check_model``, also for shape-only models whose weights don't exist.

    The checker insists that every external-data location is a regular file; it does not
    read it. So the model is checked from a temporary directory holding empty stand-ins
    for the missing files: no weight byte is ever allocated.
    """
    locations = {e.value for t in model.graph.initializer
                 if t.data_location == TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    if not locations:
        onnx.checker.check_model(model, full_check=full_check)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for location in locations:
            stub = Path(tmp, location)
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.touch()
        path = Path(tmp, "model.onnx")
        onnx.save_model(model, str(path))
        onnx.checker.check_model(str(path), full_check=full_check)


def kv_decoder(config: LlamaConfig = LLAMA_TINY, weights: str = "random", layers: int | None = None,
               max_positions: int = 2048, seed: int = 0,
               checkpoint: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A Llama-style decoder with optimum's ``text-generation-with-past`` interface.

    Inputs ``input_ids`` and ``position_ids`` [batch, sequence_length], ``attention_mask``
    [batch, past_sequence_length + sequence_length] and ``past_key_values.{i}.key|value``
    [batch, kv_heads, past_sequence_length, head_dim]; outputs ``logits`` and
    ``present.{i}.key|value`` (past and this step's keys/values, Concat on axis 2). Every
    dimension is symbolic, as optimum exports it, so one file serves prefill and decode at
    any shape (bind them with ``shapes=``). RoPE gathers its cos/sin rows by
    ``position_ids``; attention is masked by ``attention_mask`` and by causality among the
    new tokens (key j visible to new token i iff j <= past_len + i). Weights are created in
    the same order as :func:`llama_decoder` with the same seed; ``checkpoint`` (arrays by
    llama_decoder's weight names, e.g. ``maiac.real_llm.read_smollm``) gives real ones.
    """
    b = GraphBuilder(seed, shape_only=weights == "shape_only", checkpoint=checkpoint)
    d, h, kvh = config.hidden, config.heads, config.kv_heads
    hd, groups = d // h, h // kvh
    n_layers = layers or config.layers
    cos_np, sin_np = _rope_tables(np.arange(max_positions), hd, config.rope_theta)
    axis0 = b.const(np.array([0], np.int64))
    cos = b.op("Unsqueeze", [b.op("Gather", [b.const(cos_np, "rope_cos"), "position_ids"],
                                  axis=0), b.const(np.array([1], np.int64))])
    sin = b.op("Unsqueeze", [b.op("Gather", [b.const(sin_np, "rope_sin"), "position_ids"],
                                  axis=0), b.const(np.array([1], np.int64))])
    # mask [batch, 1, seq, total]: causal among the new tokens, and attention_mask
    total = b.op("Squeeze", [b.op("Shape", ["attention_mask"], start=1, end=2), axis0])
    seq = b.op("Squeeze", [b.op("Shape", ["input_ids"], start=1, end=2), axis0])
    one = b.const(np.array(1, np.int64))
    keys = b.op("Range", [b.const(np.array(0, np.int64)), total, one])
    queries = b.op("Range", [b.op("Sub", [total, seq]), total, one])
    causal = b.op("LessOrEqual", [keys, b.op("Unsqueeze", [queries, b.const(
        np.array([1], np.int64))])])
    padding = b.op("Unsqueeze", [b.op("Cast", ["attention_mask"], to=TensorProto.BOOL),
                                 b.const(np.array([1, 2], np.int64))])
    visible = b.op("And", [causal, padding])
    inputs = [_input("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
              _input("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"]),
              _input("position_ids", TensorProto.INT64, ["batch", "sequence_length"])]
    outputs = [_input("logits", TensorProto.FLOAT, ["batch", "sequence_length", config.vocab])]
    x = b.op("Gather", [b.weight((config.vocab, d), "embed_tokens", scale=0.02), "input_ids"],
             axis=0, name="embed_tokens")
    for i in range(n_layers):
        p = f"layers.{i}"
        hn = b.rms_norm(x, d, f"{p}.input_layernorm")
        q = b.reshape(b.linear(hn, d, h * hd, f"{p}.self_attn.q_proj", bias=False), [0, 0, h, hd])
        k = b.reshape(b.linear(hn, d, kvh * hd, f"{p}.self_attn.k_proj", bias=False),
                      [0, 0, kvh, hd])
        v = b.reshape(b.linear(hn, d, kvh * hd, f"{p}.self_attn.v_proj", bias=False),
                      [0, 0, kvh, hd])
        q = _rope(b, b.op("Transpose", [q], perm=[0, 2, 1, 3]), cos, sin, hd)
        k = _rope(b, b.op("Transpose", [k], perm=[0, 2, 1, 3]), cos, sin, hd)
        v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
        kv_shape = ["batch", kvh, "past_sequence_length", hd]
        present_shape = ["batch", kvh, "total_sequence_length", hd]
        cat = []
        for kind, t in (("key", k), ("value", v)):
            past = f"past_key_values.{i}.{kind}"
            inputs.append(_input(past, TensorProto.FLOAT, kv_shape))
            cat.append(b.op("Concat", [past, t], axis=2, name=f"present.{i}.{kind}"))
            outputs.append(_input(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
        rep = []
        for t in cat:  # GQA: repeat_kv as transformers exports it (Expand broadcasts)
            t5 = b.op("Unsqueeze", [t, b.const(np.array([2], np.int64))])
            t5 = b.op("Expand", [t5, b.const(np.array([1, 1, groups, 1, 1], np.int64))])
            rep.append(b.reshape(t5, [0, h, -1, hd]))
        kt = b.op("Transpose", [rep[0]], perm=[0, 1, 3, 2])
        scores = b.op("MatMul", [q, kt], name=b.name(f"{p}.self_attn/scores"))
        scores = b.op("Mul", [scores, b.const(np.array(1 / math.sqrt(hd), np.float32))])
        scores = b.op("Where", [visible, scores, b.const(np.array(-1e9, np.float32))])
        probs = b.op("Softmax", [scores], axis=-1, name=b.name(f"{p}.self_attn/softmax"))
        ctx = b.op("MatMul", [probs, rep[1]])
        ctx = b.reshape(b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), [0, 0, h * hd])
        x = _o_proj_and_mlp(b, x, ctx, config, p)
    _final_norm_and_head(b, x, config)
    return b.model(f"{config.name}-with-past", inputs, outputs)
