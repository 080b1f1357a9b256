"""The data classes of a compiled program (memory map, tensors, instructions, constants)
and ``ProgramBuilder``, the assembler of hand-written programs.

Checked by ``program_check``, read and written as `.maia` files by ``program_file``;
``maiac.runtime.program`` re-exports all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maiac.runtime import isa
from maiac.runtime.isa import Access, Instr
from maiac.runtime.memory import itemsize

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
    # buffer name -> its raw bytes: bytes, a flat uint8 array (emit keeps a weight's
    # stored array; a machine replaces constants it never writes by read-only views of
    # its own memory, runtime/memory.py) or a ZipBlob inflated on use (program_file.py)
    constants: dict[str, Any] = field(default_factory=dict)
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
