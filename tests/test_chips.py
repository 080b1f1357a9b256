"""Tensor parallelism: the shard pass, collectives on the machine model, the network model,
multi-chip timing and trace, the CLI and the Ray backend."""

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
from maiac.chips import ChipGroup, compile_chips
from maiac.cli import main
from maiac.models import LLAMA_TINY, LlamaConfig, llama_decoder, mlp
from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.hazards import check_program
from maiac.runtime.multichip import collectives_of, group_trace
from maiac.runtime.network import Network, allgather_rows, fit_allgather
from maiac.runtime.program import load_program, save_program

DATA = Path(__file__).parent / "data"
# 8 query heads over 4 KV heads: N = 2, 4 split KV heads, N = 8 shares each KV head by two chips
CFG = LlamaConfig("tp-test", 128, 1, 8, 4, 256, 256)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


@cache
def _model(mode: str) -> onnx.ModelProto:
    return llama_decoder(CFG, mode=mode, seq=8, context=16, kv_outputs=True)


@cache
def _group(mode: str, chips: int) -> ChipGroup:
    return compile_chips(_model(mode), chips)


@pytest.mark.parametrize(("mode", "chips"), [("prefill", 2), ("prefill", 4), ("prefill", 8),
                                             ("decode", 2), ("decode", 8)])
def test_llama_matches_onnxruntime_and_one_chip(mode: str, chips: int) -> None:
    model = _model(mode)
    feeds = seeded_feeds(model)
    ref = _ort(model, feeds)
    one = maiac.compile(model).run(feeds)
    group = _group(mode, chips)
    out = group.run(feeds)
    assert set(out) == set(ref)
    for name in ref:
        assert out[name].shape == ref[name].shape, name
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(out[name], one[name], rtol=1e-4, atol=2e-5, err_msg=name)
    shard = group.programs[1].meta["shard"]
    # Megatron: two all-reduces per layer, one all-gather (logits), nothing else
    kinds = [c.collective for _, c in collectives_of(group.programs[1])]
    assert kinds.count("all_reduce") == 2 * CFG.layers and kinds.count("all_gather") == 1
    assert shard["gathers"] == 1
    if mode == "decode":  # the KV cache stays split by heads: in, out, and on each chip
        assert set(shard["inputs"]) == {f"past_{k}_{i}" for k in ("key", "value")
                                        for i in range(CFG.layers)}
        local = {s.name: s.shape for s in group.programs[1].inputs}
        assert local["past_key_0"][1] == max(1, CFG.kv_heads // chips)


def test_weights_are_split() -> None:
    one = maiac.compile(_model("prefill")).report()["weight_bytes"]
    per_chip = [r.weight_bytes for r in _group("prefill", 4).timing()]
    # everything but embeddings and norms is cut in four
    assert all(w < 0.45 * one for w in per_chip)


def test_exported_gpt2_and_llama() -> None:
    for name in ("gpt2_dynamo", "llama_dynamo"):
        feeds = dict(np.load(DATA / f"{name}.inputs.npz"))
        ref = dict(np.load(DATA / f"{name}.ref.npz"))
        out = compile_chips(str(DATA / f"{name}.onnx"), 2).run(feeds)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=name)


def test_gpt2_fused_qkv_is_split_by_heads() -> None:
    """GPT-2's c_attn (one QKV matmul read three times by the attention) is split by heads:
    no all-gather of the QKV output, two all-reduces per layer, the logits' all-gather
    (collective bytes per chip 65536 -> 32768 on this export)."""
    feeds = dict(np.load(DATA / "gpt2_dynamo.inputs.npz"))
    ref = dict(np.load(DATA / "gpt2_dynamo.ref.npz"))
    group = compile_chips(str(DATA / "gpt2_dynamo.onnx"), 4,
                          shapes={k: v.shape for k, v in feeds.items()})
    kinds = [c.collective for _, c in collectives_of(group.programs[3])]
    layers = 2
    assert kinds.count("all_reduce") == 2 * layers and kinds.count("all_gather") == 1
    assert group.programs[3].meta["shard"]["gathers"] == 1
    assert sum(c["bytes"] for c in group.report()["collectives"]) == 32768
    out = group.run(feeds)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_uneven_shapes_fall_back_to_replication() -> None:
    """3 chips divide neither the heads, the FFN nor the vocabulary: every op runs whole
    on every chip (still exact), and the program says nothing was split."""
    model = llama_decoder(LLAMA_TINY, seq=8, layers=1)
    feeds = seeded_feeds(model)
    group = compile_chips(model, 3)
    np.testing.assert_allclose(group.run(feeds)["logits"], _ort(model, feeds)["logits"],
                               rtol=1e-4, atol=2e-5)
    assert group.programs[0].meta["shard"]["sharded_ops"] == 0
    assert not collectives_of(group.programs[0])


