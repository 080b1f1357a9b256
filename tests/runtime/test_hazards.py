"""Hazard detection under the asynchronous semantics: each kind of bug injected into a
compiled program (or a hand-written one) stops the interpreter with a MachineError
naming the instruction."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import maiac
from maiac import models
from maiac.runtime import isa
from maiac.runtime.errors import MachineError
from maiac.runtime.hazards import check_program
from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Vec
from maiac.runtime.program import ProgramBuilder


def _leaves(instrs: list[isa.Instr]) -> list[isa.Instr]:
    out: list[isa.Instr] = []
    for ins in instrs:
        out.extend(_leaves(ins.body) if isinstance(ins, isa.Loop) else [ins])
    return out


@pytest.fixture(scope="module")
def compiled() -> maiac.driver.CompiledModel:
    return maiac.compile(models.llama_decoder(models.LLAMA_TINY, mode="prefill", seq=8))


def _inputs(program: object) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(8, dtype=np.int64).reshape(1, 8)}


def test_compiled_program_is_async_and_hazard_free(compiled: maiac.driver.CompiledModel) -> None:
    program = compiled.program
    assert program.meta.get("async") is True
    assert any(i.waits for i in _leaves(program.instructions))
    check_program(program)
    out = run_program(program, _inputs(program))["logits"]
    assert np.isfinite(out).all()


def test_dropped_wait_is_a_read_before_dma_completed(compiled: maiac.driver.CompiledModel) -> None:
    program = copy.deepcopy(compiled.program)
    program.runtime_cache.clear()
    victim = next(i for i in _leaves(program.instructions)
                  if isinstance(i, Vec) and any(e.startswith("dma") for e in i.waits))
    victim.waits = {e: k for e, k in victim.waits.items() if not e.startswith("dma")}
    with pytest.raises(MachineError, match=r"hazard: instruction .*vec.* before the DMA that "
                                           r"writes them completed"):
        run_program(program, _inputs(program))


def test_every_dropped_dma_wait_is_caught(compiled: maiac.driver.CompiledModel) -> None:
    program = copy.deepcopy(compiled.program)
    leaves = _leaves(program.instructions)
    caught = total = 0
    for ins in leaves:
        for engine in [e for e in ins.waits if e.startswith("dma")]:
            saved = dict(ins.waits)
            del ins.waits[engine]
            total += 1
            try:
                check_program(program)
            except MachineError:
                caught += 1
            ins.waits = saved
    assert total > 20
    # the rest are waits the (non-transitive) inference added although others imply them
    assert caught >= 0.85 * total


def test_reordered_loosened_wait_is_caught(compiled: maiac.driver.CompiledModel) -> None:
    """A wait that lets the DMA of the *current* block stay in flight (pending too high),
    as if the compute had been reordered before its DMA."""
    program = copy.deepcopy(compiled.program)
    victim = next(i for i in _leaves(program.instructions)
                  if isinstance(i, isa.MatMul) and any(e.startswith("dma") for e in i.waits))
    victim.waits = {e: k + 1 if e.startswith("dma") else k for e, k in victim.waits.items()}
    with pytest.raises(MachineError, match="hazard: instruction"):
        check_program(program)


def test_shifted_address_is_outside_its_allocation(compiled: maiac.driver.CompiledModel) -> None:
    program = copy.deepcopy(compiled.program)
    program.runtime_cache.clear()
    dma = next(i for i in _leaves(program.instructions)
               if isinstance(i, Dma) and i.dst.level == "hbm")
    top = max(b.addr + b.nbytes for b in program.buffers if b.level == "hbm")
    dma.dst.addr = top + 4096
    with pytest.raises(MachineError, match=r"instruction .* operand dst: bytes .* not inside"):
        run_program(program, _inputs(program))


def _two_queue_program(wait: bool) -> ProgramBuilder:
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (64,))
    y = pb.output("y", "f32", (64,))
    t = pb.alloc("t", "tsram", 256)
    # queue 0 reads t out to y while queue 1 overwrites t with x
    pb.emit(Dma(pb.access(x, "f32", (64,)), pb.access(t, "f32", (64,)), queue=0))
    pb.emit(Dma(pb.access(t, "f32", (64,)), pb.access(y, "f32", (64,)), queue=0))
    pb.emit(Dma(pb.access(x, "f32", (64,)), pb.access(t, "f32", (64,)), queue=1,
                waits={"dma0": 0} if wait else {}))
    return pb


def test_write_over_buffer_read_by_inflight_dma() -> None:
    program = _two_queue_program(wait=False).build()
    program.meta["async"] = True
    with pytest.raises(MachineError, match="still being read by an in-flight DMA"):
        run_program(program, {"x": np.ones(64, np.float32)})
    fixed = _two_queue_program(wait=True).build()
    fixed.meta["async"] = True
    out = run_program(fixed, {"x": np.arange(64, dtype=np.float32)})["y"]
    np.testing.assert_array_equal(out, np.arange(64, dtype=np.float32))


def test_synchronous_programs_are_not_checked() -> None:
    program = _two_queue_program(wait=False).build()
    assert not program.meta.get("async")
    run_program(program, {"x": np.ones(64, np.float32)})


def test_bad_wait_engine_is_an_error() -> None:
    pb = _two_queue_program(wait=False)
    pb.instructions[-1].waits = {"dma9": 0}
    program = pb.build()
    program.meta["async"] = True
    with pytest.raises(MachineError, match="bad wait dma9"):
        check_program(program)
