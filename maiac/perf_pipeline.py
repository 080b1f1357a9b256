"""`maiac perf --pp P`: pipeline-parallel decode figures from the sweep's measured
per-layer times (maiac/perf.py compiles 1 and 2 layers of every point).

From the 1- and 2-layer decode steps of a point (one chip, or a tensor-parallel group of
``--chips`` chips) the sweep knows the time of one layer, t_L = t(2) - t(1), and of the
rest, t_0 = t(1) - t_L (embedding, final norm, LM head: put on the last stage, the head
dominates it). The L layers are split over P stages to minimize the slowest stage (the
last one holds t_0 too), as passes/pipeline_stages.py balances a compiled pipeline; each
stage adds the point-to-point transfer of the residual stream it receives and sends
(runtime/network.py ``p2p_cost``, chips numbered stage by stage).

Decode is pipelined continuously: M micro-batches of ``batch`` sequences are in flight
(default M = P, enough to keep every stage busy); a sequence gets its next token every
``max(sum t_s, M * max t_s)`` (the TPOT: the token's trip through every stage, or the wait
for the slowest stage to serve all M micro-batches), so the pipeline emits
``batch * M / TPOT`` tokens/s. The bubble is the idle share of chip-time,
``1 - M * sum t_s / (P * TPOT)``. Each stage's chips hold their layers' weights and
the KV cache of their layers for all M micro-batches.

This composes measured figures; ``maiac compile --pp`` and ``maiac report`` time the real
stage programs (docs/chips.md).
"""

from __future__ import annotations

from typing import Any

from maiac.runtime.errors import MaiacError
from maiac.runtime.network import Network

ACT_BYTES = 4  # the residual stream between stages is fp32 (maiac keeps activations fp32)


def split_layers(layers: int, per_layer: float, rest: float, stages: int) -> list[int]:
    """Layers per stage minimizing the slowest stage; the last stage also takes ``rest``."""
    if stages > layers:
        raise MaiacError(f"--pp {stages}: the model has only {layers} layers")
    best: tuple[float, list[int]] | None = None
    for last in range(1, layers - (stages - 1) + 1):
        others, left = stages - 1, layers - last
        if others == 0 and left:
            continue
        counts = [left // others + (1 if i < left % others else 0) for i in range(others)] \
            if others else []
        counts.append(last)
        slowest = max([c * per_layer for c in counts[:-1]] + [rest + last * per_layer])
        if best is None or slowest < best[0]:
            best = (slowest, counts)
    assert best is not None
    return best[1]


def pipeline_figures(point: dict[str, Any], stages: int, micro_batches: int | None,
                     t1: float, t2: float, layers: int, hidden: int, tp: int,
                     hbm_bytes: float, prefill_tokens: int, tdp_w: float,
                     price_per_hour: float | None) -> None:
    """Add the pipeline keys to ``point`` (its tpot_s/tokens_per_s become the pipeline's)."""
    m = micro_batches or stages
    per_layer, rest = t2 - t1, max(0.0, 2 * t1 - t2)
    counts = split_layers(layers, per_layer, rest, stages)
    net = Network()
    chips = stages * tp
    act = point["batch"] * hidden * ACT_BYTES
    hop = [net.p2p_cost(act, s * tp, (s + 1) * tp, chips)[0] for s in range(stages - 1)]
    times = []
    for s, n in enumerate(counts):
        t = n * per_layer + (rest if s == stages - 1 else 0.0)
        t += (hop[s - 1] if s > 0 else 0.0) + (hop[s] if s < stages - 1 else 0.0)
        times.append(t)
    fill, slowest = sum(times), max(times)
    tpot = max(fill, m * slowest)
    tokens_per_s = point["batch"] * m / tpot if tpot > 0 else 0.0
    weights = point["weight_bytes"]  # per chip of a stage's TP group, whole depth
    kv = point.get("kv_cache_bytes_per_chip", point["kv_cache_bytes"])
    widest = max(counts)
    per_chip = (weights + kv * m) * widest / layers
    prompt_act = prefill_tokens * hidden * ACT_BYTES
    point.update({
        "pp": stages, "micro_batches": m, "chips": chips, "tensor_parallel": tp,
        "layers_per_stage": counts, "stage_time_s": times, "pipeline_fill_s": fill,
        "steady_interval_s": slowest, "tpot_s": tpot, "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_chip": tokens_per_s / chips,
        "bubble_fraction": 1 - m * fill / (stages * tpot) if tpot else 0.0,
        "p2p_time_s": sum(hop), "hbm_per_chip_bytes": per_chip,
        "collective_share": point.get("collective_share", 0.0),  # the stage's TP share
        "fits": per_chip <= hbm_bytes,
        "ttft_s": point["ttft_s"] + sum(net.p2p_cost(prompt_act, s * tp, (s + 1) * tp,
                                                     chips)[0] for s in range(stages - 1)),
        "energy_per_token_j": tdp_w * chips / tokens_per_s if tokens_per_s else 0.0,
        "usd_per_million_tokens": (price_per_hour * chips / 3600.0 / tokens_per_s * 1e6
                                   if price_per_hour is not None and tokens_per_s else None),
    })
