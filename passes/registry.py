"""Passes by name, for ``--pipeline "a,b{opt=v}"``, ``maiac opt -p`` and plugin authors.

A pass is an xDSL ``ModulePass`` (a frozen dataclass whose fields are its options);
``@register_pass`` makes it usable by name. ``parse_pipeline`` reads xDSL's pipeline
syntax and names the unknown pass or option in a ``MaiacError``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TypeVar

from xdsl.passes import ModulePass, get_pass_option_infos
from xdsl.utils.arg_spec import ArgSpecParseError
from xdsl.utils.arg_spec import parse_pipeline as parse_pipeline_specs

from maiac.runtime.errors import MaiacError

PassT = TypeVar("PassT", bound=type[ModulePass])

PASSES: dict[str, type[ModulePass]] = {}
"""Pass name → pass class, for every registered pass."""


def register_pass(cls: PassT) -> PassT:
    """Class decorator: make a ``ModulePass`` usable by its ``name`` in pipelines."""
    assert issubclass(cls, ModulePass), f"{cls!r} is not an xdsl ModulePass"
    assert isinstance(getattr(cls, "name", None), str), f"{cls.__name__} needs a `name`"
    if "__dataclass_fields__" not in cls.__dict__:
        cls = dataclasses.dataclass(frozen=True)(cls)  # options are dataclass fields
    existing = PASSES.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise MaiacError(f"pass '{cls.name}' is registered twice ({existing.__module__}, {cls.__module__})")
    PASSES[cls.name] = cls
    return cls


def pass_options(cls: type[ModulePass]) -> list[str]:
    """``name: type = default`` for each option of a pass."""
    return [
        f"{info.name.replace('_', '-')}: {info.expected_type.strip(chr(39))}"
        + (f" = {info.default_value}" if info.default_value is not None else "")
        for info in get_pass_option_infos(cls)
    ]


def parse_pipeline(text: str) -> list[ModulePass]:
    """The passes of a pipeline string ``"p1,p2{opt=v}"``, in order."""
    try:
        specs = list(parse_pipeline_specs(text))
    except ArgSpecParseError as err:
        raise MaiacError(f"pipeline '{text}': {str(err).strip().splitlines()[-1].strip()}") from None
    passes = []
    for spec in specs:
        cls = PASSES.get(spec.name)
        if cls is None:
            raise MaiacError(
                f"pipeline '{text}': unknown pass '{spec.name}' "
                f"(known passes: {', '.join(sorted(PASSES))})"
            )
        options = "; ".join(pass_options(cls)) or "none"
        known = {info.name for info in get_pass_option_infos(cls)}
        unknown = [k for k in spec.parameters if k.replace("-", "_") not in known]
        if unknown:
            raise MaiacError(f"pipeline '{text}': pass '{spec.name}' has no option "
                             f"'{unknown[0]}' (options: {options})")
        try:
            passes.append(cls.from_spec(spec))
        except (ValueError, TypeError) as err:
            raise MaiacError(
                f"pipeline '{text}': pass '{spec.name}': {err} (options: {options})"
            ) from None
    return passes


def load_pass_plugin(path: str | Path) -> None:
    """Import a user's Python file so its ``@register_pass`` classes become available."""
    path = Path(path)
    if not path.is_file():
        raise MaiacError(f"--load-pass-plugin {path}: no such file")
    name = f"maiac_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MaiacError(f"--load-pass-plugin {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except MaiacError:
        raise
    except Exception as err:
        raise MaiacError(f"--load-pass-plugin {path}: {type(err).__name__}: {err}") from None


# maiac's own passes: module → pass class. Add yours here.
BUILTIN_PASSES: list[tuple[str, str]] = [
    ("maiac.passes.fold_constants", "FoldConstantsPass"),
    ("maiac.passes.canonicalize", "CanonicalizePass"),
    ("maiac.passes.canonicalize", "DeadCodeEliminationPass"),
    ("maiac.passes.lower_onnx", "LowerOnnxToMaiaPass"),
    ("maiac.passes.fuse_norm", "FuseNormPass"),
    ("maiac.passes.fuse_gelu", "FuseGeluPass"),
    ("maiac.passes.fuse_swiglu", "FuseSwigluPass"),
    ("maiac.passes.fuse_rope", "FuseRopePass"),
    ("maiac.passes.fuse_attention", "FuseAttentionPass"),
    ("maiac.passes.kv_cache_inplace", "KVCacheInPlacePass"),
    ("maiac.passes.fuse_epilogue", "FuseEpiloguePass"),
    ("maiac.passes.shard", "ShardPass"),
    ("maiac.passes.pipeline_stages", "PipelineStagePass"),
    ("maiac.passes.rotate_hadamard", "RotateHadamardPass"),
    ("maiac.passes.gptq", "GptqPass"),
    ("maiac.passes.quantize", "QuantizePass"),
    ("maiac.passes.tile", "TilePass"),
    ("maiac.passes.plan_memory", "PlanMemoryPass"),
    ("maiac.passes.schedule", "DoubleBufferPass"),
    ("maiac.passes.interleave_stores", "InterleaveStoresPass"),
    ("maiac.passes.schedule", "SyncPass"),
    ("maiac.passes.prefetch", "PrefetchPass"),
]


def _register_builtin_passes() -> None:
    for module_name, class_name in BUILTIN_PASSES:
        register_pass(getattr(importlib.import_module(module_name), class_name))


_register_builtin_passes()
