"""The numpy machine model runs hand-built programs and matches numpy references."""

from __future__ import annotations

import math
import time

import ml_dtypes
import numpy as np
import pytest

from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.interpreter import _machine, run_program
from maiac.runtime.interpreter_fns import erf
from maiac.runtime.isa import Dma, Gather, Loop, MatMul, Vec
from maiac.runtime.program import ProgramBuilder

RNG = np.random.default_rng(0)


def tiled_matmul_program(m: int = 8, k: int = 16, n: int = 8, bk: int = 4):
    """C = A @ B on a 2x2 tile grid, each tile a (m/2, n/2) block, K loop accumulating."""
    pb = ProgramBuilder()
    bm, bn = m // 2, n // 2
    a = pb.input("a", "f32", (m, k))
    b = pb.input("b", "f32", (k, n))
    c = pb.output("c", "f32", (m, n))
    zero = pb.const("zero", np.zeros(1, np.float32))
    ta, tb, tc = (pb.alloc(x, "tsram", s * 4) for x, s in
                  (("ta", bm * bk), ("tb", bk * bn), ("tc", bm * bn)))
    grid = (2, 2)
    acc = pb.access
    pb.emit(
        # broadcast DMA: one zero element to every element of every tile's accumulator
        Dma(acc(zero, "f32", (bm, bn), (0, 0), tile_strides=(0, 0)), acc(tc, "f32", (bm, bn)),
            grid=grid, op="mm"),
        Loop((k // bk,), [
            Dma(acc(a, "f32", (bm, bk), (k, 1), tile_strides=(bm * k, 0), loop_strides=(bk,)),
                acc(ta, "f32", (bm, bk)), grid=grid, op="mm"),
            Dma(acc(b, "f32", (bk, bn), (n, 1), tile_strides=(0, bn), loop_strides=(bk * n,)),
                acc(tb, "f32", (bk, bn)), grid=grid, queue=1, op="mm"),
            MatMul(acc(ta, "f32", (bm, bk)), acc(tb, "f32", (bk, bn)), acc(tc, "f32", (bm, bn)),
                   accumulate=True, grid=grid, op="mm"),
        ], op="mm"),
        Dma(acc(tc, "f32", (bm, bn)), acc(c, "f32", (bm, bn), (n, 1), tile_strides=(bm * n, bn)),
            grid=grid, op="mm"),
    )
    return pb.build()


def test_tiled_matmul_with_k_loop_and_accumulate():
    prog = tiled_matmul_program()
    a = RNG.standard_normal((8, 16)).astype(np.float32)
    b = RNG.standard_normal((16, 8)).astype(np.float32)
    out = run_program(prog, {"a": a, "b": b})
    np.testing.assert_allclose(out["c"], a @ b, rtol=1e-5, atol=1e-5)
    # a second run on the cached machine gives fresh results
    out2 = run_program(prog, {"a": b.T.copy(), "b": a.T.copy()})
    np.testing.assert_allclose(out2["c"], b.T @ a.T, rtol=1e-5, atol=1e-5)


def test_broadcast_dma_to_every_tile():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (8,))
    y = pb.output("y", "f32", (4, 8))
    t = pb.alloc("t", "tsram", 32)
    pb.emit(Dma(pb.access(x, "f32", (8,), tile_strides=(0,)), pb.access(t, "f32", (8,)),
                grid=(4,)),
            Dma(pb.access(t, "f32", (8,)), pb.access(y, "f32", (8,), tile_strides=(8,)),
                grid=(4,)))
    x_in = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(run_program(pb.build(), {"x": x_in})["y"], np.tile(x_in, (4, 1)))


def test_transpose_via_strided_dma_and_dtype_conversion():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4, 6))
    y = pb.output("y", "bf16", (6, 4))
    t = pb.alloc("t", "tsram", 6 * 4 * 2)
    pb.emit(Dma(pb.access(x, "f32", (6, 4), (1, 6)), pb.access(t, "bf16", (6, 4))),
            Dma(pb.access(t, "bf16", (6, 4)), pb.access(y, "bf16", (6, 4))))
    x_in = RNG.standard_normal((4, 6)).astype(np.float32)
    out = run_program(pb.build(), {"x": x_in})["y"]
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out, x_in.T.astype(ml_dtypes.bfloat16))


