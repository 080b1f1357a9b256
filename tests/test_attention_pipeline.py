"""Prefill attention's pipelined key loop: the TTU computes the next key block's scores
while the TVP runs this block's softmax, and hidden key blocks are never computed."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

import maiac
from maiac.runtime import isa
from tests.test_fusion import _causal_model


def _attention_rows(compiled: maiac.CompiledModel) -> list[dict]:
    return [op for op in compiled.report()["ops"] if op["kind"] == "attention"]


def _leaves(instrs: list[isa.Instr]) -> list[isa.Instr]:
    out: list[isa.Instr] = []
    for i in instrs:
        out += _leaves(i.body) if isinstance(i, isa.Loop) else [i]
    return out


def test_softmax_overlaps_the_products() -> None:
    """The attention takes about its busier engine's time, not the TTU's plus the TVP's
    (before the pipelined loop: 76 us = 45 us TTU + 33 us TVP on the 8B layer)."""
    compiled = maiac.compile(_causal_model(1, 8, 2, 2048, 0, 128), quant="mxfp8",
                             shape_only=True)  # narrow activations: bf16 products
    (row,) = _attention_rows(compiled)
    ttu, tvp = row["busy_s"]["ttu"], row["busy_s"]["tvp"]
    assert tvp > 0.3 * ttu  # enough softmax work that overlapping it matters
    assert row["time_s"] < 1.25 * max(ttu, tvp) < 0.9 * (ttu + tvp)


def test_score_blocks_alternate_between_two_buffers() -> None:
    """Consecutive key blocks write their scores to two different TSRAM blocks (so the
    next product need not wait for this softmax), and the outputs match onnxruntime."""
    model = _causal_model(1, 2, 1, 1024, 0, 16)
    compiled = maiac.compile(model)
    kinds = compiled.program.meta["ops"]
    scores = {i.c.addr for i in _leaves(compiled.program.instructions)
              if isinstance(i, isa.MatMul) and kinds[i.op]["kind"] == "attention"
              and not i.accumulate and i.c.shape[-1] != 16}
    assert len(scores) >= 2
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 1024, 32)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)


def test_hidden_key_blocks_are_not_computed() -> None:
    """The causal attention's products cover only the key blocks at or below each query
    block's diagonal: half of the full ``4 Sq Sk D H`` FLOPs plus the blocks crossing
    the diagonal (5/8 with 8 query blocks over 4 key blocks)."""
    h, s, d = 8, 2048, 64
    compiled = maiac.compile(_causal_model(1, h, h, s, 0, d), shape_only=True)
    (row,) = _attention_rows(compiled)
    ttu_flops = sum(row["fmt_flops"].values())
    full = 4.0 * s * s * d * h
    assert 0.5 * full < ttu_flops <= 0.63 * full


def test_gqa_key_value_blocks_are_read_once_per_kv_head() -> None:
    """The G query heads of a KV head (and its query blocks on other tiles) read its K
    blocks through 0 tile strides: each block crosses the NoC once per KV head."""
    from maiac.runtime.memory import distinct_bytes, itemsize

    h, hkv, s, d = 8, 2, 512, 64
    compiled = maiac.compile(_causal_model(1, h, hkv, s, 0, d), shape_only=True)
    kinds = compiled.program.meta["ops"]
    loads = [i for i in _leaves(compiled.program.instructions)
             if isinstance(i, isa.Dma) and kinds[i.op]["kind"] == "attention"
             and i.src.level != "tsram" and i.dst.shape[0] == d
             and i.dst.shape[1] > 1 and i.src.strides[0] == 1]  # K^T blocks [D, bk]
    assert loads
    for dma in loads:
        assert math.prod(dma.grid) >= h  # every query head on a tile of its own
        block = math.prod(dma.src.shape) * itemsize(dma.src.dtype)
        assert distinct_bytes(dma.src, tuple(dma.grid)) == hkv * block


def test_wide_steps_cut_the_key_steps() -> None:
    """The 8B layer's causal attention runs several key blocks per step (one product over
    ``width * bk`` keys: fewer instructions), the step at the diagonal masking only its
    crossing blocks; forced onto small shapes (partial runs, a KV-cache offset, GQA, a
    single visible block, runs wider than a query block's keys), the outputs still match
    onnxruntime."""
    from maiac.passes.tile import budget_of
    from maiac.passes.tiling import attention
    from maiac.runtime.target import get_target

    striped = attention._striped_plan
    attention._striped_plan = lambda *args: None  # the block split (not the striped plan)
    try:
        compiled = maiac.compile(_causal_model(1, 32, 8, 2048, 0, 128), quant="mxfp8",
                                 shape_only=True)
    finally:
        attention._striped_plan = striped
    budget = budget_of(get_target("maia200"))  # maiac.compile's default target
    _, bk, width = attention.choose_blocks((1, 8, 4), 2048, 2048, 128, (4, 4, 4, 4), False,
                                           budget, True, "bf16")
    kinds = compiled.program.meta["ops"]
    widths = {i.c.shape[-1] for i in _leaves(compiled.program.instructions)
              if isinstance(i, isa.MatMul) and kinds[i.op]["kind"] == "attention"
              and not i.accumulate}
    assert width >= 2 and max(widths) == width * bk
    masks = [i for i in _leaves(compiled.program.instructions)
             if isinstance(i, isa.Vec) and i.fn == "causal_mask"]
    assert masks and max(i.out.shape[-1] for i in masks) < width * bk

    original = attention.choose_blocks
    rng = np.random.default_rng(3)
    for h, hkv, sq, past, d, bq, bk, width in (
            (2, 1, 256, 0, 16, 32, 32, 2), (4, 2, 192, 64, 16, 64, 32, 3),
            (2, 2, 96, 0, 8, 32, 16, 2), (2, 1, 128, 0, 16, 64, 16, 4)):
        model = _causal_model(1, h, hkv, sq, past, d)

        def forced(*args: object, bq: int = bq, bk: int = bk, width: int = width
                   ) -> tuple[int, int, int]:
            assert args[7]  # tile_attention's call: a causal attention without a mask
            return bq, bk, width
        attention.choose_blocks = forced
        attention._striped_plan = lambda *args: None
        try:
            compiled = maiac.compile(model)
        finally:
            attention.choose_blocks = original
            attention._striped_plan = striped
        kinds = compiled.program.meta["ops"]
        assert width * bk in {i.c.shape[-1] for i in _leaves(compiled.program.instructions)
                              if isinstance(i, isa.MatMul) and kinds[i.op]["kind"] == "attention"
                              and not i.accumulate}
        feeds = {"x": rng.standard_normal((1, sq, h * d)).astype(np.float32)}
        if past:
            for t in ("k", "v"):
                feeds[f"past_{t}"] = rng.standard_normal((1, hkv, past, d)).astype(np.float32)
        ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
        np.testing.assert_allclose(compiled.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)


def test_key_steps_cover_each_block_once() -> None:
    """`key_steps` cuts a query block's key blocks into runs of ``width`` from key 0, the
    runs touching the diagonal first and masked, every block in exactly one run."""
    from maiac.passes.tiling.attention import key_steps

    assert key_steps(6, 4, 4) == [(4, 2, True), (0, 4, False)]
    assert key_steps(8, 6, 4) == [(4, 4, True), (0, 4, False)]
    assert key_steps(3, 2, 1) == [(2, 1, True), (0, 1, False), (1, 1, False)]
    for keys in range(1, 12):
        for masked_from in range(keys):
            for width in (1, 2, 3, 4):
                steps = key_steps(keys, masked_from, width)
                blocks = sorted(j + k for j, n, _ in steps for k in range(n))
                assert blocks == list(range(keys))
                assert all(masked == (j + n > masked_from) for j, n, masked in steps)
