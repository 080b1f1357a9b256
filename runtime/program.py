"""A compiled Maia 200 program: memory map, instruction stream, constants.

The `.maia` file (DESIGN §4) is a zip of ``manifest.json`` and one blob per constant
(``constants/<n>_<name>.bin``, raw little-endian bytes, size and sha256 in the
manifest). No pickle, nothing executable: loading parses JSON and checks the version,
every blob's size and checksum, and every address against the memory map
(``validate_program``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maiac.runtime import isa, limits
from maiac.runtime.errors import MaiacError, ProgramError
from maiac.runtime.isa import (
    Access,
    Collective,
    Dma,
    Gather,
    Instr,
    Loop,
    MatMul,
    Scatter,
    Vec,
)
from maiac.runtime.memory import access_extent, itemsize

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUFFER_KINDS = ("input", "output", "const", "act", "scratch")


@dataclass
class Buffer:
    """A named allocation: ``nbytes`` at byte ``addr`` of memory ``level``.

    ``kind`` is one of "input", "output", "const", "act" (an intermediate tensor),
    "scratch" (a TSRAM working buffer of one or more ops).
    """

    name: str
    level: str
    addr: int
    nbytes: int
    kind: str


@dataclass
class TensorSpec:
    """A program input or output: a contiguous row-major tensor at the start of ``buffer``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: str

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor in its storage dtype."""
        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass
class Program:
    target: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buffers: list[Buffer]
    instructions: list[Instr]
    constants: dict[str, bytes] = field(default_factory=dict)  # buffer name -> raw bytes
    meta: dict[str, Any] = field(default_factory=dict)  # quant spec, model name, op table
    # Interpreter/timing state derived from the fields above (views, decoded constants).
    runtime_cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def buffer(self, name: str) -> Buffer:
        """The buffer called ``name`` (KeyError if none)."""
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)


# --------------------------------------------------------------------------- validation

def instr_label(path: str, instr: Instr) -> str:
    """How errors name an instruction: its index path (``3.1`` = body[1] of loop 3) and op."""
    return f"instruction {path} ({instr.kind}, op {instr.op!r})"


class _LevelMap:
    """Buffers of one level sorted by address, for 'is [lo, hi) inside some buffer?'."""

    def __init__(self, buffers: list[Buffer]) -> None:
        bufs = sorted(buffers, key=lambda b: b.addr)
        self.starts = [b.addr for b in bufs]
        self.max_end: list[int] = []
        end = -1
        for b in bufs:
            end = max(end, b.addr + b.nbytes)
            self.max_end.append(end)

    def contains(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self.starts, lo) - 1
        return i >= 0 and self.max_end[i] >= hi


def _program_target(program: Program, error: type[MaiacError]) -> Any:
    from maiac.runtime.target import Target

    try:
        target = Target.from_json(program.target or {})
        limits.check_target(target)
    except MaiacError as err:
        raise error(f"bad target parameters: {err}") from None
    return target


def validate_program(program: Program, error: type[MaiacError] = ProgramError) -> None:
    """Check the memory map and every instruction's accesses; raise ``error`` naming the fault.

    Buffers lie inside their level's capacity; inputs/outputs/constants fit their buffers;
    every access is well formed and stays, over all tiles and loop iterations, inside
    one buffer of its level. (Buffers may overlap: TSRAM scratch is reused by liveness.)
    """
    target = _program_target(program, error)
    names: set[str] = set()
    for b in program.buffers:
        if b.name in names:
            raise error(f"buffer {b.name!r} is declared twice")
        names.add(b.name)
        if b.level not in isa.LEVELS:
            raise error(f"buffer {b.name!r}: unknown level {b.level!r}")
        if b.kind not in BUFFER_KINDS:
            raise error(f"buffer {b.name!r}: unknown kind {b.kind!r} (one of {BUFFER_KINDS})")
        if b.addr < 0 or b.nbytes < 0 or b.addr + b.nbytes > target.capacity(b.level):
            raise error(f"buffer {b.name!r} [{b.addr}, {b.addr + b.nbytes}) is outside "
                        f"{b.level} (capacity {target.capacity(b.level)} bytes)")
    by_name = {b.name: b for b in program.buffers}
    for spec in [*program.inputs, *program.outputs]:
        if spec.buffer not in by_name:
            raise error(f"tensor {spec.name!r} lives in unknown buffer {spec.buffer!r}")
        if spec.dtype not in isa.DTYPES:
            raise error(f"tensor {spec.name!r}: unknown dtype {spec.dtype!r}")
        if spec.nbytes > by_name[spec.buffer].nbytes:
            raise error(f"tensor {spec.name!r} ({spec.nbytes} bytes) does not fit buffer "
                        f"{spec.buffer!r} ({by_name[spec.buffer].nbytes} bytes)")
    for name, blob in program.constants.items():
        if name not in by_name:
            raise error(f"constant {name!r} has no buffer")
        size = blob.nbytes if isinstance(blob, ZipBlob) else len(memoryview(blob).cast("B"))
        if size > by_name[name].nbytes:
            raise error(f"constant {name!r} is larger than its buffer")
    maps = {lv: _LevelMap([b for b in program.buffers if b.level == lv]) for lv in isa.LEVELS}
    _validate_instrs(program.instructions, "", (), maps, target.n_tiles, error)


def _validate_instrs(instrs: list[Instr], prefix: str, trips: tuple[int, ...],
                     maps: dict[str, _LevelMap], n_tiles: int, error: type[MaiacError]) -> None:
    for i, instr in enumerate(instrs):
        path = f"{prefix}{i}"
        label = instr_label(path, instr)
        if isinstance(instr, Loop):
            if not instr.trips or any(not isinstance(t, int) or t < 1 for t in instr.trips):
                raise error(f"{label}: trip counts must be positive integers, got {instr.trips}")
            _validate_instrs(instr.body, f"{path}.", trips + tuple(instr.trips), maps,
                             n_tiles, error)
            continue
        if not isinstance(instr, Dma | Gather | Scatter | MatMul | Vec | Collective):
            raise error(f"instruction {path}: not an instruction: {type(instr).__name__}")
        if isinstance(instr, Collective) and trips:
            raise error(f"{label}: a collective must be at the top level, not inside a loop")
        grid = tuple(instr.grid)
        if not grid or any(not isinstance(g, int) or g < 1 for g in grid):
            raise error(f"{label}: grid must be positive integers, got {grid}")
        if math.prod(grid) > n_tiles:
            raise error(f"{label}: grid {grid} needs {math.prod(grid)} tiles, target has {n_tiles}")
        problem = _operand_problem(instr)
        if problem:
            raise error(f"{label}: {problem}")
        for role, acc in _accesses(instr):
            problem = _access_problem(acc, grid, trips)
            if problem is None:
                lo, hi = access_extent(acc, grid, trips)
                if not maps[acc.level].contains(lo, hi):
                    problem = (f"bytes [{lo}, {hi}) of {acc.level} are not inside any buffer "
                               f"of the memory map")
            if problem:
                raise error(f"{label}: operand {role}: {problem}")


def _accesses(instr: Instr) -> list[tuple[str, Access]]:
    """(role, access) pairs of a non-loop instruction."""
    if isinstance(instr, Dma | Collective):
        return [("src", instr.src), ("dst", instr.dst)]
    if isinstance(instr, Gather):
        return [("table", instr.table), ("indices", instr.indices), ("dst", instr.dst)]
    if isinstance(instr, Scatter):
        return [("table", instr.table), ("indices", instr.indices), ("src", instr.src)]
    if isinstance(instr, MatMul):
        return [("a", instr.a), ("b", instr.b), ("c", instr.c), *instr.scale_accesses()]
    return [*((f"ins[{k}]", a) for k, a in enumerate(instr.ins)), ("out", instr.out)]


def _access_problem(acc: Access, grid: tuple[int, ...], trips: tuple[int, ...]) -> str | None:
    if not isinstance(acc, Access):
        return "not an Access"
    if acc.level not in isa.LEVELS:
        return f"unknown level {acc.level!r}"
    if acc.dtype not in isa.DTYPES:
        return f"unknown dtype {acc.dtype!r}"
    if len(acc.strides) != len(acc.shape):
        return f"shape {acc.shape} and strides {acc.strides} differ in rank"
    if any(not isinstance(n, int) or n < 0 for n in acc.shape):
        return f"bad shape {acc.shape}"
    if acc.tile_strides and len(acc.tile_strides) != len(grid):
        return f"tile_strides {acc.tile_strides} do not match grid {grid}"
    if acc.level == "tsram" and any(acc.tile_strides):
        return "tile_strides must be zero on tsram (each tile has its own array)"
    if acc.loop_strides and len(acc.loop_strides) != len(trips):
        return (f"loop_strides {acc.loop_strides} need one entry per enclosing loop "
                f"dimension {trips}")
    if acc.addr < 0 or acc.addr % itemsize(acc.dtype):
        return f"address {acc.addr} is negative or not aligned to {acc.dtype}"
    return None


def _operand_problem(instr: Instr) -> str | None:
    """Level, arity and shape agreement of an instruction's operands, or None if fine."""
    if isinstance(instr, Dma):
        if tuple(instr.src.shape) != tuple(instr.dst.shape):
            return f"src shape {instr.src.shape} != dst shape {instr.dst.shape}"
        return None
    if isinstance(instr, Collective):
        return collective_problem(instr)
    if isinstance(instr, Gather):
        t, ix, d = instr.table, instr.indices, instr.dst
        if t.level == "tsram" or ix.level != "tsram" or d.level != "tsram":
            return "gather reads a table in hbm/csram with indices into tsram"
        if len(t.shape) != 2:
            return f"table must be 2-D [rows, row_len], got {t.shape}"
        if ix.dtype not in ("i64", "i32", "i8", "u8"):
            return f"indices must be integers, got {ix.dtype}"
        if tuple(d.shape) != tuple(ix.shape) + (t.shape[1],):
            return f"dst shape {d.shape} != indices shape {ix.shape} + ({t.shape[1]},)"
        return None
    if isinstance(instr, Scatter):
        t, ix, s = instr.table, instr.indices, instr.src
        if t.level == "tsram" or ix.level != "tsram" or s.level != "tsram":
            return "scatter writes a table in hbm/csram from rows and indices in tsram"
        if len(t.shape) < 2:
            return f"table must be [rows, *row_shape], got {t.shape}"
        if ix.dtype not in ("i64", "i32", "i8", "u8"):
            return f"indices must be integers, got {ix.dtype}"
        if tuple(s.shape) != tuple(ix.shape) + tuple(t.shape[1:]):
            return f"src shape {s.shape} != indices shape {ix.shape} + {tuple(t.shape[1:])}"
        return None
    accs = _accesses(instr)
    if any(a.level != "tsram" for _, a in accs):
        return "compute operands must be in tsram"
    if isinstance(instr, MatMul):
        (a, b), c = instr.logical_ab(), tuple(instr.c.shape)
        if min(len(a), len(b), len(c)) < 2 or a[-1] != b[-2] or c[-2:] != (a[-2], b[-1]):
            return f"matmul shapes a{a} @ b{b} -> c{c} do not agree"
        try:
            if np.broadcast_shapes(a[:-2], b[:-2], c[:-2]) != c[:-2]:
                raise ValueError
        except ValueError:
            return f"matmul batch dims a{a} b{b} c{c} do not broadcast to c"
        return None
    fn = instr.fn
    if fn not in isa.VEC_FNS:
        return f"unknown vec fn {fn!r}"
    arity = {"layernorm": 3, "rmsnorm": 2}.get(fn, 1 if fn in isa.UNARY_FNS + isa.ROW_FNS
                                               + isa.QUANT_FNS
                                               else 2 if fn in isa.BINARY_FNS else 3)
    if len(instr.ins) != arity:
        return f"{fn} takes {arity} inputs, got {len(instr.ins)}"
    out = tuple(instr.out.shape)
    x = tuple(instr.ins[0].shape)
    if fn in isa.QUANT_FNS:
        if not x or out[:-1] != x[:-1]:
            return f"{fn} of {x} must write rows of shape {x[:-1]} + (bytes,), got {out}"
        return None
    if fn.startswith("reduce_"):
        if not x or out != x[:-1] + (1,):
            return f"{fn} of {x} must write shape {x[:-1] + (1,)}, got {out}"
        return None
    try:
        shapes = [tuple(a.shape) for a in instr.ins]
        if np.broadcast_shapes(*shapes, out) != out:
            raise ValueError
    except ValueError:
        return f"{fn} input shapes {shapes} do not broadcast to out {out}"
    return None