def test_fp8_store_saturates():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4,))
    y = pb.output("y", "f8e4m3", (4,))
    pb.emit(Dma(pb.access(x, "f32", (4,)), pb.access(y, "f8e4m3", (4,))))
    out = run_program(pb.build(), {"x": np.array([1e6, -1e6, 1.0, np.nan], np.float32)})["y"]
    assert out.astype(np.float32)[:3].tolist() == [448.0, -448.0, 1.0]
    assert np.isnan(out.astype(np.float32)[3])


def gather_program():
    pb = ProgramBuilder()
    table = pb.const("table", np.arange(40, dtype=np.float32).reshape(10, 4))
    ids = pb.input("ids", "i64", (2, 3))
    out = pb.output("out", "f32", (2, 3, 4))
    ti = pb.alloc("ti", "tsram", 3 * 8)
    td = pb.alloc("td", "tsram", 3 * 4 * 4)
    acc = pb.access
    pb.emit(Dma(acc(ids, "i64", (3,), tile_strides=(3,)), acc(ti, "i64", (3,)), grid=(2,)),
            Gather(acc(table, "f32", (10, 4)), acc(ti, "i64", (3,)), acc(td, "f32", (3, 4)),
                   grid=(2,), op="embed"),
            Dma(acc(td, "f32", (3, 4)), acc(out, "f32", (3, 4), tile_strides=(12,)), grid=(2,)))
    return pb.build()


def test_gather_with_negative_indices():
    prog = gather_program()
    ids = np.array([[0, 9, -1], [3, -10, 5]], np.int64)
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(run_program(prog, {"ids": ids})["out"], table[ids])


def test_gather_out_of_range_is_a_machine_error():
    with pytest.raises(MachineError, match=r"instruction 1 \(gather, op 'embed'\).*10"):
        run_program(gather_program(), {"ids": np.array([[0, 1, 2], [3, 10, 5]])})


def test_input_checks_name_the_input():
    prog = gather_program()
    with pytest.raises(MaiacError, match="missing input 'ids'"):
        run_program(prog, {})
    with pytest.raises(MaiacError, match="unknown input 'x'"):
        run_program(prog, {"ids": np.zeros((2, 3), np.int64), "x": 1})
    with pytest.raises(MaiacError, match=r"'ids' has shape \[3\]"):
        run_program(prog, {"ids": np.zeros(3, np.int64)})
    with pytest.raises(MaiacError, match="'ids' has dtype float32"):
        run_program(prog, {"ids": np.full((2, 3), 0.5, np.float32)})
    # int32 -> i64 is lossless and accepted
    run_program(prog, {"ids": np.zeros((2, 3), np.int32)})


def test_shape_only_program_cannot_run():
    prog = gather_program()
    prog.constants.clear()
    with pytest.raises(MaiacError, match="shape-only"):
        run_program(prog, {"ids": np.zeros((2, 3), np.int64)})


def test_access_outside_memory_map_is_a_machine_error():
    prog = tiled_matmul_program()
    prog.instructions[1].body[0].src.addr += 10_000
    with pytest.raises(MachineError, match=r"instruction 1\.0 \(dma, op 'mm'\).*not inside"):
        run_program(prog, {"a": np.zeros((8, 16), np.float32), "b": np.zeros((16, 8), np.float32)})


def test_unwritten_memory_reads_as_nan():
    pb = ProgramBuilder()
    pb.input("x", "f32", (4,))
    y = pb.output("y", "f32", (4,))
    t = pb.alloc("t", "tsram", 16)
    pb.emit(Dma(pb.access(t, "f32", (4,)), pb.access(y, "f32", (4,))))
    assert np.isnan(run_program(pb.build(), {"x": np.ones(4, np.float32)})["y"]).all()


def ref_erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(float(v)) for v in x.ravel()]).reshape(x.shape)


