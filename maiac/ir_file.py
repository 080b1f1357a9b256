"""IR text as compiler input (``maiac compile FILE.mlir``, ``maiac opt``), with its weights.

IR text names each weight by handle only (``dense_resource<W>``); the bytes live in the
process that compiled it (ir/resources.py). ``--emit-weights DIR`` writes them beside the
IR: one ``DIR/NNNNN.npy`` per weight (``np.save``, ``allow_pickle=False``; the ml_dtypes
formats, which .npy cannot name, stored as unsigned integers of their width) and
``DIR/weights.json``, the index (handle, file, dtype, shape, sha256). The module's
``maia.weights`` attribute records DIR relative to the IR file (to the current directory
when the IR went to stdout), and ``maia.emitted`` the passes still to run and the program
metadata, so compiling the IR gives the program compiling the model would have.

Reading trusts nothing in DIR: the index is bounded JSON; each file is a bare name inside
DIR (no path, no symlink out of it), a C-order .npy whose dtype and shape match both the
index and the IR's tensor type, with the index's sha256. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import builtin
from xdsl.dialects.builtin import DenseResourceAttr, StringAttr, TensorType

from maiac.runtime.errors import MaiacError

EMITTED_ATTR = "maia.emitted"
WEIGHTS_ATTR = "maia.weights"
INDEX = "weights.json"
INDEX_FORMAT = "maiac-weights"
INDEX_VERSION = 1
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.npy")


# ----------------------------------------------------------------------------- reading IR


def read_ir(file: str) -> str:
    """The text of ``file`` (``-``: stdin), checked to be UTF-8."""
    from maiac.cli_options import existing_file

    if file == "-":
        return sys.stdin.read()
    existing_file(file, "IR file")
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MaiacError(f"{file}: not UTF-8 text (byte {err.start}): not an IR file") from None


def parse_ir(text: str, file: str) -> builtin.ModuleOp:
    """The verified module of IR ``text`` (errors name ``file``)."""
    from xdsl.parser import Parser
    from xdsl.utils.exceptions import ParseError, VerifyException

    from maiac.opt_cmd import make_context

    try:
        module = Parser(make_context(), text, file).parse_module()
    except ParseError as e:
        raise MaiacError(f"{file}: cannot parse IR:\n{e}") from None
    except RecursionError:
        raise MaiacError(f"{file}: cannot parse IR: nested too deeply") from None
    try:
        module.verify()
    except VerifyException as e:
        raise MaiacError(f"{file}: input IR does not verify: {e}") from None
    return module


def module_text(module: builtin.ModuleOp) -> str:
    """``module`` printed, ending in one newline."""
    from xdsl.printer import Printer

    buf = io.StringIO()
    Printer(stream=buf).print_op(module)
    return buf.getvalue().rstrip("\n") + "\n"


def stage_text(stage: Any, emit: str) -> str:
    """The IR of a ``driver.StageIR``, recording in ``maia.emitted`` how to go on."""
    info = {"stage": emit, "meta": stage.meta, "decoder": stage.decoder}
    if stage.rest is not None:
        info["rest"] = stage.rest
    # key order kept (json keeps it): the program's manifest is the same bytes
    stage.module.attributes[EMITTED_ATTR] = StringAttr(json.dumps(info))
    return module_text(stage.module)


def emitted_info(module: builtin.ModuleOp, file: str) -> dict[str, Any]:
    """The ``maia.emitted`` record of IR from ``maiac compile --emit`` ({} if none)."""
    attr = module.attributes.get(EMITTED_ATTR)
    if attr is None:
        return {}
    try:
        info = json.loads(attr.data) if isinstance(attr, StringAttr) else None
    except ValueError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("meta", {}), dict) \
            or not isinstance(info.get("decoder", {}), dict) \
            or not isinstance(info.get("rest", ""), str):
        raise MaiacError(f"{file}: attribute {EMITTED_ATTR} is not the JSON object "
                         f"`maiac compile --emit` writes")
    return info


# ----------------------------------------------------------------------------- handles


def resource_types(module: builtin.ModuleOp) -> dict[str, TensorType]:
    """Each ``dense_resource`` handle of ``module`` with its tensor type."""
    found: dict[str, TensorType] = {}
    for op in module.walk():
        for attrs in (op.attributes, op.properties):
            for value in attrs.values():
                if isinstance(value, DenseResourceAttr):
                    found[value.resource_handle.data] = value.type
    return found


def rename_handles(module: builtin.ModuleOp, mapping: dict[str, str]) -> None:
    """Point every ``dense_resource`` of ``module`` whose handle is in ``mapping`` at its
    new handle."""
    for op in module.walk():
        for attrs in (op.attributes, op.properties):
            for key, value in list(attrs.items()):
                if isinstance(value, DenseResourceAttr) and \
                        value.resource_handle.data in mapping:
                    attrs[key] = DenseResourceAttr.from_params(
                        mapping[value.resource_handle.data], value.type)


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    """How a dtype is stored in .npy: as itself, or (ml_dtypes) as uintN of its width."""
    return dtype if dtype.kind in "biuf" else np.dtype(f"<u{dtype.itemsize}")


# ----------------------------------------------------------------------------- writing


def write_weights(module: builtin.ModuleOp, folder: str, ir_output: str | None) -> int:
    """Write every weight of ``module`` to ``folder`` (created if missing) and record it
    in ``maia.weights``, relative to the IR file ``ir_output`` (None: stdout, the current
    directory). Returns the number of weights written."""
    from maiac.ir.resources import get_array, is_materializable
    from maiac.outputs import atomic_path

    types = resource_types(module)
    absent = [h for h in types if not is_materializable(h)]
    if absent:
        raise MaiacError(f"--emit-weights {folder}: weight {absent[0]!r} has no data (a "
                         f"shape-only compile has none to write)")
    dest = Path(folder)
    if folder == "-":
        raise MaiacError("--emit-weights -: the weights are a folder of files, not stdout")
    if dest.exists() and not dest.is_dir():
        raise MaiacError(f"--emit-weights {folder}: exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, handle in enumerate(sorted(types)):
        arr = np.ascontiguousarray(get_array(handle))
        name = f"{i:05d}.npy"
        with atomic_path(dest / name, "--emit-weights") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr.view(_storage_dtype(arr.dtype)), allow_pickle=False)
            digest = _sha256(Path(tmp))
        entries.append({"handle": handle, "file": name, "dtype": arr.dtype.name,
                        "shape": list(arr.shape), "sha256": digest})
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "weights": entries}
    with atomic_path(dest / INDEX, "--emit-weights") as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    record_folder(module, dest, ir_output)
    return len(entries)


def record_folder(module: builtin.ModuleOp, folder: Path, ir_output: str | None) -> None:
    """Name ``folder`` in ``maia.weights``, relative to the IR file ``ir_output`` (None or
    ``-``: stdout, relative to the current directory)."""
    base = Path(ir_output).parent if ir_output not in (None, "-") else Path(".")
    module.attributes[WEIGHTS_ATTR] = StringAttr(Path(os.path.relpath(folder, base)).as_posix())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- loading


def weights_folder(module: builtin.ModuleOp, file: str, override: str | None) -> Path | None:
    """The weights folder of IR ``file``: ``override`` (``--weights``), else its
    ``maia.weights`` attribute resolved against the IR file's folder; None if neither."""
    if override is not None:
        return Path(override)
    attr = module.attributes.get(WEIGHTS_ATTR)
    if attr is None:
        return None
    if not isinstance(attr, StringAttr) or not attr.data:
        raise MaiacError(f"{file}: attribute {WEIGHTS_ATTR} must name a folder")
    base = Path(file).parent if file != "-" else Path(".")
    return base / attr.data


