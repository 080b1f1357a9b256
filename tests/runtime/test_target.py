"""Target parameters: defaults, public/assumed marking, overrides and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maiac.runtime.errors import MaiacError
from maiac.runtime.target import Target, get_target, parse_number


def test_defaults_match_the_paper():
    t = get_target()
    assert t.name == "maia200" and t.n_clusters == 4 and t.tiles_per_cluster == 9
    assert t.n_tiles == 36 and t.clock_hz == 2e9
    assert t.tsram_bytes == 3 * 2**20 and t.csram_bytes == 35 * 2**20
    # 40 physical tiles x 3 MiB + 4 x 35 MiB = 260 MiB = the public 272 MB
    assert 40 * t.tsram_bytes + 4 * t.csram_bytes == 260 * 2**20 == pytest.approx(272.6e6, rel=1e-3)
    assert t.hbm_bytes == 216e9 and t.hbm_bw == 7e12
    assert t.ttu_macs["fp4"] == 65536 and t.ttu_macs["fp8"] == t.ttu_macs["fp6"] == 32768
    assert t.ttu_macs["bf16"] == 8192
    # the paper's benchmark-section peaks: BF16 1,180 TFLOP/s, FP4 262 TFLOP/s per tile
    assert t.ttu_flops["bf16"] == pytest.approx(1.18e15, rel=1e-3)
    assert t.ttu_flops["fp4"] / t.n_tiles == pytest.approx(262e12, rel=1e-3)
    assert t.ttu_block_k("fp4") == 64 and t.ttu_block_k("fp8") == 32
    assert t.tvp_flops / t.n_tiles == pytest.approx(1.54e12, rel=5e-3)  # paper rounds 1.536
    assert t.tvp_flops_16 / t.n_tiles == pytest.approx(3.07e12, rel=1e-3)
    assert t.max_waits == 2 and t.max_signals == 2
    # ridge points the paper quotes: 169 (BF16) and 674 (FP8) FLOP/byte
    assert t.ttu_flops["bf16"] / t.hbm_bw == pytest.approx(169, abs=0.6)
    assert t.ttu_flops["fp8"] / t.hbm_bw == pytest.approx(674, abs=0.6)
    assert set(t.ttu_flops) == {"fp4", "fp6", "fp8", "bf16", "f32"}
    assert t.csram_bw > t.hbm_bw and t.tsram_bw > t.hbm_bw
    assert 0 < t.hbm_efficiency <= 1 and t.hbm_sustained_bw <= t.hbm_bw


def test_named_what_if_targets():
    ideal, v0 = get_target("maia200-ideal"), get_target("maia200-v0")
    assert ideal.n_tiles == 36 and ideal.hbm_efficiency == 1.0
    assert ideal.status_of("hbm_efficiency")[0] == "assumed"
    assert v0.n_tiles == 64 and v0.tsram_bytes == 2 * 2**20 and v0.csram_bytes == 9 * 2**20
    assert v0.sram_bytes == 272 * 2**20
    assert v0.ttu_flops["fp4"] == pytest.approx(10.1e15) and v0.ttu_flops["fp8"] == pytest.approx(5e15)
    assert v0.status_of("n_clusters")[0] == "assumed"


def test_every_parameter_is_marked_with_a_source():
    rows = get_target().params_table()
    assert all(r["status"] in ("public", "fitted", "assumed", "info", "derived") and r["source"]
               for r in rows)
    status = {r["key"]: r["status"] for r in rows}
    assert status["hbm_bw"] == "public" and status["tsram_bytes"] == "public"
    assert status["ttu_macs.fp8"] == "public" and status["ttu_macs.f32"] == "assumed"
    assert status["hbm_efficiency"] == "fitted" and status["dma_latency_s"] == "fitted"
    assert status["ttu_flops.fp8"] == "derived"
    k = {r["key"]: r["value"] for r in rows if r["key"].startswith("ttu_block_k.")}
    assert k["ttu_block_k.fp4"] == 64 and k["ttu_block_k.fp8"] == 32  # 32 x K x 32 [P]
    text = get_target().describe()
    assert "tsram_bytes" in text and "fitted" in text and "public" in text
    over = get_target(overrides={"tsram_bytes": "4MiB"})
    assert over.status_of("tsram_bytes")[0] == "override"


@pytest.mark.parametrize("text, value", [
    ("4MiB", 4 * 2**20), ("2e6", 2e6), ("7e12", 7e12), ("7TB/s", 7e12), ("500ns", 5e-7),
    ("2GHz", 2e9), ("1.5 KiB", 1536), ("3", 3),
])
def test_parse_number(text: str, value: float):
    assert parse_number(text) == pytest.approx(value)


def test_overrides():
    t = get_target(overrides={"tsram_bytes": "4MiB", "hbm_bw": "8e12", "ttu_macs.fp8": "65536",
                              "dma_latency_s": "1us", "n_clusters": "8"})
    assert t.tsram_bytes == 4 * 2**20 and isinstance(t.tsram_bytes, int)
    assert t.hbm_bw == 8e12 and t.dma_latency_s == 1e-6
    assert t.n_tiles == 72 and t.ttu_flops["fp8"] == 2 * 65536 * 2e9 * 72
    assert get_target().ttu_macs["fp8"] == 32768  # defaults are not shared/mutated
    with pytest.raises(MaiacError, match="peaks are derived"):
        get_target(overrides={"ttu_flops.fp8": "6e15"})
    with pytest.raises(MaiacError, match="block depth is derived"):
        get_target(overrides={"ttu_block_k.fp8": "64"})
    with pytest.raises(MaiacError, match="at most 1"):
        get_target(overrides={"hbm_efficiency": "1.5"})
    # a fixed cost a what-if may switch off (every other parameter must stay positive)
    assert get_target(overrides={"launch_latency_s": "0"}).launch_latency_s == 0.0
    assert get_target(overrides={"launch_latency_s": "2us"}).launch_latency_s == 2e-6
    with pytest.raises(MaiacError, match="positive"):
        get_target(overrides={"dma_latency_s": "0"})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(MaiacError, match=r"unknown target parameter 'tsram'.*tsram_bytes"):
        get_target(overrides={"tsram": "1"})


@pytest.mark.parametrize("key, value", [("tsram_bytes", "lots"), ("n_clusters", "2.5"),
                                        ("hbm_bw", "-1"), ("hbm_bw", "7 furlongs")])
def test_bad_value_names_key(key: str, value: str):
    with pytest.raises(MaiacError, match=f"bad value for target parameter '{key}'"):
        get_target(overrides={key: value})


def test_unknown_target():
    with pytest.raises(MaiacError, match="unknown target 'maia100'.*maia200"):
        get_target("maia100")


def test_param_files(tmp_path: Path):
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"tsram_bytes": "1MiB", "ttu_macs": {"bf16": 16384}}))
    t = get_target(param_file=str(j), overrides={"hbm_bw": "1e12"})
    assert t.tsram_bytes == 2**20 and t.ttu_macs["bf16"] == 16384 and t.hbm_bw == 1e12
    toml = tmp_path / "t.toml"
    toml.write_text('csram_bytes = "4MiB"\n[ttu_macs]\nfp8 = 16384\n')
    t = get_target(param_file=str(toml))
    assert t.csram_bytes == 4 * 2**20 and t.ttu_macs["fp8"] == 16384
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(MaiacError, match="cannot read target parameter file"):
        get_target(param_file=str(bad))


def test_json_round_trip():
    t = get_target(overrides={"tsram_bytes": "1MiB"})
    d = json.loads(json.dumps(t.to_json()))
    assert Target.from_json(d) == t
    assert Target.from_json({"name": "maia200"}) == get_target()
    v0 = get_target("maia200-v0")
    back = Target.from_json(json.loads(json.dumps(v0.to_json())))
    assert back == v0 and back.status_of("n_clusters")[0] == "assumed"
    with pytest.raises(MaiacError, match="unknown target parameter 'bogus'"):
        Target.from_json({"bogus": 1})
