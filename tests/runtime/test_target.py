"""Target parameters: defaults, public/assumed marking, overrides and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maiac.runtime.errors import MaiacError
from maiac.runtime.target import Target, get_target, parse_number


def test_defaults_match_public_facts():
    t = get_target()
    assert t.name == "maia200" and t.n_tiles == 64
    assert t.sram_bytes == 272 * 2**20  # TSRAM + CSRAM = 272 (binary) MB
    assert t.hbm_bytes == 216e9 and t.hbm_bw == 7e12
    assert t.ttu_flops["fp4"] == 10.1e15 and t.ttu_flops["fp8"] == 5e15
    assert set(t.ttu_flops) == {"fp4", "fp6", "fp8", "bf16", "f32"}
    assert t.csram_bw > t.hbm_bw and t.tsram_bw > t.hbm_bw


def test_every_parameter_is_marked_with_a_source():
    rows = get_target().params_table()
    assert all(r["status"] in ("public", "assumed", "info") and r["source"] for r in rows)
    status = {r["key"]: r["status"] for r in rows}
    assert status["hbm_bw"] == "public" and status["tsram_bytes"] == "assumed"
    assert status["ttu_flops.fp8"] == "public" and status["ttu_flops.bf16"] == "assumed"
    text = get_target().describe()
    assert "tsram_bytes" in text and "assumed" in text and "public" in text


@pytest.mark.parametrize("text, value", [
    ("4MiB", 4 * 2**20), ("2e6", 2e6), ("7e12", 7e12), ("7TB/s", 7e12), ("500ns", 5e-7),
    ("2GHz", 2e9), ("1.5 KiB", 1536), ("3", 3),
])
def test_parse_number(text: str, value: float):
    assert parse_number(text) == pytest.approx(value)


def test_overrides():
    t = get_target(overrides={"tsram_bytes": "4MiB", "hbm_bw": "8e12", "ttu_flops.fp8": "6e15",
                              "dma_latency_s": "1us", "n_clusters": "8"})
    assert t.tsram_bytes == 4 * 2**20 and isinstance(t.tsram_bytes, int)
    assert t.hbm_bw == 8e12 and t.ttu_flops["fp8"] == 6e15 and t.dma_latency_s == 1e-6
    assert t.n_tiles == 32
    assert get_target().ttu_flops["fp8"] == 5e15  # defaults are not shared/mutated


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
    j.write_text(json.dumps({"tsram_bytes": "1MiB", "ttu_flops": {"bf16": 2e15}}))
    t = get_target(param_file=str(j), overrides={"hbm_bw": "1e12"})
    assert t.tsram_bytes == 2**20 and t.ttu_flops["bf16"] == 2e15 and t.hbm_bw == 1e12
    toml = tmp_path / "t.toml"
    toml.write_text('csram_bytes = "4MiB"\n[ttu_flops]\nfp8 = 4e15\n')
    t = get_target(param_file=str(toml))
    assert t.csram_bytes == 4 * 2**20 and t.ttu_flops["fp8"] == 4e15
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(MaiacError, match="cannot read target parameter file"):
        get_target(param_file=str(bad))


def test_json_round_trip():
    t = get_target(overrides={"tsram_bytes": "1MiB"})
    d = json.loads(json.dumps(t.to_json()))
    assert Target.from_json(d) == t
    assert Target.from_json({"name": "maia200"}) == get_target()
    with pytest.raises(MaiacError, match="unknown target parameter 'bogus'"):
        Target.from_json({"bogus": 1})
