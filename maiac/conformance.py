"""Run the ONNX backend node tests (shipped inside the `onnx` wheel) through maiac.

``onnx.backend.test.case.node.collect_testcases(None)`` yields every node test case
(model, inputs, expected outputs) in memory: 1,884 in onnx 1.23. ``run_case`` takes any
of them: a case with an op maiac does not support is "unsupported" (the importer's
message names every such op), one with sequence/optional values an "error" under that
documented limit, never an exception. The others are compiled, run on the machine model
and compared with the expected outputs. Integer inputs that act as compile-time parameters (a Reshape's shape,
Slice's starts, ...) are bound as constants when the model needs them static: maiac
compiles for static shapes, as the chip does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from maiac.importer import SUPPORTED_OPS
from maiac.runtime.errors import MaiacError

# Cases we do not run, with the reason (documented in docs/ops.md).
SKIPPED: dict[str, str] = {}

# Errors that are documented limits of the machine, not bugs: reason -> message pattern.
KNOWN_LIMITS: dict[str, str] = {
    "element type without Maia storage (string tensors)": r"element type .*not supported",
    "float64 data (the machine computes in fp32)": r"float64",
    "training-mode Dropout (inference only)": r"inference only",
    "zero-size tensors": r"zero-size",
    "sequence/optional values": r"only tensor inputs",
    "output shape depends on input values": r"static shape|depends on the values",
    "Attention with per-batch cache lengths (nonpad_kv_seqlen)": r"nonpad_kv_seqlen",
    "Resize extrapolation outside the crop for linear/cubic": r"extrapolation is supported",
    "TopK with k > 64": r"TopK with k",
    "ConvTranspose with output_shape / SAME padding": r"output_shape or auto_pad",
    "QDQ of a runtime tensor: blocked, runtime zero point, fp8/fp4/2-bit target "
    "(maiac/importers/qdq.py)": r"(blocked (de)?quantization|a runtime zero point|"
                                 r"quantizing a runtime tensor)",
}


# The op types transformer exports emit (DESIGN §7 and issue 10's list): the pass rate
# over the cases made only of these ops is the figure that matters for our users.
TRANSFORMER_OPS: frozenset[str] = frozenset({
    "Add", "And", "ArgMax", "Attention", "Cast", "CastLike", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "Cos", "CumSum", "Div", "Dropout", "Einsum", "Equal", "Erf",
    "Exp", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "Greater", "GreaterOrEqual", "Identity", "IsNaN", "LayerNormalization", "Less",
    "LessOrEqual", "Log", "MatMul", "Max", "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow",
    "RMSNormalization", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum",
    "Relu", "Reshape", "Resize", "RotaryEmbedding", "Round", "ScatterElements",
    "ScatterND", "Shape", "Sigmoid", "Sin", "Size", "Slice", "Softmax", "Split", "Sqrt",
    "Squeeze", "Sub", "Tanh", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where",
})


def _expanded_ops() -> frozenset[tuple[str, str]]:
    from maiac.importers.expand import EXPANSIONS

    return frozenset(("" if d in ("", "ai.onnx") else d, op) for d, op in EXPANSIONS)


_EXPANDED = _expanded_ops()


def is_transformer_case(result: CaseResult) -> bool:
    return bool(result.ops) and set(result.ops) <= TRANSFORMER_OPS


def known_limit(detail: str) -> str | None:
    """The documented limit an error message falls under, if any."""
    for reason, pattern in KNOWN_LIMITS.items():
        if re.search(pattern, detail):
            return reason
    return None


@dataclass
class CaseResult:
    name: str
    ops: tuple[str, ...]
    status: str  # "pass" | "fail" | "error" | "skip" | "unsupported"
    detail: str = ""


def node_cases() -> list:
    """All node test cases of the installed onnx package (warnings from onnx muted)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return collect_testcases(None)


def case_ops(case: object) -> tuple[str, ...]:
    model: onnx.ModelProto = case.model  # type: ignore[attr-defined]
    if model is None:
        return ()
    return tuple(sorted({n.op_type for n in model.graph.node}))


def supported_cases(cases: list) -> Iterator[object]:
    """Cases whose every node is an op maiac claims (default domain, no subgraphs)."""
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        nodes = case.model.graph.node
        if all(n.domain in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS for n in nodes):
            yield case


def _non_tensor_values(model: onnx.ModelProto) -> list[str]:
    """Names of graph inputs/outputs that are sequences, optionals or maps."""
    return [v.name for v in [*model.graph.input, *model.graph.output]
            if not v.type.HasField("tensor_type")]


