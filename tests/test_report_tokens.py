"""tokens/s, TTFT and TPOT in `maiac report` for any decoder: detected from the graph
(KV-cache inputs; input_ids [batch, 1] is a decode step) or given (--tokens-per-run)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from maiac.decoder_props import decoder_props
from tests.test_cli import invoke

DATA = Path(__file__).parent / "data"
TOOLCHAIN = DATA / "toolchain"


def _report(prog: Path, *extra: str) -> dict:
    r = invoke("report", str(prog), "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", ["optimum_llama_kv", "genai_llama_fp32"])
def test_decode_step_detected_from_the_graph(name: str, tmp_path: Path) -> None:
    prog = tmp_path / f"{name}.maia"
    r = invoke("compile", str(TOOLCHAIN / f"{name}.onnx"), "--inputs",
               str(TOOLCHAIN / f"{name}.inputs.npz"), "-o", str(prog))
    assert r.exit_code == 0, r.output
    rep = _report(prog)
    # the stored decode step: input_ids [2, 1] -> one token for each of 2 sequences
    assert rep["mode"] == "decode" and rep["tokens"] == 2
    assert rep["tokens_source"] == "graph"
    assert rep["tokens_per_s"] == pytest.approx(2 / rep["modeled_time_s"])
    assert rep["tpot_s"] == rep["modeled_time_s"] and "ttft_s" not in rep
    text = invoke("report", str(prog)).stdout
    assert "decode, 2 tokens per call, from graph" in text and "TPOT" in text


def test_tokens_per_run_given(tmp_path: Path) -> None:
    prog = tmp_path / "gpt2.maia"
    assert invoke("compile", str(DATA / "gpt2_dynamo.onnx"), "-o", str(prog)).exit_code == 0
    plain = _report(prog)
    assert "tokens_per_s" not in plain  # a decoder without a cache: not guessed
    given = _report(prog, "--tokens-per-run", "128")
    assert given["tokens"] == 128 and given["tokens_source"] == "--tokens-per-run"
    assert given["tokens_per_s"] == pytest.approx(128 / given["modeled_time_s"])
    bad = invoke("report", str(prog), "--tokens-per-run", "0")  # a click usage error
    assert bad.exit_code == 2 and "--tokens-per-run" in bad.output


def test_decoder_props_of_graphs() -> None:
    kv = onnx.load(str(TOOLCHAIN / "optimum_llama_kv.onnx"), load_external_data=False)
    assert decoder_props(kv, {"input_ids": (2, 1)}) == {
        "mode": "decode", "tokens": 2, "tokens_source": "graph"}
    assert decoder_props(kv, {"input_ids": (2, 16)})["mode"] == "prefill"
    assert decoder_props(kv, {"input_ids": (2, 16)})["tokens"] == 32
    assert decoder_props(kv, {}) == {}
    plain = onnx.load(str(DATA / "gpt2_dynamo.onnx"), load_external_data=False)
    assert decoder_props(plain, {"input_ids": (1, 1)}) == {}


def test_decode_step_of_a_chip_group(tmp_path: Path) -> None:
    name = "optimum_llama_kv"
    r = invoke("compile", str(TOOLCHAIN / f"{name}.onnx"), "--inputs",
               str(TOOLCHAIN / f"{name}.inputs.npz"), "--chips", "2", "-o",
               str(tmp_path / "g.maia"))
    assert r.exit_code == 0, r.output
    rep = _report(tmp_path / "g.chip0.maia")
    assert rep["chips"] == 2 and rep["mode"] == "decode" and rep["tokens"] == 2
    # the group's step is its slowest chip's: that is the TPOT
    assert rep["tpot_s"] == rep["modeled_time_s"]
    assert rep["tokens_per_s"] == pytest.approx(2 / rep["modeled_time_s"])
