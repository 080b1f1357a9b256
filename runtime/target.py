"""Target parameters of the Maia 200 machine model.

Every number is either PUBLIC (a public source states it; see
``/work/shared/MAIA200_FACTS.md``: [MS] Microsoft Tech Community "Deep dive into the
Maia 200 architecture", [SR] StorageReview, [HC24] Maia 100 at Hot Chips 2024) or
ASSUMED (our documented choice). Assumed numbers are defaults a user can change with
``get_target(overrides={"tsram_bytes": "4MiB"})`` (CLI: ``--target-param key=value``) or
a parameter file (JSON or TOML with the same keys).

Bandwidths and peaks are *chip aggregates*: the timing model scales the tile-local ones
(TTU, TVP, TSRAM, CSRAM, NoC) by the fraction of tiles an instruction runs on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maiac.runtime.errors import MaiacError

_MIB = 1 << 20


def _p(default: Any, status: str, source: str, unit: str = "", **kw: Any) -> Any:
    """A parameter field: default value plus PUBLIC/ASSUMED status and its source/reason."""
    assert status in ("public", "assumed", "info")
    meta = {"status": status, "source": source, "unit": unit}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# Chip peak dense TTU throughput per operand format (FLOP/s).
_TTU_FLOPS = {
    "fp4": 10.1e15,   # PUBLIC [SR] "10.1 PFLOPS FP4"; [MS] ">10 PFLOPS"
    "fp6": 5.0e15,    # ASSUMED = FP8 (MX FP6 runs on the FP8 datapath, as FP6/FP8 on Maia 100 [HC24])
    "fp8": 5.0e15,    # PUBLIC [MS] ">5 PFLOPS FP8"
    "bf16": 1.25e15,  # ASSUMED = FP8 / 4 (no BF16 peak published; MAIA200_FACTS default)
    "f32": 0.3125e15,  # ASSUMED = BF16 / 4 (fp32 matmul emulated from bf16 passes)
}


@dataclass
class Target:
    """One machine configuration. Field metadata holds status ("public"/"assumed") and source."""

    name: str = _p("maia200", "info", "target name")
    n_clusters: int = _p(16, "assumed", "Maia 100 has 16 clusters [HC24]; Maia 200 count not published")
    tiles_per_cluster: int = _p(4, "assumed", "Maia 100 has 4 tiles per cluster [HC24]; not published for Maia 200")
    tsram_bytes: int = _p(2 * _MIB, "assumed",
                          "TSRAM per tile; split of the public 272 MB SRAM not published: "
                          "2 MiB x 64 tiles = 128 MiB", "B")
    csram_bytes: int = _p(9 * _MIB, "assumed",
                          "CSRAM per cluster: 9 MiB x 16 = 144 MiB, so TSRAM + CSRAM = 272 MiB "
                          "(public total 272 MB [MS], read as binary MB)", "B")
    hbm_bytes: int = _p(216_000_000_000, "public", "216 GB HBM3e, 6 stacks x 36 GB [MS]", "B")
    hbm_bw: float = _p(7.0e12, "public", "~7 TB/s HBM3e [MS]", "B/s")
    ttu_flops: dict[str, float] = _p(_TTU_FLOPS, "public",
                                     "fp4 10.1e15 [SR], fp8 5e15 [MS] public; fp6 = fp8, "
                                     "bf16 = fp8/4, f32 = bf16/4 assumed", "FLOP/s")
    tvp_flops: float = _p(65.536e12, "assumed",
                          "TVP vector ops/s, chip: 64 tiles x 512 fp32 lanes x 2 GHz; "
                          "a few % of TTU peak, as on Maia 100", "op/s")
    csram_bw: float = _p(32.0e12, "assumed",
                         "aggregate CSRAM bandwidth: 16 clusters x 2 TB/s, ~4.5x HBM "
                         "(multi-banked SRAM is far faster than HBM)", "B/s")
    tsram_bw: float = _p(64.0e12, "assumed",
                         "aggregate TSRAM DMA bandwidth: 64 tiles x 1 TB/s, ~9x HBM", "B/s")
    noc_bw: float = _p(32.0e12, "assumed",
                       "aggregate NoC bandwidth into/out of tiles (HBM/CSRAM <-> TSRAM); "
                       "= CSRAM bandwidth; per tile 0.5 TB/s", "B/s")
    dma_queues: int = _p(4, "assumed", "concurrent DMA queues ('multichannel' DMA [MS]); 4 chosen")
    dma_latency_s: float = _p(0.5e-6, "assumed",
                              "fixed cost per DMA instruction (descriptor setup + NoC round trip)", "s")
    instr_latency_s: float = _p(50e-9, "assumed",
                                "fixed cost per TTU/TVP instruction: ~100 cycles issue/drain at 2 GHz", "s")
    clock_hz: float = _p(2.0e9, "assumed", "no clock published; 2 GHz typical for 3 nm accelerators", "Hz")
    tdp_w: float = _p(750.0, "public", "750 W SoC TDP [MS]", "W")

    @property
    def n_tiles(self) -> int:
        """Total compute tiles (clusters x tiles per cluster)."""
        return self.n_clusters * self.tiles_per_cluster

    @property
    def sram_bytes(self) -> int:
        """Total on-die SRAM: TSRAM of every tile plus CSRAM of every cluster."""
        return self.n_tiles * self.tsram_bytes + self.n_clusters * self.csram_bytes

    def capacity(self, level: str) -> int:
        """Addressable bytes of a memory level (TSRAM: per tile, every tile sees the same map)."""
        caps = {"hbm": self.hbm_bytes, "csram": self.n_clusters * self.csram_bytes,
                "tsram": self.tsram_bytes}
        return caps[level]

    def to_json(self) -> dict[str, Any]:
        """All parameters as a JSON-ready dict (the `.maia` manifest stores this)."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), dict) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        """Inverse of ``to_json``; missing keys take the named target's defaults."""
        if not isinstance(data, dict):
            raise MaiacError(f"target parameters must be an object, got {type(data).__name__}")
        base = get_target(str(data.get("name", "maia200")))
        for key, value in data.items():
            if key == "name":
                continue
            _set_param(base, key, value)
        return base

    def params_table(self) -> list[dict[str, Any]]:
        """One row per parameter: key, value, unit, status (public/assumed), source."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                for fmt, v in value.items():
                    status = "public" if fmt in ("fp4", "fp8") else "assumed"
                    rows.append({"key": f"{f.name}.{fmt}", "value": v, "unit": f.metadata["unit"],
                                 "status": status, "source": f.metadata["source"]})
            else:
                rows.append({"key": f.name, "value": value, "unit": f.metadata["unit"],
                             "status": f.metadata["status"], "source": f.metadata["source"]})
        return rows

    def describe(self) -> str:
        """A plain-text table of every parameter with its status and source."""
        rows = self.params_table()
        width = max(len(r["key"]) for r in rows)
        lines = [f"target {self.name}: {self.n_tiles} tiles, "
                 f"{self.sram_bytes / _MIB:.0f} MiB SRAM",
                 f"{'parameter':<{width}}  {'value':>14}  {'unit':<7} {'status':<8} source"]
        for r in rows:
            v = r["value"]
            vs = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"{r['key']:<{width}}  {vs:>14}  {r['unit']:<7} {r['status']:<8} {r['source']}")
        return "\n".join(lines)


TARGETS = {"maia200": Target}

# Unit suffixes accepted in overrides: decimal (k, M, G, T, P) and binary (Ki, Mi, ...)
# prefixes, optionally followed by B, B/s, FLOPS, Hz, W; time units for latencies.
_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_NUM_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z/]*)\s*$")


def parse_number(text: str) -> float:
    """Parse "4MiB", "2e6", "7e12", "7TB/s", "500ns", "2GHz" to a float; ValueError if not."""
    m = _NUM_RE.match(str(text))
    if not m:
        raise ValueError(f"not a number: {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    if unit in _TIME:
        return value * _TIME[unit]
    for suffix in ("B/s", "FLOPS", "flops", "Hz", "B", "W", ""):
        if unit.endswith(suffix) and unit[: len(unit) - len(suffix)] in _PREFIX:
            return value * _PREFIX[unit[: len(unit) - len(suffix)]]
    raise ValueError(f"unknown unit {unit!r} in {text!r}")


def valid_keys(target: Target | None = None) -> list[str]:
    """Every overridable parameter key (dict parameters as ``ttu_flops.fp8``)."""
    target = target or Target()
    return [r["key"] for r in target.params_table() if r["key"] != "name"]


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert an override value to the type of the current one, or raise ValueError."""
    if isinstance(value, str):
        number = parse_number(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    else:
        number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a positive finite number, got {value!r}")
    if isinstance(current, int):
        if number != int(number):
            raise ValueError(f"must be an integer, got {value!r}")
        return int(number)
    return float(number)


def _set_param(target: Target, key: str, value: Any) -> None:
    """Set one parameter (``ttu_flops.fp8`` style for dict entries); MaiacError if unknown/bad."""
    names = {f.name for f in dataclasses.fields(target)} - {"name"}
    head, _, sub = key.partition(".")
    try:
        if head == "ttu_flops" and not sub and isinstance(value, dict):
            for fmt, v in value.items():
                _set_param(target, f"ttu_flops.{fmt}", v)
            return
        if head not in names or (sub and head != "ttu_flops") or (head == "ttu_flops" and not sub):
            raise KeyError(key)
        if sub:
            target.ttu_flops[sub] = _coerce(key, 1.0, value)
        else:
            setattr(target, head, _coerce(key, getattr(target, head), value))
    except KeyError:
        raise MaiacError(f"unknown target parameter {key!r}; valid keys: "
                         f"{', '.join(valid_keys(target))}") from None
    except ValueError as err:
        raise MaiacError(f"bad value for target parameter {key!r}: {err}") from None


def get_target(name: str = "maia200", overrides: dict[str, str] | None = None,
               param_file: str | None = None) -> Target:
    """The named target with a parameter file (JSON/TOML) and then ``overrides`` applied."""
    if name not in TARGETS:
        raise MaiacError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    target = TARGETS[name]()
    if param_file is not None:
        path = Path(param_file)
        try:
            text = path.read_bytes()
            data = (tomllib.loads(text.decode()) if path.suffix == ".toml"
                    else json.loads(text))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise MaiacError(f"cannot read target parameter file {param_file}: {err}") from None
        if not isinstance(data, dict):
            raise MaiacError(f"target parameter file {param_file} must hold an object")
        for key, value in data.items():
            if key == "name":
                continue
            _set_param(target, key, value)
    for key, value in (overrides or {}).items():
        _set_param(target, key, value)
    return target