def test_mlp_row_parallel_bias_added_once() -> None:
    model = mlp(batch=4, width=64, layers=2)
    feeds = seeded_feeds(model)
    out = compile_chips(model, 4).run(feeds)["y"]
    np.testing.assert_allclose(out, _ort(model, feeds)["y"], rtol=1e-4, atol=2e-5)


def test_bad_chip_counts() -> None:
    model = mlp(batch=2, width=32, layers=1)
    for bad in (0, 6145):
        with pytest.raises(MaiacError, match="chip"):
            compile_chips(model, bad)


# --------------------------------------------------------------------------- machine model

def test_collective_needs_a_group_and_roundtrips(tmp_path: Path) -> None:
    prog = _group("prefill", 2).programs[0]
    path = tmp_path / "chip0.maia"
    save_program(prog, path)
    back = load_program(path)
    assert [c for _, c in collectives_of(back)] == [c for _, c in collectives_of(prog)]
    with pytest.raises(MachineError, match="multi-chip run"):
        maiac.driver.CompiledModel(back).run(seeded_feeds(_model("prefill")))


def test_hazard_checker_covers_collectives() -> None:
    prog = _group("prefill", 2).programs[1]
    idx = [i for i, _ in collectives_of(prog)]
    # the instruction right after the first all-reduce reads its result: drop its wait
    after = next(prog.instructions[i] for i in range(idx[0] + 1, len(prog.instructions))
                 if "net" in (prog.instructions[i].waits or {}))
    bad = dataclasses.replace(prog, instructions=list(prog.instructions))
    bad.instructions[bad.instructions.index(after)] = dataclasses.replace(after, waits={})
    check_program(prog)
    with pytest.raises(MachineError, match="collective|all_reduce"):
        check_program(bad)


def test_group_timing_and_trace() -> None:
    group = _group("decode", 4)
    r = group.report()
    assert r["chips"] == 4 and len(r["per_chip"]) == 4
    assert 0 < r["collective_share"] < 1
    assert r["modeled_time_s"] == max(c["modeled_time_s"] for c in r["per_chip"])
    assert {c["algorithm"] for c in r["collectives"]} == {"direct"}  # small decode messages
    trace = group_trace(group.timing())
    pids = {e["pid"] for e in trace["traceEvents"]}
    assert pids == {1, 2, 3, 4}
    tracks = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert "net" in tracks
    # ranks 1..N-1 differ only in their slice: timing from ranks 0-1 is the same
    quick = compile_chips(_model("decode"), 4, ranks="timing")
    assert len(quick.programs) == 2 and quick.timing_only
    assert quick.report()["modeled_time_s"] == pytest.approx(r["modeled_time_s"], rel=1e-9)
    with pytest.raises(MaiacError, match="timing only"):
        quick.run(seeded_feeds(_model("decode")))


def test_network_fit_reproduces_the_paper_row() -> None:
    net = Network()
    fitted = fit_allgather()
    assert fitted.collective_overhead_s == pytest.approx(net.collective_overhead_s, rel=1e-3)
    assert fitted.link_efficiency == pytest.approx(net.link_efficiency, rel=1e-3)
    rows = allgather_rows(net)
    assert rows[0]["algorithm"] == "direct" and rows[-1]["algorithm"] == "ring"
    assert rows[0]["fraction_of_sol"] == pytest.approx(0.78, abs=0.005)
    assert rows[-1]["fraction_of_sol"] == pytest.approx(0.94, abs=0.005)
    for n in (2, 4, 8, 16, 32, 64):  # no modeled rate beats the wires
        assert net.ring_bw(n) <= net.chip_bw
    # bigger messages never get cheaper; more chips never make a ring faster per byte
    sizes = [1 << k for k in range(10, 31, 4)]
    times = [net.cost("all_reduce", s, 8)[0] for s in sizes]
    assert times == sorted(times)


def test_network_parameters_have_provenance() -> None:
    for p in Network.describe():
        assert p["status"] in ("public", "fitted", "assumed") and p["source"], p["name"]
    with pytest.raises(MaiacError, match="unknown network parameter"):
        Network.from_json({"warp_speed": 1})


# --------------------------------------------------------------------------- CLI and Ray

