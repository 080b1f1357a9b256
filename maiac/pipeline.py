"""Pipeline parallelism: compile a model as P stages of layers (each stage optionally a
tensor-parallel group of ``chips`` chips), run it, time it, save it.

``--pp P --chips N`` uses P x N chips: N-way tensor parallelism inside each of P stages
(chip ``s * N + r`` is rank r of stage s). ``compile_pipeline`` runs the front of the
pipeline (import, lowering, fusion) once, then per stage `pipeline-stage{stages=P
stage=s}` (passes/pipeline_stages.py), per rank `shard{chips=N rank=r}` and the rest.

Files: ``save("model.maia")`` writes ``model.stage0.maia`` .. (``model.stage0.chip1.maia``
with ``--chips``); every program names the whole group (``meta["pipeline"]["group"]``:
one list of file names per stage) and :func:`load_pipeline` reads them from the same
folder only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maiac.runtime.errors import MaiacError
from maiac.runtime.program import Program


@dataclass
class PipelineGroup:
    """The programs of a pipeline: ``stages[s]`` holds the chips of stage s."""

    stages: list[list[Program]]
    chips: int = 1  # tensor-parallel chips per stage
    micro_batches: int = 1
    compile_s: float = 0.0
    timing_only: bool = False
    runtime_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def total_chips(self) -> int:
        return len(self.stages) * self.chips

    @property
    def programs(self) -> list[Program]:
        return [p for programs in self.stages for p in programs]

    # -- run ------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray], *, backend: str = "local",
            ray_address: str | None = None) -> dict[str, np.ndarray]:
        """The outputs of one micro-batch (``inputs`` whole, as for one chip)."""
        if self.timing_only:
            raise MaiacError(f"this pipeline was compiled for timing only (ranks 0-1 of "
                             f"{self.chips} per stage); compile with ranks='all' to run it")
        from maiac.chips import BACKENDS

        if backend not in BACKENDS:
            raise MaiacError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "ray":
            from maiac.ray_backend import run_pipeline_on_ray

            out = run_pipeline_on_ray(self.stages, inputs, address=ray_address,
                                      cache=self.runtime_cache)
        else:
            from maiac.runtime.pipeline import run_pipeline

            out = run_pipeline(self.stages, inputs)
        order = (self.stages[-1][0].meta.get("pipeline") or {}).get("model_outputs") or list(out)
        return {k: out[k] for k in order if k in out}

    # -- time -----------------------------------------------------------------------
    def timing(self) -> list[list[Any]]:
        if "reports" not in self.runtime_cache:
            from maiac.runtime.pipeline import stage_times

            self.runtime_cache["reports"] = stage_times(self.stages, self.chips)
        return self.runtime_cache["reports"]

    def report(self, micro_batches: int | None = None) -> dict[str, Any]:
        """Per stage: modeled time, ops, layers, weights, bytes sent; the pipeline's fill,
        total time for ``micro_batches``, steady throughput and bubble."""
        from maiac.runtime.multichip import group_report
        from maiac.runtime.pipeline import pipeline_summary

        m = self.micro_batches if micro_batches is None else micro_batches
        rows = []
        for s, (reports, programs) in enumerate(zip(self.timing(), self.stages, strict=True)):
            r = group_report(reports, programs, self.chips)
            plan = programs[0].meta.get("pipeline") or {}
            rows.append({"stage": s, "chips": self.chips,
                         "first_chip": s * self.chips, "modeled_time_s": r["modeled_time_s"],
                         "ops": plan.get("ops"), "layers": plan.get("layers"),
                         "weight_bytes": r["weight_bytes_total"],
                         "sent_bytes": sum(x["bytes"] for x in plan.get("sends", [])),
                         "received_bytes": sum(x["bytes"] for x in plan.get("recvs", [])),
                         "collective_share": r["collective_share"],
                         "p2p_time_s": sum(c["time_s"] for c in r["collectives"]
                                           if c["collective"] in ("send", "recv"))})
            if s == 0:
                base = r
        summary = pipeline_summary([row["modeled_time_s"] for row in rows], m)
        out = dict(base)
        out.update({"chips": self.total_chips, "tensor_parallel": self.chips,
                    "pipeline": summary, "per_stage": rows,
                    "modeled_time_s": summary["total_s"],
                    "weight_bytes_total": sum(row["weight_bytes"] for row in rows),
                    "cut_bytes": (self.stages[0][0].meta.get("pipeline") or {}).get("cut_bytes")})
        if "tokens" in base and summary["steady_interval_s"] > 0:
            out["tokens_per_s"] = base["tokens"] * summary["micro_batches_per_s"]
        return out

    def write_trace(self, path: str | Path) -> None:
        """Perfetto: one process per chip (stage by stage), one track per engine."""
        import json

        from maiac.runtime.multichip import group_trace

        reports = [r for stage in self.timing() for r in stage]
        trace = group_trace(reports)
        for ev in trace["traceEvents"]:
            if ev.get("name") == "process_name":
                chip = ev["pid"] - 1
                ev["args"] = {"name": f"chip {chip} (stage {chip // self.chips}, modeled)"}
        Path(path).write_text(json.dumps(trace, separators=(",", ":")))

    # -- files ----------------------------------------------------------------------
    def paths(self, path: str | Path) -> list[list[Path]]:
        p = Path(path)
        stem = p.name[:-len(".maia")] if p.name.endswith(".maia") else p.name
        tp = len(self.stages[0])
        return [[p.with_name(f"{stem}.stage{s}.maia" if self.chips == 1 else
                             f"{stem}.stage{s}.chip{r}.maia") for r in range(tp)]
                for s in range(len(self.stages))]

    def save(self, path: str | Path) -> list[Path]:
        from maiac.runtime.program import save_program

        out = self.paths(path)
        names = [[q.name for q in stage] for stage in out]
        for programs, files in zip(self.stages, out, strict=True):
            for prog, q in zip(programs, files, strict=True):
                meta = prog.meta.setdefault("pipeline", {})
                meta.update({"group": names, "chips": self.chips,
                             "micro_batches": self.micro_batches,
                             "timing_only": self.timing_only})
                save_program(prog, q)
        return [q for files in out for q in files]


def load_pipeline(path: str | Path, keep_constants: bool = True) -> PipelineGroup | None:
    """The pipeline ``path`` belongs to, or None for a program of no pipeline."""
    from maiac.runtime.program import load_program

    first = load_program(path, keep_constants)
    meta = first.meta.get("pipeline") if isinstance(first.meta, dict) else None
    names = (meta or {}).get("group")
    if not names:
        return None
    folder = Path(path).parent
    stages = []
    for stage in names:
        files = []
        for name in stage if isinstance(stage, list) else [None]:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".maia"):
                raise MaiacError(f"{path}: bad pipeline member name {name!r} (a file name "
                                 f"in the same folder is expected)")
            f = folder / name
            if not f.is_file():
                raise MaiacError(f"{path} is one of a pipeline's programs; missing {name} "
                                 f"in {folder}")
            files.append(first if f.resolve() == Path(path).resolve()
                         else load_program(f, keep_constants))
        stages.append(files)
    return PipelineGroup(stages, int(meta.get("chips", 1)), int(meta.get("micro_batches", 1)),
                         timing_only=bool(meta.get("timing_only", False)))


def compile_pipeline(model: str | Path | onnx.ModelProto, stages: int, *, chips: int = 1,
                     micro_batches: int = 1, quant: str | None = None,
                     shapes: dict[str, tuple[int, ...]] | None = None,
                     target: str = "maia200", target_params: dict[str, str] | None = None,
                     pipeline: Any = None, shape_only: bool = False, calib: Any = None,
                     ranks: str = "all", verify_each: bool = True) -> PipelineGroup:
    """Compile ``model`` as ``stages`` pipeline stages of ``chips`` chips each."""
    from maiac import driver
    from maiac.chips import compile_front
    from maiac.passes.emit import emit_program
    from maiac.passes.pipeline_stages import PipelineStagePass
    from maiac.passes.shard import ShardPass
    from maiac.runtime.network import Network

    for name, value in (("--pp", stages), ("--chips", chips), ("--micro-batches", micro_batches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MaiacError(f"{name} must be a positive integer, got {value!r}")
    Network().check_group(stages * chips)
    if ranks not in ("all", "timing"):
        raise MaiacError(f"ranks must be 'all' or 'timing', got {ranks!r}")
    start = time.perf_counter()
    _, module, back, meta_base = compile_front(
        model, quant=quant, shapes=shapes, target=target, target_params=target_params,
        pipeline=pipeline, shape_only=shape_only, calib=calib, verify_each=verify_each,
        reserved=("shard", "pipeline-stage"),
        reserved_error="--pp adds the pipeline-stage (and shard) passes itself; leave them "
                       "out of --pipeline")
    ranks_todo = range(chips) if ranks == "all" or chips == 1 else range(min(chips, 2))
    out: list[list[Program]] = []
    for s in range(stages):
        staged = module.clone()
        driver.run_passes(staged, [PipelineStagePass(stages=stages, stage=s)],
                          verify_each=verify_each)
        programs = []
        for rank in ranks_todo:
            m = staged.clone()
            driver.run_passes(m, [ShardPass(chips=chips, rank=rank), *back],
                              verify_each=verify_each)
            programs.append(emit_program(m, dict(meta_base), shape_only=shape_only))
        out.append(programs)
    return PipelineGroup(out, chips, micro_batches, time.perf_counter() - start,
                         timing_only=len(ranks_todo) < chips)
