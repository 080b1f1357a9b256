"""Fuzzing the untrusted-input contract (docs/security.md) with hypothesis.

Malformed ONNX graphs (random ops, attributes, shapes, initializers, external data) and
mutated `.maia` files (manifest fields replaced or deleted, blobs and zip bytes damaged)
go through compile, run and report in-process. The only assertion is the contract: each
ends in success or a ``MaiacError`` (exit 2), never another exception, and memory stays
bounded. CI runs a fixed (derandomized) set of examples in well under a minute;
``MAIAC_FUZZ_EXAMPLES=N`` runs N random examples per strategy for a longer hunt.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import tempfile
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from maia_files import small_program, write_maia
from onnx import TensorProto, helper

from maiac.runtime import limits
from maiac.runtime.errors import MaiacError
from maiac.runtime.program import load_program, save_program

EXAMPLES = int(os.environ.get("MAIAC_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES,
                database=None, suppress_health_check=list(HealthCheck))
MEMORY_BOUND = 256 << 20  # --max-memory during the fuzz run
PEAK_BOUND = 512 << 20  # python + numpy allocations of one example (tracemalloc)


@pytest.fixture(autouse=True, scope="module")
def bounded_memory():
    limits.set_max_memory(MEMORY_BOUND)
    old = limits.MAX_RUN_STEPS
    limits.MAX_RUN_STEPS = 1 << 14  # keeps a hostile-but-legal run short here
    yield
    limits.MAX_RUN_STEPS = old
    limits.set_max_memory(None)


def contract(fn: Any) -> str:
    """Run ``fn``; 'ok' or 'error' (a MaiacError); anything else fails the test. The
    tracemalloc peak of the call must stay under ``PEAK_BOUND``."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        outcome = "ok"
    except MaiacError:
        outcome = "error"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"peak {peak / 2**20:.0f} MiB"
    return outcome


def _run_everything(path: Path) -> None:
    """load, report (timing model), run with seeded random inputs: what a user would do."""
    from maiac.inputs import random_inputs_for_specs
    from maiac.runtime.interpreter import run_program
    from maiac.runtime.timing import simulate

    program = load_program(path)
    simulate(program)
    if (program.meta or {}).get("shape_only"):
        return
    ranges = (program.meta or {}).get("input_ranges") or {}
    run_program(program, random_inputs_for_specs(program.inputs, 0, ranges))


# ----------------------------------------------------------------------------- .maia


def _base_files() -> dict[str, tuple[dict[str, Any], dict[str, bytes]]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_program(small_program(), Path(tmp) / "small.maia")
        import maiac
        from maiac import models

        compiled = maiac.compile(models.transformer(layers=1, d_model=32, heads=2, vocab=32,
                                                    seq=4))
        compiled.save(Path(tmp) / "tfm.maia")
        for name in ("small", "tfm"):
            with zipfile.ZipFile(Path(tmp) / f"{name}.maia") as zf:
                members = {n: zf.read(n) for n in zf.namelist()}
            out[name] = (json.loads(members.pop("manifest.json")), members)
    return out


BASES = _base_files()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (dict keys, list indices), the value's own first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            out += _paths(v, (*prefix, i))
    return out


PATHS = {name: _paths(m)[1:] for name, (m, _) in BASES.items()}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(["", "f32", "tsram", "hbm", "loop", "x" * 300]),
    st.integers(-3, 70), st.sampled_from([-1, 0, 2**31, 2**40, 2**63, 10**30, -(2**62)]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["kind", "trips", "body", "shape", "addr", "level", "x"]), c, max_size=4),
    max_leaves=8)


