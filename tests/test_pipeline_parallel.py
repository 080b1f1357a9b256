"""Pipeline parallelism (--pp): the stage split, send/recv on the machine model, the
pipeline's functional run against onnxruntime and one chip, its timing, files and CLI."""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from feeds import seeded_feeds

import maiac
from maiac.cli import main
from maiac.models import LlamaConfig, llama_decoder, mlp
from maiac.pipeline import PipelineGroup, compile_pipeline, load_pipeline
from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.hazards import check_program
from maiac.runtime.network import Network
from maiac.runtime.pipeline import check_pipeline, p2p_of, pipeline_summary

# 3 layers: 2 and 4 stages do not divide them (balanced by weight bytes instead)
CFG = LlamaConfig("pp-test", 128, 3, 8, 4, 256, 256)


@cache
def _model(mode: str) -> onnx.ModelProto:
    return llama_decoder(CFG, mode=mode, seq=8, context=16, kv_outputs=True)


@cache
def _pipe(mode: str, stages: int, chips: int = 1) -> PipelineGroup:
    return compile_pipeline(_model(mode), stages, chips=chips)


@cache
def _reference(mode: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = _model(mode)
    feeds = seeded_feeds(model)
    sess = ort.InferenceSession(model.SerializeToString())
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return ref, maiac.compile(model).run(feeds)


@pytest.mark.parametrize(("mode", "stages", "chips"), [("prefill", 2, 1), ("prefill", 4, 1),
                                                       ("decode", 2, 1), ("decode", 2, 2)])
def test_pipeline_matches_onnxruntime_and_one_chip(mode: str, stages: int, chips: int) -> None:
    ref, one = _reference(mode)
    group = _pipe(mode, stages, chips)
    assert len(group.stages) == stages and all(len(s) == chips for s in group.stages)
    out = group.run(seeded_feeds(_model(mode)))
    assert list(out) == list(ref)  # every output once, in the model's order
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(out[name], one[name], rtol=1e-4, atol=2e-5, err_msg=name)


def test_ray_backend_runs_a_pipeline_as_locally() -> None:
    """--pp 2 --chips 2 on Ray: sends/recvs between stages and the stages' own all-reduces
    give the same bytes as the local run."""
    pytest.importorskip("ray")
    feeds = seeded_feeds(_model("decode"))
    group = _pipe("decode", 2, 2)
    local = group.run(feeds)
    remote = group.run(feeds, backend="ray")
    assert list(remote) == list(local)
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k], err_msg=k)


def test_stages_split_layers_and_send_the_residual_stream() -> None:
    plans = [s[0].meta["pipeline"] for s in _pipe("prefill", 2).stages]
    # 3 layers + lm_head over 2 stages by weight bytes: layers 0-1 | layer 2 + head
    assert [p["layers"] for p in plans] == [[0, 1], [2, 2]]
    hidden = 8 * CFG.hidden * 4
    assert plans[0]["sends"] == [{"peer": 1, "bytes": hidden, "value": plans[0]["sends"][0]["value"]}]
    assert [r["bytes"] for r in plans[1]["recvs"]] == [hidden] and plans[0]["recvs"] == []
    assert plans[0]["cut_bytes"] == [hidden]
    # the KV cache of each layer in and out of its own stage only
    dec = [s[0].meta["pipeline"] for s in _pipe("decode", 2).stages]
    assert {"past_key_0", "past_value_0", "past_key_1", "past_value_1"} <= set(dec[0]["inputs"])
    assert "past_key_2" in dec[1]["inputs"] and "past_key_2" not in dec[0]["inputs"]
    assert "past_key_0" not in dec[1]["inputs"]
    assert "present_key_0" in dec[0]["outputs"] and "logits" in dec[1]["outputs"]
    # 4 stages over 3 layers: one layer is cut between its attention and its MLP, where
    # only the residual stream crosses
    plans4 = [s[0].meta["pipeline"] for s in _pipe("prefill", 4).stages]
    assert plans4[0]["cut_bytes"] == [hidden] * 3
    weights = [p["weight_bytes"] for p in plans4]
    assert max(weights) < 1.5 * sum(weights) / 4


def test_send_recv_instructions_and_hazards() -> None:
    group = _pipe("prefill", 2, 2)  # chips 0,1 = stage 0; 2,3 = stage 1
    check_pipeline(group.stages)
    for s, programs in enumerate(group.stages):
        for r, prog in enumerate(programs):
            check_program(prog)
            for c in p2p_of(prog):
                assert c.chips == 4 and c.rank == 2 * s + r
                assert c.peer == (2 + r if c.collective == "send" else r)
    prog = group.stages[1][0]
    recv = next(i for i, ins in enumerate(prog.instructions)
                if getattr(ins, "collective", "") == "recv")
    # the first reader of the received block waits for the network engine: drop the wait
    after = next(ins for ins in prog.instructions[recv + 1:] if "net" in (ins.waits or {}))
    bad = dataclasses.replace(prog, instructions=list(prog.instructions))
    bad.instructions[bad.instructions.index(after)] = dataclasses.replace(after, waits={})
    with pytest.raises(MachineError):
        check_program(bad)
    # a stage alone cannot run: its recv needs the previous stage
    with pytest.raises(MachineError, match="pipeline run"):
        maiac.driver.CompiledModel(_pipe("prefill", 2).stages[1][0]).run({})
    # a pipeline whose sends and receives do not pair is refused
    with pytest.raises(MaiacError, match="do not match"):
        check_pipeline([group.stages[0]])


