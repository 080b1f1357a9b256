"""Many chips: compile a model for a tensor-parallel group, run it, time it, save it.

``compile_chips`` runs the front of the pipeline (import, lowering, fusion) once, then
for every rank `shard{chips=N rank=r}` (passes/shard.py) and the rest of the pipeline
(quantize, tile, plan, schedule), so each chip gets its own program. ``ranks="timing"``
compiles only ranks 0 and 1: ranks 1..N-1 differ only in which slice of the weights they
hold (rank 0 also adds the biases and residuals), so their schedules are the same and a
group of any size is timed from two programs (a shape-only 70B at 32 chips compiles
twice, not 32 times); such a group can be reported, not run.

Files: ``save("model.maia")`` writes ``model.chip0.maia`` .. ``model.chip{N-1}.maia``
beside each other; every program names the whole group (``meta["shard"]["group"]``), and
:func:`load_group` reads the siblings from the same folder only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maiac.onnx_model import OnnxModel, open_model
from maiac.runtime.errors import MaiacError
from maiac.runtime.program import Program

BACKENDS = ("local", "ray")


@dataclass
class ChipGroup:
    """The programs of a tensor-parallel group (one per chip, or ranks 0-1 for timing)."""

    programs: list[Program]
    chips: int
    compile_s: float = 0.0
    timing_only: bool = False
    runtime_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- run ------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray], *, backend: str = "local",
            ray_address: str | None = None) -> dict[str, np.ndarray]:
        """The group's outputs for the whole (unsharded) inputs."""
        if self.timing_only:
            raise MaiacError(f"this group was compiled for timing only (ranks 0-1 of "
                             f"{self.chips}); compile with ranks='all' to run it")
        if backend not in BACKENDS:
            raise MaiacError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "ray":
            from maiac.ray_backend import run_on_ray

            return run_on_ray(self.programs, inputs, address=ray_address,
                              cache=self.runtime_cache)
        from maiac.runtime.multichip import run_chips

        return run_chips(self.programs, inputs)

    # -- time -----------------------------------------------------------------------
    def timing(self) -> list[Any]:
        if "reports" not in self.runtime_cache:
            from maiac.runtime.multichip import simulate_chips

            self.runtime_cache["reports"] = simulate_chips(self.programs,
                                                           group_size=self.chips)
        return self.runtime_cache["reports"]

    def report(self) -> dict[str, Any]:
        """The group report: makespan, per chip, collectives, network share."""
        from maiac.runtime.multichip import group_report

        return group_report(self.timing(), self.programs, self.chips)

    def write_trace(self, path: str | Path) -> None:
        """Chrome/Perfetto trace: one process per chip, one track per engine (incl. net)."""
        import json

        from maiac.runtime.multichip import group_trace

        Path(path).write_text(json.dumps(group_trace(self.timing()), separators=(",", ":")))

    # -- files ----------------------------------------------------------------------
    def paths(self, path: str | Path) -> list[Path]:
        p = Path(path)
        stem = p.name[:-len(".maia")] if p.name.endswith(".maia") else p.name
        return [p.with_name(f"{stem}.chip{r}.maia") for r in range(len(self.programs))]

    def save(self, path: str | Path) -> list[Path]:
        from maiac.runtime.program import save_program

        out = self.paths(path)
        names = [q.name for q in out]
        for prog, q in zip(self.programs, out, strict=True):
            prog.meta.setdefault("shard", {})["group"] = names
            prog.meta["shard"]["timing_only"] = self.timing_only
            save_program(prog, q)
        return out


