"""The `.maia` file: round trip, and one clear ProgramError for every kind of bad file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from maiac.runtime.errors import ProgramError
from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Loop, Sync, Vec
from maiac.runtime.program import (
    FORMAT_VERSION,
    ProgramBuilder,
    load_program,
    save_program,
    validate_program,
)


def small_program():
    """y = x * w + 1-ish: a const, a loop, a vec; enough to exercise every manifest part."""
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (4, 8))
    w = pb.const("layer.0/weight:0", np.arange(8, dtype=np.float32))
    y = pb.output("y", "f32", (4, 8))
    tx, tw = pb.alloc("tx", "tsram", 32), pb.alloc("tw", "tsram", 32)
    acc = pb.access
    pb.emit(Dma(acc(w, "f32", (8,)), acc(tw, "f32", (8,)), grid=(2,), op="mul"),
            Loop((2,), [
                Dma(acc(x, "f32", (8,), tile_strides=(16,), loop_strides=(8,)),
                    acc(tx, "f32", (8,)), grid=(2,), op="mul"),
                Vec("mul", [acc(tx, "f32", (8,)), acc(tw, "f32", (8,))], acc(tx, "f32", (8,)),
                    grid=(2,), op="mul"),
                Dma(acc(tx, "f32", (8,)),
                    acc(y, "f32", (8,), tile_strides=(16,), loop_strides=(8,)),
                    grid=(2,), op="mul"),
            ], op="mul"))
    pb.meta = {"model": "tiny", "ops": {"mul": {"kind": "Mul"}}}
    return pb.build()


def test_round_trip(tmp_path: Path):
    prog = small_program()
    path = tmp_path / "m.maia"
    save_program(prog, path)
    loaded = load_program(path)
    assert loaded == prog
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(run_program(loaded, {"x": x})["y"], x * np.arange(8))
    assert not [p for p in tmp_path.iterdir() if p.name != "m.maia"]  # no temp files left


def _rewrite(path: Path, edit) -> None:
    """Rebuild the zip at ``path`` with ``edit(name, bytes) -> bytes | None`` (None drops)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(n, zf.read(n)) for n in zf.namelist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            new = edit(name, data)
            if new is not None:
                zf.writestr(name, new)


def _edit_manifest(path: Path, change) -> None:
    def edit(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        change(m)
        return json.dumps(m)
    _rewrite(path, edit)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "m.maia"
    save_program(small_program(), path)
    return path


def test_tampered_blob_is_named(saved: Path):
    def edit(name, data):
        return data[:-1] + b"\x01" if name.startswith("constants/") else data
    _rewrite(saved, edit)
    with pytest.raises(ProgramError, match=r"constants/00000_layer\.0_weight_0\.bin.*sha256"):
        load_program(saved)


def test_missing_blob_is_named(saved: Path):
    _rewrite(saved, lambda n, d: None if n.startswith("constants/") else d)
    with pytest.raises(ProgramError, match="constants/00000.*missing"):
        load_program(saved)


def test_truncated_file(saved: Path):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match=f"{saved}.*truncated or corrupt"):
        load_program(saved)


def test_not_a_zip(tmp_path: Path):
    path = tmp_path / "x.maia"
    path.write_text("hello")
    with pytest.raises(ProgramError, match="not a .maia file"):
        load_program(path)
    with pytest.raises(ProgramError, match="cannot read"):
        load_program(tmp_path / "absent.maia")


def test_wrong_version(saved: Path):
    _edit_manifest(saved, lambda m: m.update(version=FORMAT_VERSION + 1))
    with pytest.raises(ProgramError, match="format version 2"):
        load_program(saved)


def test_bad_json(saved: Path):
    _rewrite(saved, lambda n, d: b"{not json" if n == "manifest.json" else d)
    with pytest.raises(ProgramError, match="not valid JSON"):
        load_program(saved)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["buffers"][0].update(addr="0"), r"buffers.*expected an integer"),
    (lambda m: m.pop("instructions"), "'instructions' missing"),
    (lambda m: m["instructions"][1]["body"][0]["src"].update(shape=[8.5]), "instruction 1"),
    (lambda m: m["instructions"].append({"kind": "nop"}), "unknown instruction"),
])
def test_wrong_types(saved: Path, change, message):
    _edit_manifest(saved, change)
    with pytest.raises(ProgramError, match=message):
        load_program(saved)


