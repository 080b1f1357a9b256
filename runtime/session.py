"""Run one program many times with some inputs resident in machine memory between runs.

A generation loop keeps its KV cache in HBM: the decode program's ``past`` inputs are
written once (zeros) and then updated slot by slot in place (:meth:`Session.tensor` is a
writable view of a tensor in the machine's memory), never re-sent with every step. Inputs
live in HBM for the whole program (plan-memory never reuses their bytes) and are not
poisoned by the machine's reset, so what a step leaves there is what the next step reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.interpreter import _check_inputs, _machine
from maiac.runtime.memory import np_dtype
from maiac.runtime.parallel import single_threaded_blas
from maiac.runtime.program import Program, TensorSpec


def tensor_view(program: Program, machine: Any, name: str) -> np.ndarray:
    """A writable view of ``program``'s input or output ``name`` in ``machine``'s memory
    (tile 0 for TSRAM)."""
    spec = next((s for s in (*program.inputs, *program.outputs) if s.name == name), None)
    if spec is None:
        raise MaiacError(f"{name!r} is not an input or output of the program")
    buf = program.buffer(spec.buffer)
    dt = np_dtype(spec.dtype)
    n = math.prod(spec.shape) * dt.itemsize
    return machine.tile0(buf.level, buf.addr, n).view(dt).reshape(spec.shape)


class Session:
    """A program's machine with ``resident`` inputs kept between :meth:`run` calls."""

    def __init__(self, program: Program, resident: Iterable[str] = ()) -> None:
        self.program = program
        self.machine = _machine(program)
        self.specs: dict[str, TensorSpec] = {s.name: s for s in program.inputs}
        self.specs.update({s.name: s for s in program.outputs})
        self.resident = list(resident)
        missing = [n for n in self.resident if n not in self.specs]
        if missing:
            raise MaiacError(f"resident tensor {missing[0]!r} is not an input of the program")
        for name in self.resident:
            self.tensor(name)[...] = 0

    def tensor(self, name: str) -> np.ndarray:
        """A writable view of input or output ``name`` in machine memory (tile 0 for TSRAM)."""
        return tensor_view(self.program, self.machine, name)

    def write_slots(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` [B, H, n, D] into slots ``start .. start + n`` (axis 2) of the
        resident cache ``name``."""
        self.tensor(name)[:, :, start:start + values.shape[2]] = values

    def run(self, inputs: dict[str, Any], outputs: Iterable[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run with ``inputs`` (every non-resident input); copies of ``outputs`` (all)."""
        feeds = dict(inputs)
        for name in self.resident:  # validated as already in place
            feeds[name] = self.tensor(name)
        arrays = _check_inputs(self.program, feeds)
        m = self.machine
        m.reset()
        for spec in self.program.inputs:
            if spec.name not in self.resident:
                b = self.program.buffer(spec.buffer)
                m._write_bytes(b.level, b.addr, arrays[spec.name])
        with np.errstate(all="ignore"), single_threaded_blas(m.blas_limit):
            label = ""
            try:
                for label, step in m.steps:  # noqa: B007 (label names a failing step)
                    step(())
            except MachineError:
                raise
            except Exception as err:
                raise MachineError(f"{label}: {type(err).__name__}: {err}") from err
        names = [s.name for s in self.program.outputs] if outputs is None else list(outputs)
        return {name: self.tensor(name).copy() for name in names}