class ShardedSession:
    """A tensor-parallel group as a generation session (the interface of
    runtime.session.Session that maiac/generate.py uses): each chip keeps its machine
    between runs and, in that machine's memory, its KV heads of every ``resident`` cache
    (``meta["shard"]["inputs"]`` says which; a cache not split is whole on every chip).
    A run sends only the other inputs; the decode program writes each chip's new rows
    into its heads in place (passes/shard.py splits ``maia.cache_write`` by heads), and
    :meth:`write_slots` hands each chip its heads of rows the host writes (the prompt's,
    or a Concat decode program's new ones)."""

    def __init__(self, group: ChipGroup, resident: Sequence[str] = ()) -> None:
        from maiac.runtime.multichip import ChipRunner, check_group
        from maiac.runtime.session import tensor_view

        if group.timing_only:
            raise MaiacError("a timing-only chip group cannot run a generation")
        check_group(group.programs)
        self.group = group
        self.runners = [ChipRunner(p) for p in group.programs]
        names = {s.name for s in group.programs[0].inputs}
        missing = [n for n in resident if n not in names]
        if missing:
            raise MaiacError(f"resident tensor {missing[0]!r} is not an input of the program")
        self.resident = list(resident)
        for runner in self.runners:
            for name in self.resident:
                tensor_view(runner.program, runner.machine, name)[...] = 0

    def write_slots(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` [B, H, n, D] (all heads) into slots ``start .. start + n`` of
        the resident cache ``name``: each chip gets its heads."""
        from maiac.runtime.multichip import local_inputs
        from maiac.runtime.session import tensor_view

        if name not in self.resident:
            raise MaiacError(f"{name!r} is not a resident input of this chip group")
        for runner in self.runners:
            part = local_inputs(runner.program, {name: values})[name]
            tensor_view(runner.program, runner.machine, name)[
                :, :, start:start + values.shape[2]] = part

    def run(self, inputs: dict[str, Any], outputs: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        from maiac.runtime.multichip import run_runners

        out = run_runners(self.runners, inputs, self.resident)
        return out if outputs is None else {k: out[k] for k in outputs}


def open_session(program: Program | ChipGroup, resident: Sequence[str] = ()) -> Any:
    """A generation session: runtime.session.Session for one chip's program, a
    :class:`ShardedSession` for a tensor-parallel group."""
    if isinstance(program, ChipGroup):
        return ShardedSession(program, resident)
    from maiac.runtime.session import Session

    return Session(program, resident)


def group_files(program: Program, path: str | Path) -> list[Path] | None:
    """The sibling files of a group member (None for a one-chip program)."""
    shard = (program.meta or {}).get("shard") if isinstance(program.meta, dict) else None
    names = (shard or {}).get("group")
    if not names:
        return None
    folder = Path(path).parent
    out = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".maia"):
            raise MaiacError(f"{path}: bad group member name {name!r} (a file name in the "
                             f"same folder is expected)")
        out.append(folder / name)
    return out


def load_group(path: str | Path, keep_constants: bool = True) -> ChipGroup | None:
    """The group ``path`` belongs to (all its programs), or None for a one-chip program.

    ``keep_constants=False``: for timing only (runtime.program.load_program)."""
    from maiac.runtime.program import load_program

    first = load_program(path, keep_constants)
    files = group_files(first, path)
    if files is None:
        return None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MaiacError(f"{path} is one of {len(files)} chip programs; missing {missing[0]} "
                         f"in {Path(path).parent}")
    programs = [first if f.resolve() == Path(path).resolve() else load_program(f, keep_constants)
                for f in files]
    shard = programs[0].meta["shard"]
    return ChipGroup(programs, int(shard.get("chips", len(programs))),
                     timing_only=bool(shard.get("timing_only", False)))


def _front_and_back(passes: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Split the pipeline where sharding goes: after the fusions, before quantize/tile."""
    names = [p.name for p in passes]
    for stop in ("quantize", "tile"):
        if stop in names:
            i = names.index(stop)
            return list(passes[:i]), list(passes[i:])
    raise MaiacError("--chips needs a pipeline with a 'tile' pass (shard runs before it)")


def compile_front(model: str | Path | onnx.ModelProto, *, quant: str | None,
                  shapes: dict[str, tuple[int, ...]] | None, target: str,
                  target_params: dict[str, str] | None, pipeline: Any, shape_only: bool,
                  calib: Any, verify_each: bool, reserved: tuple[str, ...],
                  reserved_error: str) -> tuple[OnnxModel, Any, list[Any], dict[str, Any]]:
    """What every chip of a group shares: the model opened once, imported, calibrated and
    run through the passes before sharding. Returns (model, module, the passes from
    quantize/tile on, the programs' common metadata). A ``reserved`` pass in the user's
    pipeline is the error ``reserved_error`` (the group compile inserts it itself)."""
    from maiac import driver

    opened = open_model(model)  # once: the importer and calibration share the graph
    module = driver.import_for_target(opened, shapes, target, target_params, shape_only)
    if pipeline is None:  # a model with its own quantization nodes (Quark MX) runs in them
        quant = driver.model_default_quant(module, quant)
    passes = driver.parse_passes(pipeline or driver.default_pipeline(quant))
    if any(p.name in reserved for p in passes):
        raise MaiacError(reserved_error)
    front, back = _front_and_back(passes)
    if not shape_only:
        driver.attach_calibration(module, opened, passes, calib, shapes)
    driver.run_passes(module, front, verify_each=verify_each)
    return opened, module, back, driver.program_meta(opened, quant)


def compile_chips(model: str | Path | onnx.ModelProto, chips: int, *, quant: str | None = None,
                  shapes: dict[str, tuple[int, ...]] | None = None, target: str = "maia200",
                  target_params: dict[str, str] | None = None, pipeline: Any = None,
                  shape_only: bool = False, calib: Any = None, ranks: str = "all",
                  verify_each: bool = True) -> ChipGroup:
    """Compile ``model`` for a tensor-parallel group of ``chips`` chips."""
    from maiac import driver
    from maiac.passes.shard import ShardPass
    from maiac.runtime.network import Network
    from maiac.runtime.program import Program as _Program  # noqa: F401 (typing clarity)

    if not isinstance(chips, int) or chips < 1:
        raise MaiacError(f"--chips must be a positive integer, got {chips!r}")
    Network().check_group(chips)
    if ranks not in ("all", "timing"):
        raise MaiacError(f"ranks must be 'all' or 'timing', got {ranks!r}")
    start = time.perf_counter()
    opened, module, back, meta_base = compile_front(
        model, quant=quant, shapes=shapes, target=target, target_params=target_params,
        pipeline=pipeline, shape_only=shape_only, calib=calib, verify_each=verify_each,
        reserved=("shard",),
        reserved_error="--chips adds the shard pass itself; leave it out of --pipeline")
    todo = range(chips) if ranks == "all" or chips == 1 else range(min(chips, 2))
    programs = []
    from maiac.passes.emit import emit_program

    for rank in todo:
        m = module.clone()
        driver.run_passes(m, [ShardPass(chips=chips, rank=rank), *back], verify_each=verify_each)
        programs.append(emit_program(m, dict(meta_base), shape_only=shape_only))
    if "mode" not in meta_base:  # a KV-cache decoder from its graph (tokens/s in reports)
        from maiac.decoder_props import decoder_props

        for prog in programs:  # every chip sees the whole batch's input_ids
            prog.meta.update(decoder_props(opened.proto, {t.name: t.shape for t in prog.inputs}))
    return ChipGroup(programs, chips, time.perf_counter() - start,
                     timing_only=len(programs) < chips)
