"""The Maia 200 scale-up network in the machine model: links, topology, collective costs.

numpy-free arithmetic only (no xDSL). Facts from /work/shared/MAIA200_FACTS.md, [P] =
arXiv 2608.24664 (Xu et al., "Maia 200: A Software Defined Dataflow System ...", 2026):

* 28 on-die 400 Gb/s Ethernet controllers = 1.4 TB/s per direction per chip [P].
* A tray holds 4 chips, fully connected by 20 fixed links: north-south 300 GB/s,
  east-west and diagonal 350 GB/s per direction; the switched share tops every neighbour
  up to 350 GB/s [P]. 8 links (400 GB/s) go to 4 switched planes [P].
* Tier-0 switch: 48 chips (12 trays); tier-1 at 1:3 oversubscription; up to 6,144 chips [P].
* Small messages over the switched path take ~4 us [P].
* MCCL chooses direct-connect or ring algorithms by message size [P].

How a collective is costed (per chip; every chip of the group does the same):

* ``direct`` (one shot): every chip writes its piece to every peer at once, in-tray
  peers over their own links, off-tray peers through the switched share.
* ``direct-2step`` (all-reduce only): a direct reduce-scatter, then a direct all-gather.
* ``ring``: as many edge-disjoint rings as the chip has ports in use (3 neighbour links
  + the switched port beyond one tray: each ring crosses trays through a different
  chip's switched port), data split over them, ``N - 1`` steps (twice for all-reduce),
  each one hop latency plus its chunk over the ring bandwidth.

The cheapest algorithm for the size is chosen (that is "chosen by size": the crossover
falls where the ring's bandwidth beats the direct one's single latency). Two numbers no
source gives are *fitted* to the paper's one network measurement (8-chip Allgather over
two trays: 78 % of the latency bound, 94 % of the bandwidth bound, SoL = max(4 us,
R / 1.4 TiB/s)) by :func:`fit_allgather` (bench/paper_network.py prints the row).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from maiac.runtime.errors import MaiacError

GB = 1e9
TIB = float(1 << 40)


def _p(default: Any, status: str, source: str, unit: str = "") -> Any:
    assert status in ("public", "fitted", "assumed")
    return field(default=default, metadata={"status": status, "source": source, "unit": unit})


@dataclass(frozen=True)
class Network:
    """Parameters of the scale-up network (metadata: status public/fitted/assumed + source)."""

    chips_per_tray: int = _p(4, "public", "[P]: 4 chips per tray, fully connected")
    north_south_bw: float = _p(300 * GB, "public", "[P]: north-south links 300 GB/s per direction", "B/s")
    east_west_bw: float = _p(350 * GB, "public", "[P]: east-west and diagonal links 350 GB/s per direction", "B/s")
    neighbour_bw: float = _p(350 * GB, "public",
                             "[P]: every in-tray neighbour balanced to 350 GB/s by the switched share", "B/s")
    chip_bw: float = _p(1.4e12, "public", "[P]: 28 x 400 Gb/s Ethernet = 1.4 TB/s per direction", "B/s")
    switched_bw: float = _p(400 * GB, "public", "[P]: 8 links x 400 Gb/s to 4 switched planes", "B/s")
    tier0_chips: int = _p(48, "public", "[P]: tier-0 switch 128 x 400G serves 48 chips (12 trays)")
    tier1_oversubscription: float = _p(3.0, "public", "[P]: tier-1 at 1:3 oversubscription")
    max_chips: int = _p(6144, "public", "[P]: collectives up to 6,144 chips")
    switched_latency_s: float = _p(4e-6, "public", "[P]: ~4 us small messages over the switched path", "s")
    direct_latency_s: float = _p(2e-6, "assumed",
                                 "one hop over a direct in-tray link, no switch: half the switched "
                                 "latency (not published)", "s")
    tier1_latency_s: float = _p(6e-6, "assumed", "a second switch tier adds ~2 us (not published)", "s")
    collective_overhead_s: float = _p(1.078e-6, "fitted",
                                      "per collective (descriptors, completion semaphores); fitted by "
                                      "network.fit_allgather to [P] Allgather 8 chips, 78 % of the "
                                      "latency bound", "s")
    link_efficiency: float = _p(0.9412, "fitted",
                                "payload fraction of the wire rate (Ethernet/ATLv2 framing); fitted "
                                "by network.fit_allgather to [P] Allgather 8 chips, 94 % of the "
                                "bandwidth bound at R = 1 GiB", "")

    # -- topology -------------------------------------------------------------------
    def check_group(self, chips: int) -> None:
        if not isinstance(chips, int) or not 1 <= chips <= self.max_chips:
            raise MaiacError(f"a chip group has 1..{self.max_chips} chips, got {chips}")

    def switched_share(self, chips: int) -> float:
        """Switched bandwidth a chip has left for off-tray peers: what the north-south
        neighbour's top-up does not use, divided by the tier-1 oversubscription."""
        share = self.switched_bw - (self.neighbour_bw - self.north_south_bw)
        if chips > self.tier0_chips:
            share /= self.tier1_oversubscription
        return share

    def hop_latency(self, chips: int) -> float:
        """Latency of one message between the farthest chips of a group."""
        if chips <= self.chips_per_tray:
            return self.direct_latency_s
        return self.switched_latency_s if chips <= self.tier0_chips else self.tier1_latency_s

    def ring_bw(self, chips: int) -> float:
        """Payload bytes/s a chip sends per ring step over all its edge-disjoint rings."""
        in_tray = min(chips, self.chips_per_tray) - 1
        bw = in_tray * self.neighbour_bw
        if chips > self.chips_per_tray:
            bw += min(self.neighbour_bw, self.switched_share(chips))
        return min(bw, self.chip_bw) * self.link_efficiency

    def direct_time(self, piece: float, chips: int) -> float:
        """Wire time of every chip sending ``piece`` bytes to each of its peers at once."""
        in_tray = min(chips, self.chips_per_tray) - 1
        off_tray = chips - 1 - in_tray
        t = piece / self.neighbour_bw if in_tray else 0.0
        if off_tray:
            t = max(t, off_tray * piece / self.switched_share(chips))
        return t / self.link_efficiency

    # -- collectives ----------------------------------------------------------------
    def costs(self, collective: str, nbytes: float, chips: int) -> dict[str, float]:
        """Seconds per algorithm for ``collective`` of ``nbytes`` (all-reduce: the tensor;
        all-gather: the gathered result; reduce-scatter: the input) over ``chips``."""
        self.check_group(chips)
        if chips == 1:
            return {"local": 0.0}
        n, lat, over = chips, self.hop_latency(chips), self.collective_overhead_s
        piece = nbytes / n
        ring_step = lat + piece / self.ring_bw(n)
        if collective in ("all_gather", "reduce_scatter"):
            return {"direct": over + lat + self.direct_time(piece, n),
                    "ring": over + (n - 1) * ring_step}
        if collective == "all_reduce":
            return {"direct": over + lat + self.direct_time(nbytes, n),
                    "direct-2step": over + 2 * (lat + self.direct_time(piece, n)),
                    "ring": over + 2 * (n - 1) * ring_step}
        raise MaiacError(f"unknown collective {collective!r}")

    def cost(self, collective: str, nbytes: float, chips: int) -> tuple[float, str]:
        """(seconds, algorithm) of the cheapest algorithm, as MCCL picks by size."""
        options = self.costs(collective, nbytes, chips)
        algo = min(options, key=options.__getitem__)
        return options[algo], algo

    def p2p_cost(self, nbytes: float, a: int, b: int, chips: int) -> tuple[float, str]:
        """(seconds, path) of chip ``a`` sending ``nbytes`` to chip ``b`` of a group of
        ``chips`` (pipeline stages): over their own link inside a tray (chips 4t..4t+3),
        else over the switched planes at the share a chip has for off-tray peers."""
        self.check_group(chips)
        if self.chips_per_tray and a // self.chips_per_tray == b // self.chips_per_tray:
            lat, bw, path = self.direct_latency_s, self.neighbour_bw, "link"
        else:
            lat = self.switched_latency_s if chips <= self.tier0_chips else self.tier1_latency_s
            bw, path = self.switched_share(chips), "switched"
        return self.collective_overhead_s + lat + nbytes / (bw * self.link_efficiency), path

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Network:
        data = dict(data or {})
        known = {f.name: f for f in dataclasses.fields(Network)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise MaiacError(f"unknown network parameter {unknown[0]!r} "
                             f"(known: {', '.join(sorted(known))})")
        try:
            return Network(**{k: type(getattr(Network(), k))(v) for k, v in data.items()})
        except (TypeError, ValueError) as err:
            raise MaiacError(f"bad network parameter: {err}") from None

    @staticmethod
    def describe() -> list[dict[str, Any]]:
        """Every parameter with its value, status and source (for `maiac target`)."""
        default = Network()
        return [{"name": f.name, "value": getattr(default, f.name), **f.metadata}
                for f in dataclasses.fields(Network)]


# --------------------------------------------------------------------------- the paper's row

# [P]: Allgather over 8 chips (two trays): measured / speed of light.
PAPER_ALLGATHER = {"chips": 8, "latency_fraction": 0.78, "bandwidth_fraction": 0.94}
SOL_LATENCY_S = 4e-6
SOL_BW = 1.4 * TIB  # the paper writes 1.4 TiB/s in the SoL formula
# ASSUMED sizes of the two regimes (the paper does not say which sizes it reports):
# 4 KiB per chip (ATLv2 prefers messages > 4 KiB) and a 1 GiB result.
SMALL_RESULT_BYTES = 8 * 4096
LARGE_RESULT_BYTES = float(1 << 30)


def allgather_sol(result_bytes: float) -> float:
    """The paper's speed of light for an all-gather whose result is ``result_bytes``."""
    return max(SOL_LATENCY_S, result_bytes / SOL_BW)


def fit_allgather(net: Network | None = None, iters: int = 50) -> Network:
    """``collective_overhead_s`` and ``link_efficiency`` such that the model's 8-chip
    all-gather is at 78 % of the SoL for a small result and 94 % for a large one.

    The two equations are solved by alternating closed-form updates (each regime depends
    almost only on one parameter; converges in a few iterations).
    """
    net = net or Network()
    n = PAPER_ALLGATHER["chips"]
    for _ in range(iters):
        # latency regime: direct all-gather; overhead = target - latency - wire
        target_small = allgather_sol(SMALL_RESULT_BYTES) / PAPER_ALLGATHER["latency_fraction"]
        wire = net.direct_time(SMALL_RESULT_BYTES / n, n)
        overhead = target_small - net.hop_latency(n) - wire
        net = dataclasses.replace(net, collective_overhead_s=overhead)
        # bandwidth regime: ring all-gather; solve the wire term for the efficiency
        target_large = allgather_sol(LARGE_RESULT_BYTES) / PAPER_ALLGATHER["bandwidth_fraction"]
        fixed = overhead + (n - 1) * net.hop_latency(n)
        raw_bw = net.ring_bw(n) / net.link_efficiency
        eff = (n - 1) * LARGE_RESULT_BYTES / n / raw_bw / (target_large - fixed)
        net = dataclasses.replace(net, link_efficiency=eff)
    assert 0 < net.link_efficiency <= 1 and net.collective_overhead_s > 0, net
    return net


def allgather_rows(net: Network | None = None,
                   sizes: tuple[float, ...] = (SMALL_RESULT_BYTES, 1 << 20, 16 << 20,
                                               LARGE_RESULT_BYTES)) -> list[dict[str, Any]]:
    """The model's 8-chip all-gather against the paper's SoL, per result size."""
    net = net or Network()
    rows = []
    for size in sizes:
        t, algo = net.cost("all_gather", float(size), PAPER_ALLGATHER["chips"])
        rows.append({"result_bytes": int(size), "algorithm": algo, "modeled_s": t,
                     "sol_s": allgather_sol(size), "fraction_of_sol": allgather_sol(size) / t})
    return rows


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def trays(chips: int, per_tray: int = 4) -> int:
    return math.ceil(chips / per_tray)
