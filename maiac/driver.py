"""The compiler driver: ONNX file → pipeline of passes → Program, and the Python API."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx
from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.passes import ModulePass
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from maiac.importer import import_model
from maiac.ir.maia import forget_attr_values
from maiac.ir.onnx import make_context
from maiac.ir.resources import scoped_store
from maiac.onnx_model import OnnxModel, open_model
from maiac.passes.emit import emit_program
from maiac.passes.tile import TARGET_ATTR
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import frees_own_garbage
from maiac.runtime.program import Program, TensorSpec
from maiac.runtime.target import get_target

# Named stages: where `--emit` stops. Each stage is a pipeline string.
STAGES: dict[str, str] = {
    "onnx": "fold-constants,canonicalize",
    "maia": "lower-onnx-to-maia",
    "fuse": "fuse-norm,fuse-gelu,fuse-swiglu,fuse-rope,fuse-attention,kv-cache-inplace,"
            "fuse-epilogue",
    "tiled": "tile,double-buffer,interleave-stores,prefetch,plan-memory{resident=true},sync",
}
# The baseline bench/schedule.py compares against: fixed 128-blocks (no cost model, no
# split-K decode attention), one TSRAM set, no double buffering or prefetch, every
# instruction waiting for all engines to drain.
NAIVE_TILED = "tile{fixed=128},plan-memory,sync{naive=true}"
SCHEDULES = ("optimized", "naive")
EMIT_CHOICES = ("onnx", "maia", "tiled", "asm")


def default_pipeline(quant: str | None = None, schedule: str = "optimized") -> str:
    """The pipeline `maiac compile` runs for a quant spec (print it, edit it, pass it back).

    ``schedule="naive"``: the no-overlap baseline (``NAIVE_TILED``) instead of double
    buffering, prefetch and inferred semaphore waits.
    """
    if schedule not in SCHEDULES:
        raise MaiacError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    stages = [STAGES["onnx"], STAGES["maia"], STAGES["fuse"]]
    if quant:
        # a spec like "w=mxfp4,a=mxfp8e4m3" has the pipeline's own separators: quote it
        spec = quant if quant.replace("-", "").replace("_", "").isalnum() else json.dumps(quant)
        from maiac.passes.quant_spec import METHODS, parse_quant_spec

        parsed = parse_quant_spec(quant)
        chosen = parsed.methods if parsed is not None else ()
        stages += [METHODS[m].format(spec=spec) for m in METHODS if m in chosen]
        stages.append(f"quantize{{spec={spec}}}")
    stages.append(STAGES["tiled"] if schedule == "optimized" else NAIVE_TILED)
    return ",".join(stages)


def model_default_quant(module: builtin.ModuleOp, quant: str | None) -> str | None:
    """``quant``, or ``model`` when none is given and the model carries its own
    quantization nodes (AMD Quark MX): such a model runs in the formats it names."""
    from maiac.passes.quant_spec import MODEL_QUANT_ATTR, MODEL_SPEC

    if quant is None and MODEL_QUANT_ATTR in module.attributes:
        return MODEL_SPEC
    return quant


def context() -> Context:
    return make_context()


Pipeline = str | Sequence[ModulePass | str]


def parse_passes(pipeline: Pipeline) -> list[ModulePass]:
    """Pass objects from a pipeline string, or a list of pass objects and/or strings."""
    from maiac.passes.registry import parse_pipeline

    if isinstance(pipeline, str):
        return parse_pipeline(pipeline)
    passes: list[ModulePass] = []
    for item in pipeline:
        if isinstance(item, ModulePass):
            passes.append(item)
        elif isinstance(item, str):
            passes.extend(parse_pipeline(item))
        else:
            raise MaiacError(f"pipeline entry {item!r} is neither a pass nor a pass name")
    return passes


def printer_for(print_ir_after_all: bool, print_ir_after: Sequence[str],
                passes: Sequence[ModulePass] = ()) -> Callable[[str], bool] | None:
    """Which passes to dump the IR after (``--print-ir-after-all`` / ``--print-ir-after``).

    A name must be a registered pass or one of ``passes`` (unregistered pass objects).
    """
    if print_ir_after_all:
        return lambda _: True
    names = set(print_ir_after)
    if names:
        from maiac.passes.registry import PASSES

        unknown = names - set(PASSES) - {p.name for p in passes}
        if unknown:
            raise MaiacError(f"--print-ir-after: unknown pass {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(PASSES))})")
        return lambda name: name in names
    return None


@dataclass
class PassRecord:
    name: str
    seconds: float


@dataclass
class CompileLog:
    """What the pipeline did: time per pass (for --pass-timing)."""

    passes: list[PassRecord] = field(default_factory=list)


def run_passes(module: builtin.ModuleOp, passes: Sequence[ModulePass], *,
               print_after: Callable[[str], bool] | None = None, verify_each: bool = True,
               out: TextIO | None = None, log: CompileLog | None = None) -> None:
    """Apply ``passes`` in order; verify after each, naming the pass that broke the IR."""
    from maiac import progress

    ctx = context()
    with progress.step("compile", total=len(passes)) as bar:
        _run_passes(ctx, module, passes, bar, print_after, verify_each, out, log)


def _run_passes(ctx: Any, module: builtin.ModuleOp, passes: Sequence[ModulePass], bar: Any,
                print_after: Callable[[str], bool] | None, verify_each: bool,
                out: TextIO | None, log: CompileLog | None) -> None:
    for p in passes:
        bar.update(f"compile: {p.name}")
        start = time.perf_counter()
        p.apply(ctx, module)
        if log is not None:
            log.passes.append(PassRecord(p.name, time.perf_counter() - start))
        if verify_each:
            try:
                module.verify()
            except VerifyException as err:
                raise MaiacError(f"IR invalid after pass '{p.name}': {err}") from err
        if print_after is not None and print_after(p.name):
            stream = out or sys.stdout
            stream.write(f"// -----// IR Dump After {p.name} //----- //\n")
            Printer(stream=stream).print_op(module)
            stream.write("\n")
        bar.advance()


def import_for_target(model: str | Path | onnx.ModelProto | OnnxModel, shapes: dict[str, tuple[int, ...]] | None,
                      target: str, target_params: dict[str, str] | None,
                      shape_only: bool) -> builtin.ModuleOp:
    from maiac import progress

    with progress.step("import"):
        module = import_model(model, shapes, shape_only=shape_only)
    tgt = get_target(target, target_params)
    module.attributes[TARGET_ATTR] = builtin.StringAttr(json.dumps(tgt.to_json()))
    return module


def attach_calibration(module: builtin.ModuleOp, model: OnnxModel,
                       passes: Sequence[ModulePass], calib: Any,
                       shapes: dict[str, tuple[int, ...]] | None) -> None:
    """Run calibration (maiac/calibrate.py) when a `quantize` pass needs static activation
    scales or a `gptq` pass needs Hessians, and attach its tables to the module for those
    passes (``maia.calib``, the Hessian handle); one onnxruntime pass serves both.

    ``calib``: an .npz path or a dict of inputs; None calibrates on seeded random inputs.
    """
    from maiac.passes.quant_spec import parse_quant_spec

    specs = [parse_quant_spec(getattr(p, "spec", "")) for p in passes if p.name == "quantize"]
    need = [s for s in specs if s is not None and s.needs_calibration]
    want_hessians = any(p.name == "gptq" for p in passes)
    if not need and not want_hessians:
        return
    from maiac.calibrate import amax_table, collect_activations, hessian_table

    acts = collect_activations(model, calib, shapes=shapes)
    if want_hessians:
        from maiac.passes.gptq import HESSIAN_ATTR, register_hessians

        module.attributes[HESSIAN_ATTR] = builtin.StringAttr(
            register_hessians(hessian_table(acts)))
    if need:
        from maiac.passes.quantize import CALIB_ATTR

        amax = amax_table(acts, method=need[0].calib_method,
                          percentile=need[0].calib_percentile)
        module.attributes[CALIB_ATTR] = builtin.StringAttr(json.dumps(amax))


def compile_module(model: str | Path | onnx.ModelProto | OnnxModel, *, quant: str | None = None,
                   shapes: dict[str, tuple[int, ...]] | None = None, target: str = "maia200",
                   target_params: dict[str, str] | None = None, pipeline: Pipeline | None = None,
                   shape_only: bool = False, print_ir_after_all: bool = False,
                   print_ir_after: Sequence[str] = (), verify_each: bool = True,
                   log: CompileLog | None = None, out: TextIO | None = None,
                   calib: Any = None) -> builtin.ModuleOp:
    """Import and run the whole pipeline; returns the tiled, planned module."""
    model = open_model(model)  # once: the importer and calibration share the graph
    module = import_for_target(model, shapes, target, target_params, shape_only)
    passes = parse_passes(pipeline or default_pipeline(model_default_quant(module, quant)))
    if not shape_only:  # shape-only weights cannot run; quantize uses placeholder scales
        attach_calibration(module, model, passes, calib, shapes)
    run_passes(module, passes, print_after=printer_for(print_ir_after_all, print_ir_after, passes),
               verify_each=verify_each, out=out, log=log)
    return module


@dataclass
class StageIR:
    """A module compiled up to an ``--emit`` stage, with what compiling it further needs:
    ``rest``, the pipeline still to run (None when the pipeline is not a string),
    ``meta``, the program metadata ``compile`` would give it, and ``decoder``, the
    decoder properties ``compile`` adds after emitting (in that order, so the manifests
    are the same bytes)."""

    module: builtin.ModuleOp
    rest: str | None
    meta: dict[str, Any]
    decoder: dict[str, Any] = field(default_factory=dict)


def compile_to_stage(model: str | Path | onnx.ModelProto, *, emit: str,
                     print_ir_after_all: bool = False, quant: str | None = None,
                     shapes: dict[str, tuple[int, ...]] | None = None, target: str = "maia200",
                     target_params: dict[str, str] | None = None,
                     pipeline: Pipeline | None = None, shape_only: bool = False,
                     out: TextIO | None = None, print_ir_after: Sequence[str] = (),
                     verify_each: bool = True, log: CompileLog | None = None,
                     calib: Any = None) -> StageIR:
    """Import ``model`` and run the pipeline up to stage ``emit`` (onnx, maia, tiled, asm)."""
    if emit not in EMIT_CHOICES:
        raise MaiacError(f"--emit must be one of {', '.join(EMIT_CHOICES)}, got {emit!r}")
    model = open_model(model)
    module = import_for_target(model, shapes, target, target_params, shape_only)
    text = pipeline if pipeline is not None else default_pipeline(
        model_default_quant(module, quant))
    full = parse_passes(text)
    # Stop where the next stage begins, so passes added inside a stage (a plugin's
    # fusion after lowering, quantize) still run before the IR is printed.
    next_stage = {"onnx": STAGES["maia"], "maia": STAGES["tiled"]}.get(emit)
    stop = next_stage.split(",")[0].split("{")[0] if next_stage else None
    passes = list(itertools.takewhile(lambda p: p.name != stop, full))
    if not shape_only:  # quantize after the stage (compile FILE.mlir) gets its scales too
        later = [p for p in full[len(passes):] if p.name == "quantize"]
        attach_calibration(module, model, passes + later, calib, shapes)
    run_passes(module, passes, print_after=printer_for(print_ir_after_all, print_ir_after, full),
               verify_each=verify_each, out=out, log=log)
    rest = None
    if isinstance(text, str):
        from xdsl.utils.arg_spec import parse_pipeline as parse_specs

        rest = ",".join(str(spec) for spec in list(parse_specs(text))[len(passes):])
    meta = program_meta(model, model_default_quant(module, quant) if pipeline is None
                        else quant)
    decoder: dict[str, Any] = {}
    if "mode" not in meta:  # a KV-cache decoder from its graph, as compile() finds it
        from maiac.decoder_props import decoder_props

        decoder = decoder_props(model.proto, _main_input_shapes(module))
    return StageIR(module, rest, meta, decoder)


def _main_input_shapes(module: builtin.ModuleOp) -> dict[str, tuple[int, ...]]:
    """``{onnx name: static shape}`` of the arguments of the module's ``main``."""
    from xdsl.dialects import func

    shapes: dict[str, tuple[int, ...]] = {}
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            attrs = op.arg_attrs.data if op.arg_attrs is not None else ()
            for arg, extra in zip(op.body.block.args, attrs, strict=False):
                name = extra.data.get("onnx.name")
                if isinstance(name, builtin.StringAttr) and isinstance(arg.type,
                                                                       builtin.TensorType):
                    shapes[name.data] = tuple(arg.type.get_shape())
    return shapes


