"""The `.maia` file: a zip of ``manifest.json`` and one blob per constant.

Each constant is ``constants/<n>_<name>.bin`` (raw little-endian bytes, size and sha256 in
the manifest). No pickle, nothing executable: loading parses JSON and checks the version,
every blob's size and checksum, and every address against the memory map
(``program_check.validate_program``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maiac.runtime import isa, limits
from maiac.runtime.errors import ProgramError
from maiac.runtime.isa import Access, Dma, Gather, Instr, Loop, MatMul, Scatter, Vec
from maiac.runtime.program_check import _accesses, validate_program
from maiac.runtime.program_types import Buffer, Program, TensorSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


def _member(name: str, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    """A zip member with a fixed timestamp: the same program is the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress_type
    info.external_attr = 0o600 << 16
    return info


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
            zf.writestr(_member(MANIFEST, zipfile.ZIP_DEFLATED), manifest)
            for blob, view in zip(blobs, datas, strict=True):
                with zf.open(_member(blob["blob"]), "w",
                             force_zip64=view.nbytes > 2**31) as out:
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
    if isinstance(instr, isa.Sync):
        _str(instr.engine)
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
