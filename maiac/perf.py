"""`maiac perf`: serving numbers (TTFT, TPOT, tokens/s, HBM, fit, bound, cost) over a sweep.

Each point of ``batch x context x quant x kv-cache`` is costed from two programs the timing
model runs (``maiac.runtime.timing.simulate``; shape-only, so no weights are needed):

* *decode*: ``batch`` sequences, one new token each, against ``context`` cached positions.
  TPOT = its modeled time; aggregate tokens/s = batch / TPOT.
* *prefill*: one prompt of ``context`` tokens (batch 1). TTFT = its modeled time (one
  request arriving alone, so it is the same for every batch).

Presets (``llama3-8b``, ``llama3-70b``, ``qwen2.5-7b``, ...) are built with
``maiac.models.llama_decoder`` with the cache as graph inputs/outputs; to keep a sweep of
48 points in minutes, a preset compiles 1 and 2 layers and extrapolates every additive
figure (time, bytes, FLOPs, engine busy) linearly to all layers: total = f(1) + (L-1) *
(f(2) - f(1)), i.e. the first layer and the embedding/lm_head plus L-1 times the marginal
layer (``layers="all"`` compiles the whole model instead). An ONNX file must be a KV-cache
decoder (maiac/generate.py's interface) and is compiled whole.

HBM bytes = weights (the program's constants, in their quantized format) + KV cache
(2 x layers x kv_heads x head_dim x context x batch x bytes of the cache format). Compiles
run in parallel processes and their reports are cached on disk by (model, shapes, spec,
KV format, target, compiler source) under ``$MAIAC_CACHE_DIR`` (default
``~/.cache/maiac/perf``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from maiac import models
from maiac.kv_cache import KV_DTYPES, POSITION_INPUT, cache_in_place, new_slots_only, store_cache_as
from maiac.runtime.errors import MaiacError

KV_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
KV_UPDATES = ("in-place", "copy")
QWEN2_5_7B = getattr(models, "QWEN2_5_7B", None) or models.LlamaConfig(
    "qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, 1e6)
PRESETS: dict[str, models.LlamaConfig] = {c.name: c for c in (
    models.LLAMA3_8B, models.LLAMA3_70B, QWEN2_5_7B, models.LLAMA_TINY)}
# The published decode figure (arXiv 2608.24664; /work/shared/MAIA200_FACTS.md): Qwen2.5-7B,
# BF16 weights, one chip, generating token 16,385; batch not stated (its KV size, 939.52 MiB,
# is one sequence's).
PAPER = {"model": "qwen2.5-7b", "context": 16384, "quant": "bf16", "kv_cache": "bf16",
         "batch": [1], "published_tokens_per_s": 2434.0,
         "source": "arXiv 2608.24664, Qwen2.5-7B decode on one chip (batch not stated)"}
SUMMED = ("modeled_time_s", "hbm_bytes", "weight_bytes", "flops", "hbm_busy_s",
          "ttu_busy_s", "tvp_busy_s", "dma_busy_s", "net_busy_s")


@dataclass
class PerfOptions:
    """A sweep; CLI flags map 1:1. ``chips``: tensor-parallel group sizes (maiac/chips.py;
    figures per chip, TPOT of the group, scaling efficiency against one chip)."""

    batch: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    context: list[int] = field(default_factory=lambda: [1024, 8192, 32768])
    quant: list[str] = field(default_factory=lambda: ["fp8", "mxfp4"])
    kv_cache: list[str] = field(default_factory=lambda: ["bf16", "fp8"])
    layers: str = "extrapolate"          # or "all"
    target: str = "maia200"
    target_params: dict[str, str] | None = None
    price_per_hour: float | None = None  # $ per chip-hour, for $/M tokens
    jobs: int = 0                        # parallel compile processes (0: one per core, <= 4)
    cache_dir: str | None = None         # None: $MAIAC_CACHE_DIR or ~/.cache/maiac/perf
    use_cache: bool = True
    chips: list[int] = field(default_factory=lambda: [1])
    # how a decode step updates its cache: "in-place" (passes/kv_cache_inplace.py: the new
    # rows written into the fixed-capacity cache, attention reads it once in its storage
    # format) or "copy" (the graph's Concat(past, new) materialized, a narrow cache cast by
    # its own op: what maiac compiled before the in-place pass)
    kv_update: str = "in-place"
    pp: list[int] = field(default_factory=lambda: [1])  # pipeline stages (maiac/perf_pipeline.py)
    micro_batches: int | None = None     # with pp > 1: in flight (default: the stage count)

    def check(self) -> None:
        for name, values in (("--batch", self.batch), ("--context", self.context)):
            if not values or any(v < 1 for v in values):
                raise MaiacError(f"{name} needs positive integers, got {values}")
        bad = [k for k in self.kv_cache if k not in KV_DTYPES]
        if bad:
            raise MaiacError(f"--kv-cache {bad[0]!r}: one of {', '.join(KV_DTYPES)}")
        if self.layers not in ("extrapolate", "all"):
            raise MaiacError(f"--layers must be extrapolate or all, got {self.layers!r}")
        if not self.chips or any(c < 1 for c in self.chips):
            raise MaiacError(f"--chips needs positive integers, got {self.chips}")
        if not self.pp or any(p < 1 for p in self.pp):
            raise MaiacError(f"--pp needs positive integers, got {self.pp}")
        if self.micro_batches is not None and self.micro_batches < 1:
            raise MaiacError(f"--micro-batches must be >= 1, got {self.micro_batches}")
        if self.price_per_hour is not None and self.price_per_hour < 0:
            raise MaiacError("--price-per-hour must be >= 0")
        if self.kv_update not in KV_UPDATES:
            raise MaiacError(f"--kv-update must be one of {', '.join(KV_UPDATES)}, "
                             f"got {self.kv_update!r}")


# ------------------------------------------------------------------------ the model

@dataclass(frozen=True)
class ModelShape:
    """What a sweep needs to know of the model besides its programs."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    preset: str | None = None    # a maiac.models config name, else ``path`` is an ONNX file
    path: str | None = None
    key: str = ""

    def kv_bytes_per_token(self, kv_cache: str) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * KV_BYTES[kv_cache]