def compile_to_ir(model: str | Path | onnx.ModelProto, *, emit: str,
                  print_ir_after_all: bool = False, quant: str | None = None,
                  shapes: dict[str, tuple[int, ...]] | None = None, target: str = "maia200",
                  target_params: dict[str, str] | None = None, pipeline: Pipeline | None = None,
                  shape_only: bool = False, out: TextIO | None = None,
                  print_ir_after: Sequence[str] = (), verify_each: bool = True,
                  log: CompileLog | None = None, calib: Any = None,
                  weights_dir: str | None = None, ir_path: str | None = None) -> str:
    """The IR (or the assembly listing) at stage ``emit`` as text.

    The IR's ``maia.emitted`` attribute records the passes still to run and the program
    metadata, so ``maiac compile FILE.mlir`` continues from it (maiac/ir_file.py).
    ``weights_dir``: also write the weights there, named in the IR relative to the file
    ``ir_path`` it will be written to (None: the current directory)."""
    if weights_dir is not None and emit == "asm":
        raise MaiacError("--emit-weights writes the weights of IR: not with --emit asm")
    stage = compile_to_stage(model, emit=emit, print_ir_after_all=print_ir_after_all,
                             quant=quant, shapes=shapes, target=target,
                             target_params=target_params, pipeline=pipeline,
                             shape_only=shape_only, out=out, print_ir_after=print_ir_after,
                             verify_each=verify_each, log=log, calib=calib)
    if emit == "asm":
        from maiac.runtime.listing import format_program

        return format_program(emit_program(stage.module))
    from maiac.ir_file import stage_text, write_weights

    if weights_dir is not None:
        write_weights(stage.module, weights_dir, ir_path)
    return stage_text(stage, emit)