def test_pipeline_timing() -> None:
    group = _pipe("decode", 2)
    r = group.report(micro_batches=8)
    p = r["pipeline"]
    times = [row["modeled_time_s"] for row in r["per_stage"]]
    assert p["stage_time_s"] == times and all(t > 0 for t in times)
    assert p["total_s"] == pytest.approx(sum(times) + 7 * max(times))
    assert p["bubble_fraction"] == pytest.approx(1 - 8 * sum(times) / (2 * p["total_s"]))
    assert r["modeled_time_s"] == p["total_s"] and r["chips"] == 2
    # the transfer is on the network engine of both stages, costed as a link in one tray
    net = Network()
    hidden = CFG.hidden * 4
    want, path = net.p2p_cost(hidden, 0, 1, 2)
    assert path == "link"
    assert r["per_stage"][0]["p2p_time_s"] == pytest.approx(want)
    assert net.p2p_cost(hidden, 3, 4, 8)[1] == "switched"
    assert net.p2p_cost(hidden, 3, 4, 8)[0] > want
    # one micro-batch: all fill, the bubble is (P-1)/P of balanced stages
    one = pipeline_summary([1.0, 1.0], 1)
    assert one["total_s"] == 2.0 and one["bubble_fraction"] == pytest.approx(0.5)
    many = pipeline_summary([1.0, 1.0, 1.0, 1.0], 16)
    assert many["bubble_fraction"] == pytest.approx(3 / 19)
    with pytest.raises(MaiacError, match="micro-batches"):
        pipeline_summary([1.0], 0)
    trace = json.loads(json.dumps(_trace(group)))
    assert {e["pid"] for e in trace["traceEvents"]} == {1, 2}


def _trace(group: PipelineGroup) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.json"
        group.write_trace(path)
        return json.loads(path.read_text())


def test_bad_stage_counts() -> None:
    model = mlp(batch=2, width=32, layers=1)
    with pytest.raises(MaiacError, match="only .* ops"):
        compile_pipeline(model, 64)
    with pytest.raises(MaiacError, match="--pp"):
        compile_pipeline(model, 0)
    with pytest.raises(MaiacError, match="--micro-batches"):
        maiac.compile(model, pp=2, micro_batches=0)


def test_save_load_and_cli(tmp_path: Path) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(_model("prefill"), model_path)
    runner = CliRunner()
    res = runner.invoke(main, ["compile", str(model_path), "-o", str(tmp_path / "m.maia"),
                               "--pp", "2", "--micro-batches", "4"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("m.stage*.maia")) == ["m.stage0.maia",
                                                                     "m.stage1.maia"]
    back = load_pipeline(tmp_path / "m.stage1.maia")
    assert back is not None and back.micro_batches == 4 and len(back.stages) == 2
    feeds = seeded_feeds(_model("prefill"))
    np.savez(tmp_path / "in.npz", **feeds)
    res = runner.invoke(main, ["run", str(tmp_path / "m.stage1.maia"), "--inputs",
                               str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")])
    assert res.exit_code == 0, res.output
    ref, _ = _reference("prefill")
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], ref["logits"],
                               rtol=1e-4, atol=2e-5)
    res = runner.invoke(main, ["report", str(tmp_path / "m.stage0.maia"), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["pipeline"]["micro_batches"] == 4 and len(r["per_stage"]) == 2
    res = runner.invoke(main, ["report", str(tmp_path / "m.stage0.maia")])
    assert "bubble" in res.output and "stage 1" in res.output
    (tmp_path / "m.stage1.maia").unlink()
    res = runner.invoke(main, ["report", str(tmp_path / "m.stage0.maia")])
    assert res.exit_code == 2 and "missing m.stage1.maia" in res.output


def test_perf_pipeline_points(tmp_path: Path) -> None:
    from maiac import perf
    from maiac.perf_pipeline import split_layers

    opts = perf.PerfOptions(batch=[1], context=[64], quant=["fp8"], kv_cache=["bf16"],
                            chips=[1], pp=[1, 2], micro_batches=4, jobs=1,
                            cache_dir=str(tmp_path))
    one, two = perf.sweep("llama-tiny", opts)["points"]
    assert "pp" not in one and two["pp"] == 2 and two["chips"] == 2
    assert sum(two["layers_per_stage"]) == 2 and two["micro_batches"] == 4
    times = two["stage_time_s"]
    assert two["tpot_s"] == pytest.approx(max(sum(times), 4 * max(times)))
    assert two["tokens_per_s"] == pytest.approx(4 / two["tpot_s"])
    assert two["bubble_fraction"] == pytest.approx(1 - 4 * sum(times) / (2 * two["tpot_s"]))
    assert two["p2p_time_s"] > 0 and two["hbm_per_chip_bytes"] < one["weight_bytes"] \
        + one["kv_cache_bytes"] * 4
    # the last stage also holds the head: it gets fewer layers when the head is heavy
    assert split_layers(10, 1.0, 2.0, 2) == [6, 4]
    assert split_layers(8, 1.0, 0.0, 4) == [2, 2, 2, 2]
    with pytest.raises(MaiacError, match="only 2 layers"):
        split_layers(2, 1.0, 0.0, 3)
    with pytest.raises(MaiacError, match="--pp"):
        perf.PerfOptions(pp=[0]).check()
