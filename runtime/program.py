"""A compiled Maia 200 program: memory map, instruction stream, constants.

The code lives in three modules, re-exported here (import from this one):

- ``program_types``: the data classes (``Program``, ``Buffer``, ``TensorSpec``) and
  ``ProgramBuilder``;
- ``program_check``: ``validate_program``, the memory-map and operand checks;
- ``program_file``: the `.maia` file (docs/security.md), a zip of ``manifest.json`` and one
  raw blob per constant, read without pickle (``load_program``, ``save_program``).
"""

from __future__ import annotations

from maiac.runtime.program_check import (
    _program_target,
    collective_problem,
    instr_label,
    validate_program,
)
from maiac.runtime.program_file import (
    FORMAT_VERSION,
    MANIFEST,
    ZipBlob,
    load_program,
    program_to_manifest,
    save_program,
)
from maiac.runtime.program_types import BUFFER_KINDS, Buffer, Program, ProgramBuilder, TensorSpec

__all__ = [
    "BUFFER_KINDS",
    "FORMAT_VERSION",
    "MANIFEST",
    "Buffer",
    "Program",
    "ProgramBuilder",
    "TensorSpec",
    "ZipBlob",
    "_program_target",
    "collective_problem",
    "instr_label",
    "load_program",
    "program_to_manifest",
    "save_program",
    "validate_program",
]
