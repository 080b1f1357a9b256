"""`maiac perf --compare SPEC.toml`: roofline estimates for other accelerators.

An accelerator is described by public numbers only (TOML: ``name``, ``hbm_bytes``,
``hbm_bw``, ``[flops]`` per format, optional ``tdp_w`` and ``price_per_hour``, and
``[sources]``); maiac/accelerators/ ships H100, H200, B200, Trainium3 and TPU v7. For each
sweep point the estimate is a roofline, not a simulation:

    TPOT = max((weights + KV cache) / hbm_bw, decode FLOPs / peak[format])
    TTFT = max(weights / hbm_bw, prefill FLOPs / peak[format])

with the weight bytes and FLOPs of maiac's own program for that point (the same
quantized format on every accelerator). The same formula on Maia 200's target numbers is
printed as "maia200 roofline" beside the simulated figures.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maiac.runtime.errors import MaiacError

SHIPPED = Path(__file__).parent / "accelerators"


@dataclass
class Accelerator:
    name: str
    hbm_bytes: float
    hbm_bw: float
    flops: dict[str, float]
    tdp_w: float | None = None
    price_per_hour: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)  # formats whose peak is a fallback

    def peak(self, fmt: str) -> float:
        """Peak FLOP/s of ``fmt`` (fp4 falls back to fp8, bf16 to fp8/2, fp32 to bf16/4)."""
        if fmt in self.flops:
            return self.flops[fmt]
        fallback = {"fp4": ("fp8", 1.0), "fp6": ("fp8", 1.0), "bf16": ("fp8", 0.5),
                    "fp32": ("bf16", 0.25)}
        if fmt not in fallback:
            raise MaiacError(f"{self.name}: no peak for format {fmt!r}")
        base, factor = fallback[fmt]
        return self.peak(base) * factor


def shipped_specs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}


def load_spec(spec: str) -> Accelerator:
    """A spec file path, or the name of a shipped one (h100, h200, b200, trainium3, tpu_v7)."""
    path = shipped_specs().get(spec, Path(spec))
    if not path.is_file():
        raise MaiacError(f"--compare {spec!r}: no such spec file (shipped: "
                         f"{', '.join(shipped_specs())})")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise MaiacError(f"--compare {path}: not a TOML file ({err})") from None
    try:
        flops = {str(k): float(v) for k, v in dict(data["flops"]).items()}
        acc = Accelerator(
            name=str(data["name"]), hbm_bytes=float(data["hbm_bytes"]),
            hbm_bw=float(data["hbm_bw"]), flops=flops,
            tdp_w=float(data["tdp_w"]) if "tdp_w" in data else None,
            price_per_hour=float(data["price_per_hour"]) if "price_per_hour" in data else None,
            sources={str(k): str(v) for k, v in dict(data.get("sources", {})).items()})
    except (KeyError, TypeError, ValueError) as err:
        raise MaiacError(f"--compare {path}: needs name, hbm_bytes, hbm_bw and [flops] "
                         f"numbers ({type(err).__name__}: {err})") from None
    if acc.hbm_bw <= 0 or acc.hbm_bytes <= 0 or not flops or min(flops.values()) <= 0:
        raise MaiacError(f"--compare {path}: capacities, bandwidth and peaks must be > 0")
    return acc


def maia_roofline_spec(target: Any, tdp_w: float, price_per_hour: float | None) -> Accelerator:
    """Maia 200's own roofline, from the target's public numbers."""
    flops = dict(target.ttu_flops)
    if "f32" in flops:
        flops["fp32"] = flops.pop("f32")
    return Accelerator(f"{target.name} roofline", float(target.hbm_bytes), float(target.hbm_bw),
                       flops, tdp_w, price_per_hour, {"all": "maiac target parameters"})


def format_of(quant: str) -> str:
    """The TTU format a quant spec's matmuls run in (for the peak)."""
    q = quant.lower()
    if "fp4" in q or q == "w4a4":
        return "fp4"
    if "fp6" in q:
        return "fp6"
    if "fp8" in q or q in ("w4a8",):
        return "fp8"
    if "bf16" in q:
        return "bf16"
    return "fp32"


def estimate(acc: Accelerator, point: dict[str, Any]) -> dict[str, Any]:
    """Roofline TTFT/TPOT/tokens/s, fit and cost of ``point`` on ``acc``."""
    if "error" in point:
        return {"accelerator": acc.name, "error": point["error"]}
    fmt = format_of(point["quant"])
    peak = acc.peak(fmt)
    weights, kv = point["weight_bytes"], point["kv_cache_bytes"]
    tpot = max((weights + kv) / acc.hbm_bw, point["decode_flops"] / peak)
    ttft = max(weights / acc.hbm_bw, point["prefill_flops"] / peak)
    tokens_per_s = point["batch"] / tpot
    per_seq = kv / point["batch"]
    return {
        "accelerator": acc.name, "estimate": "roofline", "ttft_s": ttft, "tpot_s": tpot,
        "tokens_per_s": tokens_per_s, "fits": weights + kv <= acc.hbm_bytes,
        "max_batch": max(0, int((acc.hbm_bytes - weights) // per_seq)) if per_seq else None,
        "bound": "HBM" if (weights + kv) / acc.hbm_bw >= point["decode_flops"] / peak
        else "compute",
        "peak_format": fmt, "peak_assumed": fmt not in acc.flops,
        "energy_per_token_j": acc.tdp_w * tpot / point["batch"] if acc.tdp_w else None,
        "usd_per_million_tokens": (acc.price_per_hour / 3600.0 / tokens_per_s * 1e6
                                   if acc.price_per_hour is not None else None),
    }