def batch_reaching(rows: Sequence[dict[str, Any]], tokens_per_s: float) -> float | None:
    """The batch at which the modeled tokens/s of ``rows`` (batch, tokens_per_s) reaches
    ``tokens_per_s``: linear between the two swept batches around it, the smallest batch
    when it already does, None when no swept batch gets there (bench/paper.py's Qwen row
    and ``maiac perf --preset paper``)."""
    rows = sorted(rows, key=lambda r: r["batch"])
    for lo, hi in zip(rows, rows[1:], strict=False):
        if lo["tokens_per_s"] < tokens_per_s <= hi["tokens_per_s"]:
            f = (tokens_per_s - lo["tokens_per_s"]) / (hi["tokens_per_s"] - lo["tokens_per_s"])
            return lo["batch"] + f * (hi["batch"] - lo["batch"])
    if rows and rows[0]["tokens_per_s"] >= tokens_per_s:
        return float(rows[0]["batch"])
    return None


def paper_comparison(points: list[dict[str, Any]], paper: dict[str, Any],
                     hbm_peak_bw: float) -> dict[str, Any]:
    """The sweep beside the paper's figure: the ratio at batch 1 of the paper's point
    (another point is not comparable), the batch-1 ceiling that the weights' HBM bytes
    put on any model, and the batch at which the modeled tokens/s reaches the published
    figure (`batch_reaching`)."""
    published = paper["published_tokens_per_s"]
    at = {k: paper[k] for k in ("context", "quant", "kv_cache")}
    rows = sorted((p for p in points if "error" not in p and p.get("chips", 1) == 1
                   and "pp" not in p and all(p[k] == v for k, v in at.items())),
                  key=lambda p: p["batch"])
    one = next((p for p in rows if p["batch"] == 1), None)
    first = one or next((p for p in points if "error" not in p), None)
    implied = batch_reaching(rows, published)
    weights = first["weight_bytes"] if first else None
    return {**{k: paper[k] for k in ("published_tokens_per_s", "source")},
            "point": at,
            "modeled_batch": first["batch"] if first else None,
            "modeled_tokens_per_s": first.get("tokens_per_s", 0.0) if first else 0.0,
            "ratio": one["tokens_per_s"] / published if one else None,
            "swept_batches": [p["batch"] for p in rows],
            "implied_batch": implied,
            # one sequence reads every weight once per token: at the HBM peak (public
            # figure, maiac/accelerators) that caps batch 1 whatever the compiler does
            "weight_bytes": weights, "hbm_peak_bytes_per_s": hbm_peak_bw,
            "batch1_ceiling_tokens_per_s": hbm_peak_bw / weights if weights else None}