def _bind_integer_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                         named: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """A copy of ``model`` whose integer inputs (and the ``named`` ones, e.g. Resize's
    float scales) are initializers with the case's values."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    keep = []
    for value in bound.graph.input:
        array = feeds.get(value.name)
        if array is not None and (array.dtype.kind in "iu" or value.name in named):
            bound.graph.initializer.append(numpy_helper.from_array(array, value.name))
        else:
            keep.append(value)
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    return bound


_MANTISSA_BITS = {"bfloat16": 7, "float16": 10}


def _ulp(values: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """The spacing of a float format with ``mantissa_bits`` at each of ``values``."""
    exponent = np.floor(np.log2(np.maximum(np.abs(np.nan_to_num(values)), 2.0 ** -14)))
    return 2.0 ** (exponent - mantissa_bits)


def _compile_binding_parameters(model: onnx.ModelProto, feeds: dict[str, np.ndarray]
                                ) -> tuple[object, onnx.ModelProto]:
    """Compile ``model``; where maiac needs an input constant (a shape, Resize's scales),
    bind it to the case's value and retry (integer inputs, then the inputs the error
    names, accumulating)."""
    from maiac.driver import compile as maiac_compile

    used, named = model, frozenset()
    for attempt in range(4):
        try:
            return maiac_compile(used), used
        except MaiacError as err:
            text = str(err)
            if attempt == 3 or not any(w in text for w in ("constant", "static", "symbolic",
                                                           "runtime")):
                raise
            named |= frozenset(re.findall(r"input '([^']+)'", text))
            if attempt >= 1:  # float parameters of resizes (scales, roi) when ints were not enough
                named |= {i.name for i in model.graph.input if len(
                    i.type.tensor_type.shape.dim) == 1 and i.name in feeds
                    and feeds[i.name].size <= 16}
            used = _bind_integer_inputs(model, feeds, named)
    raise AssertionError("unreachable")


def _array(value: object) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def run_case(case: object) -> CaseResult:
    """Compile, run and compare one case (every data set)."""

    name = case.name  # type: ignore[attr-defined]
    ops = case_ops(case)
    if name in SKIPPED:
        return CaseResult(name, ops, "skip", SKIPPED[name])
    model: onnx.ModelProto = case.model  # type: ignore[attr-defined]
    if model is None or not case.data_sets:  # type: ignore[attr-defined]
        return CaseResult(name, ops, "skip", "no model or no data in the onnx package")
    from maiac.importers import expand_model
    from maiac.op_support import unsupported_message, unsupported_ops

    try:  # contrib and QDQ nodes become standard ONNX first, as the importer does
        expanded = expand_model(model)
    except MaiacError:  # e.g. a runtime zero point: compiling binds it (below) or says why
        expanded = model
    missing = [u for u in unsupported_ops(expanded.graph.node)
               if expanded is not model or (u.domain, u.op_type) not in _EXPANDED]
    if missing:
        return CaseResult(name, ops, "unsupported", unsupported_message(missing, name))
    non_tensor = _non_tensor_values(model)
    if non_tensor:
        return CaseResult(name, ops, "error", f"only tensor inputs and outputs are supported "
                          f"(sequence/optional values: {', '.join(non_tensor)})")
    for inputs, expected in case.data_sets:  # type: ignore[attr-defined]
        names = [i.name for i in model.graph.input]
        feeds = {n: _array(v) for n, v in zip(names, inputs, strict=False)}
        try:
            compiled, used = _compile_binding_parameters(model, feeds)
            given = {i.name for i in used.graph.input}
            got = compiled.run({k: v for k, v in feeds.items() if k in given})
        except MaiacError as err:
            return CaseResult(name, ops, "error", str(err).splitlines()[0][:200])
        except Exception as err:  # a bug in maiac, reported as such
            return CaseResult(name, ops, "error", f"{type(err).__name__}: {err}"[:200])
        if not isinstance(expected, list | tuple):
            expected = [expected]
        out_names = [o.name for o in model.graph.output]
        for out_name, want in zip(out_names, expected, strict=False):
            have = got.get(out_name)
            want = _array(want)
            if have is None or have.shape != want.shape:
                return CaseResult(name, ops, "fail", f"{out_name}: shape "
                                  f"{None if have is None else have.shape} != {want.shape}")
            rtol = max(case.rtol, 1e-4)  # type: ignore[attr-defined]
            atol = max(case.atol, 1e-5)  # type: ignore[attr-defined]
            if want.dtype.kind not in "iub":  # float, incl. ml_dtypes (kind "V")
                w64, h64 = want.astype(np.float64), have.astype(np.float64)
                # bf16/f16 results: the reference rounds every intermediate to the
                # format, maiac computes in fp32 and rounds once, so allow 2 ulp more
                bits = _MANTISSA_BITS.get(str(want.dtype))
                slack = 0.0 if bits is None else 2.0 * _ulp(w64, bits)
                with np.errstate(invalid="ignore"):  # inf - inf where both are inf
                    close = np.abs(h64 - w64) <= atol + rtol * np.abs(w64) + slack
                ok = bool(np.all(close | (np.isnan(h64) & np.isnan(w64)) | (h64 == w64)))
            else:
                ok = np.array_equal(have, want)
            if not ok:
                return CaseResult(name, ops, "fail", f"{out_name}: values differ")
    return CaseResult(name, ops, "pass")
