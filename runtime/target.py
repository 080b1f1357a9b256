"""Target parameters of the Maia 200 machine model.

Every number has a status: PUBLIC (a source states it: [P] arXiv 2608.24664, Xu et al.,
"Maia 200: A Software Defined Dataflow System for Large-scale AI Acceleration" (2026);
[HC38] Hot Chips 2026; [MS] Microsoft Tech Community; [SR] StorageReview — see
``/work/shared/MAIA200_FACTS.md``), FITTED (no source gives it: chosen by
``bench/fit_paper.py`` so maiac's model of the paper's measured experiments reproduces
them, see ``runtime/maia200_fit.py`` and ``bench/paper.py``), or ASSUMED (our documented
choice). A user changes any of them with ``get_target(overrides={"tsram_bytes": "4MiB"})``
(CLI: ``--target-param key=value``) or a parameter file (JSON or TOML with the same keys);
such values show as ``override``.

Named targets:

* ``maia200`` — the published chip (4 clusters x 9 enabled tiles, 3 MiB TSRAM, 35 MiB
  CSRAM, 2 GHz, TTU MACs per cycle per format) with the fitted HBM efficiency, DMA setup
  and NoC rate: the default, whose predictions bench/paper.py checks.
* ``maia200-ideal`` — the same chip with the unfitted roofline assumptions (HBM at its
  full 7 TB/s, the NoC and DMA setup as first assumed): what-if studies.
* ``maia200-v0`` — the shape maiac assumed before the paper (Maia 100's 16 clusters x 4
  tiles, 2 MiB TSRAM, 9 MiB CSRAM, per-tile peaks = the 2025 headline figures / 64).

Peaks (``ttu_flops``, ``tvp_flops``) are derived chip aggregates: 2 x MACs per cycle x
clock x active tiles. The timing model scales the tile-local rates (TTU, TVP, TSRAM, NoC)
by the fraction of tiles an instruction runs on.
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
from maiac.runtime.maia200_fit import FIT, FIT_ROWS

_MIB = 1 << 20
_P = "[P] arXiv 2608.24664"


def _p(default: Any, status: str, source: str, unit: str = "", **kw: Any) -> Any:
    """A parameter field: default value plus status (public/fitted/assumed) and source."""
    assert status in ("public", "fitted", "assumed", "info")
    meta = {"status": status, "source": source, "unit": unit}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# TTU multiply-accumulates per cycle per tile, by operand format.
_TTU_MACS = {
    "fp4": 65536.0,   # PUBLIC [P]: 32 x 64 x 32 per cycle
    "fp6": 32768.0,   # PUBLIC [P]: FP6 runs at the FP8 rate
    "fp8": 32768.0,   # PUBLIC [P]: 32 x 32 x 32 per cycle
    "bf16": 8192.0,   # PUBLIC [P]
    "f32": 2048.0,    # ASSUMED = BF16 / 4 (fp32 matmul emulated from bf16 passes)
}
_MACS_STATUS = {"fp4": "public", "fp6": "public", "fp8": "public", "bf16": "public",
                "f32": "assumed"}
# Derived keys: in to_json (for readers of .maia manifests), ignored by from_json.
DERIVED = ("ttu_flops", "tvp_flops", "n_tiles", "ttu_block_k")


@dataclass
class Target:
    """One machine configuration. Field metadata holds status and source of ``maia200``'s
    value; ``provenance`` those of this target where they differ."""

    name: str = _p("maia200", "info", "target name")
    n_clusters: int = _p(4, "public", f"{_P}: 4 clusters")
    tiles_per_cluster: int = _p(9, "public", f"{_P}: 10 physical tiles per cluster, 9 enabled "
                                "(the paper's benchmarks run 36 tiles)")
    tsram_bytes: int = _p(3 * _MIB, "public", f"{_P}: 3 MiB TSRAM per tile", "B")
    csram_bytes: int = _p(35 * _MIB, "public", f"{_P}: 35 MiB CSRAM per cluster "
                          "(40 x 3 + 4 x 35 = 260 MiB = the public 272 MB)", "B")
    hbm_bytes: int = _p(216_000_000_000, "public", "216 GB HBM3e, 6 stacks x 36 GB [MS][SR]", "B")
    hbm_bw: float = _p(7.0e12, "public", f"{_P}: HBM3e, 6 stacks, 7 TB/s (peak; the physical "
                       "rate no report row may exceed)", "B/s")
    hbm_efficiency: float = _p(FIT["hbm_efficiency"], "fitted",
                               "sustained fraction of hbm_bw a DMA stream reaches; fitted to "
                               + FIT_ROWS["hbm_efficiency"] + " (bench/fit_paper.py)")
    clock_hz: float = _p(2.0e9, "public", f"{_P}: 2 GHz", "Hz")
    ttu_macs: dict[str, float] = _p(_TTU_MACS, "public",
                                    f"TTU MACs/cycle/tile: fp4 65,536, fp8/fp6 32,768, bf16 "
                                    f"8,192 {_P}; f32 = bf16/4 assumed", "MAC/cyc")
    ttu_block_m: int = _p(32, "public", f"{_P}: native TTU block 32 x K x 32 (rows)")
    ttu_block_n: int = _p(32, "public", f"{_P}: native TTU block 32 x K x 32 (columns)")
    tvp_lanes_16: int = _p(256, "public", f"{_P}: TVP 256 lanes for <= 16-bit types")
    tvp_lanes_32: int = _p(128, "public", f"{_P}: TVP 128 lanes for FP32")
    tvp_ops_per_lane: float = _p(6.0, "public",
                                 f"{_P}: 3.07 TFLOP/s per tile at 256 lanes x 2 GHz = 6 "
                                 "FLOP per lane per cycle (1.54 TFLOP/s fp32)", "op/cyc")
    max_waits: int = _p(2, "public", f"{_P}: macro-instructions carry at most 2 pre-semaphores")
    max_signals: int = _p(2, "public", f"{_P}: ... and at most 2 post-semaphores")
    tsram_bw: float = _p(80.0e12, "public",
                         "aggregate on-die SRAM bandwidth ~80 TB/s [HC38 slide], taken as "
                         "the tiles' TSRAM DMA rate (2.2 TB/s per tile)", "B/s")
    csram_bw: float = _p(28.0e12, "assumed",
                         "aggregate CSRAM bandwidth: 4 clusters x 7 TB/s (each cluster can "
                         "take the whole HBM stream)", "B/s")
    noc_bw: float = _p(FIT["noc_bw"], "fitted",
                       "aggregate NoC bandwidth into/out of the tiles (HBM/CSRAM <-> TSRAM); "
                       "fitted to " + FIT_ROWS["noc_bw"] + " (bench/fit_paper.py)", "B/s")
    dma_queues: int = _p(4, "assumed", "concurrent DMA queues ('multichannel' DMA [MS]); 4 chosen")
    dma_latency_s: float = _p(FIT["dma_latency_s"], "fitted",
                              "fixed cost per DMA instruction (descriptor setup + NoC round "
                              "trip); fitted to " + FIT_ROWS["dma_latency_s"]
                              + " (bench/fit_paper.py)", "s")
    launch_latency_s: float = _p(FIT["launch_latency_s"], "fitted",
                                 "fixed cost per program: the launch (host doorbell, the tiles "
                                 "fetching their first instructions) and the completion (the "
                                 "last writes drained to HBM, the final semaphore back to the "
                                 "host); no instruction starts before it; fitted to "
                                 + FIT_ROWS["launch_latency_s"] + " (bench/fit_paper.py)", "s")
    instr_latency_s: float = _p(50e-9, "assumed",
                                "fixed cost per TTU/TVP instruction: ~100 cycles issue/drain "
                                "at 2 GHz", "s")
    tdp_w: float = _p(750.0, "public", "750 W SoC TDP [MS]", "W")
    provenance: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False,
                                                   compare=False,
                                                   metadata={"internal": True})

    @property
    def n_tiles(self) -> int:
        """Active compute tiles (clusters x enabled tiles per cluster)."""
        return self.n_clusters * self.tiles_per_cluster

    def fit_statement(self) -> str:
        """Which parameters were fitted to the paper's table, and whether this target keeps
        the fitted values (what a report says produced its figures)."""
        if self.name != "maia200":
            return "not fitted (what-if target)"
        parts = []
        for key, fitted in FIT.items():
            value = getattr(self, key)
            same = math.isclose(float(value), fitted)
            parts.append(f"{key} = {value:g}" + ("" if same else f" (override; fit {fitted:g})"))
        return "fitted to arXiv 2608.24664 (runtime/maia200_fit.py): " + ", ".join(parts)

    @property
    def ttu_flops(self) -> dict[str, float]:
        """Chip peak dense TTU FLOP/s per format: 2 x MACs x clock x active tiles."""
        return {f: 2.0 * m * self.clock_hz * self.n_tiles for f, m in self.ttu_macs.items()}

    @property
    def tvp_flops(self) -> float:
        """Chip TVP op/s on fp32 elements (the rate maiac's vector ops run at)."""
        return self.tvp_lanes_32 * self.tvp_ops_per_lane * self.clock_hz * self.n_tiles

    @property
    def tvp_flops_16(self) -> float:
        """Chip TVP op/s on <= 16-bit elements."""
        return self.tvp_lanes_16 * self.tvp_ops_per_lane * self.clock_hz * self.n_tiles

    @property
    def hbm_sustained_bw(self) -> float:
        """The HBM rate DMAs see (``hbm_bw x hbm_efficiency``); reports compare against
        ``hbm_bw``, the physical peak."""
        return self.hbm_bw * self.hbm_efficiency

    def ttu_block_k(self, fmt: str) -> int:
        """The depth K of the TTU's native 32 x K x 32 block in ``fmt`` (64 fp4, 32 fp8)."""
        macs = self.ttu_macs.get(fmt, self.ttu_macs["bf16"])
        return max(1, int(macs // (self.ttu_block_m * self.ttu_block_n)))

    @property
    def sram_bytes(self) -> int:
        """Total on-die SRAM of the active tiles plus CSRAM of every cluster."""
        return self.n_tiles * self.tsram_bytes + self.n_clusters * self.csram_bytes

    def capacity(self, level: str) -> int:
        """Addressable bytes of a memory level (TSRAM: per tile, every tile sees the same map)."""
        caps = {"hbm": self.hbm_bytes, "csram": self.n_clusters * self.csram_bytes,
                "tsram": self.tsram_bytes}
        return caps[level]

    def status_of(self, key: str) -> tuple[str, str]:
        """(status, source) of parameter ``key`` (``ttu_macs.fp8`` style for dict entries)."""
        if key in self.provenance:
            return self.provenance[key]
        head, _, sub = key.partition(".")
        if head in self.provenance:
            return self.provenance[head]
        meta = _FIELDS[head].metadata
        if head == "ttu_macs" and sub:
            return _MACS_STATUS.get(sub, "assumed"), meta["source"]
        return meta["status"], meta["source"]

    def to_json(self) -> dict[str, Any]:
        """All parameters as a JSON-ready dict (the `.maia` manifest stores this), plus the
        derived peaks (``ttu_flops``, ``tvp_flops``, ``n_tiles``) for readers."""
        out: dict[str, Any] = {f.name: (dict(v) if isinstance(v := getattr(self, f.name), dict)
                                        else v) for f in _params()}
        out.update(ttu_flops=self.ttu_flops, tvp_flops=self.tvp_flops, n_tiles=self.n_tiles)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        """Inverse of ``to_json``; missing keys take the named target's defaults."""
        if not isinstance(data, dict):
            raise MaiacError(f"target parameters must be an object, got {type(data).__name__}")
        base = get_target(str(data.get("name", "maia200")))
        for key, value in data.items():
            if key == "name" or key in DERIVED:
                continue
            head = key.partition(".")[0]
            if head in _FIELDS and getattr(base, head) == value:
                continue  # the named target's own value keeps its provenance
            _set_param(base, key, value)
        return base

    def params_table(self) -> list[dict[str, Any]]:
        """One row per parameter: key, value, unit, status (public/fitted/assumed/override),
        source; then the derived chip peaks (status ``derived``)."""
        rows = []
        for f in _params():
            value = getattr(self, f.name)
            entries = ([(f"{f.name}.{k}", v) for k, v in value.items()]
                       if isinstance(value, dict) else [(f.name, value)])
            for key, v in entries:
                status, source = self.status_of(key)
                rows.append({"key": key, "value": v, "unit": f.metadata["unit"],
                             "status": status, "source": source})
        for fmt, v in self.ttu_flops.items():
            rows.append({"key": f"ttu_flops.{fmt}", "value": v, "unit": "FLOP/s",
                         "status": "derived", "source": "2 x ttu_macs x clock_hz x n_tiles"})
        for fmt in self.ttu_macs:  # the K of the native 32 x K x 32 block the tiler follows
            rows.append({"key": f"ttu_block_k.{fmt}", "value": self.ttu_block_k(fmt),
                         "unit": "", "status": "derived",
                         "source": "ttu_macs / (ttu_block_m x ttu_block_n): depth K of the "
                                   "native 32 x K x 32 block (64 fp4, 32 fp8 [P])"})
        rows.append({"key": "tvp_flops", "value": self.tvp_flops, "unit": "op/s",
                     "status": "derived",
                     "source": "tvp_lanes_32 x tvp_ops_per_lane x clock_hz x n_tiles"})
        rows.append({"key": "n_tiles", "value": self.n_tiles, "unit": "", "status": "derived",
                     "source": "n_clusters x tiles_per_cluster"})
        return rows

    def describe(self) -> str:
        """A plain-text table of every parameter with its status and source."""
        rows = self.params_table()
        width = max(len(r["key"]) for r in rows)
        lines = [f"target {self.name}: {self.n_clusters} clusters x {self.tiles_per_cluster} "
                 f"tiles = {self.n_tiles} tiles, {self.sram_bytes / _MIB:.0f} MiB SRAM, "
                 f"fit: {'runtime/maia200_fit.py' if self.name == 'maia200' else 'none'}",
                 f"{'parameter':<{width}}  {'value':>14}  {'unit':<8} {'status':<8} source"]
        for r in rows:
            v = r["value"]
            vs = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"{r['key']:<{width}}  {vs:>14}  {r['unit']:<8} {r['status']:<8} "
                         f"{r['source']}")
        return "\n".join(lines)


def _params() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Target) if not f.metadata.get("internal")]