def test_erf_matches_math_erf():
    x = np.linspace(-6, 6, 20001).astype(np.float32)
    x = np.concatenate([x, np.float32([1e-8, -1e-6, 1e-3, 0.999999, 1.0, 1.000001])])
    got = erf(x).astype(np.float64)
    want = ref_erf(x.astype(np.float64))
    assert np.max(np.abs(got - want)) < 1e-7
    small = np.abs(want) > 0
    assert np.max(np.abs(got - want)[small] / np.abs(want[small])) < 2e-7


def _np_ref(fn: str, xs: list[np.ndarray], attrs: dict) -> np.ndarray:
    f = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in xs]
    x = f[0]
    sig = 1 / (1 + np.exp(-f[0])) if f[0].dtype.kind == "f" else None
    table = {
        "copy": lambda: x, "relu": lambda: np.maximum(x, 0),
        "gelu": lambda: 0.5 * x * (1 + ref_erf(x / math.sqrt(2))),
        "gelu_tanh": lambda: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        "erf": lambda: ref_erf(x), "tanh": lambda: np.tanh(x), "sigmoid": lambda: sig,
        "silu": lambda: x * sig, "exp": lambda: np.exp(x), "log": lambda: np.log(x),
        "sqrt": lambda: np.sqrt(x), "rsqrt": lambda: 1 / np.sqrt(x),
        "reciprocal": lambda: 1 / x, "neg": lambda: -x, "abs": lambda: np.abs(x),
        "cos": lambda: np.cos(x), "sin": lambda: np.sin(x), "floor": lambda: np.floor(x),
        "ceil": lambda: np.ceil(x), "not": lambda: ~x, "isnan": lambda: np.isnan(x),
        "sign": lambda: np.sign(x),
        "where": lambda: np.where(f[0], f[1], f[2]),
        "reduce_sum": lambda: x.sum(-1, keepdims=True),
        "reduce_mean": lambda: x.mean(-1, keepdims=True),
        "reduce_max": lambda: x.max(-1, keepdims=True),
        "reduce_min": lambda: x.min(-1, keepdims=True),
        "softmax": lambda: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        "log_softmax": lambda: x - np.log(np.exp(x).sum(-1, keepdims=True)),
        "layernorm": lambda: (x - x.mean(-1, keepdims=True))
        / np.sqrt(x.var(-1, keepdims=True) + attrs["eps"]) * f[1] + f[2],
        "rmsnorm": lambda: x / np.sqrt((x * x).mean(-1, keepdims=True) + attrs["eps"]) * f[1],
    }
    if fn in table:
        return table[fn]()
    a, b = f[0], f[1]
    binary = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "pow": np.power,
        "max": np.maximum, "min": np.minimum, "equal": np.equal, "less": np.less,
        "greater": np.greater, "less_equal": np.less_equal, "greater_equal": np.greater_equal,
    }
    if fn in binary:
        return binary[fn](a, b)
    if fn == "div":
        return a / b if a.dtype.kind == "f" else np.trunc(a / b).astype(a.dtype)
    if fn == "mod":
        return np.fmod(a, b) if attrs.get("fmod") else np.mod(a, b)
    return {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[fn](a, b)


def run_vec(fn: str, xs: list[np.ndarray], dtypes: list[str], out_dtype: str,
            out_shape: tuple[int, ...], attrs: dict | None = None) -> np.ndarray:
    """Run one Vec over a (4, cols) block split row-wise over 2 tiles."""
    pb = ProgramBuilder()
    ins, tins = [], []
    for i, (x, d) in enumerate(zip(xs, dtypes, strict=True)):
        buf = pb.input(f"x{i}", d, x.shape)
        tb = pb.alloc(f"t{i}", "tsram", x.nbytes)
        bshape = (x.shape[0] // 2,) + x.shape[1:] if x.ndim == 2 else x.shape
        tstride = (math.prod(bshape),) if x.ndim == 2 else (0,)
        pb.emit(Dma(pb.access(buf, d, bshape, tile_strides=tstride), pb.access(tb, d, bshape),
                    grid=(2,)))
        tins.append(pb.access(tb, d, bshape))
        ins.append(buf)
    y = pb.output("y", out_dtype, out_shape)
    ty = pb.alloc("ty", "tsram", 4096)
    obs = (out_shape[0] // 2,) + out_shape[1:]
    pb.emit(Vec(fn, tins, pb.access(ty, out_dtype, obs), dict(attrs or {}), grid=(2,), op=fn),
            Dma(pb.access(ty, out_dtype, obs), pb.access(y, out_dtype, obs,
                                                         tile_strides=(math.prod(obs),)),
                grid=(2,)))
    return run_program(pb.build(), {f"x{i}": x for i, x in enumerate(xs)})["y"]


FLOAT_UNARY = ["copy", "relu", "gelu", "gelu_tanh", "erf", "tanh", "sigmoid", "silu", "exp",
               "log", "sqrt", "rsqrt", "reciprocal", "neg", "abs", "cos", "sin", "floor",
               "ceil", "isnan", "sign", "reduce_sum", "reduce_mean", "reduce_max",
               "reduce_min", "softmax", "log_softmax"]


@pytest.mark.parametrize("fn", FLOAT_UNARY)
def test_vec_unary_float(fn: str):
    x = RNG.standard_normal((4, 8)).astype(np.float32) * 2
    if fn in ("log", "sqrt", "rsqrt"):
        x = np.abs(x) + 0.1
    x[0, 0] = np.nan if fn == "isnan" else x[0, 0]
    out_shape = (4, 1) if fn.startswith("reduce_") else (4, 8)
    out_dtype = "bool" if fn == "isnan" else "f32"
    got = run_vec(fn, [x], ["f32"], out_dtype, out_shape)
    np.testing.assert_allclose(got.astype(np.float64), _np_ref(fn, [x], {}), rtol=2e-6,
                               atol=1e-6)


BINARY = ["add", "sub", "mul", "div", "pow", "max", "min", "mod", "equal", "less", "greater",
          "less_equal", "greater_equal"]


@pytest.mark.parametrize("fn", BINARY)
def test_vec_binary_float_with_broadcast_row(fn: str):
    a = RNG.standard_normal((4, 8)).astype(np.float32)
    b = RNG.standard_normal((8,)).astype(np.float32)  # a row broadcast against the block
    if fn == "pow":
        a = np.abs(a) + 0.5
    b[0] = a[0, 0] if fn.endswith("equal") else b[0]
    cmp = fn in ("equal", "less", "greater", "less_equal", "greater_equal")
    got = run_vec(fn, [a, b], ["f32", "f32"], "bool" if cmp else "f32", (4, 8),
                  {"fmod": 1} if fn == "mod" else None)
    want = _np_ref(fn, [a, b], {"fmod": 1} if fn == "mod" else {})
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("fn", ["add", "sub", "mul", "div", "mod", "max", "min", "neg", "abs",
                                "less", "equal", "reduce_sum"])
def test_vec_integer_arithmetic_is_exact(fn: str):
    a = RNG.integers(-1000, 1000, (4, 8)).astype(np.int64) * 10**9
    b = RNG.integers(1, 50, (4, 8)).astype(np.int64) * np.where(RNG.random((4, 8)) < .5, -1, 1)
    unary = fn in ("neg", "abs", "reduce_sum")
    xs = [a] if unary else [a, b]
    out_dtype = "bool" if fn in ("less", "equal") else "i64"
    got = run_vec(fn, xs, ["i64"] * len(xs), out_dtype, (4, 1) if fn == "reduce_sum" else (4, 8))
    want = {"neg": lambda: -a, "abs": lambda: np.abs(a),
            "reduce_sum": lambda: a.sum(-1, keepdims=True)}.get(fn, lambda: None)()
    if want is None:
        want = (np.fix(a / b).astype(np.int64) if fn == "div" else _np_ref(fn, [a, b], {}))
        if fn == "div":  # exact truncating division
            want = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fn", ["and", "or", "xor", "not"])
def test_vec_logical(fn: str):
    a = RNG.random((4, 8)) < 0.5
    b = RNG.random((4, 8)) < 0.5
    xs = [a] if fn == "not" else [a, b]
    got = run_vec(fn, xs, ["bool"] * len(xs), "bool", (4, 8))
    np.testing.assert_array_equal(got, _np_ref(fn, xs, {}))


def test_vec_where_and_norms():
    c = RNG.random((4, 8)) < 0.5
    a = RNG.standard_normal((4, 8)).astype(np.float32)
    b = RNG.standard_normal((4, 8)).astype(np.float32)
    got = run_vec("where", [c, a, b], ["bool", "f32", "f32"], "f32", (4, 8))
    np.testing.assert_array_equal(got, np.where(c, a, b))
    scale = RNG.standard_normal((8,)).astype(np.float32)
    bias = RNG.standard_normal((8,)).astype(np.float32)
    for fn, xs in (("layernorm", [a, scale, bias]), ("rmsnorm", [a, scale])):
        got = run_vec(fn, xs, ["f32"] * len(xs), "f32", (4, 8), {"eps": 1e-5})
        np.testing.assert_allclose(got, _np_ref(fn, xs, {"eps": 1e-5}), rtol=1e-5, atol=1e-5)


def test_vec_bf16_inputs_compute_in_fp32_and_round_on_store():
    a = RNG.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)
    b = RNG.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)
    got = run_vec("mul", [a, b], ["bf16", "bf16"], "bf16", (4, 8))
    want = (a.astype(np.float32) * b.astype(np.float32)).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got, want)


