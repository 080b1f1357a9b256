"""`maiac report --html` and the annotated text/JSON reports, on a real GPT-2 export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maiac.report_html import figures, roofline_points
from maiac.report_view import _timeline, annotate, format_report
from maiac.runtime.memory_use import memory_use
from maiac.runtime.program import load_program
from maiac.runtime.target import Target
from maiac.runtime.timing import simulate
from tests.test_cli import invoke

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def gpt2_mxfp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report_html") / "gpt2.maia"
    r = invoke("compile", str(DATA / "gpt2_dynamo.onnx"), "-o", str(out), "--quant", "mxfp4")
    assert r.exit_code == 0, r.output
    return out


def test_json_and_text_carry_model_quant_and_formats(gpt2_mxfp4: Path) -> None:
    rep = json.loads(invoke("report", str(gpt2_mxfp4), "--json").stdout)
    assert rep["model"].endswith("gpt2_dynamo.onnx") and rep["quant"] == "mxfp4"
    fmts = {o["kind"]: o["format"] for o in rep["ops"]}
    assert fmts["matmul"] == "fp4"  # mxfp4 weights: the TTU multiplies in fp4
    assert fmts["attention"] == "bf16"  # attention stays bf16 under a narrow spec
    assert fmts["norm"] == "f32"
    assert all(o["format"] for o in rep["ops"])
    text = invoke("report", str(gpt2_mxfp4), "--top", "0").stdout
    assert "quant spec         mxfp4" in text and "gpt2_dynamo.onnx" in text
    first_words = {ln.split()[0] for ln in text.splitlines() if ln.strip()}
    assert {o["name"] for o in rep["ops"]} <= first_words


def test_text_report_keeps_long_op_names() -> None:
    name = "node_scaled_dot_product_attention_layers_0_self_attn"  # 52 characters
    r = {"target": "maia200", "modeled_time_s": 1e-6,
         "ops": [{"name": name, "kind": "attention", "time_s": 1e-6, "flops": 1.0,
                  "hbm_bytes": 0.0, "bound": "compute", "format": "bf16"}]}
    line = next(ln for ln in format_report(r).splitlines() if ln.startswith("node_"))
    assert line.split()[:3] == [name, "attention", "bf16"]


def _finite_points_under_roofs(r: dict, target: dict) -> None:
    bw = target["hbm_bw"]
    top = max(target["ttu_flops"].values())
    for p in roofline_points(r, target):
        if p["x"] is not None:
            assert p["y"] <= min(top, bw * p["x"]) * (1 + 1e-9), p["op"]["name"]


def test_html_page(gpt2_mxfp4: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    r = invoke("report", str(gpt2_mxfp4), "--html", str(page))
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # self-contained: plotly.js inlined, nothing loaded from elsewhere
    assert "<script src" not in text and "<link" not in text and 'src="http' not in text
    assert text.count("Plotly.newPlot(") == 3  # roofline, timeline, memory
    from maiac.runtime.target import get_target

    efficiency = f"hbm_efficiency = {get_target().hbm_efficiency:g}"  # the fitted value
    for key in ("tests/data/gpt2_dynamo.onnx", "mxfp4", "maia200", efficiency):
        assert key in text, key
    rep = json.loads(invoke("report", str(gpt2_mxfp4), "--json").stdout)
    for o in rep["ops"]:  # full names in the sortable table
        assert f"<td>{o['name']}</td>" in text
    assert "maiacSort(this)" in text and 'id="ops-filter"' in text


def test_figures(gpt2_mxfp4: Path) -> None:
    program = load_program(gpt2_mxfp4, keep_constants=False)
    rep = simulate(program)
    r = annotate(rep.to_json(), program.meta, rep.events)
    use = memory_use(program, rep.events, rep.modeled_time_s)
    figs = figures(r, _timeline(rep, r), program.target, use)
    assert set(figs) == {"roofline", "timeline", "memory"}
    roof = figs["roofline"][0]
    points = [t for t in roof.data if t.mode == "markers"]
    # every op is drawn (those without HBM bytes or FLOPs on the plot's edges)
    assert sum(len(t.x) for t in points) == len(r["ops"])
    assert {t.name for t in points} == {f"ops in {o['format']}" for o in r["ops"]}
    roofs = [t.name for t in roof.data if t.mode == "lines"]
    assert any(n.startswith("fp4 roof") for n in roofs)
    assert any(n.startswith("fp6/fp8 roof") for n in roofs)  # equal peaks share a line
    assert any(n.startswith("bf16 roof") for n in roofs)
    assert roof.layout.xaxis.type == "log" and roof.layout.yaxis.type == "log"
    assert roof.layout.xaxis.title.text and roof.layout.yaxis.title.text
    _finite_points_under_roofs(r, program.target)
    timeline = figs["timeline"][0]
    assert {t.name for t in timeline.data} >= {"dma", "matmul", "vec"}  # legend by kind
    assert timeline.layout.xaxis.rangeslider.visible  # zoom
    engines = {y for t in timeline.data for y in t.y}
    assert engines == {e["name"] for e in r["engines"] if e["busy_s"] > 0}
    colours = [t.marker.color for t in timeline.data]
    assert len(set(colours)) == len(colours)  # no two event kinds look alike


def test_timeline_rows_in_reading_order() -> None:
    """Chip by chip, DMA queues by number, then TTU, TVP, network; kinds each a colour."""
    from maiac.report_html import _KIND_COLOURS, _timeline_figure

    names = ["chip1/ttu", "chip0/dma2", "chip0/net", "chip0/tvp", "chip0/dma10",
             "chip0/dma1", "chip0/ttu", "chip1/dma0"]
    kinds = [*_KIND_COLOURS, "other"]
    events = [{"engine": e, "name": "op", "start_s": 0.0, "dur_s": 1e-6,
               "kind": kinds[i % len(kinds)]} for i, e in enumerate(names * 2)]
    fig, rows = _timeline_figure(events)
    assert rows == len(names)
    top_down = list(reversed(fig.layout.yaxis.categoryarray))
    assert top_down == ["chip0/dma1", "chip0/dma2", "chip0/dma10", "chip0/ttu", "chip0/tvp",
                        "chip0/net", "chip1/dma0", "chip1/ttu"]
    colours = [t.marker.color for t in fig.data]
    assert len(set(colours)) == len(colours) == len(set(kinds))


def test_memory_over_time(gpt2_mxfp4: Path) -> None:
    program = load_program(gpt2_mxfp4, keep_constants=False)
    rep = simulate(program)
    use = memory_use(program, rep.events, rep.modeled_time_s)
    for lv, u in use.items():
        assert (u.times[1:] >= u.times[:-1]).all() and u.times[-1] == rep.modeled_time_s
        high = max((b.addr + b.nbytes for b in program.buffers if b.level == lv), default=0)
        assert 0 <= u.bytes.min() and u.peak <= high, lv  # a union of bytes, never more
        resident = sum(b.nbytes for b in program.buffers
                       if b.level == lv and b.kind in ("const", "input"))
        assert u.bytes.min() >= resident, lv
        # the capacity line is the planner's: CSRAM of all clusters, TSRAM per tile
        assert u.capacity == Target.from_json(program.target).capacity(lv), lv
        assert u.peak <= u.capacity, lv
    # activations come and go in CSRAM and TSRAM: the curve is not flat
    assert use["csram"].peak > use["csram"].bytes.min()
    assert use["tsram"].peak > use["tsram"].bytes[0]
    outputs = sum(b.nbytes for b in program.buffers if b.level == "hbm" and b.kind == "output")
    assert use["hbm"].bytes[-1] >= outputs


def test_roofline_edges_are_marked() -> None:
    target = {"hbm_bw": 1e12, "ttu_flops": {"bf16": 1e15}, "tvp_flops": 1e13}
    r = {"ops": [{"name": "a", "time_s": 1e-6, "flops": 1e6, "hbm_bytes": 1e3},
                 {"name": "sram_only", "time_s": 1e-6, "flops": 1e6, "hbm_bytes": 0.0},
                 {"name": "copy", "time_s": 1e-6, "flops": 0.0, "hbm_bytes": 1e3}]}
    pts = {p["op"]["name"]: p for p in roofline_points(r, target)}
    assert pts["a"]["edge"] == "" and math.isclose(pts["a"]["x"], 1e3)
    assert pts["sram_only"]["edge"] == "no HBM traffic"
    assert pts["sram_only"]["plot_x"] >= 10 * 1e15 / 1e12  # right of every ridge point
    assert pts["copy"]["edge"] == "no FLOPs"
    assert pts["copy"]["plot_y"] < pts["a"]["plot_y"]


def test_group_page_has_a_timeline_row_per_chip_and_engine(tmp_path: Path) -> None:
    prog = tmp_path / "g.maia"
    r = invoke("compile", str(DATA / "gpt2_dynamo.onnx"), "--chips", "2", "-o", str(prog))
    assert r.exit_code == 0, r.output
    page = tmp_path / "g.html"
    r = invoke("report", str(tmp_path / "g.chip0.maia"), "--html", str(page))
    assert r.exit_code == 0, r.output
    text = page.read_text()
    for row in ("chip0/dma0", "chip1/dma0", "chip0/net", "chip1/ttu"):
        # the timeline's y categories (plotly's JSON writes "/" as \u002f)
        assert f'"{row}"'.replace("/", "\\u002f") in text, row
    assert "<th>chips</th><td>2</td>" in text
