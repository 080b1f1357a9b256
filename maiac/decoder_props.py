"""Is a graph a token decoder, and how many tokens does one run produce?

For the report's tokens/s, TTFT and TPOT on any decoder, not only those maiac.models
builds (which say so in their ``maiac.mode``/``maiac.tokens`` metadata): a graph with an
``input_ids`` input and KV-cache inputs (``past_key_values.N.key`` and the other names
maiac/kv_cache.py knows, each with its ``present`` output — optimum-onnx and
onnxruntime-genai exports) is a decoder. Its compiled ``input_ids`` shape [batch, seq]
says which step: seq 1 is a decode step (batch tokens per run: the report's TPOT is the
run's time), seq > 1 a prefill (batch x seq tokens; TTFT is the run's time). A decoder
without a cache (recompute) is not detected: how many of its positions are new tokens is
the caller's choice (``maiac report --tokens-per-run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx


def decoder_props(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
                  ) -> dict[str, Any]:
    """``{"mode", "tokens", "tokens_source": "graph"}`` for a KV-cache decoder whose
    ``input_ids`` shape is known, else ``{}``."""
    from maiac.kv_cache import kv_pairs
    from maiac.runtime.errors import MaiacError

    ids = input_shapes.get("input_ids")
    if ids is None or len(ids) != 2 or not all(isinstance(d, int) and d > 0 for d in ids):
        return {}
    try:
        pairs = kv_pairs(proto)
    except MaiacError:  # a past input without its present output: not a cache we know
        return {}
    if not pairs:
        return {}
    batch, seq = int(ids[0]), int(ids[1])
    if seq == 1:
        return {"mode": "decode", "tokens": batch, "tokens_source": "graph"}
    return {"mode": "prefill", "tokens": batch * seq, "tokens_source": "graph"}
