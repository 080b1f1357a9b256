"""Compile a model, run it on the machine model and on onnxruntime, compare every output.

`verify` returns the DESIGN §5 verify JSON. fp32 runs pass when every element satisfies
``|a - b| <= max(atol + rtol * |b|, NOISE_FACTOR * noise)``, where ``noise`` is
onnxruntime's own deviation on that output: the largest ``|b_opt - b_noopt|`` between its
default graph optimizations and none, on the same inputs (fused and reordered kernels round
differently; on a 30-layer model that alone moves outputs by ~1e-4, more than rtol 1e-4 /
atol 1e-5 allow). maiac is thus held to the tolerance, or to 4x the difference between two
equally valid onnxruntime runs when that is larger. An fp32 output failing both is judged
against the float64 answer (maiac/fp64_reference.py): it passes when maiac's max distance
from it is at most ``FP64_FACTOR`` x onnxruntime's fp32 distance (deep models, where both
accumulate rounding layer after layer and onnxruntime's noise may be 0); each entry's
``criterion`` names the bound it met. Quantized runs pass when every
output's cosine similarity to the fp32 reference is at least ``min_cosine``.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maiac.fp64_reference import FP64_FACTOR, FP64_MAX_BYTES, fp64_outputs, max_distance
from maiac.inputs import graph_input_specs, random_inputs
from maiac.onnx_model import OnnxModel, first_line, open_model, ort_session
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import release_freed_memory
from maiac.shapes import bind_input_shapes

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
DEFAULT_MIN_COSINE = 0.99
NOISE_FACTOR = 4.0  # fp32 passes within max(tolerance, NOISE_FACTOR x onnxruntime's noise)


def _finite_or_none(x: float) -> float | None:
    """JSON-safe float: NaN/inf become None (null)."""
    x = float(x)
    return x if np.isfinite(x) else None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64. 1.0 if both are all zero."""
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a64, b64) / (na * nb), -1.0, 1.0))


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise |a - b| / max(|b|, floor), floor = 1e-3 * max|b| (or 1e-30 if b == 0).

    The floor keeps elements of the reference that are tiny next to the rest of the tensor
    from turning a negligible absolute error into an enormous relative one.
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    absb = np.abs(b64)
    scale = float(np.max(absb)) if absb.size else 0.0
    floor = max(1e-3 * scale, 1e-30)
    return np.abs(a64 - b64) / np.maximum(absb, floor)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions (all but the last axis) whose argmax over the last axis agrees."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim == 0 or a.shape[-1] == 0:
        return 1.0
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def wants_top1(name: str, shape: tuple[int, ...], quant: str | None) -> bool:
    """Top-1 agreement is reported for logits, and for any rank>=2 output with a class axis
    when quantized."""
    if len(shape) < 1 or shape[-1] < 2:
        return False
    if "logit" in name.lower():
        return True
    return quant is not None and len(shape) >= 2


