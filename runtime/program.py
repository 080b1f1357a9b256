"""A compiled Maia 200 program: memory map, instruction stream, constants.

The `.maia` file (DESIGN §4) is a zip of ``manifest.json`` and one blob per constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maiac.runtime.isa import Instr

FORMAT_VERSION = 1


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


@dataclass
class Program:
    target: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buffers: list[Buffer]
    instructions: list[Instr]
    constants: dict[str, bytes] = field(default_factory=dict)  # buffer name -> raw bytes
    meta: dict[str, Any] = field(default_factory=dict)  # quant spec, model name, op table
