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
            # named like every other slice's: the tail's totals and its op's format
            assert a["flops"] == a["loop_flops"] and a["hbm_bytes"] == a["loop_hbm_bytes"]
            assert a["format"], ev
        else:
            assert {"instr", "bytes", "hbm_bytes", "flops", "format"} <= a.keys()
            # a Sync barrier (runtime/barriers.py: waits past the 2-wait limit) moves no data
            assert a["format"] or (ev["cat"] == "sync" and a["bytes"] == 0), ev
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


@pytest.fixture(scope="module")
def gpt2_trace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trace of a real GPT-2 export (mxfp4, asynchronous: engines wait on semaphores)."""
    work = tmp_path_factory.mktemp("trace_gpt2")
    prog, out = work / "gpt2.maia", work / "t.json"
    r = invoke("compile", str(Path(__file__).parent / "data" / "gpt2_dynamo.onnx"), "-o",
               str(prog), "--quant", "mxfp4")
    assert r.exit_code == 0, r.output
    assert invoke("report", str(prog), "--trace", str(out)).exit_code == 0
    return json.loads(out.read_text())


def test_trace_is_valid_trace_event_json(gpt2_trace: dict, shape_only_llama: Path,
                                         tmp_path: Path) -> None:
    from maiac.runtime.trace import validate_trace

    assert validate_trace(gpt2_trace) == []
    out = tmp_path / "llama.json"
    assert invoke("report", str(shape_only_llama), "--trace", str(out)).exit_code == 0
    assert validate_trace(json.loads(out.read_text())) == []


def test_trace_flows_from_dma_to_the_waiting_instruction(gpt2_trace: dict) -> None:
    events = gpt2_trace["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and starts.keys() == ends.keys()  # every flow has a start and an end
    pairs = {(tracks[starts[i]["tid"]], tracks[ends[i]["tid"]]) for i in starts}
    assert ("dma0", "ttu") in pairs or any(a.startswith("dma") and b == "ttu"
                                           for a, b in pairs)  # data in -> matmul waits
    assert any(a == "ttu" and b in ("tvp", "dma0", "dma1", "dma2", "dma3") for a, b in pairs)
    slices = [e for e in events if e["ph"] == "X"]
    for i, s in starts.items():  # each end is the start of the slice that waited
        f = ends[i]
        assert s["ts"] < f["ts"]
        assert any(x["tid"] == f["tid"] and x["ts"] == f["ts"] for x in slices)


def test_trace_counts_sram_in_use(gpt2_trace: dict) -> None:
    counters = [e for e in gpt2_trace["traceEvents"] if e["ph"] == "C"]
    names = {e["name"] for e in counters}
    assert {"CSRAM in use (bytes)", "TSRAM in use per tile (bytes)"} <= names
    for name in names:
        ts = [e["ts"] for e in counters if e["name"] == name]
        assert ts == sorted(ts) and len(ts) > 2, name
        values = [e["args"]["bytes"] for e in counters if e["name"] == name]
        assert min(values) >= 0 and max(values) > min(values) or name.startswith("HBM")


def test_validate_trace_finds_broken_traces() -> None:
    from maiac.runtime.trace import validate_trace

    x = {"name": "op", "ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 1.0, "args": {}}
    ok = {"traceEvents": [x, {"name": "w", "cat": "wait", "ph": "s", "id": 1, "pid": 1,
                              "tid": 1, "ts": 0.5, "bp": "e"},
                          dict(x, tid=2, ts=2.0),
                          {"name": "w", "cat": "wait", "ph": "f", "id": 1, "pid": 1,
                           "tid": 2, "ts": 2.0, "bp": "e"}]}
    assert validate_trace(ok) == []
    no_end = {"traceEvents": ok["traceEvents"][:3]}
    assert any("needs a start and an end" in p for p in validate_trace(no_end))
    outside = {"traceEvents": ok["traceEvents"][:3] + [dict(ok["traceEvents"][3], ts=5.0)]}
    assert any("in no slice" in p for p in validate_trace(outside))
    counters = {"traceEvents": [{"name": "c", "ph": "C", "pid": 1, "tid": 0, "ts": t,
                                 "args": {"bytes": 1}} for t in (0.0, 2.0, 1.0)]}
    assert any("before the previous" in p for p in validate_trace(counters))
    assert any("dur" in p for p in validate_trace({"traceEvents": [dict(x, dur=-1)]}))
    assert any("no name" in p for p in validate_trace({"traceEvents": [dict(x, name="")]}))


def test_group_trace_has_a_process_per_chip() -> None:
    from maiac.chips import compile_chips
    from maiac.runtime.multichip import group_trace
    from maiac.runtime.trace import validate_trace

    group = compile_chips(models.llama_decoder(models.LLAMA_TINY, mode="decode", context=16,
                                               kv_outputs=True), 2)
    trace = group_trace(group.timing())
    assert validate_trace(trace) == []
    procs = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["name"] == "process_name"}
    assert procs.keys() == {1, 2} and all(f"chip {p - 1}" in n for p, n in procs.items())
    flow_ids = [e["id"] for e in trace["traceEvents"] if e["ph"] == "s"]
    assert flow_ids and len(flow_ids) == len(set(flow_ids))
    counters = {(e["pid"], e["name"]) for e in trace["traceEvents"] if e["ph"] == "C"}
    assert {p for p, _ in counters} == {1, 2}