def compare_output(name: str, got: np.ndarray | None, ref: np.ndarray, *, quant: str | None,
                   rtol: float, atol: float, min_cosine: float,
                   ort_noise: float | None = None) -> dict[str, Any]:
    """Error metrics of one output; ``ok`` says whether it passes (see the module docstring).

    ``ort_noise``: onnxruntime's own max abs deviation on this output (optimized vs not);
    an fp32 element also passes within ``NOISE_FACTOR * ort_noise``.
    """
    ref = np.asarray(ref)
    noise_bound = NOISE_FACTOR * ort_noise if ort_noise is not None else 0.0
    entry: dict[str, Any] = {
        "name": name, "shape": list(ref.shape), "max_abs_err": None, "max_rel_err": None,
        "cosine": None, "top1_agreement": None, "mean_abs_err": None,
        "mismatch_count": None, "ort_noise": ort_noise,
        "noise_bound": noise_bound if ort_noise is not None else None, "ok": False,
        "criterion": None,  # fp32: "tolerance", "ort_noise" or "fp64" (the one it met)
    }
    if got is None:
        entry["error"] = "output missing from the maiac program"
        return entry
    got = np.asarray(got)
    if got.shape != ref.shape:
        entry["error"] = f"shape {list(got.shape)} differs from onnxruntime's {list(ref.shape)}"
        entry["got_shape"] = list(got.shape)
        return entry
    a = got.astype(np.float64)
    b = ref.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        diff = np.where(np.isnan(diff), np.inf, diff)
        close = diff <= np.maximum(atol + rtol * np.abs(np.where(both_nan, 0.0, b)),
                                   noise_bound)
        rel = np.where(both_nan, 0.0, rel_err(a, b))
    if a.size:
        entry["max_abs_err"] = _finite_or_none(np.max(diff))
        entry["mean_abs_err"] = _finite_or_none(np.mean(diff))
        entry["max_rel_err"] = _finite_or_none(np.nanmax(np.where(np.isnan(rel), np.inf, rel)))
    else:
        entry["max_abs_err"] = entry["mean_abs_err"] = entry["max_rel_err"] = 0.0
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    entry["cosine"] = cosine(a, b) if finite else None
    entry["mismatch_count"] = int(np.size(close) - np.count_nonzero(close))
    if wants_top1(name, ref.shape, quant):
        entry["top1_agreement"] = top1_agreement(a, b)
    if quant is None:
        entry["ok"] = entry["mismatch_count"] == 0
        if entry["ok"]:  # which bound it met: the tolerance everywhere, or the noise's
            within = diff <= atol + rtol * np.abs(np.where(both_nan, 0.0, b))
            entry["criterion"] = "tolerance" if bool(np.all(within)) else "ort_noise"
    else:
        entry["ok"] = entry["cosine"] is not None and entry["cosine"] >= min_cosine
    return entry


