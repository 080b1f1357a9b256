"""The quantize pass end to end: packed weights in HBM, TTU decode, TVP quantize,
calibration, verify --quant, and golden tests against onnxruntime QDQ graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import maiac
import maiac.models as M
from maiac.calibrate import calibrate
from maiac.cli import main
from maiac.runtime import formats as F
from maiac.runtime import isa
from maiac.runtime.errors import MaiacError
from maiac.runtime.quant_ops import decode_operand, payload_bytes, quantize_rows
from maiac.verify import cosine, top1_agreement

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WEIGHT_FORMATS = ["mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "nvfp4",
                  "fp8e4m3", "fp8e5m2", "bf16"]


def linear_model(k: int = 64, n: int = 48, m: int = 8, seed: int = 0,
                 weight: np.ndarray | None = None) -> onnx.ModelProto:
    """y = x[m, k] @ W[k, n] with a constant W."""
    w = weight if weight is not None else \
        np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")
    graph = helper.make_graph(
        [node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weight_of(model: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(model.graph.initializer[0])


def all_instrs(instrs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for ins in instrs:
        out.extend(all_instrs(ins.body) if isinstance(ins, isa.Loop) else [ins])
    return out


def matmuls(prog: maiac.CompiledModel) -> list[isa.MatMul]:
    return [i for i in all_instrs(prog.program.instructions) if isinstance(i, isa.MatMul)]


# ---------------------------------------------------------------- decode is exact

@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_machine_matmul_decode_equals_dequantize(fmt: str) -> None:
    """eye(K) @ W through the TTU gives exactly formats.dequantize(quantize(W))."""
    k, n = 64, 48
    model = linear_model(k, n, m=k)
    w = weight_of(model)
    prog = maiac.compile(model, quant=f"w={fmt}")
    got = prog.run({"x": np.eye(k, dtype=np.float32)})["y"]
    kw: dict[str, Any] = {"axis": 0}
    if fmt.startswith("fp8"):
        kw = {"axis": 1, "granularity": "channel"}
    expect = F.dequantize(F.quantize(w, fmt, **kw))
    assert np.array_equal(got, expect)
    mms = matmuls(prog)
    if fmt != "bf16":
        assert all(mm.b_fmt == fmt for mm in mms)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6e2m3", "mxfp8e4m3", "nvfp4"])
def test_activation_rows_round_trip_bit_exact(fmt: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32) * 5
    ts = 0.004 if fmt == "nvfp4" else None
    rows = quantize_rows(x, {"fmt": fmt, "tensor_scale": ts})
    pb = payload_bytes(fmt, 64)
    got = decode_operand(rows[..., :pb], fmt, 64, rows[..., pb:], -1, ts)
    ref = F.dequantize(F.quantize(x, fmt, axis=-1, tensor_scale=ts))
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("spec", ["mxfp8", "mxfp4", "mxfp6", "w4a8", "mxfp8,scale=rceil"])
def test_weight_and_activation_match_fake_quantization(spec: str) -> None:
    """TVP-quantized activations x TTU-decoded weights = fake-quant numpy, to fp32 sums."""
    model = linear_model(64, 48, m=8)
    w = weight_of(model)
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    prog = maiac.compile(model, quant=spec)
    got = prog.run({"x": x})["y"]
    q = maiac.passes.quant_spec.parse_quant_spec(spec).default
    ref = F.fake_quantize(x, q.a, axis=-1, scale_mode=q.scale_mode) @ \
        F.fake_quantize(w, q.w, axis=0, scale_mode=q.scale_mode)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    vec_fns = {i.fn for i in all_instrs(prog.program.instructions) if isinstance(i, isa.Vec)}
    assert "quantize" in vec_fns


# ---------------------------------------------------------------- bytes and timing

@pytest.fixture(scope="module")
def gpt() -> onnx.ModelProto:
    return M.transformer(layers=2, seq=16, d_model=64, vocab=128)


@pytest.fixture(scope="module")
def gpt_ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 128, (1, 16))


@pytest.fixture(scope="module")
def gpt_fp32(gpt: onnx.ModelProto, gpt_ids: np.ndarray) -> tuple[Any, np.ndarray]:
    prog = maiac.compile(gpt)
    return prog, prog.run({"input_ids": gpt_ids})["logits"]


def test_weight_bytes_shrink(gpt: onnx.ModelProto, gpt_fp32: tuple[Any, np.ndarray]) -> None:
    fp32 = gpt_fp32[0].report()
    q4 = maiac.compile(gpt, quant="w=mxfp4")
    rep = q4.report()
    assert rep["weight_bytes"] < 0.3 * fp32["weight_bytes"]
    # each quantized weight: packed payload (K*N/2 bytes) + one E8M0 byte per 32 along K
    consts = {b.name: b for b in q4.program.buffers if b.kind == "const"}
    fc = next(b for n, b in consts.items() if "mlp.fc" in n and n.endswith(".w.mxfp4"))
    assert len(q4.program.constants[fc.name]) == 64 * 256 // 2
    sc = next(b for n, b in consts.items() if "mlp.fc" in n and n.endswith("w_scales"))
    assert len(q4.program.constants[sc.name]) == F.qtensor_nbytes((64, 256), "mxfp4",
                                                                   axis=0) - 64 * 256 // 2
    # weight DMAs move packed bytes (u8)
    dmas = [i for i in all_instrs(q4.program.instructions) if isinstance(i, isa.Dma)
            and i.src.level == fc.level and i.src.addr >= fc.addr
            and i.src.addr < fc.addr + fc.nbytes]
    assert dmas and all(d.src.dtype == "u8" for d in dmas)


def test_ttu_runs_at_the_format_peak(gpt: onnx.ModelProto) -> None:
    busy = {}
    for spec in (None, "bf16", "mxfp8", "mxfp4"):
        rep = maiac.compile(gpt, quant=spec).report()
        busy[spec] = next(e["busy_s"] for e in rep["engines"] if e["name"] == "ttu")
    assert busy["mxfp4"] < busy["mxfp8"] < busy["bf16"] < busy[None]


@pytest.mark.parametrize(("spec", "min_cos"), [
    ("bf16", 0.9999), ("fp8", 0.99), ("mxfp8", 0.99), ("mxfp6", 0.99), ("w4a8", 0.93),
    ("nvfp4", 0.93), ("mxfp4", 0.9), ("w=mxfp4", 0.93), ("mxfp4,scale=rceil", 0.9),
])
def test_formats_end_to_end_on_a_small_transformer(
        gpt: onnx.ModelProto, gpt_ids: np.ndarray, gpt_fp32: tuple[Any, np.ndarray],
        spec: str, min_cos: float) -> None:
    out = maiac.compile(gpt, quant=spec).run({"input_ids": gpt_ids})["logits"]
    assert np.isfinite(out).all()
    assert cosine(out, gpt_fp32[1]) >= min_cos
    assert top1_agreement(out, gpt_fp32[1]) >= (0.4 if min_cos < 0.99 else 0.6)


def test_overrides_keep_layers_in_fp32(gpt: onnx.ModelProto) -> None:
    prog = maiac.compile(gpt, quant="mxfp4;h.0.*=none;logits=mxfp8")
    by_op = {mm.op: mm for mm in matmuls(prog)}
    assert by_op["h.0.mlp.fc/MatMul_46"].b_fmt == ""
    assert by_op["h.1.mlp.fc/MatMul_104"].b_fmt == "mxfp4"
    assert by_op["logits"].b_fmt == "mxfp8e4m3" and by_op["logits"].a_fmt == "mxfp8e4m3"
    # attention's activation x activation matmuls stay fp32
    weights = ("proj", "mlp", "logits")
    assert all(not mm.b_fmt and not mm.a_fmt for op, mm in by_op.items()
               if not any(w in op for w in weights))


def test_bad_spec_is_a_one_line_error(gpt: onnx.ModelProto) -> None:
    with pytest.raises(MaiacError, match="unknown preset 'mxfp5'"):
        maiac.compile(gpt, quant="mxfp5")


# ---------------------------------------------------------------- calibration

def test_calibration_produces_scales(tmp_path: Path) -> None:
    model = M.mlp(batch=4, width=64, layers=2)
    x = np.random.default_rng(3).standard_normal((5, 4, 64)).astype(np.float32)  # 5 samples
    np.savez(tmp_path / "calib.npz", x=x)
    amax = calibrate(model, tmp_path / "calib.npz")
    names = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert set(names) <= set(amax) and all(v > 0 for v in amax.values())
    first = next(n for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    assert amax[first.name] > 0
    pct = calibrate(model, tmp_path / "calib.npz", method="percentile", percentile=50)
    assert all(pct[k] < amax[k] for k in amax)
    prog = maiac.compile(model, quant="fp8", calib=str(tmp_path / "calib.npz"))
    mms = matmuls(prog)
    assert mms and all(mm.a_fmt == "fp8e4m3" and mm.a_tensor_scale for mm in mms)
    scales = {mm.op: mm.a_tensor_scale for mm in mms}
    for name, s in scales.items():
        assert s == pytest.approx(amax[name] / 448, rel=1e-6)
    out = prog.run({"x": x[0]})["y"]
    ref = maiac.compile(model).run({"x": x[0]})["y"]
    assert cosine(out, ref) > 0.99


# ---------------------------------------------------------------- verify --quant

def test_verify_quant_json_contract(tmp_path: Path) -> None:
    path = tmp_path / "gpt.onnx"
    onnx.save(M.transformer(layers=1, seq=8, d_model=64, vocab=64), path)
    r = CliRunner().invoke(main, ["verify", str(path), "--quant", "w4a8", "--json"])
    assert r.exit_code in (0, 1), r.output
    res = json.loads(r.stdout)
    for key in ("ok", "model", "quant", "outputs", "layers", "compile_s", "run_s",
                "onnxruntime_s"):
        assert key in res
    assert res["quant"] == "w4a8"
    out = res["outputs"][0]
    for key in ("name", "shape", "max_abs_err", "max_rel_err", "cosine", "top1_agreement",
                "mean_abs_err"):
        assert key in out
    assert out["name"] == "logits" and 0 <= out["top1_agreement"] <= 1
    assert len(res["layers"]) == 7  # q, k, v, o, fc, proj, lm_head
    for lay in res["layers"]:
        assert set(lay) >= {"name", "cosine", "max_rel_err"} and 0.8 < lay["cosine"] <= 1


# ---------------------------------------------------------------- golden: onnxruntime QDQ

def _qdq_model(model: onnx.ModelProto, codes: np.ndarray, elem: int, scale: np.ndarray,
               opset: int, dims: tuple[int, ...], **attrs: Any) -> onnx.ModelProto:
    """``model`` with W replaced by DequantizeLinear(codes, scale)."""
    w = helper.make_tensor("Wq", elem, dims, vals=codes.tobytes(), raw=True)
    dq = helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["W"], **attrs)
    g = model.graph
    graph = helper.make_graph([dq, *g.node], "qdq", list(g.input), list(g.output),
                              [w, numpy_helper.from_array(scale.astype(np.float32), "Ws")])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out.ir_version = 10
    return out


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    except Exception as err:  # the installed CPU provider lacks this QDQ form
        pytest.skip(f"onnxruntime cannot run this QDQ graph: {str(err).splitlines()[0]}")


@pytest.mark.parametrize("fmt", ["fp8e4m3", "mxfp8e4m3", "mxfp4"])
def test_golden_weight_only_vs_onnxruntime_qdq(fmt: str) -> None:
    """maiac's w=FMT output equals onnxruntime running DequantizeLinear on the same codes:
    fp8 per channel (opset 19), MX fp8 as blocked DQ with 2^X scales (opset 21), FP4 as
    FLOAT4E2M1 blocked DQ (opset 23; skipped where the CPU provider lacks it)."""
    k, n = 64, 48
    model = linear_model(k, n, m=8)
    w = weight_of(model)
    x = np.random.default_rng(4).standard_normal((8, k)).astype(np.float32)
    f = F.get_format(fmt)
    if fmt.startswith("fp8"):
        q = F.quantize(w, fmt, axis=1, granularity="channel")
        qdq = _qdq_model(model, q.payload.reshape(k, n), TensorProto.FLOAT8E4M3FN,
                         q.scales.reshape(n), 19, (k, n), axis=1)
    else:
        q = F.quantize(w, fmt, axis=0)
        elem = {8: TensorProto.FLOAT8E4M3FN, 4: TensorProto.FLOAT4E2M1}[f.bits]
        qdq = _qdq_model(model, q.payload, elem, F.e8m0_to_float(q.scales),
                         23 if f.bits == 4 else 21, (k, n), axis=0, block_size=f.block_size)
    ref = _ort(qdq, {"x": x})
    got = maiac.compile(model, quant=f"w={fmt}").run({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_nonfinite_values_are_encoded_and_reported_alike() -> None:
    """NaN/Inf are encoded the same way at compile time (weights: a warning) and on the
    machine (activations: counted), and verify reports the count."""
    w = weight_of(linear_model(k=64, n=48, m=8)).copy()
    w[3, 5] = np.nan
    model = linear_model(k=64, n=48, m=8, weight=w)
    with pytest.warns(UserWarning, match="1 non-finite value"):
        prog = maiac.compile(model, quant="mxfp8")
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    x[1, 2], x[4, 40] = np.inf, -np.inf
    out = next(iter(prog.run({"x": x}).values()))
    # counted per quantize instruction that met one (a row quantized once per N block)
    n_seen = prog.last_run_stats["nonfinite_quantized"]
    assert n_seen >= 2 and n_seen % 2 == 0
    assert np.isnan(out[:, 5]).all()  # the weight's NaN block poisons its column
    assert np.isnan(out[1]).all() and np.isnan(out[4]).all()  # a NaN-scaled row block
    from maiac.verify import format_table, verify
    res = verify(linear_model(k=64, n=48, m=8), quant="mxfp8", inputs={"x": x}, layers=False)
    assert res["nonfinite_quantized"] == n_seen
    assert f"quantized {n_seen} non-finite" in format_table(res)