def test_bf16_matmul_accumulates_in_fp32():
    pb = ProgramBuilder()
    a = pb.input("a", "bf16", (16, 32))
    b = pb.input("b", "bf16", (32, 8))
    c = pb.output("c", "f32", (16, 8))
    ta, tb, tc = pb.alloc("ta", "tsram", 1024), pb.alloc("tb", "tsram", 512), pb.alloc("tc", "tsram", 512)
    acc = pb.access
    pb.emit(Dma(acc(a, "bf16", (16, 32)), acc(ta, "bf16", (16, 32))),
            Dma(acc(b, "bf16", (32, 8)), acc(tb, "bf16", (32, 8))),
            MatMul(acc(ta, "bf16", (16, 32)), acc(tb, "bf16", (32, 8)), acc(tc, "f32", (16, 8)),
                   fmt="bf16"),
            Dma(acc(tc, "f32", (16, 8)), acc(c, "f32", (16, 8))))
    av = RNG.standard_normal((16, 32)).astype(ml_dtypes.bfloat16)
    bv = RNG.standard_normal((32, 8)).astype(ml_dtypes.bfloat16)
    got = run_program(pb.build(), {"a": av, "b": bv})["c"]
    np.testing.assert_allclose(got, av.astype(np.float32) @ bv.astype(np.float32), rtol=1e-5,
                               atol=1e-5)