def _set(root: Any, path: tuple, value: Any, delete: bool) -> None:
    parent = root
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated_maia(draw: Any) -> tuple[str, Any, dict[str, bytes], bytes | None]:
    name = draw(st.sampled_from(sorted(BASES)))
    manifest, members = copy.deepcopy(BASES[name][0]), dict(BASES[name][1])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "delete", "scale", "blob"]))
        path = draw(st.sampled_from(PATHS[name]))
        try:
            if kind == "blob" and members:
                blob = draw(st.sampled_from(sorted(members)))
                data = bytearray(members[blob])
                op = draw(st.sampled_from(["flip", "cut", "grow"]))
                if op == "flip" and data:
                    i = draw(st.integers(0, len(data) - 1))
                    data[i] ^= 0xFF
                elif op == "cut":
                    data = data[: draw(st.integers(0, len(data)))]
                else:
                    data += bytes(draw(st.integers(1, 64)))
                members[blob] = bytes(data)
            elif kind == "scale":  # an integer made huge or negative
                parent = manifest
                for k in path[:-1]:
                    parent = parent[k]
                if isinstance(parent[path[-1]], int) and not isinstance(parent[path[-1]], bool):
                    parent[path[-1]] *= draw(st.sampled_from([-1, 0, 1000, 2**20, 2**40]))
            else:
                _set(manifest, path, draw(json_values), kind == "delete")
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed the path
    raw = None
    if draw(st.integers(0, 9)) == 0:  # damaged JSON text
        text = json.dumps(manifest).encode()
        cut = draw(st.integers(0, len(text)))
        raw = text[:cut] + draw(st.binary(max_size=8))
    return name, manifest, members, raw