@dataclass
class CompiledModel:
    """A compiled program plus how it was made; ``run`` it, ``save`` it, ``report`` on it."""

    program: Program
    compile_s: float = 0.0
    log: CompileLog = field(default_factory=CompileLog)
    # of the latest run: {"nonfinite_quantized": NaN/Inf values TVP quantize encoded}
    last_run_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> list[TensorSpec]:
        """The program's inputs (``.name``, ``.shape``, ``.dtype``), as onnxruntime's
        ``get_inputs()``."""
        return list(self.program.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        """The program's outputs (``.name``, ``.shape``, ``.dtype``)."""
        return list(self.program.outputs)

    def run(self, inputs: dict[str, np.ndarray], *, trace: str | Path | None = None
            ) -> dict[str, np.ndarray]:
        """Outputs by name; ``trace``: also write the modeled timeline as Chrome JSON."""
        from maiac import progress

        self.last_run_stats = {}
        outputs = progress.run_program(self.program, inputs, stats=self.last_run_stats)
        if trace is not None:
            from maiac.runtime.timing import simulate
            from maiac.runtime.trace import write_chrome_trace

            write_chrome_trace(simulate(self.program), trace)
        return outputs

    def save(self, path: str | Path) -> None:
        from maiac.runtime.program import save_program

        save_program(self.program, path)

    def report(self) -> dict[str, Any]:
        from maiac.runtime.timing import simulate

        return simulate(self.program).to_json()


def _input_ranges(proto: onnx.ModelProto) -> dict[str, int]:
    """Vocabulary sizes of token-id inputs, so `maiac run` can draw valid random ids."""
    from maiac.inputs import infer_int_ranges

    try:
        return infer_int_ranges(proto)
    except Exception:  # a hint only; the importer already validated the model
        return {}


def program_meta(model: OnnxModel, quant: str | None) -> dict[str, Any]:
    """The manifest metadata every program compiled from ``model`` carries: its name, the
    quant spec, token-id ranges and the ``maiac.*`` mode/tokens hints."""
    return {"model": model.path or model.proto.graph.name or "model", "quant": quant or "fp32",
            "input_ranges": _input_ranges(model.proto), **_model_props(model.proto)}


def _model_props(proto: onnx.ModelProto) -> dict[str, Any]:
    """``mode`` (prefill/decode) and ``tokens`` per call from the model's ``maiac.*``
    metadata (maiac.models sets them), for the report's tokens/s."""
    props = {p.key: p.value for p in proto.metadata_props}
    out: dict[str, Any] = {}
    if props.get("maiac.mode") in ("prefill", "decode"):
        out["mode"] = props["maiac.mode"]
    if props.get("maiac.tokens", "").isdigit():
        out["tokens"] = int(props["maiac.tokens"])
    return out


def compile(model: str | Path | onnx.ModelProto, *, quant: str | None = None,  # noqa: A001
            shapes: dict[str, tuple[int, ...]] | None = None, target: str = "maia200",
            target_params: dict[str, str] | None = None, pipeline: Pipeline | None = None,
            shape_only: bool = False, calib: str | None = None, verify_each: bool = True,
            print_ir_after: Sequence[str] = (), out: TextIO | None = None,
            schedule: str = "optimized", chips: int = 1, pp: int = 1,
            micro_batches: int = 1) -> Any:
    """Compile an ONNX model (path or ModelProto) for the Maia 200 machine model.

    ``pipeline``: a pipeline string ("fold-constants,...") or a list of pass objects and
    names; default ``default_pipeline(quant, schedule)``. ``compiled.log`` has the time
    per pass. ``chips`` > 1: tensor parallelism, one program per chip — returns a
    ``maiac.chips.ChipGroup`` (``run``, ``report``, ``save`` as here). ``pp`` > 1:
    pipeline parallelism over ``pp`` stages of layers (``chips`` chips each; the report's
    fill, bubble and throughput for ``micro_batches``) — a ``maiac.pipeline.PipelineGroup``.
    """
    if pp != 1 or micro_batches != 1:
        from maiac.pipeline import compile_pipeline

        if pipeline is None and schedule != "optimized":
            pipeline = default_pipeline(quant, schedule)
        return compile_pipeline(model, pp, chips=chips, micro_batches=micro_batches,
                                quant=quant, shapes=shapes, target=target,
                                target_params=target_params, pipeline=pipeline,
                                shape_only=shape_only, calib=calib, verify_each=verify_each)
    if chips != 1:
        from maiac.chips import compile_chips

        if pipeline is None and schedule != "optimized":
            pipeline = default_pipeline(quant, schedule)
        return compile_chips(model, chips, quant=quant, shapes=shapes, target=target,
                             target_params=target_params, pipeline=pipeline,
                             shape_only=shape_only, calib=calib, verify_each=verify_each)
    start = time.perf_counter()
    log = CompileLog()
    if pipeline is None and schedule != "optimized":
        pipeline = default_pipeline(quant, schedule)
    opened = open_model(model)
    from maiac import progress

    # The weights this compile registers (mapped external data, folded and quantized
    # copies) go when the program holds its own bytes: a process that compiles many
    # models, or compiles and then runs onnxruntime, does not keep them all mapped.
    # the module's cycles go at the end of the compile, not after the first run
    with frees_own_garbage(), scoped_store():
        module = compile_module(opened, quant=quant, shapes=shapes, target=target,
                                target_params=target_params, pipeline=pipeline,
                                shape_only=shape_only, log=log, verify_each=verify_each,
                                print_ir_after=print_ir_after, out=out, calib=calib)
        if pipeline is None:
            quant = model_default_quant(module, quant)
        meta = program_meta(opened, quant)
        with progress.step("emit"):
            program = emit_program(module, meta, shape_only=shape_only)
        del module
        forget_attr_values()  # its attributes, kept by the value cache
    if "mode" not in program.meta:  # a KV-cache decoder from its graph (tokens/s in reports)
        from maiac.decoder_props import decoder_props

        program.meta.update(decoder_props(opened.proto,
                                          {t.name: t.shape for t in program.inputs}))
    return CompiledModel(program, time.perf_counter() - start, log)
