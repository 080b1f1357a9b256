"""Host memory of compile, run and verify: what each stage holds after it ends.

A compile's weights (mapped external data, folded copies) go with the compile, a program
and its machine go with their last reference (no cycle waits for the collector), and
``maiac verify`` frees the program before onnxruntime loads its copy of the weights.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import maiac
import maiac.verify as verify_mod
from maiac import models
from maiac.inputs import random_inputs
from maiac.ir import resources

CONFIG = models.LlamaConfig("tiny", 64, 1, 4, 2, 128, 256)


def _external(tmp_path: Path) -> Path:
    """The tiny Llama saved with its weights in an external-data file."""
    path = tmp_path / "m.onnx"
    onnx.save(models.llama_decoder(CONFIG, seq=8), str(path), save_as_external_data=True,
              location="m.data", size_threshold=1024)
    return path


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def test_compile_and_run_hold_the_weights_once(tmp_path: Path) -> None:
    """After compile the resource store holds nothing of the model, and the program maps
    the external data rather than copying it; after a run each constant is a read-only
    view of the machine's memory (the only copy) and the file is no longer mapped."""
    path = _external(tmp_path)
    before = set(resources._STORE)
    compiled = maiac.compile(path)
    gc.collect()
    assert set(resources._STORE) == before
    program = compiled.program
    saved = {k: bytes(v) for k, v in program.constants.items()}
    inputs = random_inputs(onnx.load(str(path)), {}, 0)
    first = compiled.run(inputs)
    gc.collect()
    assert not _mapped(tmp_path / "m.data")
    machine = program.runtime_cache["machine"]
    for buf in program.buffers:
        if buf.kind == "const" and buf.level != "tsram":
            view = program.constants[buf.name]
            assert np.shares_memory(view, machine.mem[buf.level]) and not view.flags.writeable
    assert {k: bytes(v) for k, v in program.constants.items()} == saved
    again = compiled.run(inputs)
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_program_and_machine_free_without_the_collector() -> None:
    model = models.llama_decoder(CONFIG, seq=8)
    compiled = maiac.compile(model)
    compiled.run(random_inputs(model, {}, 0))
    assert "machine" in compiled.program.runtime_cache
    gc.disable()
    try:
        program = weakref.ref(compiled.program)
        del compiled
        assert program() is None  # machine -> program would be a cycle
    finally:
        gc.enable()


def test_verify_frees_the_program_before_onnxruntime(tmp_path: Path, monkeypatch: Any
                                                       ) -> None:
    from maiac import driver

    programs: list[weakref.ref] = []
    alive: list[bool] = []
    compile_fn, reference_fn = driver.compile, verify_mod._reference

    def compile_spy(*args: Any, **kwargs: Any) -> Any:
        compiled = compile_fn(*args, **kwargs)
        programs.append(weakref.ref(compiled.program))
        return compiled

    def reference_spy(*args: Any, **kwargs: Any) -> Any:
        alive.append(programs[-1]() is not None)
        return reference_fn(*args, **kwargs)

    monkeypatch.setattr(driver, "compile", compile_spy)
    monkeypatch.setattr(verify_mod, "_reference", reference_spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = verify_mod.verify(_external(tmp_path))
    assert result["ok"]
    assert alive and not any(alive)


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_machine_memory_is_resident_where_written() -> None:
    """One byte written every 2 MiB of a 64 MiB level makes 32 small pages resident, not
    32 huge ones (SRAM is touched sparsely: each tile uses only its kernels' buffers)."""
    from maiac.runtime.memory import zeroed_memory

    mem = zeroed_memory((4, 16 << 20))
    assert mem.dtype == np.uint8 and mem.shape == (4, 16 << 20) and not mem.any()
    before = _rss_anon_kib()
    mem.reshape(-1)[:: 2 << 20] = 1
    assert _rss_anon_kib() - before < 4096  # KiB; huge pages would make it 65536
    assert int(mem.sum()) == 32