def test_access_outside_memory_map(saved: Path):
    _edit_manifest(saved, lambda m: m["instructions"][1]["body"][2]["dst"].update(addr=10**6))
    with pytest.raises(ProgramError, match=r"instruction 1\.2 \(dma, op 'mul'\): operand dst"):
        load_program(saved)


def test_loop_stride_walks_out_of_buffer():
    prog = small_program()
    prog.instructions[1].body[0].src.loop_strides = (16,)  # 2nd iteration leaves x
    with pytest.raises(ProgramError, match=r"instruction 1\.0.*not inside any buffer"):
        validate_program(prog)


def test_buffer_outside_capacity():
    prog = small_program()
    prog.buffers[-1].addr = 3 * 2**20  # past the 3 MiB of TSRAM
    with pytest.raises(ProgramError, match="buffer 'tw'.*outside tsram"):
        validate_program(prog)


def test_grid_larger_than_chip():
    prog = small_program()
    prog.instructions[0].grid = (37,)  # maia200 has 36 active tiles
    with pytest.raises(ProgramError, match="needs 37 tiles"):
        validate_program(prog)


def _waits(m: dict, waits: dict) -> None:
    m["meta"]["async"] = True
    m["instructions"][1]["body"][1]["waits"] = waits


def test_more_waits_than_the_target_allows(saved: Path):
    """A Maia 200 instruction carries at most 2 waits (public): a third is refused, by
    the loader and by `maiac run` / `maiac report` (exit 2, one line naming it)."""
    from click.testing import CliRunner

    from maiac.cli import main

    _edit_manifest(saved, lambda m: _waits(m, {"dma0": 0, "dma1": 0, "ttu": 0}))
    message = (r"instruction 1\.1 \(vec, op 'mul'\): 3 waits \(dma0, dma1, ttu\); target "
               r"'maia200' allows at most 2 per instruction \(max_waits\)")
    with pytest.raises(ProgramError, match=message):
        load_program(saved)
    for cmd in ("run", "report"):
        r = CliRunner().invoke(main, [cmd, str(saved)])
        assert r.exit_code == 2, (r.output, r.exception)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
        assert "3 waits (dma0, dma1, ttu)" in r.stderr and "Traceback" not in r.output


def test_two_waits_and_a_barrier_load_and_run(saved: Path):
    """The same waits split over a barrier on the vec's engine are within the limit."""
    def change(m: dict) -> None:
        _waits(m, {"dma0": 0, "dma1": 0})
        body = m["instructions"][1]["body"]
        body[0]["waits"] = body[2]["waits"] = {"tvp": 0}  # tx: the vec's, then dma0's
        body.insert(1, {"kind": "sync", "engine": "tvp", "op": "mul", "waits": {"ttu": 0}})
    _edit_manifest(saved, change)
    prog = load_program(saved)
    barrier = prog.instructions[1].body[1]
    assert isinstance(barrier, Sync) and barrier.waits == {"ttu": 0}
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(run_program(prog, {"x": x})["y"], x * np.arange(8))


def test_barrier_on_unknown_engine(saved: Path):
    _edit_manifest(saved, lambda m: m["instructions"].insert(0, {"kind": "sync",
                                                                 "engine": "dma7"}))
    with pytest.raises(ProgramError, match=r"instruction 0 .*sync on unknown engine 'dma7' "
                                           r"\(engines: dma0, dma1, dma2, dma3, ttu, tvp, net\)"):
        load_program(saved)


def test_failed_save_leaves_old_file(saved: Path):
    before = saved.read_bytes()
    prog = small_program()
    prog.meta["bad"] = object()
    with pytest.raises(ProgramError, match="not serializable"):
        save_program(prog, saved)
    assert saved.read_bytes() == before
    assert len(list(saved.parent.iterdir())) == 1


def test_shape_only_program_round_trips(tmp_path: Path):
    prog = small_program()
    prog.constants.clear()
    save_program(prog, tmp_path / "s.maia")
    assert load_program(tmp_path / "s.maia").constants == {}