def resolve_model(model: str) -> ModelShape:
    """A preset name or an ONNX KV-cache decoder path."""
    if model in PRESETS:
        c = PRESETS[model]
        return ModelShape(c.name, c.layers, c.kv_heads, c.hidden // c.heads, preset=c.name,
                          key=json.dumps(asdict(c), sort_keys=True))
    from maiac.generate import _gqa_head_dim, load_decoder

    path = Path(model)
    if not path.is_file():
        raise MaiacError(f"{model!r} is neither a model preset ({', '.join(PRESETS)}) nor an "
                         f"ONNX file")
    dec = load_decoder(path)
    if not dec.pairs:
        raise MaiacError(f"{model}: perf needs a KV-cache decoder (past_key_values.* inputs)")
    dims = dec.input_shape(dec.pairs[0].past)
    if len(dims) == 4 and not isinstance(dims[3], int):  # genai: from the QKV width
        dims[3] = _gqa_head_dim(dec.model, dec.pairs[0].past) or dims[3]
    if not isinstance(dims[1], int) or not isinstance(dims[3], int):
        raise MaiacError(f"{model}: cache input {dec.pairs[0].past!r} needs static heads and "
                         f"head_dim, got {dims}")
    return ModelShape(str(path), len(dec.pairs) // 2, int(dims[1]), int(dims[3]),
                      path=str(path.resolve()), key=dec.key)


def _preset_graph(shape: ModelShape, mode: str, batch: int, context: int, layers: int,
                  kv_cache: str, kv_update: str = "copy"
                  ) -> tuple[Any, dict[str, tuple[int, ...]] | None]:
    config = PRESETS[shape.preset or ""]
    if mode == "decode" and kv_update == "in-place":
        # the optimum interface generate runs: the cache [batch, kv_heads, context, hd]
        # updated in place at `cache_position`, attention masked by attention_mask
        model = models.kv_decoder(config, weights="shape_only", layers=layers,
                                  max_positions=context + 1)
        store_cache_as(model, kv_cache)
        cache_in_place(model)
        hd = config.hidden // config.heads
        shapes = {"input_ids": (batch, 1), "position_ids": (batch, 1),
                  "attention_mask": (batch, context + 1), POSITION_INPUT: (batch,)}
        for i in range(layers):
            for kind in ("key", "value"):
                shapes[f"past_key_values.{i}.{kind}"] = (batch, config.kv_heads, context, hd)
        return model, shapes
    kw = {"seq": context} if mode == "prefill" else {"context": context}
    model = models.llama_decoder(config, mode=mode, batch=batch, weights="shape_only",
                                 layers=layers, kv_outputs=True, **kw)
    if mode == "decode":
        new_slots_only(model)
    store_cache_as(model, kv_cache)
    return model, None


def _file_graph(shape: ModelShape, mode: str, batch: int, context: int,
                kv_cache: str, kv_update: str = "copy"
                ) -> tuple[Any, dict[str, tuple[int, ...]]]:
    from maiac.generate import _kv_shapes, load_decoder

    dec = load_decoder(shape.path or "")
    dec.batch = batch
    shapes = _kv_shapes(dec, context, 1) if mode == "prefill" else _kv_shapes(dec, 1, context)
    model = dec.model
    if mode == "decode" and kv_update == "in-place":
        store_cache_as(model, kv_cache)
        cache_in_place(model)
        shapes[POSITION_INPUT] = (batch,)
    else:
        new_slots_only(model)
        store_cache_as(model, kv_cache)
    return model, shapes


# ---------------------------------------------------------------------- one program

@dataclass(frozen=True)
class Task:
    model: ModelShape
    mode: str
    batch: int
    context: int
    quant: str
    kv_cache: str
    layers: int          # 0 = the whole file / config
    target: str
    target_params: tuple[tuple[str, str], ...]
    chips: int = 1
    kv_update: str = "copy"


