"""CLI conventions performance engineers expect: `compile -p`, `passes --json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maiac.driver import default_pipeline
from maiac.passes.registry import PASSES
from tests.test_cli import assert_user_error, invoke, tiny_model


def test_p_is_an_alias_of_pipeline_in_compile(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    long_out, short_out = tmp_path / "long.maia", tmp_path / "short.maia"
    r = invoke("compile", str(model), "-o", str(long_out), "--pipeline", default_pipeline())
    assert r.exit_code == 0, r.output
    r = invoke("compile", str(model), "-o", str(short_out), "-p", default_pipeline())
    assert r.exit_code == 0, r.output
    assert short_out.read_bytes() == long_out.read_bytes()
    # -p really selects the pipeline: an unknown pass is refused through it too
    assert_user_error(invoke("compile", str(model), "-o", str(tmp_path / "x.maia"),
                             "-p", "no-such-pass"), "no-such-pass")


def test_passes_json_lists_every_pass_with_options() -> None:
    r = invoke("passes", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == sorted(PASSES)
    assert all(isinstance(row["description"], str) and row["description"] for row in rows)
    with_options = [row for row in rows if row["options"]]
    assert with_options, "some pass has options"
    for row in with_options:
        for opt in row["options"]:
            assert {"name", "type", "default"} == opt.keys()
            assert "_" not in opt["name"]  # spelled as in the pipeline syntax
    # the text listing shows the same passes
    text = invoke("passes").stdout
    assert all(row["name"] in text for row in rows)


def test_passes_pipeline_json_is_the_default_pipeline() -> None:
    r = invoke("passes", "--pipeline", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"quant": None, "pipeline": default_pipeline()}


def test_python_api_load_inputs_outputs_verify_version(tmp_path: Path) -> None:
    """maiac.load gives what maiac.compile gives (same class, same outputs), with
    .inputs/.outputs like onnxruntime's get_inputs(); run checks names and dtypes;
    maiac.verify and maiac.__version__ are at top level."""
    import importlib.metadata

    import numpy as np
    import pytest

    import maiac
    from maiac.runtime.errors import MaiacError

    model = tiny_model(tmp_path / "tiny.onnx")
    compiled = maiac.compile(str(model))
    compiled.save(tmp_path / "tiny.maia")
    loaded = maiac.load(tmp_path / "tiny.maia")
    assert type(loaded) is type(compiled)
    assert [(i.name, i.shape, i.dtype) for i in loaded.inputs] == [("x", (2, 8), "f32")]
    assert [(o.name, o.shape, o.dtype) for o in loaded.outputs] == [("y", (2, 8), "f32")]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run({"x": x})["y"], compiled.run({"x": x})["y"])
    with pytest.raises(MaiacError):
        loaded.run({"x": x.astype(np.float64) * 1e300})  # overflows f32: not silently inf
    with pytest.raises(MaiacError):
        loaded.run({"nope": x})
    result = maiac.verify(str(model))
    assert result["ok"] and result["outputs"][0]["name"] == "y"
    import maiac.verify  # the submodule replaces the attribute: still callable

    assert maiac.verify(str(model))["ok"]
    assert maiac.__version__ == importlib.metadata.version("maiac")


def test_opt_refuses_weight_passes_without_weights_and_prints_ir_and_timing(
        tmp_path: Path) -> None:
    """IR text from --emit holds weight handles, not bytes: quantize on it is refused
    (it silently quantized placeholders), unless --shape-only; --print-ir-after-all and
    --pass-timing report each pass on stderr; -o - is stdout."""
    from maiac.ir.resources import scoped_store

    model = tiny_model(tmp_path / "tiny.onnx")
    ir = tmp_path / "tiny.mlir"
    with scoped_store():  # the weights go with the compile, as in another process
        r = invoke("compile", str(model), "--emit", "maia", "-o", str(ir))
    assert r.exit_code == 0, r.output
    r = invoke("opt", str(ir), "-p", "quantize{spec=mxfp4}")
    assert_user_error(r, "needs the weights' values")
    r = invoke("opt", str(ir), "-p", "quantize{spec=mxfp4}", "--shape-only", "-o", "-")
    assert r.exit_code == 0, r.output
    assert "maia.matmul" in r.stdout
    r = invoke("opt", str(ir), "-p", "canonicalize,dce", "--print-ir-after-all",
               "--pass-timing")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("// -----// IR Dump After") == 2
    assert "canonicalize" in r.stderr and "total" in r.stderr
    assert "IR Dump" not in r.stdout and "builtin.module" in r.stdout


def test_compile_and_run_json(tmp_path: Path) -> None:
    """compile --json and run --json print one JSON document on stdout (nothing else)."""
    model = tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny.maia"
    r = invoke("compile", str(model), "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["output"] == str(out) and doc["inputs"] == [
        {"name": "x", "shape": [2, 8], "dtype": "f32"}]
    assert doc["weight_bytes"] > 0 and doc["instructions"] > 0
    assert {p["name"] for p in doc["passes"]} >= {"tile", "plan-memory"}
    r = invoke("compile", str(model), "--emit", "maia", "--json")
    assert r.exit_code == 2 and "--json describes one written program" in r.stderr
    r = invoke("run", str(out), "--json", "-o", str(tmp_path / "o.npz"),
               "--trace", str(tmp_path / "t.json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["random_inputs"] and doc["outputs"][0]["name"] == "y"
    assert doc["outputs"][0]["shape"] == [2, 8] and doc["outputs"][0]["nonfinite"] == 0
    assert doc["written"] == [str(tmp_path / "o.npz"), str(tmp_path / "t.json")]
    assert doc["modeled_time_s"] > 0


def test_run_json_on_chip_groups(tmp_path: Path) -> None:
    """run --json prints its document for a --chips group and a --pp pipeline too."""
    import onnx

    from maiac.models import LLAMA_TINY, llama_decoder

    model = tmp_path / "m.onnx"
    onnx.save(llama_decoder(LLAMA_TINY, seq=8, layers=2), model)
    for flags, first, chips in ((["--chips", "2"], "tp.chip0.maia", 2),
                                (["--pp", "2"], "pp.stage0.maia", 2)):
        out = tmp_path / first.replace(".chip0", "").replace(".stage0", "")
        r = invoke("compile", str(model), "-o", str(out), *flags)
        assert r.exit_code == 0, r.output
        npz = tmp_path / f"{first}.out.npz"
        r = invoke("run", str(tmp_path / first), "--json", "-o", str(npz))
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)  # the whole stdout is one JSON document
        assert doc["chips"] == chips and doc["backend"] == "local" and doc["random_inputs"]
        assert doc["inputs"][0]["name"] == "input_ids" and doc["inputs"][0]["shape"] == [1, 8]
        assert doc["outputs"][0]["shape"] == [1, 8, 256] and doc["written"] == [str(npz)]


def test_paper_preset_takes_a_given_context(tmp_path: Path) -> None:
    """--preset paper with --context runs that point, and gives no ratio to the paper's
    figure (another point is not comparable); the table says so."""
    r = invoke("perf", "--preset", "paper", "--context", "64", "--jobs", "1", "--cache-dir",
               str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (point,) = doc["points"]
    assert (point["context"], point["quant"], point["batch"]) == (64, "bf16", 1)
    assert doc["paper"]["ratio"] is None and doc["paper"]["modeled_tokens_per_s"] > 0
    r = invoke("perf", "--preset", "paper", "--context", "64", "--jobs", "1", "--cache-dir",
               str(tmp_path))
    assert "not the paper's point: no ratio" in r.stdout


def test_an_unreachable_ray_address_is_one_quick_error(tmp_path: Path) -> None:
    """ray.init retries an address where nothing listens for minutes: maiac asks first."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    program = tmp_path / "m.maia"
    assert invoke("compile", str(tiny_model(tmp_path / "m.onnx")), "-o",
                  str(program)).exit_code == 0
    r = invoke("run", str(program), "--backend", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert_user_error(r, f"--ray-address '127.0.0.1:{port}': no Ray cluster answers there")
    assert_user_error(invoke("run", str(program), "--ray-address", "host:port"),
                      "expected HOST:PORT")


def test_paper_comparison_gives_the_implied_batch_or_why_batch_one_cannot_reach_it() -> None:
    """--preset paper: the published 2,434 tokens/s is a batched figure (its batch is not
    stated). Swept over batches, the output gives the batch where the modeled tokens/s
    reaches it (linear between the two around it); at batch 1 alone, the ceiling the
    weights' bytes put on one sequence at the HBM peak, which is below it."""
    from maiac.perf import PAPER, paper_comparison
    from maiac.perf_cli import _paper_lines

    def point(batch: int, tps: float) -> dict[str, Any]:
        return {"batch": batch, "context": PAPER["context"], "quant": PAPER["quant"],
                "kv_cache": PAPER["kv_cache"], "tokens_per_s": tps, "weight_bytes": 16.3e9}

    swept = paper_comparison([point(1, 287.0), point(8, 1934.0), point(16, 2934.0)], PAPER,
                             7e12)
    assert swept["ratio"] == pytest.approx(287.0 / 2434.0)
    assert swept["implied_batch"] == pytest.approx(8 + 8 * 500 / 1000)
    assert "reached at batch 12.0" in "\n".join(_paper_lines(swept))
    one = paper_comparison([point(1, 287.0)], PAPER, 7e12)
    assert one["implied_batch"] is None
    assert one["batch1_ceiling_tokens_per_s"] == pytest.approx(7e12 / 16.3e9)
    text = "\n".join(_paper_lines(one))
    assert "16.3 GB of weights" in text and "7.0 TB/s" in text and "429 tokens/s" in text
    assert "batched one" in text and "--batch 1,8,16,32" in text
    short = paper_comparison([point(1, 287.0), point(16, 2053.0)], PAPER, 7e12)
    assert short["implied_batch"] is None and "--batch 16,32" in _paper_lines(short)[1]
    other = paper_comparison([{**point(1, 900.0), "context": 64}], PAPER, 7e12)
    assert other["ratio"] is None and other["swept_batches"] == []
    assert "no ratio" in _paper_lines(other)[0] and len(_paper_lines(other)) == 1