def test_cli_compile_run_report(tmp_path: Path) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(llama_decoder(LLAMA_TINY, seq=8, layers=1), model_path)
    runner = CliRunner()
    res = runner.invoke(main, ["compile", str(model_path), "-o", str(tmp_path / "m.maia"),
                               "--chips", "2"])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in tmp_path.glob("m.chip*.maia"))
    assert files == ["m.chip0.maia", "m.chip1.maia"]
    res = runner.invoke(main, ["run", str(tmp_path / "m.chip1.maia"), "-o",
                               str(tmp_path / "out.npz"), "--trace", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "out.npz")["logits"].shape == (1, 8, 256)
    assert len({e["pid"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"]}) == 2
    res = runner.invoke(main, ["report", str(tmp_path / "m.chip0.maia"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["chips"] == 2
    res = runner.invoke(main, ["report", str(tmp_path / "m.chip0.maia")])
    assert "collective share" in res.output and "all_reduce" in res.output
    (tmp_path / "m.chip1.maia").unlink()
    res = runner.invoke(main, ["report", str(tmp_path / "m.chip0.maia")])
    assert res.exit_code == 2 and "missing m.chip1.maia" in res.output


def test_ray_backend_matches_local() -> None:
    pytest.importorskip("ray")
    model = _model("decode")
    feeds = seeded_feeds(model)
    group = _group("decode", 2)
    local = group.run(feeds)
    remote = group.run(feeds, backend="ray")
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k])


def test_perf_sweeps_chip_counts(tmp_path: Path) -> None:
    from maiac import perf

    opts = perf.PerfOptions(batch=[1], context=[64], quant=["fp8"], kv_cache=["bf16"],
                            chips=[1, 2], jobs=1, cache_dir=str(tmp_path))
    one, two = perf.sweep("llama-tiny", opts)["points"]
    assert (one["chips"], two["chips"]) == (1, 2)
    assert two["kv_update"] == "in-place"  # shard splits the in-place cache by heads too
    assert two["speedup"] == pytest.approx(one["tpot_s"] / two["tpot_s"])
    assert two["scaling_efficiency"] == pytest.approx(two["speedup"] / 2)
    assert 0 < two["collective_share"] < 1 and one["collective_share"] == 0
    assert two["weight_bytes"] < one["weight_bytes"]
    assert two["kv_cache_bytes_per_chip"] == one["kv_cache_bytes"] / 2


def test_in_place_kv_cache_is_split_by_heads() -> None:
    """A decode step with the in-place cache (maia.cache_write, passes/kv_cache_inplace.py):
    each chip writes and reads its KV heads only; the same logits as one chip."""
    from maiac import models
    from maiac.kv_cache import POSITION_INPUT, cache_in_place

    model = models.kv_decoder(seed=2, max_positions=64)
    cache_in_place(model)
    cap, shapes = 16, {"input_ids": (1, 1), "position_ids": (1, 1),
                       "attention_mask": (1, 17), POSITION_INPUT: (1,)}
    rng = np.random.default_rng(0)
    mask = np.zeros((1, cap + 1), np.int64)
    mask[:, :6] = 1
    feeds = {"input_ids": np.array([[7]]), "position_ids": np.array([[5]]),
             POSITION_INPUT: np.array([5]), "attention_mask": mask}
    for i in range(2):
        for kind in ("key", "value"):
            shapes[f"past_key_values.{i}.{kind}"] = (1, 2, cap, 16)
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (1, 2, cap, 16)).astype(np.float32)
    one = maiac.compile(model, shapes=shapes).run(feeds)
    group = compile_chips(model, 2, shapes=shapes)
    cuts = group.programs[1].meta["shard"]["inputs"]
    assert cuts["past_key_values.0.key"] == {"axis": 1, "start": 1, "stop": 2, "size": 2}
    kinds = [c.collective for _, c in collectives_of(group.programs[1])]
    assert kinds == ["all_reduce"] * 4 + ["all_gather"]  # attention ran on the slice
    np.testing.assert_allclose(group.run(feeds)["logits"], one["logits"], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(("given", "env", "joined"), [
    (None, None, "local"), (None, "10.0.0.1:6379", "10.0.0.1:6379"),
    ("10.0.0.2:6379", "10.0.0.1:6379", "10.0.0.2:6379")])
def test_ray_session_never_joins_a_stale_cluster_file(monkeypatch: pytest.MonkeyPatch,
                                                      given: str | None, env: str | None,
                                                      joined: str) -> None:
    """No address means $RAY_ADDRESS or a new local instance: ray.init(None) would join the
    latest cluster any process started (/tmp/ray/ray_current_cluster), maybe gone since."""
    from maiac import ray_backend

    calls: list[str] = []

    class FakeRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, address: str, **_: object) -> None:
            calls.append(address)

        def shutdown(self) -> None:
            pass

    monkeypatch.setattr(ray_backend, "_ray", FakeRay)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with ray_backend._session(given) as (_, started):
        assert started
    assert calls == [joined]
