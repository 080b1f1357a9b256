"""`maiac report --trace`: a Chrome/Perfetto trace from the timing model alone (no data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import maiac
from maiac import models
from tests.test_cli import assert_user_error, invoke


@pytest.fixture(scope="module")
def shape_only_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer Llama-3-8B-shaped decode step whose weights have no values."""
    model = models.llama_decoder(models.LLAMA3_8B, mode="decode", context=256, layers=1,
                                 weights="shape_only")
    path = tmp_path_factory.mktemp("trace") / "llama8b.maia"
    maiac.compile(model, shape_only=True).save(path)
    return path


def test_report_trace_of_a_shape_only_program(shape_only_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = invoke("report", str(shape_only_llama), "--trace", str(out))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    assert all({"ph", "ts", "pid", "tid"} <= ev.keys() for ev in events)
    busy = [ev for ev in events if ev["ph"] == "X"]
    assert busy and all(ev["dur"] >= 0 and ev["ts"] >= 0 for ev in busy)
    # named by the graph's ops, not by instruction index
    report = json.loads(invoke("report", str(shape_only_llama), "--json").output)
    op_names = {o["name"] for o in report["ops"]}
    assert {ev["name"] for ev in busy} <= op_names
    assert not any(ev["name"].isdigit() for ev in busy)
    for ev in busy:
        a = ev["args"]
        assert a["bound"] in ("compute", "memory", "network")
        if a.get("extrapolated"):  # a loop's iterations past the simulated ones, in bulk
            assert a["iterations"] > 0 and a["loop_flops"] >= 0
        else:
            assert {"instr", "bytes", "hbm_bytes", "flops", "format"} <= a.keys()
            assert a["format"], ev
    matmuls = [ev for ev in busy if ev["cat"] == "matmul"]
    assert matmuls and all(ev["args"]["flops"] > 0 and ev["args"]["bytes"] > 0
                           for ev in matmuls)
    dmas = [ev for ev in busy if ev["cat"] == "dma"]
    assert dmas and all(ev["args"]["bytes"] > 0 for ev in dmas)
    assert any(ev["args"]["hbm_bytes"] > 0 for ev in dmas)
    # the trace spans the modeled time
    end_us = max(ev["ts"] + ev["dur"] for ev in busy)
    assert end_us == pytest.approx(report["modeled_time_s"] * 1e6, rel=1e-6)


def test_run_of_a_shape_only_program_points_at_report_trace(shape_only_llama: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = invoke("run", str(shape_only_llama), "--trace", str(out))
    assert_user_error(r, "shape-only", "maiac report", "--trace")
    assert not out.exists()


def test_report_trace_and_html_must_differ(shape_only_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "same"
    r = invoke("report", str(shape_only_llama), "--trace", str(out), "--html", str(out))
    assert_user_error(r, "same file")