def collective_problem(instr: Collective) -> str | None:
    """What is wrong with a collective's kind, group, levels and shapes (or None)."""
    if instr.collective not in isa.COLLECTIVES:
        return f"unknown collective {instr.collective!r} (one of {', '.join(isa.COLLECTIVES)})"
    if not isinstance(instr.chips, int) or instr.chips < 1 or not 0 <= instr.rank < instr.chips:
        return f"rank {instr.rank} is not in a group of {instr.chips} chips"
    if {instr.src.level, instr.dst.level} - {"hbm", "csram"}:
        return "a collective moves HBM or CSRAM blocks (the network DMA cannot reach TSRAM)"
    src, dst = tuple(instr.src.shape), tuple(instr.dst.shape)
    if instr.collective in isa.POINT_TO_POINT:
        if not isinstance(instr.peer, int) or not 0 <= instr.peer < instr.chips \
                or instr.peer == instr.rank:
            return (f"{instr.collective} from chip {instr.rank} to peer {instr.peer}: the peer "
                    f"must be another chip of the {instr.chips}")
        if instr.src != instr.dst:
            return f"a {instr.collective} names one block (src == dst), got two"
        return None
    if instr.peer != -1:
        return f"a {instr.collective} has no peer (got {instr.peer})"
    want = {"all_reduce": (src, dst), "all_gather": ((instr.chips, *src), dst),
            "reduce_scatter": (src, (instr.chips, *dst))}[instr.collective]
    if want[0] != want[1]:
        return f"{instr.collective} over {instr.chips} chips: src {src} and dst {dst} disagree"
    return None


