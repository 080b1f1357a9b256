"""Narrow attention: `quantize` runs a fused attention's two products in bf16 when the
spec's activations are narrow, and that stays accurate (fp32 softmax statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

import maiac
from maiac import models
from maiac.driver import default_pipeline
from maiac.inputs import random_inputs
from maiac.ir import maia
from maiac.passes.registry import parse_pipeline
from maiac.runtime import isa

DATA = Path(__file__).parent / "data"
SMALL = models.LlamaConfig("small", 256, 2, 4, 2, 512, 512)


class AttentionFormat(ModulePass):
    """Test helper: every fused attention runs in ``fmt`` (what `quantize` would set)."""

    name = "test-attention-format"

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for o in op.walk():
            if isinstance(o, maia.AttentionOp):
                o.attributes["fmt"] = maia.to_attr(self.fmt)


def _with_attention(fmt: str) -> list:
    passes = parse_pipeline(default_pipeline(None))
    passes.insert([p.name for p in passes].index("tile"), AttentionFormat(fmt))
    return passes


def _matmul_formats(program: maiac.Program) -> set[str]:
    """The TTU formats of the attention kernels' products."""
    def leaves(instrs: list) -> list:
        out = []
        for i in instrs:
            out += leaves(i.body) if isinstance(i, isa.Loop) else [i]
        return out
    kinds = program.meta.get("ops", {})
    return {i.fmt for i in leaves(program.instructions)
            if isinstance(i, isa.MatMul) and kinds.get(i.op, {}).get("kind") == "attention"}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(("quant", "fmt"), [("fp8", "bf16"), ("mxfp4", "bf16"),
                                            ("bf16", "bf16"), ("w=mxfp4", "f32"),
                                            (None, "f32")])
def test_attention_format_follows_the_spec(quant: str | None, fmt: str) -> None:
    """Narrow activations (any a=) → bf16 attention; weight-only or fp32 → fp32."""
    model = models.llama_decoder(models.LLAMA_TINY, seq=32)
    calib = random_inputs(model, {}, seed=1) if quant == "fp8" else None
    prog = maiac.compile(model, quant=quant, calib=calib)
    assert _matmul_formats(prog.program) == {fmt}


@pytest.mark.parametrize("seq", [128, 384])
def test_bf16_attention_accuracy(seq: int) -> None:
    """Causal prefill (mask generated, hidden blocks skipped): bf16 q·kᵀ and p·v with fp32
    statistics against the same program with fp32 attention."""
    model = models.llama_decoder(SMALL, seq=seq)
    ref = maiac.compile(model, pipeline=_with_attention("f32"))
    bf16 = maiac.compile(model, pipeline=_with_attention("bf16"))
    assert _matmul_formats(bf16.program) == {"bf16"}
    x = random_inputs(model, {}, seed=0)
    a, b = ref.run(x)["logits"], bf16.run(x)["logits"]
    assert _cosine(a, b) >= 0.9999
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("name", ["gpt2_dynamo", "llama_dynamo"])
def test_bf16_attention_on_exports(name: str) -> None:
    """Exported models (mask operand, GQA) with bf16 attention vs onnxruntime's output."""
    with np.load(DATA / f"{name}.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(DATA / f"{name}.ref.npz") as f:
        ref = {k: f[k] for k in f.files}
    prog = maiac.compile(str(DATA / f"{name}.onnx"), pipeline=_with_attention("bf16"),
                         shapes={k: v.shape for k, v in inputs.items()})
    if not _matmul_formats(prog.program):
        pytest.skip(f"{name}: no fused attention")
    out = prog.run(inputs)
    for key, want in ref.items():
        assert _cosine(out[key], want) >= 0.999, key


@pytest.mark.parametrize("kv", ["fp32", "fp8"])
def test_bf16_decode_attention(kv: str) -> None:
    """One decode step (split-K kernel, passes/tiling/decode_attention.py): bf16 products
    with fp32 statistics against fp32 attention, and the TTU time of the step's attention
    drops (G = 2 query rows per K/V head fill a fraction of the TTU's 32 block rows)."""
    from maiac.kv_cache import store_cache_as
    from maiac.runtime.timing import simulate

    model = models.llama_decoder(SMALL, mode="decode", batch=4, context=1024,
                                 kv_outputs=True)
    x = random_inputs(model, {}, seed=0)
    if kv == "fp8":  # the cache inputs in their storage type
        import ml_dtypes

        x = {k: v.astype(ml_dtypes.float8_e4m3fn) if k.startswith("past") else v
             for k, v in x.items()}
    store_cache_as(model, kv)
    ref = maiac.compile(model, pipeline=_with_attention("f32"))
    bf16 = maiac.compile(model, pipeline=_with_attention("bf16"))
    assert _matmul_formats(ref.program) == {"f32"}
    # the key loop's products in bf16; the combine of the fp32 partials stays fp32
    assert _matmul_formats(bf16.program) == {"bf16", "f32"}
    a, b = ref.run(x)["logits"], bf16.run(x)["logits"]
    assert _cosine(a, b) >= 0.9999
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99

    def ttu(program: maiac.Program) -> float:
        ops = simulate(program).to_json()["ops"]
        return sum(o["busy_s"]["ttu"] for o in ops if o["kind"] == "attention")
    assert ttu(bf16.program) < 0.7 * ttu(ref.program)   # (tiny: instruction latency)
