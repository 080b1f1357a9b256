"""``maiac target [--json] [--target-param k=v]``: every parameter of a named target with
its status (public with a source, fitted, assumed, override, derived)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from maiac.cli import main
from maiac.runtime.target import TARGETS, get_target, valid_keys


def _json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["target", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_lists_every_parameter_with_a_status() -> None:
    out = _json()
    rows = {r["key"]: r for r in out["parameters"]}
    assert out["target"] == "maia200" and out["n_tiles"] == 36
    assert out["fit"] == "runtime/maia200_fit.py"
    assert set(valid_keys()) <= set(rows)
    assert all(r["status"] in ("public", "fitted", "assumed", "info", "derived")
               and r["source"] for r in rows.values())
    # the paper's chip: 4 x 9 tiles, 3 MiB TSRAM, 35 MiB CSRAM, 2 GHz, 7 TB/s, 2 waits
    expect = {"n_clusters": 4, "tiles_per_cluster": 9, "tsram_bytes": 3 << 20,
              "csram_bytes": 35 << 20, "clock_hz": 2e9, "hbm_bw": 7e12, "max_waits": 2,
              "max_signals": 2, "tvp_lanes_16": 256, "tvp_lanes_32": 128,
              "ttu_macs.fp4": 65536, "ttu_macs.fp8": 32768, "ttu_macs.bf16": 8192,
              "ttu_block_k.fp4": 64, "ttu_block_k.fp8": 32}
    for key, value in expect.items():
        assert rows[key]["value"] == value, key
        assert rows[key]["status"] in ("public", "derived"), key
    fitted = [k for k, r in rows.items() if r["status"] == "fitted"]
    assert fitted and all("fitted to" in rows[k]["source"] for k in fitted)


def test_override_shows_as_override_and_moves_the_derived_peaks() -> None:
    out = _json("--target-param", "tiles_per_cluster=7", "--target-param", "n_clusters=5")
    rows = {r["key"]: r for r in out["parameters"]}
    assert out["n_tiles"] == 35 and rows["n_tiles"]["value"] == 35
    assert rows["tiles_per_cluster"]["status"] == "override"
    assert rows["ttu_flops.fp8"]["value"] == 2 * 32768 * 2e9 * 35


def test_every_named_target_prints_and_the_maia100_shape_is_one() -> None:
    for name in TARGETS:
        result = CliRunner().invoke(main, ["target", "--target", name])
        assert result.exit_code == 0, result.output
        for key in valid_keys(get_target(name)):
            assert key in result.stdout, (name, key)
    v0 = _json("--target", "maia200-v0")
    assert v0["n_tiles"] == 64 and v0["fit"] is None  # Maia 100's 16 x 4 tiles, what-if


def test_bad_parameter_is_one_error_naming_it() -> None:
    for arg, needle in (("warp=9", "warp"), ("tiles_per_cluster=0", "tiles_per_cluster"),
                        ("ttu_flops.fp8=1e15", "derived")):
        result = CliRunner().invoke(main, ["target", "--target-param", arg])
        assert result.exit_code == 2, result.output
        assert needle in result.stderr and "Traceback" not in result.output


def test_fit_statement_names_overrides_and_what_if_targets() -> None:
    from maiac.runtime.maia200_fit import FIT

    key = next(iter(FIT))
    assert "override" not in get_target("maia200").fit_statement()
    changed = get_target("maia200", {key: str(FIT[key] / 2)})
    assert f"{key} = {FIT[key] / 2:g} (override; fit {FIT[key]:g})" in changed.fit_statement()
    assert get_target("maia200-ideal").fit_statement() == "not fitted (what-if target)"


def test_target_name_as_argument() -> None:
    r = CliRunner().invoke(main, ["target", "maia200-v0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["target"] == "maia200-v0"
    r = CliRunner().invoke(main, ["target", "maia200-v0", "--target", "maia200"])
    assert r.exit_code == 2 and "two targets given" in r.output