# --------------------------------------------------------------------------- file format

def _blob_name(index: int, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    return f"constants/{index:05d}_{safe}.bin"


def program_to_manifest(program: Program, blobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON manifest of a program (constants described by ``blobs``)."""
    return {
        "format": "maia",
        "version": FORMAT_VERSION,
        "target": program.target,
        "inputs": [_spec_json(s) for s in program.inputs],
        "outputs": [_spec_json(s) for s in program.outputs],
        "buffers": [{"name": b.name, "level": b.level, "addr": b.addr, "nbytes": b.nbytes,
                     "kind": b.kind} for b in program.buffers],
        "instructions": [isa.instr_to_json(i) for i in program.instructions],
        "constants": blobs,
        "meta": program.meta,
    }


def _spec_json(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "buffer": s.buffer}


def save_program(program: Program, path: str | os.PathLike[str]) -> None:
    """Write ``program`` as a `.maia` zip, atomically (a temp file replaced into place)."""
    path = Path(path)
    blobs = []
    datas = []
    for i, (name, data) in enumerate(program.constants.items()):
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray)
                          else data).cast("B")
        blobs.append({"name": name, "blob": _blob_name(i, name), "nbytes": view.nbytes,
                      "sha256": hashlib.sha256(view).hexdigest()})
        datas.append(view)
    try:
        manifest = json.dumps(program_to_manifest(program, blobs), separators=(",", ":"),
                              allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ProgramError(f"cannot write {path}: program is not serializable: {err}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
            zf.writestr(MANIFEST, manifest, compress_type=zipfile.ZIP_DEFLATED)
            for blob, view in zip(blobs, datas, strict=True):
                with zf.open(blob["blob"], "w", force_zip64=view.nbytes > 2**31) as out:
                    out.write(view)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_program(path: str | os.PathLike[str], keep_constants: bool = True, *,
                 in_place: bool = False) -> Program:
    """Read and check a `.maia` file; every problem is one ``ProgramError`` naming the file.

    ``keep_constants=False`` (``maiac report``: the timing model needs no data) still
    checks every blob's size and sha256, streaming, but keeps none of them, so the
    program's memory is its manifest's, whatever its blobs inflate to. ``in_place=True``
    (``maiac run``) checks them the same way and keeps a ``ZipBlob`` per constant, which
    the interpreter inflates straight into its memory.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise ProgramError(f"cannot read {path}: {err.strerror or err}") from None
    if not path.is_file():
        raise ProgramError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = _read_manifest(zf, path)
            program = _manifest_to_program(manifest, path)
            try:  # sizes and addresses before the blobs are inflated
                validate_program(program)
                limits.check_structure(program)
            except ProgramError as err:
                raise ProgramError(f"{path}: {err}") from None
            program.constants = _read_blobs(zf, manifest, path, program,
                                            keep_constants and not in_place,
                                            in_place and keep_constants)
    except zipfile.BadZipFile as err:
        if head.startswith(b"PK"):
            raise ProgramError(f"{path} is truncated or corrupt: {err}") from None
        raise ProgramError(f"{path} is not a .maia file (not a zip archive)") from None
    except (EOFError, OSError, zipfile.LargeZipFile, NotImplementedError, zlib.error,
            RuntimeError) as err:  # RuntimeError: an encrypted member
        raise ProgramError(f"{path} is truncated or corrupt: {err}") from None
    try:
        validate_program(program)
    except ProgramError as err:
        raise ProgramError(f"{path}: {err}") from None
    return program


_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipBlob:
    """A constant left in its `.maia` file (``load_program(..., in_place=True)``): the
    interpreter inflates it straight into the machine's memory (``read_into``), so a run
    holds the weights once, not once in the program and again in the machine's HBM. The
    loader checked its size and sha256; ``read_into`` checks them again (the file may have
    changed since)."""

    path: Path
    member: str
    nbytes: int
    sha256: str

    def read_into(self, out: np.ndarray) -> None:
        """Inflate the blob into ``out`` (a contiguous uint8 array of ``nbytes``)."""
        assert out.nbytes == self.nbytes and out.dtype == np.uint8
        try:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(self.member)
                if info.file_size != self.nbytes:
                    raise ProgramError(f"{self.path}: {self.member} changed since it was loaded")
                _, digest = _read_member(zf, info, self.path, into=out)
        except (KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ProgramError(f"{self.path}: cannot read {self.member}: {err}") from None
        if digest != self.sha256:
            raise ProgramError(f"{self.path}: {self.member} fails its sha256 check (changed "
                               f"since it was loaded)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                 keep: bool = True, into: Any = None) -> tuple[Any, str]:
    """A member's bytes (empty unless ``keep``) and their sha256, inflated in bounded
    chunks (never more than its declared size, which the caller bounded first): a hostile
    deflate stream cannot inflate past it. ``into`` (a writable uint8 array of the
    member's size) receives the bytes instead of a new bytearray."""
    out = into if into is not None else bytearray(info.file_size if keep else 0)
    digest = hashlib.sha256()
    pos = 0
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(min(_CHUNK, info.file_size - pos + 1))
            if not chunk:
                break
            if pos + len(chunk) > info.file_size:
                raise ProgramError(f"{path}: {info.filename} inflates past its declared size "
                                   f"({info.file_size} bytes)")
            if into is not None:
                into[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            elif keep:
                out[pos:pos + len(chunk)] = chunk
            digest.update(chunk)
            pos += len(chunk)
    if pos != info.file_size:
        raise ProgramError(f"{path}: {info.filename} is truncated ({pos} of "
                           f"{info.file_size} bytes)")
    return out, digest.hexdigest()  # not bytes(out): that would hold the data twice


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise ProgramError(f"{path} is not a .maia file (no {MANIFEST})") from None
    limit = min(limits.MAX_MANIFEST_BYTES, limits.max_memory())
    if info.file_size > limit:
        raise ProgramError(f"{path}: {MANIFEST} is {info.file_size} bytes, over the bound of "
                           f"{limit} bytes (runtime/limits.py)")
    raw, _ = _read_member(zf, info, path)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProgramError(f"{path}: {MANIFEST} is not valid JSON: {err}") from None
    except RecursionError:
        raise ProgramError(f"{path}: {MANIFEST} nests deeper than "
                           f"{limits.MAX_JSON_DEPTH} levels") from None
    problem = limits.json_depth_problem(manifest)
    if problem:
        raise ProgramError(f"{path}: {MANIFEST} {problem}")
    if not isinstance(manifest, dict) or manifest.get("format") != "maia":
        raise ProgramError(f"{path} is not a .maia file (manifest has no format 'maia')")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise ProgramError(f"{path} has format version {version!r}; this maiac reads version "
                           f"{FORMAT_VERSION} (recompile the model)")
    return manifest


def _manifest_to_program(m: dict[str, Any], path: Path) -> Program:
    where = "manifest"
    try:
        for key, typ in (("target", dict), ("inputs", list), ("outputs", list),
                         ("buffers", list), ("instructions", list), ("constants", list),
                         ("meta", dict)):
            where = key
            if not isinstance(m.get(key), typ):
                raise TypeError(f"'{key}' missing or not a {typ.__name__}")
        where = "instructions"
        limits.check_instruction_json(m["instructions"])
        where = "inputs/outputs"
        specs = {k: [TensorSpec(_str(s["name"]), _str(s["dtype"]),
                                tuple(_int(d) for d in s["shape"]), _str(s["buffer"]))
                     for s in m[k]] for k in ("inputs", "outputs")}
        where = "buffers"
        buffers = [Buffer(_str(b["name"]), _str(b["level"]), _int(b["addr"]), _int(b["nbytes"]),
                          _str(b["kind"])) for b in m["buffers"]]
        instrs = []
        for i, data in enumerate(m["instructions"]):
            where = f"instruction {i}"
            instrs.append(_checked_instr(isa.instr_from_json(data)))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise ProgramError(f"{path}: malformed manifest ({where}): {err}") from None
    except ProgramError as err:
        raise ProgramError(f"{path}: {err}") from None
    return Program(m["target"], specs["inputs"], specs["outputs"], buffers, instrs,
                   meta=m["meta"])


def _checked_instr(instr: Instr) -> Instr:
    """Type-check the scalar fields JSON could have got wrong (ints, strings, tuples)."""
    if isinstance(instr, Loop):
        instr.trips = tuple(_int(t) for t in instr.trips)
        for sub in instr.body:
            _checked_instr(sub)
        return instr
    instr.grid = tuple(_int(g) for g in instr.grid)
    _str(instr.op)
    if not isinstance(instr.waits, dict):
        raise TypeError("waits must be an object")
    for v in instr.waits.values():
        _int(v)
    if isinstance(instr, Dma | Gather | Scatter):
        _int(instr.queue)
        if instr.queue < 0:
            raise ValueError(f"queue must be >= 0, got {instr.queue}")
    if isinstance(instr, MatMul):
        if not isinstance(instr.accumulate, bool):
            raise TypeError(f"accumulate must be true or false, got {instr.accumulate!r}")
        for s in (instr.fmt, instr.a_fmt, instr.b_fmt):
            _str(s)
        for ts in (instr.a_tensor_scale, instr.b_tensor_scale):
            if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)
                                   or not math.isfinite(ts)):
                raise TypeError(f"tensor scale must be a finite number, got {ts!r}")
    if isinstance(instr, Vec):
        _str(instr.fn)
    for _, acc in _accesses(instr):
        if not isinstance(acc, Access):
            raise TypeError("operand is not an access")
        _str(acc.level), _str(acc.dtype), _int(acc.addr)
        for seq in (acc.shape, acc.strides, acc.tile_strides, acc.loop_strides):
            for v in seq:
                _int(v)
    if isinstance(instr, Vec) and not isinstance(instr.attrs, dict):
        raise TypeError("vec attrs must be an object")
    return instr


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {str(v)[:40]!r}")
    if abs(v) > limits.MAX_INT:
        raise ValueError(f"integer {str(v)[:40]} is out of range (|v| <= 2^62)")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _read_blobs(zf: zipfile.ZipFile, m: dict[str, Any], path: Path, program: Program,
                keep: bool = True, refer: bool = False) -> dict[str, Any]:
    constants: dict[str, Any] = {}
    members = {i.filename: i for i in zf.infolist()}
    sizes = {b.name: b.nbytes for b in program.buffers}
    entries = []
    total = 0
    for entry in m["constants"]:
        try:
            name, blob = _str(entry["name"]), _str(entry["blob"])
            nbytes, sha = _int(entry["nbytes"]), _str(entry["sha256"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramError(f"{path}: malformed constant entry {str(entry)[:80]}: "
                               f"{err}") from None
        if blob not in members:
            raise ProgramError(f"{path}: constant blob {blob} (of {name!r}) is missing")
        if name not in sizes:
            raise ProgramError(f"{path}: constant {name!r} has no buffer")
        if name in constants or any(e[0] == name for e in entries):
            raise ProgramError(f"{path}: constant {name!r} is stored twice")
        declared = members[blob].file_size
        if nbytes != declared or nbytes > sizes[name]:
            raise ProgramError(f"{path}: constant blob {blob} (of {name!r}) declares "
                               f"{declared} bytes, manifest says {nbytes}, its buffer holds "
                               f"{sizes[name]}")
        total += nbytes
        entries.append((name, blob, nbytes, sha))
    limit = limits.max_memory()
    if keep and total > limit:
        raise limits.memory_error(f"{path}: loading its constants", total, limit)
    for name, blob, nbytes, sha in entries:
        try:
            data, digest = _read_member(zf, members[blob], path, keep)
        except zipfile.BadZipFile as err:
            raise ProgramError(f"{path}: constant blob {blob} (of {name!r}) is corrupt: "
                               f"{err}") from None
        if keep and len(data) != nbytes:
            raise ProgramError(f"{path}: constant blob {blob} (of {name!r}) has {len(data)} "
                               f"bytes, manifest says {nbytes}")
        if digest != sha:
            raise ProgramError(f"{path}: constant blob {blob} (of {name!r}) fails its sha256 "
                               f"check (tampered or corrupt)")
        if keep:
            constants[name] = data
        elif refer:
            constants[name] = ZipBlob(path.resolve(), blob, nbytes, sha)
    return constants


# --------------------------------------------------------------------------- building

class ProgramBuilder:
    """A small bump allocator and assembler for hand-written programs (tests, examples).

    >>> pb = ProgramBuilder()
    >>> x = pb.input("x", "f32", (4, 8))          # an HBM input buffer
    >>> t = pb.alloc("t", "tsram", 4 * 8 * 4)      # a TSRAM scratch buffer
    >>> pb.emit(Dma(pb.access(x, "f32", (4, 8)), pb.access(t, "f32", (4, 8))))
    >>> program = pb.build()
    """

    def __init__(self, target: dict[str, Any] | None = None, align: int = 64) -> None:
        self.target = dict(target or {"name": "maia200"})
        self.align = align
        self.top = dict.fromkeys(isa.LEVELS, 0)
        self.buffers: list[Buffer] = []
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.constants: dict[str, bytes] = {}
        self.instructions: list[Instr] = []
        self.meta: dict[str, Any] = {}

    def alloc(self, name: str, level: str, nbytes: int, kind: str = "scratch") -> Buffer:
        """Place a new buffer at the next aligned address of ``level``."""
        addr = -(-self.top[level] // self.align) * self.align
        buf = Buffer(name, level, addr, int(nbytes), kind)
        self.top[level] = addr + int(nbytes)
        self.buffers.append(buf)
        return buf

    def input(self, name: str, dtype: str, shape: tuple[int, ...], level: str = "hbm") -> Buffer:
        """An input tensor with its own buffer."""
        spec = TensorSpec(name, dtype, tuple(shape), name)
        self.inputs.append(spec)
        return self.alloc(name, level, spec.nbytes, "input")

    def output(self, name: str, dtype: str, shape: tuple[int, ...], level: str = "hbm") -> Buffer:
        """An output tensor with its own buffer."""
        spec = TensorSpec(name, dtype, tuple(shape), name)
        self.outputs.append(spec)
        return self.alloc(name, level, spec.nbytes, "output")

    def const(self, name: str, array: np.ndarray, level: str = "hbm") -> Buffer:
        """A constant buffer holding ``array``'s bytes (row-major)."""
        data = np.ascontiguousarray(array).tobytes()
        self.constants[name] = data
        return self.alloc(name, level, len(data), "const")

    @staticmethod
    def access(buf: Buffer, dtype: str, shape: tuple[int, ...],
               strides: tuple[int, ...] | None = None, offset: int = 0,
               tile_strides: tuple[int, ...] = (), loop_strides: tuple[int, ...] = ()) -> Access:
        """An access to ``buf`` at element ``offset`` (contiguous strides by default)."""
        shape = tuple(shape)
        return Access(buf.level, buf.addr + offset * itemsize(dtype), dtype, shape,
                      tuple(strides) if strides is not None else isa.contiguous_strides(shape),
                      tuple(tile_strides), tuple(loop_strides))

    def emit(self, *instrs: Instr) -> None:
        """Append instructions to the program."""
        self.instructions.extend(instrs)

    def build(self) -> Program:
        """The program assembled so far."""
        return Program(dict(self.target), list(self.inputs), list(self.outputs),
                       list(self.buffers), list(self.instructions), dict(self.constants),
                       dict(self.meta))