def test_dispatch_overhead_is_small():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (64,))
    y = pb.output("y", "f32", (64,))
    t = pb.alloc("t", "tsram", 256)
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (64,)), acc(t, "f32", (64,)), grid=(36,)))
    pb.emit(*[Vec("add", [acc(t, "f32", (64,)), acc(t, "f32", (64,))], acc(t, "f32", (64,)),
                  grid=(36,)) for _ in range(2000)])
    pb.emit(Dma(acc(t, "f32", (64,)), acc(y, "f32", (64,))))
    prog = pb.build()
    xin = np.zeros(64, np.float32)
    run_program(prog, {"x": xin})
    t0 = time.perf_counter()
    run_program(prog, {"x": xin})
    per_instr = (time.perf_counter() - t0) / 2002
    # a guard against per-instruction pathologies (re-planning, copies of the whole
    # memory), not a speed measurement: bench/interpreter.py measures dispatch cost
    assert per_instr < 1e-3, per_instr


def _machine_of(prog):
    return prog.runtime_cache["machine"]


def test_independent_single_instruction_loops_run_as_one_numpy_call():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4, 6))
    y = pb.output("y", "f32", (6, 4))
    t = pb.alloc("t", "tsram", 96)
    acc = pb.access
    pb.emit(Loop((6,), [Dma(acc(x, "f32", (4,), (6,), loop_strides=(1,)),
                            acc(t, "f32", (4,), loop_strides=(4,)))]),   # transpose, by rows
            Loop((3,), [Vec("exp", [acc(t, "f32", (8,), loop_strides=(8,))],
                            acc(t, "f32", (8,), loop_strides=(8,)))]),  # in place
            Dma(acc(t, "f32", (6, 4)), acc(y, "f32", (6, 4))))
    prog = pb.build()
    xin = RNG.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(run_program(prog, {"x": xin})["y"], np.exp(xin.T), rtol=1e-6)
    assert _machine_of(prog).vectorized_loops == 2


