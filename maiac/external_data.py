"""Safe reading of ONNX initializers: external data only from inside the model's folder.

An ONNX file is untrusted input (DESIGN §4): an initializer's external-data ``location``
must not make maiac read, and embed in a program, a file the model's author chose
elsewhere on the user's machine. As onnxruntime and ``onnx.checker`` do, a location is
refused when it is empty, absolute, has a drive or a backslash, or resolves (``..``
components, symlinks) outside the model's directory; the file must be a regular file
(never a directory, device or FIFO, which could block or read forever); ``offset`` and
``length`` must be non-negative decimal integers inside the file, and ``length`` must be
the bytes the tensor's dtype and shape say. Inline tensors' ``raw_data`` (or typed value
fields) must hold exactly the tensor's elements. Every refusal is a ``MaiacError``
naming the initializer.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from onnx import TensorProto

from maiac.runtime.errors import MaiacError

_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(TensorProto, n)}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")


@dataclass(frozen=True)
class ExternalData:
    """Where an initializer's bytes are: ``length`` bytes at ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int

    def present(self) -> bool:
        """True if ``path`` is a regular file holding ``[offset, offset + length)``."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size >= self.offset + self.length


def _number(info: dict[str, str], key: str, default: int, what: str) -> int:
    text = info.get(key)
    if text is None or text == "":
        return default
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise MaiacError(f"{what}: external data {key} {text[:40]!r} is not a non-negative "
                         f"integer")
    return int(text)


def _inside(base: Path, location: str, what: str) -> Path:
    """``base / location`` resolved, if it stays inside ``base``; else a ``MaiacError``."""
    if not location:
        raise MaiacError(f"{what}: external data has no location")
    if "\0" in location:
        raise MaiacError(f"{what}: external data location contains a NUL byte")
    posix, win = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or win.is_absolute() or win.drive or "\\" in location:
        raise MaiacError(f"{what}: external data location {location!r} is an absolute path; "
                         "it must be relative to the model's folder")
    root = base.resolve()
    target = (root / location).resolve()
    if target != root and root not in target.parents:
        raise MaiacError(f"{what}: external data location {location!r} points outside the "
                         f"model's folder {root} (through '..' or a symlink); refused")
    return target


def external_data(tensor: TensorProto, base_dir: Path, nbytes: int, what: str,
                  required: bool) -> ExternalData:
    """Check an external initializer's location, offset and length against ``base_dir``
    and its ``nbytes``; with ``required`` the file must exist and hold the bytes."""
    info = {e.key: e.value for e in tensor.external_data}
    path = _inside(base_dir, info.get("location", ""), what)
    offset = _number(info, "offset", 0, what)
    length = _number(info, "length", nbytes, what)
    if length != nbytes:
        raise MaiacError(f"{what}: external data length {length} does not match its dtype and "
                         f"shape ({nbytes} bytes)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if required:
            raise MaiacError(f"{what}: external data file {path} is missing (compile with "
                             "--shape-only to compile without weights)") from None
        return ExternalData(path, offset, length)
    except OSError as err:
        raise MaiacError(f"{what}: cannot read external data file {path}: "
                         f"{err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise MaiacError(f"{what}: external data location {path} is {kind}; refused")
    if offset + length > st.st_size:
        if required or offset > st.st_size:
            raise MaiacError(f"{what}: external data [{offset}, {offset + length}) is past the "
                             f"end of {path} ({st.st_size} bytes)")
    return ExternalData(path, offset, length)


def read_external(ext: ExternalData, dtype: np.dtype, shape: tuple[int, ...],
                  what: str) -> np.ndarray:
    """The initializer's values, mapped read-only from its (re-checked) file."""
    if not ext.present():
        raise MaiacError(f"{what}: external data file {ext.path} is missing, not a regular "
                         f"file or shorter than {ext.offset + ext.length} bytes")
    if ext.length == 0:
        return np.zeros(shape, dtype)
    return np.memmap(ext.path, dtype=dtype.newbyteorder("<"), mode="r", offset=ext.offset,
                     shape=shape)


def check_inline_size(tensor: TensorProto, dtype: np.dtype, shape: tuple[int, ...],
                      what: str) -> None:
    """An in-file tensor holds exactly its elements (``raw_data`` bytes or a typed field)."""
    if any(d < 0 for d in shape):
        raise MaiacError(f"{what}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    packed = tensor.data_type in _PACKED_4BIT  # two elements per byte / int32_data entry
    if tensor.HasField("raw_data"):
        want = (count + 1) // 2 if packed else count * dtype.itemsize
        if len(tensor.raw_data) != want:
            raise MaiacError(f"{what}: raw data holds {len(tensor.raw_data)} bytes, its dtype "
                             f"and shape {list(shape)} need {want}")
        return
    held = [len(getattr(tensor, f)) for f in _TYPED_FIELDS if len(getattr(tensor, f))]
    if not held:
        if count:
            raise MaiacError(f"{what}: holds no values, its shape {list(shape)} needs {count}")
        return
    n = held[0]
    if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        n //= 2
    if packed:
        n = count if n == (count + 1) // 2 else -1
    if n != count:
        raise MaiacError(f"{what}: holds {n} values, its shape {list(shape)} needs {count}")