def _code_fingerprint() -> str:
    """Changes when any compiler/runtime source file changes (the cache must not outlive it)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for sub in ("maiac", "passes", "runtime", "ir"):
        for p in sorted((root / sub).glob("*.py")) + sorted((root / sub).glob("*/*.py")):
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def task_key(task: Task) -> str:
    from maiac.runtime.target import get_target

    target = get_target(task.target, dict(task.target_params) or None).to_json()
    blob = json.dumps({"model": task.model.key, "mode": task.mode, "batch": task.batch,
                       "context": task.context, "quant": task.quant, "kv": task.kv_cache,
                       "layers": task.layers, "target": target, "chips": task.chips,
                       "kv_update": task.kv_update,
                       "code": _code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def run_task(task: Task) -> dict[str, Any]:
    """Compile one shape-only program and time it: the figures a point is made of."""
    import time

    start = time.perf_counter()
    kv_update = task.kv_update if task.mode == "decode" else "none"
    if task.model.preset:
        graph, shapes = _preset_graph(task.model, task.mode, task.batch, task.context,
                                      task.layers or PRESETS[task.model.preset].layers,
                                      task.kv_cache, task.kv_update)
    else:
        graph, shapes = _file_graph(task.model, task.mode, task.batch, task.context,
                                    task.kv_cache, task.kv_update)
    quant = None if task.quant in ("fp32", "none") else task.quant
    from maiac.ir.resources import scoped_store

    # a pool process runs many tasks: the resource handles a compile registers (RoPE tables,
    # masks; weights are never materialized, shape-only) go with its task, and so do the
    # program and its report (only the figures are returned)
    with scoped_store():
        return _compile_and_time(task, graph, shapes, quant, kv_update, start)


def _compile_and_time(task: Task, graph: Any, shapes: dict[str, tuple[int, ...]] | None,
                      quant: str | None, kv_update: str, start: float) -> dict[str, Any]:
    import time

    from maiac.driver import compile as compile_model
    from maiac.runtime.timing import simulate

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if task.chips > 1:  # ranks 0-1 time the group (maiac/chips.py)
                from maiac.chips import compile_chips

                group = compile_chips(graph, task.chips, quant=quant, shapes=shapes,
                                      target=task.target, shape_only=True, ranks="timing",
                                      target_params=dict(task.target_params) or None)
            else:
                compiled = compile_model(graph, quant=quant, shapes=shapes, target=task.target,
                                         target_params=dict(task.target_params) or None,
                                         shape_only=True)
    except MaiacError as err:
        if kv_update == "in-place" and "kv-cache-inplace" in str(err):
            return {**run_task(replace(task, kv_update="copy")), "kv_update": "copy"}
        return {"error": str(err), "compile_s": time.perf_counter() - start}
    rep = group.report() if task.chips > 1 else simulate(compiled.program).to_json()
    busy = {e["name"]: e["busy_s"] for e in rep["engines"]}
    return {
        "modeled_time_s": rep["modeled_time_s"], "hbm_bytes": rep["hbm_bytes"],
        "weight_bytes": rep["weight_bytes"], "flops": rep["flops"],
        "hbm_busy_s": rep.get("hbm_busy_s", 0.0), "ttu_busy_s": busy.get("ttu", 0.0),
        "tvp_busy_s": busy.get("tvp", 0.0),
        "dma_busy_s": max((v for k, v in busy.items() if k.startswith("dma")), default=0.0),
        "net_busy_s": max((c["net_busy_s"] for c in rep.get("per_chip", [])), default=0.0),
        "compile_s": time.perf_counter() - start, "kv_update": kv_update,
    }


class TaskCache:
    """Task results as JSON files, one per key (written atomically)."""

    def __init__(self, directory: str | None, enabled: bool) -> None:
        default = Path(os.environ.get("MAIAC_CACHE_DIR", Path.home() / ".cache" / "maiac")) / "perf"
        self.dir = Path(directory) if directory else default
        self.enabled = enabled

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.dir / f"{key}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled or "error" in value:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.dir / f"{key}.json")


def run_tasks(tasks: Sequence[Task], jobs: int, cache: TaskCache,
              progress: Callable[[str], None] | None = None) -> dict[Task, dict[str, Any]]:
    """Every task's figures: from the cache, else compiled in ``jobs`` processes."""
    results: dict[Task, dict[str, Any]] = {}
    todo: list[tuple[Task, str]] = []
    for task in dict.fromkeys(tasks):
        key = task_key(task)
        hit = cache.get(key)
        if hit is not None:
            results[task] = {**hit, "cached": True}
        else:
            todo.append((task, key))
    workers = jobs or min(4, os.cpu_count() or 1)
    if len(todo) <= 1 or workers <= 1:
        for i, (task, key) in enumerate(todo):
            results[task] = run_task(task)
            cache.put(key, results[task])
            if progress:
                progress(f"compiled {i + 1}/{len(todo)}")
        return results
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding xDSL state
    # (no max_tasks_per_child: this Python's pool does not replace the retired workers and
    # the sweep hangs once every worker has run its quota)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_task, task): (task, key) for task, key in todo}
        for i, fut in enumerate(concurrent.futures.as_completed(futures)):
            task, key = futures[fut]
            results[task] = fut.result()
            cache.put(key, results[task])
            if progress:
                progress(f"compiled {i + 1}/{len(todo)}")
    return results


