"""`maiac perf`: sweep figures, extrapolation, fit, cost, roofline comparison, cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maiac import perf
from maiac.cli import main
from maiac.perf_compare import estimate, load_spec, shipped_specs
from maiac.runtime.errors import MaiacError

TINY = perf.PRESETS["llama-tiny"]


def _opts(tmp_path: Path, **kw: object) -> perf.PerfOptions:
    base = dict(batch=[1, 4], context=[64], quant=["mxfp4"], kv_cache=["bf16"], jobs=1,
                cache_dir=str(tmp_path / "cache"), price_per_hour=10.0)
    base.update(kw)
    return perf.PerfOptions(**base)  # type: ignore[arg-type]


def test_sweep_figures_are_consistent(tmp_path: Path) -> None:
    result = perf.sweep("llama-tiny", _opts(tmp_path))
    p1, p4 = result["points"]
    assert (p1["batch"], p4["batch"]) == (1, 4)
    for p in (p1, p4):
        assert p["tokens_per_s"] == pytest.approx(p["batch"] / p["tpot_s"])
        assert p["energy_per_token_j"] == pytest.approx(750 * p["tpot_s"] / p["batch"])
        assert p["usd_per_million_tokens"] == pytest.approx(10 / 3600 / p["tokens_per_s"] * 1e6)
        kv_token = 2 * TINY.layers * TINY.kv_heads * (TINY.hidden // TINY.heads) * 2
        assert p["kv_cache_bytes"] == kv_token * 64 * p["batch"]
        assert p["fits"] and p["max_batch"] == (216e9 - p["weight_bytes"]) // (kv_token * 64)
        assert p["bound"] in ("HBM", "TTU", "TVP", "DMA")
    assert p1["ttft_s"] == p4["ttft_s"]          # one prompt, whatever the batch
    assert p4["tpot_s"] > p1["tpot_s"]


def test_extrapolation_matches_a_whole_compile(tmp_path: Path) -> None:
    """1+2-layer extrapolation vs compiling all layers of a 2-layer model: equal."""
    ex = perf.sweep("llama-tiny", _opts(tmp_path, batch=[1]))["points"][0]
    full = perf.sweep("llama-tiny", _opts(tmp_path, batch=[1], layers="all"))["points"][0]
    for key in ("tpot_s", "ttft_s", "weight_bytes", "decode_flops"):
        assert ex[key] == pytest.approx(full[key], rel=1e-9)


def test_cache_reuses_results_and_kv_format_counts(tmp_path: Path) -> None:
    first = perf.sweep("llama-tiny", _opts(tmp_path, batch=[2], kv_cache=["fp32", "fp8"]))
    again = perf.sweep("llama-tiny", _opts(tmp_path, batch=[2], kv_cache=["fp32", "fp8"]))
    assert not any(p["cached"] for p in first["points"])
    assert all(p["cached"] for p in again["points"])
    assert [p["tpot_s"] for p in again["points"]] == [p["tpot_s"] for p in first["points"]]
    fp32, fp8 = first["points"]
    assert fp8["kv_cache_bytes"] * 4 == fp32["kv_cache_bytes"]


def test_shipped_specs_load_and_roofline_is_a_max() -> None:
    assert set(shipped_specs()) == {"h100", "h200", "b200", "trainium3", "tpu_v7"}
    for name in shipped_specs():
        acc = load_spec(name)
        assert acc.sources and acc.hbm_bw > 1e12
    h100 = load_spec("h100")
    point = {"batch": 8, "quant": "fp8", "weight_bytes": 8e9, "kv_cache_bytes": 2e9,
             "decode_flops": 1.3e11, "prefill_flops": 1.6e13}
    est = estimate(h100, point)
    assert est["tpot_s"] == pytest.approx(10e9 / 3.35e12)
    assert est["ttft_s"] == pytest.approx(1.6e13 / 1.979e15)
    assert est["bound"] == "HBM" and est["energy_per_token_j"] == pytest.approx(700 * est["tpot_s"] / 8)
    assert estimate(h100, {**point, "quant": "mxfp4"})["peak_assumed"]  # no FP4 on Hopper


def test_bad_options_and_specs(tmp_path: Path) -> None:
    with pytest.raises(MaiacError, match="--kv-cache"):
        perf.sweep("llama-tiny", _opts(tmp_path, kv_cache=["int3"]))
    with pytest.raises(MaiacError, match="preset"):
        perf.sweep("no-such-model", _opts(tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nhbm_bw = 1\n')
    with pytest.raises(MaiacError, match="hbm_bytes"):
        load_spec(str(bad))


def test_cli_json_html_and_compare(tmp_path: Path) -> None:
    html = tmp_path / "perf.html"
    res = CliRunner().invoke(main, [
        "perf", "llama-tiny", "--batch", "1", "--context", "64", "--quant", "fp8",
        "--kv-cache", "fp8", "--jobs", "1", "--cache-dir", str(tmp_path / "c"),
        "--compare", "b200", "--html", str(html), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    point = out["points"][0]
    assert [c["accelerator"] for c in point["compare"]] == ["maia200 roofline", "B200"]
    page = html.read_text()
    assert page.count("<svg") == 2 and "src=" not in page and "<link" not in page  # self-contained
    res = CliRunner().invoke(main, ["perf", "llama-tiny", "--batch", "x"])
    assert res.exit_code == 2 and "--batch" in res.output


def test_in_place_decode_moves_fewer_bytes_than_the_concat(tmp_path: Path) -> None:
    """--kv-update in-place (default) vs copy on one point: the Concat copy and the Cast of
    a bf16 cache are gone from the decode step (CSRAM cut to 1 MiB, so that, as for an 8B
    model, the fp32 Concat does not fit in SRAM and goes through HBM)."""
    kw = dict(batch=[8], context=[1024], quant=["fp8"],
              target_params={"csram_bytes": str(1 << 20)})
    new = perf.sweep("llama-tiny", _opts(tmp_path, **kw))["points"][0]
    old = perf.sweep("llama-tiny", _opts(tmp_path, kv_update="copy", **kw))["points"][0]
    assert (new["kv_update"], old["kv_update"]) == ("in-place", "copy")
    assert new["decode_hbm_traffic_bytes"] <= 1.1 * (new["kv_cache_bytes"] + new["weight_bytes"])
    assert old["decode_hbm_traffic_bytes"] > 2.5 * new["decode_hbm_traffic_bytes"]
    assert new["tpot_s"] < old["tpot_s"]


def test_genai_file_decodes_in_place(tmp_path: Path) -> None:
    """An onnxruntime-genai export (GroupQueryAttention, symbolic head_dim taken from the
    QKV width): its decode points use the in-place cache too."""
    path = Path(__file__).parent / "data" / "toolchain" / "genai_llama_fp32.onnx"
    (point,) = perf.sweep(str(path), _opts(tmp_path, batch=[2], context=[256],
                                           quant=["mxfp8"]))["points"]
    assert "error" not in point and point["kv_update"] == "in-place"
    assert point["decode_hbm_traffic_bytes"] < 2 * point["kv_cache_bytes"] + point["weight_bytes"]


def test_a_task_leaves_no_resources_and_the_causal_check_stays_small() -> None:
    """Memory-bounded sweeps: a task's resource handles go with it (ir.resources
    scoped_store), and recognizing a constant causal mask allocates about its bool result,
    not two int64 index grids (np.indices: 4 GiB at 16k tokens)."""
    import tracemalloc

    import numpy as np

    from maiac.ir import resources
    from maiac.passes.fuse_attention import _future

    before = set(resources._STORE)
    task = perf.Task(perf.resolve_model("llama-tiny"), "prefill", 1, 64, "fp8", "bf16", 1,
                     "maia200", ())
    assert "error" not in perf.run_task(task)
    assert set(resources._STORE) == before
    rows, cols = np.indices((5, 7))
    np.testing.assert_array_equal(_future(5, 7), cols > rows + 2)
    tracemalloc.start()
    _future(2048, 2048)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * 2048 * 2048   # the bool result is 4 MiB; np.indices made 64 MiB


def test_a_sweep_of_more_tasks_than_twice_the_workers_finishes() -> None:
    """Regression (a1e19f7): with ``max_tasks_per_child=2`` the process pool retired each
    worker after two tasks without replacing it, so 5 uncached tasks on 2 workers hung
    forever. Run in a subprocess (its own process group, killed on timeout), so a hang
    fails the test instead of the suite."""
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import json\n"
        "from maiac import perf\n"
        "shape = perf.resolve_model('llama-tiny')\n"
        "tasks = [perf.Task(shape, 'decode', b, 16, 'fp32', 'fp32', 1, 'maia200', ())\n"
        "         for b in range(1, 6)]\n"
        "out = perf.run_tasks(tasks, 2, perf.TaskCache(None, enabled=False))\n"
        "print(json.dumps([out[t]['modeled_time_s'] for t in tasks]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a sweep of 5 uncached tasks on 2 workers did not finish in 240 s")
    assert proc.returncode == 0, err
    times = json.loads(out)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert times == sorted(times)   # more sequences per step never take less time
