"""Building damaged and hostile `.maia` files for the robustness tests and the fuzz suite."""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from maiac.runtime.isa import Dma, Loop, Vec
from maiac.runtime.program import MANIFEST, Program, ProgramBuilder, save_program


def small_program() -> Program:
    """y = relu(x + c) through TSRAM, with a loop: a valid program with one constant."""
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4, 8))
    c = pb.const("c", np.arange(32, dtype=np.float32).reshape(4, 8) - 16)
    y = pb.output("y", "f32", (4, 8))
    tx, tc = pb.alloc("tx", "tsram", 128), pb.alloc("tc", "tsram", 128)
    acc = pb.access
    pb.emit(Loop((3,), [
        Dma(acc(x, "f32", (2, 8), loop_strides=(8,)), acc(tx, "f32", (2, 8), loop_strides=(8,))),
        Dma(acc(c, "f32", (2, 8), loop_strides=(8,)), acc(tc, "f32", (2, 8), loop_strides=(8,))),
    ]))
    pb.emit(Vec("add", [acc(tx, "f32", (4, 8)), acc(tc, "f32", (4, 8))], acc(tx, "f32", (4, 8))),
            Vec("relu", [acc(tx, "f32", (4, 8))], acc(tx, "f32", (4, 8))),
            Dma(acc(tx, "f32", (4, 8)), acc(y, "f32", (4, 8))))
    return pb.build()


def read_maia(path: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {member: bytes}) of a `.maia` file, without any checks."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    return json.loads(members.pop(MANIFEST)), members


def write_maia(path: str | Path, manifest: Any, members: dict[str, bytes],
               raw_manifest: bytes | None = None,
               compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a `.maia` zip as given (``raw_manifest`` replaces the JSON text)."""
    path = Path(path)
    text = raw_manifest if raw_manifest is not None else json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(MANIFEST, text)
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def valid_maia(tmp: Path, program: Program | None = None) -> tuple[Path, dict[str, Any],
                                                                   dict[str, bytes]]:
    """A valid `.maia` file in ``tmp`` and its manifest and members (to mutate copies of)."""
    path = tmp / "ok.maia"
    save_program(program or small_program(), path)
    manifest, members = read_maia(path)
    return path, manifest, members


def with_blob(manifest: dict[str, Any], members: dict[str, bytes], name: str,
              data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Copies with constant ``name``'s blob replaced by ``data`` (size and sha256 updated)."""
    manifest, members = copy.deepcopy(manifest), dict(members)
    for entry in manifest["constants"]:
        if entry["name"] == name:
            entry["nbytes"] = len(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            members[entry["blob"]] = data
    return manifest, members