# ------------------------------------------------------------------------ the sweep

def _combine(one: dict[str, Any], two: dict[str, Any], layers: int) -> dict[str, Any]:
    """Figures of ``layers`` layers from those of 1 and 2 layers (linear in the layer count)."""
    if "error" in one or "error" in two:
        return {"error": one.get("error") or two.get("error")}
    out = {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in SUMMED}
    out["compile_s"] = one["compile_s"] + two["compile_s"]
    out["kv_update"] = two.get("kv_update", "copy")
    out["cached"] = bool(one.get("cached") and two.get("cached"))
    return out


def _figures(results: dict[Task, dict[str, Any]], base: Task, shape: ModelShape,
             extrapolate: bool) -> dict[str, Any]:
    if not extrapolate:
        return results[base]
    return _combine(results[replace(base, layers=1)], results[replace(base, layers=2)],
                    shape.layers)


def _bound(fig: dict[str, Any]) -> str:
    """The engine whose busy time is the largest: HBM, TTU, TVP or DMA (queue setup/NoC)."""
    times = {"HBM": fig["hbm_busy_s"], "TTU": fig["ttu_busy_s"], "TVP": fig["tvp_busy_s"],
             "DMA": fig["dma_busy_s"]}
    return max(times, key=lambda k: times[k])