def attach_weights(module: builtin.ModuleOp, file: str, override: str | None = None
                   ) -> tuple[dict[str, str], list[str]]:
    """Load the weights of IR ``file`` from its folder into this process's store, under
    fresh handles (so they never collide with another module's), and point the module at
    them. Returns ({original handle: new handle}, handles left without data).

    Without a folder, each handle gets a fresh entry that has no data (as a shape-only
    import's weights): a handle of IR text never resolves to whatever tensor of this
    process happens to have that name."""
    from maiac.ir.resources import numpy_dtype, register_array, register_lazy

    types = resource_types(module)
    folder = weights_folder(module, file, override)
    if not types:
        return {}, []
    if folder is None:
        mapping = {h: register_lazy(_no_data(h), tuple(t.get_shape()),
                                    numpy_dtype(t.get_element_type()), h,
                                    available=lambda: False)
                   for h, t in sorted(types.items())}
        rename_handles(module, mapping)
        return mapping, sorted(types)
    index = _read_index(folder)
    mapping: dict[str, str] = {}
    for handle, ttype in sorted(types.items()):
        entry = index.get(handle)
        if entry is None:
            raise MaiacError(f"{folder / INDEX}: no weight {handle!r}, which {file} uses (the "
                             f"IR changed after its weights were written: write them again "
                             f"with --emit-weights)")
        mapping[handle] = register_array(_load_entry(folder, handle, entry, ttype), handle)
    rename_handles(module, mapping)
    return mapping, []


def _no_data(handle: str) -> Any:
    def load() -> np.ndarray:
        raise MaiacError(f"weight {handle!r} of IR text has no data (no weights folder)")
    return load


