"""Seeded feeds for the multi-chip tests: int64 ids below 256, float inputs ~ N(0, 1)."""

from __future__ import annotations

import numpy as np
import onnx


def seeded_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            out[inp.name] = rng.integers(0, 256, shape)
        else:
            out[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return out