def sweep(model: str, options: PerfOptions | None = None,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The sweep's points (one dict per batch x context x quant x kv-cache) and its meta."""
    from maiac.runtime.target import get_target

    opts = options or PerfOptions()
    opts.check()
    shape = resolve_model(model)
    target = get_target(opts.target, opts.target_params)
    params = tuple(sorted((opts.target_params or {}).items()))
    extrapolate = shape.preset is not None and opts.layers == "extrapolate"
    layer_counts = (1, 2) if extrapolate else (0,)
    tasks: list[Task] = []
    for q in opts.quant:
        for kv in opts.kv_cache:
            for c in opts.context:
                for n in layer_counts:
                    for g in opts.chips:
                        tasks.append(Task(shape, "prefill", 1, c, q, kv, n, opts.target, params,
                                          g, opts.kv_update))
                        tasks += [Task(shape, "decode", b, c, q, kv, n, opts.target, params, g,
                                       opts.kv_update) for b in opts.batch]
    results = run_tasks(tasks, opts.jobs, TaskCache(opts.cache_dir, opts.use_cache), progress)
    base_layers = 0 if not extrapolate else 1
    points = []
    for q in opts.quant:
        for kv in opts.kv_cache:
            for c in opts.context:
                for b in opts.batch:
                    one_chip = None
                    for g in opts.chips:
                        pre = _figures(results, Task(shape, "prefill", 1, c, q, kv, base_layers,
                                                     opts.target, params, g, opts.kv_update),
                                       shape, extrapolate)
                        dec = _figures(results, Task(shape, "decode", b, c, q, kv, base_layers,
                                                     opts.target, params, g, opts.kv_update),
                                       shape, extrapolate)
                        point = _point(shape, target, opts, b, c, q, kv, pre, dec)
                        if len(opts.chips) > 1 or g > 1:
                            _chips_figures(point, g, shape, dec, one_chip, target.hbm_bytes)
                        one_chip = point if g == 1 and "error" not in point else one_chip
                        points.append(point)
                        for stages in opts.pp:
                            if stages > 1:
                                dec_task = Task(shape, "decode", b, c, q, kv, 1, opts.target,
                                                params, g, opts.kv_update)
                                points.append(_pipeline_point(
                                    point, stages, opts, results, dec_task, shape, target,
                                    extrapolate, c, one_chip))
    return {"model": shape.name, "target": target.name, "layers": shape.layers,
            "layers_mode": "extrapolated from 1 and 2 layers" if extrapolate else "all",
            "hbm_capacity_bytes": target.hbm_bytes, "tdp_w": TDP_W,
            "price_per_hour": opts.price_per_hour, "points": points}


TDP_W = 750.0  # Maia 200 SoC TDP, PUBLIC (MAIA200_FACTS.md [MS])


def _pipeline_point(point: dict[str, Any], stages: int, opts: PerfOptions,
                    results: dict[Task, dict[str, Any]], dec_task: Task, shape: ModelShape,
                    target: Any, extrapolate: bool, context: int,
                    one_chip: dict[str, Any] | None) -> dict[str, Any]:
    """``point`` (one TP group of ``dec_task.chips``) as ``stages`` pipeline stages."""
    from maiac.perf_pipeline import pipeline_figures

    if not extrapolate:
        raise MaiacError("--pp composes the per-layer times of a preset: it needs a preset "
                         "model and --layers extrapolate")
    out = dict(point)
    if "error" in out:
        out["pp"] = stages
        return out
    t1 = results[dec_task]["modeled_time_s"]
    t2 = results[replace(dec_task, layers=2)]["modeled_time_s"]
    pipeline_figures(out, stages, opts.micro_batches, t1, t2, shape.layers,
                     PRESETS[shape.preset or ""].hidden, dec_task.chips, target.hbm_bytes,
                     context, TDP_W, opts.price_per_hour)
    if one_chip is not None and one_chip.get("tokens_per_s"):
        out["speedup"] = out["tokens_per_s"] / one_chip["tokens_per_s"]
        out["scaling_efficiency"] = out["speedup"] / out["chips"]
    return out


def _chips_figures(point: dict[str, Any], chips: int, shape: ModelShape, dec: dict[str, Any],
                   one_chip: dict[str, Any] | None, hbm_bytes: float) -> None:
    """Tensor-parallel keys of a point: per-chip KV and fit (KV heads split, or shared by
    chips / kv_heads chips each), network share, speedup and scaling efficiency."""
    point["chips"] = chips
    if "error" in point:
        return
    kv_share = 1 / min(chips, shape.kv_heads)
    point["kv_cache_bytes_per_chip"] = point["kv_cache_bytes"] * kv_share
    point["hbm_per_chip_bytes"] = point["weight_bytes"] + point["kv_cache_bytes_per_chip"]
    point["fits"] = point["hbm_per_chip_bytes"] <= hbm_bytes
    per_seq = point["kv_cache_bytes_per_chip"] / point["batch"]
    point["max_batch"] = max(0, int((hbm_bytes - point["weight_bytes"]) // per_seq))
    point["tokens_per_s_per_chip"] = point["tokens_per_s"] / chips
    point["energy_per_token_j"] = point["energy_per_token_j"] * chips  # every chip draws TDP
    if point.get("usd_per_million_tokens") is not None:
        point["usd_per_million_tokens"] *= chips
    point["collective_share"] = dec.get("net_busy_s", 0.0) / point["tpot_s"]
    if one_chip is not None:
        point["speedup"] = one_chip["tpot_s"] / point["tpot_s"]
        point["scaling_efficiency"] = point["speedup"] / chips


def _point(shape: ModelShape, target: Any, opts: PerfOptions, batch: int, context: int,
           quant: str, kv: str, pre: dict[str, Any], dec: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"batch": batch, "context": context, "quant": quant,
                             "kv_cache": kv}
    kv_token = shape.kv_bytes_per_token(kv)
    point["kv_cache_bytes"] = kv_token * context * batch
    if "error" in dec or "error" in pre:
        point["error"] = dec.get("error") or pre.get("error")
        return point
    tpot = dec["modeled_time_s"]
    weights = dec["weight_bytes"]
    total = weights + point["kv_cache_bytes"]
    tokens_per_s = batch / tpot if tpot > 0 else 0.0
    point.update({
        "ttft_s": pre["modeled_time_s"], "tpot_s": tpot, "tokens_per_s": tokens_per_s,
        "weight_bytes": weights, "hbm_total_bytes": total,
        "fits": total <= target.hbm_bytes,
        "max_batch": max(0, int((target.hbm_bytes - weights) // (kv_token * context))),
        "bound": _bound(dec), "decode_hbm_traffic_bytes": dec["hbm_bytes"],
        "kv_update": dec.get("kv_update", "copy"),
        "decode_flops": dec["flops"], "prefill_flops": pre["flops"],
        "busy_s": {k: dec[f"{k}_busy_s"] for k in ("hbm", "ttu", "tvp", "dma")},
        "energy_per_token_j": TDP_W * tpot / batch,
        "usd_per_million_tokens": (opts.price_per_hour / 3600.0 / tokens_per_s * 1e6
                                   if opts.price_per_hour is not None and tokens_per_s else None),
        "compile_s": pre["compile_s"] + dec["compile_s"],
        "cached": bool(pre.get("cached") and dec.get("cached")),
    })
    return point