def test_loop_carried_dependency_keeps_iteration_order():
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (8,))
    y = pb.output("y", "f32", (8,))
    t = pb.alloc("t", "tsram", 32)
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (8,)), acc(t, "f32", (8,))),
            # t[i + 1] = t[i]: each iteration reads what the previous one wrote
            Loop((7,), [Dma(acc(t, "f32", (1,), loop_strides=(1,)),
                            acc(t, "f32", (1,), offset=1, loop_strides=(1,)))]),
            Dma(acc(t, "f32", (8,)), acc(y, "f32", (8,))))
    prog = pb.build()
    xin = np.arange(8, dtype=np.float32) + 1
    np.testing.assert_array_equal(run_program(prog, {"x": xin})["y"], np.ones(8, np.float32))
    assert _machine_of(prog).vectorized_loops == 0


def test_gelu_relative_accuracy_including_negative_tail():
    from maiac.runtime.interpreter_fns import gelu
    x = np.concatenate([np.linspace(-12, 8, 20001), [-1e-6, 1e-6, 0.0]]).astype(np.float32)
    want = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    got = gelu(x).astype(np.float64)
    nz = want != 0
    assert np.max(np.abs(got - want)[nz] / np.abs(want[nz])) < 3e-7


def test_tvp_functions_same_bytes_on_strided_views():
    """The in-place TVP functions give the bytes of a contiguous copy of their input on
    strided views too (numpy 2.4's np.negative into a strided ``out`` does not: RoPE's
    rotate-half once wrote wrong elements on a (rows, 2) view with an element stride)."""
    from maiac.runtime.interpreter_fns import FNS

    rng = np.random.default_rng(3)
    for cols in (2, 3, 8, 33):
        big = rng.standard_normal((5, 2 * cols)).astype(np.float32)
        x = big[:, ::2]  # element stride 2
        row = rng.standard_normal((5, cols)).astype(np.float32)
        for fn, args in (("rope", (row, row[::-1].copy())), ("layernorm", (row, row)),
                         ("rmsnorm", (row,)), ("softmax", ()), ("gelu_tanh", ()),
                         ("silu", ()), ("exp_sub", (row,))):
            attrs = {"eps": 1e-5}
            got = FNS[fn][1](x, *args, attrs)
            want = FNS[fn][1](np.ascontiguousarray(x), *args, attrs)
            assert got.tobytes() == np.ascontiguousarray(want).tobytes(), (fn, cols)