def read_arrays(inputs: Any) -> dict[str, np.ndarray]:
    """Arrays by name from a dict or an ``.npz`` path (never unpickled)."""
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.exists():
            raise MaiacError(f"{path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                inputs = {k: npz[k] for k in npz.files}
        except Exception as e:
            raise MaiacError(f"{path}: not a readable .npz file ({e})") from None
    return {k: np.asarray(v) for k, v in dict(inputs).items()}


def _load_inputs(inputs: Any, model: Any, shapes: Mapping[str, Iterable[int]] | None,
                 seed: int) -> dict[str, np.ndarray]:
    """Inputs from a dict, an .npz path, or seeded random ones (None); names are checked."""
    specs = graph_input_specs(model, shapes)
    if inputs is None:
        return random_inputs(model, shapes, seed)
    inputs = read_arrays(inputs)
    names = [n for n, _, _ in specs]
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise MaiacError(f"inputs name unknown model input {extra[0]!r}; "
                         f"model inputs: {', '.join(names)}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise MaiacError(f"no value given for model input {missing[0]!r}")
    return {n: inputs[n] for n in names}


def _reference(model: OnnxModel, graph: Any, inputs: Mapping[str, np.ndarray],
               optimize: bool = True, custom_op_lib: str | None = None
               ) -> tuple[dict[str, np.ndarray], float]:
    """Outputs of onnxruntime (CPU) on ``graph`` (the model, or it with extra outputs),
    and the time it took.

    ``optimize=False`` disables onnxruntime's graph optimizations (no fusions, no
    constant folding, kernels as the graph spells them). ``custom_op_lib``: a shared
    library of custom-op kernels registered first (e.g. AMD Quark's for its
    ``com.amd.quark`` ops)."""
    sess = ort_session(model, graph, optimize=optimize, custom_op_lib=custom_op_lib,
                       what="reference")
    try:
        names = [o.name for o in sess.get_outputs()]
        t0 = time.perf_counter()
        outs = sess.run(names, dict(inputs))
        dt = time.perf_counter() - t0
    except Exception as e:
        raise MaiacError(f"onnxruntime could not run the reference model: {first_line(e)}"
                         ) from None
    return dict(zip(names, outs, strict=True)), dt


def ort_noise(ref: Mapping[str, np.ndarray], unoptimized: Mapping[str, np.ndarray]
              ) -> dict[str, float]:
    """Per output, max |optimized - unoptimized| of onnxruntime (float outputs only)."""
    noise: dict[str, float] = {}
    for name, a in ref.items():
        b = unoptimized.get(name)
        a = np.asarray(a)
        if b is None or a.dtype.kind != "f" or a.shape != np.shape(b) or not a.size:
            continue
        with np.errstate(invalid="ignore"):
            d = np.abs(a.astype(np.float64) - np.asarray(b, np.float64))
        d = d[np.isfinite(d)]
        noise[name] = float(d.max()) if d.size else 0.0
    return noise


def verify(model: Any, *, quant: str | None = None,
           shapes: Mapping[str, Iterable[int]] | None = None, inputs: Any = None,
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, seed: int = 0,
           min_cosine: float = DEFAULT_MIN_COSINE, layers: bool = True,
           reference: Any = None, ort_custom_op_lib: str | None = None,
           **compile_options: Any) -> dict[str, Any]:
    """Compile ``model`` (path or ModelProto), run it and onnxruntime, return the verify JSON.

    Quantized (``quant``) with ``layers``: ``layers`` holds the error of every matmul with
    a constant weight (its output made a graph output of both models); per model output
    also ``top1_agreement``.

    ``inputs``: a dict of arrays, an ``.npz`` path, or None for seeded random inputs; the
    arrays' shapes bind the model's symbolic dims, as in onnxruntime. ``shapes``: input
    name -> shape or symbolic dim name -> size (maiac/shapes.py).
    ``compile_options`` go to ``maiac.compile`` (target, target_params, pipeline, calib).

    fp32 also runs onnxruntime without graph optimizations; per output ``ort_noise`` is
    the deviation between the two and the pass criterion allows ``NOISE_FACTOR`` times it.

    ``reference`` (a dict or an ``.npz`` path of outputs by name) replaces onnxruntime,
    for models onnxruntime cannot run; ``ort_custom_op_lib`` registers a custom-op
    library with onnxruntime before it loads the model.
    """
    from maiac import progress
    from maiac.importers import carries_model_quant

    with progress.step("load the model and inputs"):
        opened = open_model(model)  # graph only; weights stay on disk (external data)
        model_path, proto = opened.path, opened.proto
        arrays = read_arrays(inputs) if inputs is not None else None
        inits = {i.name for i in proto.graph.initializer}
        shapes = bind_input_shapes([v for v in proto.graph.input if v.name not in inits],
                                   shapes, arrays=arrays)
        feeds = _load_inputs(arrays, proto, shapes, seed)
    if quant is None and carries_model_quant(proto):
        quant = "model"  # the formats the model's own MX nodes name (maiac/importers/quark.py)

    from maiac.driver import compile as maiac_compile

    # quantized: every weight matmul's output is also a graph output of both the model
    # maiac compiles and the one onnxruntime runs, for the per-layer errors
    stored = read_arrays(reference) if reference is not None else None
    with progress.step("per-layer probe (every weight matmul's output)"):
        probe = _layer_probe(model_path, proto) if quant and layers and stored is None \
            else None
    ref_graph = probe[0] if probe is not None else proto
    target = opened if probe is None else OnnxModel(probe[0], opened.label, opened.base_dir)
    t0 = time.perf_counter()
    compiled = maiac_compile(target, quant=quant, shapes=shapes, **compile_options)
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    got = compiled.run(feeds)
    run_s = time.perf_counter() - t0
    run_stats = dict(getattr(compiled, "last_run_stats", {}))
    # the program, its weights and the machine's memory go before onnxruntime loads its
    # own copy of the weights: the peak is one engine's, not both
    del compiled
    release_freed_memory()

    out_names = [o.name for o in proto.graph.output]
    noise: dict[str, float] = {}
    if stored is not None:
        missing = [n for n in out_names if n not in stored]
        if missing:
            raise MaiacError(f"reference has no array for model output {missing[0]!r} "
                             f"(it holds: {', '.join(sorted(stored)) or 'nothing'})")
        ref, ort_s = stored, None
    else:
        with progress.step("onnxruntime reference"):
            ref, ort_s = _reference(opened, ref_graph, feeds,
                                    custom_op_lib=ort_custom_op_lib)
            if quant is None:  # quantized runs are judged by cosine; the noise would not count
                noise = ort_noise(ref, _reference(opened, ref_graph, feeds, optimize=False,
                                                  custom_op_lib=ort_custom_op_lib)[0])
    outputs = [
        compare_output(name, got.get(name), ref[name], quant=quant, rtol=rtol, atol=atol,
                       min_cosine=min_cosine, ort_noise=noise.get(name))
        for name in progress.track([n for n in out_names if n in ref], "compare outputs")
    ]
    fp64_engine = None
    if quant is None and stored is None and not all(o["ok"] for o in outputs):
        release_freed_memory()  # onnxruntime's sessions: room for the float64 copy
        with progress.step("float64 reference"):
            fp64_engine = apply_fp64_criterion(outputs, got, ref, opened, ref_graph, feeds)
    layer_rows: list[dict[str, Any]] = []
    probed = [(n, t) for n, t in (probe[1] if probe is not None else [])
              if t in got and t in ref]
    for node_name, tensor in progress.track(probed, "compare layers", label=lambda p: p[0]):
        row = compare_output(tensor, got[tensor], ref[tensor], quant=quant, rtol=rtol,
                             atol=atol, min_cosine=min_cosine)
        layer_rows.append({"name": node_name, "output": tensor, "cosine": row["cosine"],
                           "max_rel_err": row["max_rel_err"], "max_abs_err": row["max_abs_err"],
                           "mean_abs_err": row["mean_abs_err"]})
    return {
        "ok": bool(outputs) and all(o["ok"] for o in outputs),
        "model": model_path if model_path is not None else (proto.graph.name or "<model>"),
        "quant": quant or "fp32",
        "outputs": outputs,
        "layers": layer_rows,
        "compile_s": compile_s,
        "run_s": run_s,
        "onnxruntime_s": ort_s,  # None when compared to a stored reference
        "reference": "stored" if stored is not None else "onnxruntime",
        "rtol": rtol,
        "atol": atol,
        "min_cosine": min_cosine if quant else None,
        "noise_factor": NOISE_FACTOR if quant is None else None,
        "fp64_factor": FP64_FACTOR if quant is None else None,
        "fp64_reference": fp64_engine,  # engine of the float64 answer, when it was needed
        "shapes": {k: list(v) for k, v in shapes.items()},
        "seed": seed,
        # NaN/Inf the machine's quantize instructions met and encoded (formats.md)
        "nonfinite_quantized": int(run_stats.get("nonfinite_quantized", 0)),
    }


def apply_fp64_criterion(outputs: list[dict[str, Any]], got: Mapping[str, np.ndarray],
                         ref: Mapping[str, np.ndarray], model: OnnxModel, graph: Any,
                         feeds: Mapping[str, np.ndarray]) -> str | None:
    """The depth-fair fp32 criterion (maiac/fp64_reference.py) for the outputs that failed
    the per-element one: such an output passes when maiac's max distance from the float64
    answer is at most ``FP64_FACTOR`` x onnxruntime's fp32 distance from it. Adds
    ``fp64_err_maiac``, ``fp64_err_ort`` and ``fp64_bound`` to each failing entry; returns
    the engine that computed the float64 answer, or None when there is none (the outputs
    then keep failing)."""
    computed = fp64_outputs(model, graph, feeds)
    if computed is None:
        return None
    exact, engine = computed
    for entry in outputs:
        name = entry["name"]
        if entry["ok"] or entry.get("error") or name not in exact or name not in got:
            continue
        err_ort = max_distance(ref[name], exact[name])
        err_maiac = max_distance(got[name], exact[name])
        bound = FP64_FACTOR * err_ort
        entry.update(fp64_err_maiac=_finite_or_none(err_maiac),
                     fp64_err_ort=_finite_or_none(err_ort), fp64_bound=_finite_or_none(bound))
        if np.isfinite(bound) and err_maiac <= bound:
            entry["ok"], entry["criterion"] = True, "fp64"
    return engine


MAX_LAYERS = 256


def _layer_probe(model_path: str | None, full: Any
                 ) -> tuple[Any, list[tuple[str, str]]] | None:
    """(model with weight-matmul outputs added as graph outputs, [(node, tensor)]).

    None for models with external data (their weights are not copied here)."""
    import onnx

    from maiac.calibrate import MATMUL_OPS, node_label, with_outputs

    if model_path is not None and any(t.data_location == onnx.TensorProto.EXTERNAL
                                      for t in full.graph.initializer):
        return None
    inits = {i.name for i in full.graph.initializer}
    consts = inits | {o for n in full.graph.node if n.op_type == "Constant" for o in n.output}
    pairs = [(node_label(n), n.output[0]) for n in full.graph.node
             if n.op_type in MATMUL_OPS and len(n.input) > 1 and n.input[1] in consts
             and n.output][:MAX_LAYERS]
    if not pairs:
        return None
    return with_outputs(full, [t for _, t in pairs]), pairs


def _fmt(x: Any, spec: str = ".3e") -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: Mapping[str, Any]) -> str:
    """The verify result as a human-readable table."""
    q = result["quant"]
    crit = (f"rtol={result.get('rtol')}, atol={result.get('atol')}" if q == "fp32"
            else f"cosine >= {result.get('min_cosine')}")
    noisy = q == "fp32" and any(o.get("ort_noise") is not None for o in result["outputs"])
    if noisy:
        crit += f", or <= {result.get('noise_factor', NOISE_FACTOR):g} x ort_noise"
    lines = [f"model: {result['model']}   quant: {q}   criterion: {crit}", ""]
    head = f"{'output':<24} {'shape':<18} {'max_abs':>10} {'mean_abs':>10} {'max_rel':>10} " \
           f"{'cosine':>10} {'top1':>7}" + (f" {'ort_noise':>10}" if noisy else "") + "  result"
    lines.append(head)
    lines.append("-" * len(head))
    for o in result["outputs"]:
        shape = "x".join(str(d) for d in o["shape"]) or "scalar"
        verdict = "ok" if o["ok"] else "MISMATCH"
        if o.get("error"):
            verdict += f" ({o['error']})"
        elif not o["ok"] and q != "fp32":
            verdict += f" (cosine < {result.get('min_cosine')})"
        elif not o["ok"] and o.get("mismatch_count"):
            verdict += f" ({o['mismatch_count']} elements)"
        lines.append(
            f"{o['name'][:24]:<24} {shape[:18]:<18} {_fmt(o['max_abs_err']):>10} "
            f"{_fmt(o.get('mean_abs_err')):>10} {_fmt(o['max_rel_err']):>10} "
            f"{_fmt(o['cosine'], '.6f'):>10} {_fmt(o['top1_agreement'], '.3f'):>7}"
            + (f" {_fmt(o.get('ort_noise')):>10}" if noisy else "") + f"  {verdict}"
        )
    if result.get("layers"):
        lines += ["", f"{'layer':<40} {'cosine':>10} {'max_rel':>10}"]
        for lay in result["layers"]:
            lines.append(f"{str(lay.get('name'))[-40:]:<40} {_fmt(lay.get('cosine'), '.6f'):>10} "
                         f"{_fmt(lay.get('max_rel_err')):>10}")
    deep = [o for o in result["outputs"] if o.get("fp64_err_maiac") is not None
            or o.get("fp64_err_ort") is not None]
    if deep:
        factor = result.get("fp64_factor", FP64_FACTOR)
        lines += ["", f"fp64 criterion (vs {result.get('fp64_reference')}): pass when "
                      f"maiac's distance from the float64 answer <= {factor:g} x onnxruntime's"]
        for o in deep:
            lines.append(f"  {o['name'][:24]:<24} maiac {_fmt(o.get('fp64_err_maiac'))}  "
                         f"onnxruntime {_fmt(o.get('fp64_err_ort'))}  bound "
                         f"{_fmt(o.get('fp64_bound'))}  {'ok' if o['ok'] else 'MISMATCH'}")
    elif q == "fp32" and not result["ok"] and result.get("reference") == "onnxruntime" \
            and result.get("fp64_reference") is None:
        lines += ["", "fp64 criterion: no float64 reference (float64 weights over "
                      f"{FP64_MAX_BYTES >> 30} GiB, or no engine ran the float64 copy)"]
    if result.get("nonfinite_quantized"):
        lines += ["", f"note: the machine quantized {result['nonfinite_quantized']} non-finite "
                      "value(s) (NaN/Inf; an MX/NVFP4 block holding one becomes NaN)"]
    ort_s = result.get("onnxruntime_s")
    versus = f"onnxruntime {ort_s:.3f} s" if ort_s is not None else "vs stored reference"
    lines += ["", f"compile {result['compile_s']:.2f} s   run {result['run_s']:.3f} s   {versus}",
              "PASS" if result["ok"] else "FAIL"]
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """Importing this module sets ``maiac.verify`` to it, over the package's ``verify``
    function: calling the module calls ``verify``, so ``maiac.verify(...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