_FIELDS = {f.name: f for f in _params()}

# What the other named targets change, with the status and source of each change.
_IDEAL_SRC = "maia200-ideal: the unfitted roofline assumption"
_V0_SRC = "maia200-v0: maiac's assumption before the paper"
_V0_PEAKS = {"fp4": 10.1e15, "fp6": 5.0e15, "fp8": 5.0e15, "bf16": 1.25e15, "f32": 0.3125e15}
TARGET_SPECS: dict[str, dict[str, tuple[Any, str, str]]] = {
    "maia200": {},
    "maia200-ideal": {
        "hbm_efficiency": (1.0, "assumed", f"{_IDEAL_SRC}: HBM streams at its full peak"),
        "dma_latency_s": (0.5e-6, "assumed", f"{_IDEAL_SRC}: 0.5 us per DMA instruction"),
        "noc_bw": (32.0e12, "assumed", f"{_IDEAL_SRC}: NoC = 32 TB/s (~4.5 x HBM)"),
        "launch_latency_s": (0.0, "assumed", f"{_IDEAL_SRC}: no per-program launch cost"),
    },
    "maia200-v0": {
        "n_clusters": (16, "assumed", f"{_V0_SRC}: Maia 100's 16 clusters [HC24]"),
        "tiles_per_cluster": (4, "assumed", f"{_V0_SRC}: Maia 100's 4 tiles per cluster [HC24]"),
        "tsram_bytes": (2 * _MIB, "assumed", f"{_V0_SRC}: 2 MiB x 64 tiles = 128 MiB"),
        "csram_bytes": (9 * _MIB, "assumed", f"{_V0_SRC}: 9 MiB x 16 = 144 MiB"),
        "hbm_efficiency": (1.0, "assumed", f"{_V0_SRC}: HBM at its peak"),
        "ttu_macs": ({f: v / (2 * 2.0e9 * 64) for f, v in _V0_PEAKS.items()}, "assumed",
                     f"{_V0_SRC}: chip peaks fp4 10.1e15 [SR], fp8 5e15 [MS], fp6 = fp8, "
                     "bf16 = fp8/4, f32 = bf16/4, over 64 tiles at 2 GHz"),
        "tvp_ops_per_lane": (4.0, "assumed", f"{_V0_SRC}: 64 tiles x 512 fp32 ops x 2 GHz"),
        "tsram_bw": (64.0e12, "assumed", f"{_V0_SRC}: 64 tiles x 1 TB/s"),
        "csram_bw": (32.0e12, "assumed", f"{_V0_SRC}: 16 clusters x 2 TB/s"),
        "noc_bw": (32.0e12, "assumed", f"{_V0_SRC}: = CSRAM bandwidth"),
        "dma_latency_s": (0.5e-6, "assumed", f"{_V0_SRC}: 0.5 us per DMA instruction"),
        "launch_latency_s": (0.0, "assumed", f"{_V0_SRC}: no per-program launch cost"),
        "max_waits": (8, "assumed", f"{_V0_SRC}: no limit on waits (one per engine)"),
        "max_signals": (8, "assumed", f"{_V0_SRC}: no limit"),
    },
}
TARGETS = tuple(TARGET_SPECS)