def _read_index(folder: Path) -> dict[str, dict[str, Any]]:
    from maiac.runtime import limits

    if not folder.is_dir():
        raise MaiacError(f"weights folder {folder}: no such directory (write it with "
                         f"`maiac compile MODEL --emit maia -o IR.mlir --emit-weights DIR`, "
                         f"or name it with --weights DIR)")
    path = folder / INDEX
    try:
        size = path.stat().st_size
        if size > limits.MAX_MANIFEST_BYTES:
            raise MaiacError(f"{path}: {size} bytes, over the bound of "
                             f"{limits.MAX_MANIFEST_BYTES} (runtime/limits.py)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaiacError(f"weights folder {folder}: no {INDEX} index") from None
    except (OSError, ValueError, RecursionError) as err:
        raise MaiacError(f"{path}: not a readable JSON index: {err}") from None
    problem = limits.json_depth_problem(data)
    if problem:
        raise MaiacError(f"{path}: {problem}")
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT \
            or data.get("version") != INDEX_VERSION or not isinstance(data.get("weights"), list):
        raise MaiacError(f"{path}: not a {INDEX_FORMAT} index of version {INDEX_VERSION}")
    index: dict[str, dict[str, Any]] = {}
    for entry in data["weights"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("handle"), str):
            raise MaiacError(f"{path}: malformed entry {str(entry)[:80]}")
        if entry["handle"] in index:
            raise MaiacError(f"{path}: weight {entry['handle']!r} is listed twice")
        index[entry["handle"]] = entry
    return index


def _load_entry(folder: Path, handle: str, entry: dict[str, Any], ttype: TensorType
                ) -> np.ndarray:
    """The checked array of one index entry (memory-mapped, read-only)."""
    from maiac.ir.resources import numpy_dtype

    where = f"{folder / INDEX}: weight {handle!r}"
    name = entry.get("file")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise MaiacError(f"{where}: file {str(name)[:80]!r} is not a plain .npy name inside "
                         f"the folder")
    path = folder / name
    try:
        inside = path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except OSError:
        raise MaiacError(f"{where}: {path} is missing") from None
    if not inside or not path.is_file():
        raise MaiacError(f"{where}: {path} is not a regular file inside {folder}")
    dtype = numpy_dtype(ttype.get_element_type())
    shape = tuple(ttype.get_shape())
    if entry.get("dtype") != dtype.name or entry.get("shape") != list(shape):
        raise MaiacError(f"{where}: the index says {entry.get('dtype')}{entry.get('shape')}, "
                         f"the IR {dtype.name}{list(shape)}")
    if entry.get("sha256") != _sha256(path):
        raise MaiacError(f"{where}: {path} fails its sha256 check (changed or corrupt)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise MaiacError(f"{where}: {path} is not a readable .npy file: {err}") from None
    store = _storage_dtype(dtype)
    if not isinstance(arr, np.ndarray) or arr.dtype != store or arr.shape != shape \
            or not arr.flags.c_contiguous:
        raise MaiacError(f"{where}: {path} holds {getattr(arr, 'dtype', '?')}"
                         f"{list(getattr(arr, 'shape', ()))}, expected {store}{list(shape)} "
                         f"in C order")
    return arr.view(dtype)


def refuse_absent(file: str, module: builtin.ModuleOp, absent: list[str], what: str) -> None:
    """The error for IR whose weights ``what`` needs but which has none."""
    folder = module.attributes.get(WEIGHTS_ATTR)
    raise MaiacError(
        f"{file}: {what} needs the weights' values, but {len(absent)} constant(s) of this IR "
        f"(first: {absent[0]!r}) have no data{'' if folder else ' and it names no weights folder'}"
        f": emit the IR with `--emit-weights DIR` (or give --weights DIR), or pass "
        f"--shape-only to go on without values")


# ----------------------------------------------------------------------------- compiling


def compile_ir(file: str, *, pipeline: str | None = None, weights: str | None = None,
               shape_only: bool = False, verify_each: bool = True,
               print_ir_after_all: bool = False, print_ir_after: tuple[str, ...] = (),
               out: Any = None) -> Any:
    """``maiac compile FILE.mlir``: the rest of the pipeline on IR from ``--emit`` (or
    ``pipeline``), then the program; a ``driver.CompiledModel``."""
    from maiac import progress
    from maiac.driver import CompiledModel, CompileLog, parse_passes, printer_for, run_passes
    from maiac.passes.emit import emit_program

    start = time.perf_counter()
    module = parse_ir(read_ir(file), file)
    info = emitted_info(module, file)
    if pipeline is None and "rest" not in info:
        raise MaiacError(f"{file}: no {EMITTED_ATTR} attribute says which passes are left "
                         f"(IR not from `maiac compile --emit`): give them with --pipeline")
    passes = parse_passes(pipeline if pipeline is not None else info["rest"])
    _, absent = attach_weights(module, file, weights)
    if absent and not shape_only:
        refuse_absent(file, module, absent, "a program")
    log = CompileLog()
    run_passes(module, passes, print_after=printer_for(print_ir_after_all, print_ir_after,
                                                       passes),
               verify_each=verify_each, out=out, log=log)
    meta = dict(info.get("meta") or {"model": file})
    with progress.step("emit"):
        program = emit_program(module, meta, shape_only=shape_only)
    if "mode" not in program.meta:
        program.meta.update(info.get("decoder") or {})
    return CompiledModel(program, time.perf_counter() - start, log)