def test_gelu_same_bytes_as_textbook_erfc_steps():
    """``gelu``'s shortened float64 steps (Horner without a filled buffer, a subtract
    for negate-and-add, an arithmetic select, the fp32 rounding into ``out``) give the
    bytes of the textbook steps: random, tail, subnormal, infinite and NaN inputs (with
    payloads and either sign)."""
    from maiac.runtime.interpreter_fns import _ERFC_NR, gelu

    def plain(x: np.ndarray) -> np.ndarray:
        x64 = np.array(x, dtype=np.float64)
        u = np.abs(x64)
        u *= 1.0 / math.sqrt(2.0)
        t = np.multiply(u, 0.5)
        t += 1.0
        np.divide(1.0, t, out=t)
        poly = np.full_like(u, _ERFC_NR[-1])
        for c in reversed(_ERFC_NR[:-1]):
            poly *= t
            poly += c
        e = np.multiply(u, u)
        np.negative(e, out=e)
        e += poly
        np.exp(e, out=e)
        e *= t
        one = np.subtract(2.0, e, out=u)
        np.copyto(one, e, where=x64 < 0)
        np.multiply(x64, 0.5, out=x64)
        x64 *= one
        return x64.astype(np.float32)

    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 1 << 15, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([rng.standard_normal(1 << 15).astype(np.float32) * 4, bits.view(np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -3e38],
                                 np.float32)])
    with np.errstate(all="ignore"):
        want = plain(x).tobytes()
        assert gelu(x).tobytes() == want
        out = np.empty_like(x)
        gelu(x, out)
        assert out.tobytes() == want


def test_plain_run_inputs_any_layout_outputs_fresh_copies():
    """The plain run's prebuilt input views take a strided array or a list as the
    converted contiguous copy would be written; each run returns new arrays."""
    prog = gather_program()
    ids = np.array([[0, 9, -1, 7], [3, -10, 5, 2]], np.int64)[:, ::-1][:, :3]
    want = np.arange(40, dtype=np.float32).reshape(10, 4)[ids]
    first = run_program(prog, {"ids": ids})["out"]
    np.testing.assert_array_equal(first, want)
    first[...] = -1
    again = run_program(prog, {"ids": ids.tolist()})["out"]
    np.testing.assert_array_equal(again, want)
    assert not np.shares_memory(first, again)


def test_plain_run_names_the_failing_step():
    prog = gather_program()
    run_program(prog, {"ids": np.zeros((2, 3), np.int64)})
    machine = _machine(prog)

    def broken(it):
        raise ValueError("boom")
    label, _ = machine.steps[1]
    machine.steps[1] = (label, broken)
    machine.run_io.steps[1] = broken
    with pytest.raises(MachineError, match=r"instruction 1 \(gather, op 'embed'\).*boom"):
        run_program(prog, {"ids": np.zeros((2, 3), np.int64)})


def test_blocked_gelu_into_out_same_bytes():
    """A large GELU (more than two blocks) written block by block into ``out`` (in place,
    into another array, into a strided view, into a view overlapping its input shifted)
    gives the bytes of one whole-array evaluation."""
    from maiac.runtime.interpreter_fns import _BLOCK, INTO_FNS, gelu

    put = INTO_FNS["gelu"][0]
    rng = np.random.default_rng(7)
    n = 2 * _BLOCK + 1000
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    want = gelu(x).tobytes()
    out = np.empty_like(x)
    assert put(out, x, {}) is out and out.tobytes() == want
    same = x.copy()
    put(same, same, {})
    assert same.tobytes() == want
    wide = np.zeros(2 * n, np.float32)
    put(wide[::2], x, {})
    assert wide[::2].tobytes() == want and not wide[1::2].any()
    buf = np.zeros(n + 8, np.float32)
    buf[8:] = x
    put(buf[:n], buf[8:], {})  # out starts 8 elements before its input
    assert buf[:n].tobytes() == want


def test_exp_sub_masked_rows_zero_whatever_the_row_max():
    """exp(a - b) is 0 where a is -inf and b is -inf or NaN (a fully masked row), NaN
    from a NaN score, exp(a - b) elsewhere: with or without such rows in the block."""
    from maiac.runtime.interpreter_fns import _exp_sub

    a = np.array([[-np.inf, 1, np.nan], [-np.inf, -np.inf, 2], [0, 1, 2]], np.float32)
    with np.errstate(all="ignore"):
        for b0 in (-np.inf, np.nan, 3.0):
            b = np.array([[b0], [1.0], [2.0]], np.float32)
            want = np.exp(a - b)
            if not b0 > -np.inf:
                want[0, 0] = 0.0
            got = _exp_sub(a, b)
            assert got.tobytes() == want.astype(np.float32).tobytes(), b0