@FUZZ
@given(mutated_maia(), st.integers(0, 30))
def test_mutated_maia_files_keep_the_contract(case, zip_damage):
    name, manifest, members, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_maia(Path(tmp) / "f.maia", manifest, members, raw_manifest=raw)
        if zip_damage < 3:  # damage the zip container itself
            data = bytearray(path.read_bytes())
            pos = (zip_damage * 7919 + 13) % len(data)
            data[pos] ^= 0x5A
            if zip_damage == 2:
                data = data[: len(data) * 3 // 4]
            path.write_bytes(bytes(data))
        contract(lambda: _run_everything(path))


def test_mutated_maia_through_the_cli(tmp_path):
    """A sample of the same damage through the command line: exit 0 or 2, never 1 or 3."""
    from click.testing import CliRunner

    from maiac.cli import main

    rng = np.random.default_rng(0)
    manifest, members = BASES["small"]
    codes = []
    for i in range(12):
        m = copy.deepcopy(manifest)
        path = PATHS["small"][int(rng.integers(len(PATHS["small"])))]
        _set(m, path, [None, "x", -1, 2**63, {"a": 1}, []][i % 6], False)
        f = write_maia(tmp_path / f"{i}.maia", m, members)
        for cmd in ("run", "report"):
            r = CliRunner().invoke(main, [cmd, str(f), "--max-memory", "256MiB"])
            assert r.exit_code in (0, 2) and "Traceback" not in r.output, (path, r.output)
            codes.append(r.exit_code)
    assert 2 in codes


# ----------------------------------------------------------------------------- ONNX

OPS: dict[str, dict[str, list[Any]]] = {
    "Add": {}, "Mul": {}, "Sub": {}, "Div": {}, "Relu": {}, "Tanh": {}, "Exp": {},
    "MatMul": {}, "Identity": {},
    "Softmax": {"axis": [-1, 0, 1, 5, -9]},
    "Transpose": {"perm": [[1, 0], [0, 0], [2, 1, 0], [5, 1]]},
    "Concat": {"axis": [0, 1, -1, 7]},
    "Gather": {"axis": [0, 1, -1, 4]},
    "Reshape": {},
    "Expand": {},
    "ReduceSum": {"keepdims": [0, 1, 7]},
    "Conv": {"group": [0, 1, 2, -1], "strides": [[1, 1], [0, 1], [2, 2]],
             "pads": [[0, 0, 0, 0], [1, 1, 1, 1], [-1, 0, 0, 0]]},
    "LayerNormalization": {"axis": [-1, 0, 3], "epsilon": [1e-5, 0.0, -1.0]},
    "Cast": {"to": [1, 7, 10, 16, 999]},
    "Slice": {},
    "Pow": {}, "Sqrt": {}, "Where": {}, "Unsqueeze": {}, "Squeeze": {},
    "NotAnOp": {},
}
ELEM = [TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL,
        TensorProto.FLOAT16, TensorProto.STRING]
dims = st.lists(st.sampled_from([1, 2, 3, 4, 8, 0]), min_size=0, max_size=4)


@st.composite
def initializer(draw: Any, name: str) -> TensorProto:
    shape = draw(dims)
    if draw(st.integers(0, 9)) == 0:
        shape = [*shape, draw(st.sampled_from([-1, -4, 2**40]))]
    dtype = draw(st.sampled_from([TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT]))
    t = TensorProto(name=name, data_type=dtype, dims=shape)
    count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
    count = min(count, 4096)
    itemsize = 8 if dtype == TensorProto.INT64 else 4
    where = draw(st.sampled_from(["raw", "raw", "raw_bad", "external"]))
    if where == "raw":
        vals = draw(st.sampled_from([0, 1, 3, -2, 70]))
        arr = np.full(count, vals, np.int64 if dtype == TensorProto.INT64 else np.float32)
        t.raw_data = arr.tobytes()
    elif where == "raw_bad":
        t.raw_data = bytes(max(0, count * itemsize + draw(st.sampled_from([-4, 4, -1]))))
    else:
        t.data_location = TensorProto.EXTERNAL
        loc = draw(st.sampled_from(["w.bin", "../w.bin", "/etc/passwd", "missing.bin", "",
                                    "sub", "link.bin"]))
        for key, val in (("location", loc),
                         ("offset", draw(st.sampled_from(["0", "8", "-1", "x", "99999999"]))),
                         ("length", draw(st.sampled_from([None, str(count * itemsize), "3"])))):
            if val is not None:
                e = t.external_data.add()
                e.key, e.value = key, val
    return t


UNARY = ["Relu", "Tanh", "Exp", "Identity", "Sqrt", "Softmax", "Neg", "Sigmoid"]
BINARY = ["Add", "Mul", "Sub", "Div", "Max"]


@st.composite
def plausible_graph(draw: Any) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A chain of mostly valid ops on x [rows, cols] (so compile, tile and run are reached),
    with at most one hostile detail (a bad attribute, initializer or shape)."""
    rows, cols = draw(st.sampled_from([1, 2, 3, 8, 17])), draw(st.sampled_from([4, 8, 33, 64]))
    nodes, inits, cur = [], [], "x"
    hostile = draw(st.integers(0, 3)) == 0
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "norm"]))
        out = f"v{i}"
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            nodes.append(helper.make_node(op, [cur], [out], name=f"n{i}"))
        elif kind == "binary":
            shape = draw(st.sampled_from([[rows, cols], [cols], [1, cols], [1]]))
            arr = np.asarray(draw(st.sampled_from([0.5, -1.0, 2.0, 1e-3])) *
                             np.ones(shape), np.float32)
            inits.append(onnx.numpy_helper.from_array(arr, f"c{i}"))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [cur, f"c{i}"], [out],
                                          name=f"n{i}"))
        elif kind == "matmul":
            n = draw(st.sampled_from([4, 16, 64]))
            w = np.random.default_rng(i).standard_normal((cols, n)).astype(np.float32) * 0.1
            inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [out], name=f"n{i}"))
            cols = n
        else:
            inits += [onnx.numpy_helper.from_array(np.ones(cols, np.float32), f"g{i}"),
                      onnx.numpy_helper.from_array(np.zeros(cols, np.float32), f"b{i}")]
            nodes.append(helper.make_node("LayerNormalization", [cur, f"g{i}", f"b{i}"], [out],
                                          name=f"n{i}", axis=-1, epsilon=1e-5))
        cur = out
    if hostile:
        what = draw(st.sampled_from(["init", "attr", "shape", "dangling"]))
        if what == "init" and inits:
            inits[0] = draw(initializer(inits[0].name))
        elif what == "attr":
            nodes[-1].attribute.extend([helper.make_attribute(
                draw(st.sampled_from(["axis", "epsilon", "perm"])),
                draw(st.sampled_from([99, -7, 0.0, [5, 5]])))])
        elif what == "shape":
            rows = draw(st.sampled_from([0, -1]))
        else:
            nodes.append(helper.make_node("Add", [cur, "nowhere"], ["v_end"], name="dangling"))
            cur = "v_end"
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, "n"])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    first = draw(st.sampled_from([4, 8, 33, 64])) if hostile else None
    x_cols = first if first is not None else tensor_cols(graph)
    return model, {"x": (rows, x_cols)} if rows > 0 else {}


def tensor_cols(graph: onnx.GraphProto) -> int:
    """The column count the first node expects of x (from its initializers)."""
    for node in graph.node:
        for name in node.input:
            for init in graph.initializer:
                if init.name == name and node.op_type == "MatMul":
                    return int(init.dims[0])
                if init.name == name and init.dims and node.op_type != "MatMul":
                    return int(init.dims[-1])
    return 8


@st.composite
def onnx_graph(draw: Any) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """Random ops over random values: mostly nonsense, to reach every import check."""
    in_shape = draw(st.lists(st.sampled_from([1, 2, 4, 8, "n"]), min_size=1, max_size=4))
    inputs = [helper.make_tensor_value_info("x", draw(st.sampled_from(ELEM[:3])), in_shape)]
    values, nodes, inits = ["x"], [], []
    for i in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(sorted(OPS)))
        args = []
        for j in range(draw(st.integers(1, 3))):
            if draw(st.booleans()) or not values:
                w = draw(initializer(f"w{i}_{j}"))
                inits.append(w)
                args.append(w.name)
            else:
                args.append(draw(st.sampled_from(values)))
        attrs = {k: draw(st.sampled_from(v)) for k, v in OPS[op].items() if draw(st.booleans())}
        out = f"v{i}"
        nodes.append(helper.make_node(op, args, [out], name=f"n{i}", **attrs))
        values.append(out)
    outputs = [helper.make_tensor_value_info(values[-1], TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, inits)
    opset = draw(st.sampled_from([13, 17, 18, 1, 99]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    shapes = {"x": tuple(draw(st.sampled_from([1, 2, 4])) if d == "n" else d
                         for d in in_shape)} if "n" in in_shape else {}
    return model, shapes


def _compile_run_report(path: Path, shapes: dict[str, tuple[int, ...]], quant: str | None
                        ) -> None:
    import maiac
    from maiac.inputs import random_inputs_for_specs
    from maiac.runtime.interpreter import run_program
    from maiac.runtime.timing import simulate

    if shapes and any(d <= 0 for d in shapes["x"]):
        shapes = {}
    compiled = maiac.compile(path, shapes=shapes or None, quant=quant)
    simulate(compiled.program)
    run_program(compiled.program, random_inputs_for_specs(compiled.program.inputs, 0, {}))


@settings(FUZZ, max_examples=EXAMPLES or 40)
@given(st.one_of(plausible_graph(), plausible_graph(), onnx_graph()),
       st.sampled_from([None, None, "fp8", "mxfp4"]))
def test_malformed_onnx_graphs_keep_the_contract(case, quant):
    model, shapes = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / "w.bin").write_bytes(bytes(64 * 1024))
        (folder / "sub").mkdir()
        os.symlink("/etc/hostname", folder / "link.bin")
        (Path(tmp) / "w.bin").write_bytes(bytes(64 * 1024))  # outside: never to be read
        path = folder / "m.onnx"
        onnx.save(model, path)
        contract(lambda: _compile_run_report(path, shapes, quant))


@settings(FUZZ, max_examples=EXAMPLES or 25)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                max_size=6), st.booleans())
def test_damaged_onnx_bytes_keep_the_contract(flips, truncate):
    from maiac import models

    data = bytearray(_small_onnx())
    for pos, byte in flips:
        data[pos % len(data)] = byte
    if truncate:
        data = data[: len(data) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(bytes(data))
        contract(lambda: _compile_run_report(path, {}, None))
    assert models  # imported for _small_onnx


_SMALL: list[bytes] = []


def _small_onnx() -> bytes:
    if not _SMALL:
        from maiac import models

        _SMALL.append(models.transformer_block(seq=4, d_model=32, heads=2).SerializeToString())
    return _SMALL[0]


def test_fuzzing_stayed_within_the_memory_bound():
    """The whole process, after the fuzz cases above: far from the host-memory bound."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert rss < 4 << 30