def _make(name: str) -> Target:
    target = Target(name=name)
    for key, (value, status, source) in TARGET_SPECS[name].items():
        setattr(target, key, dict(value) if isinstance(value, dict) else value)
        target.provenance[key] = (status, source)
    return target


# Unit suffixes accepted in overrides: decimal (k, M, G, T, P) and binary (Ki, Mi, ...)
# prefixes, optionally followed by B, B/s, FLOPS, Hz, W; time units for latencies.
_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_NUM_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z/]*)\s*$")
_AT_MOST_ONE = ("hbm_efficiency",)  # fractions
_MAY_BE_ZERO = ("launch_latency_s",)  # a fixed cost a what-if study may switch off


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
    """Every overridable parameter key (dict parameters as ``ttu_macs.fp8``)."""
    target = target or Target()
    return [r["key"] for r in target.params_table()
            if r["key"] != "name" and r["status"] != "derived"]


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert an override value to the type of the current one, or raise ValueError."""
    if isinstance(value, str):
        number = parse_number(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    else:
        number = float(value)
    if key in _MAY_BE_ZERO and number == 0:
        return 0.0
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a positive finite number, got {value!r}")
    if key in _AT_MOST_ONE and number > 1:
        raise ValueError(f"is a fraction of a peak, at most 1, got {value!r}")
    if isinstance(current, int):
        if number != int(number):
            raise ValueError(f"must be an integer, got {value!r}")
        return int(number)
    return float(number)


def _set_param(target: Target, key: str, value: Any) -> None:
    """Set one parameter (``ttu_macs.fp8`` style for dict entries); MaiacError if unknown/bad."""
    head, _, sub = key.partition(".")
    try:
        if head == "ttu_macs" and not sub and isinstance(value, dict):
            for fmt, v in value.items():
                _set_param(target, f"ttu_macs.{fmt}", v)
            return
        if head not in _FIELDS or head == "name" or (sub and head != "ttu_macs") \
                or (head == "ttu_macs" and not sub):
            raise KeyError(key)
        if sub:
            target.ttu_macs[sub] = _coerce(key, 1.0, value)
        else:
            setattr(target, head, _coerce(key, getattr(target, head), value))
        target.provenance[key] = ("override", f"set by --target-param / parameter file "
                                  f"(on {target.name})")
    except KeyError:
        hint = (" (the native block depth is derived: set ttu_macs.FMT)"
                if head == "ttu_block_k" else
                " (peaks are derived: set ttu_macs.FMT, MACs per cycle per tile)"
                if head in DERIVED else "")
        raise MaiacError(f"unknown target parameter {key!r}{hint}; valid keys: "
                         f"{', '.join(valid_keys(target))}") from None
    except ValueError as err:
        raise MaiacError(f"bad value for target parameter {key!r}: {err}") from None


def get_target(name: str = "maia200", overrides: dict[str, str] | None = None,
               param_file: str | None = None) -> Target:
    """The named target with a parameter file (JSON/TOML) and then ``overrides`` applied."""
    if name not in TARGET_SPECS:
        raise MaiacError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    target = _make(name)
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
