"""A hostile or damaged `.maia` file is bounded (runtime/limits.py): every size, count and
trip is checked before anything is allocated, inflated, walked or run, and breaking a
bound is one ProgramError naming the field."""

from __future__ import annotations

import copy
import json
import resource
from pathlib import Path

import numpy as np
import pytest
from maia_files import small_program, valid_maia, with_blob, write_maia

from maiac.runtime import limits, liveness
from maiac.runtime.errors import ProgramError
from maiac.runtime.interpreter import run_program
from maiac.runtime.isa import Dma, Loop, Vec
from maiac.runtime.program import ProgramBuilder, load_program
from maiac.runtime.timing import SIM_ITERS, simulate


@pytest.fixture
def small_limit():
    limits.set_max_memory(64 << 20)
    yield 64 << 20
    limits.set_max_memory(None)


def _mutated(tmp_path: Path, edit, members_edit=None) -> Path:
    _, manifest, members = valid_maia(tmp_path)
    manifest = copy.deepcopy(manifest)
    edit(manifest)
    if members_edit:
        members_edit(members)
    return write_maia(tmp_path / "bad.maia", manifest, members)


def test_valid_file_still_loads_and_runs(tmp_path):
    path, _, _ = valid_maia(tmp_path)
    prog = load_program(path)
    x = np.ones((4, 8), np.float32)
    want = np.maximum(x + np.arange(32, dtype=np.float32).reshape(4, 8) - 16, 0)
    np.testing.assert_array_equal(run_program(prog, {"x": x})["y"], want)


def test_zip_bomb_blob_is_refused_before_inflating(tmp_path, small_limit):
    _, manifest, members = valid_maia(tmp_path)
    big = 256 << 20  # 256 MiB of zeros deflates to ~250 KB
    manifest["buffers"] = [dict(b, nbytes=big) if b["name"] == "c" else b
                           for b in manifest["buffers"]]
    manifest, members = with_blob(manifest, members, "c", bytes(big))
    path = write_maia(tmp_path / "bomb.maia", manifest, members)
    assert path.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProgramError, match="loading its constants needs 256.0 MiB"):
        load_program(path)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 100 << 20


def test_blob_larger_than_its_buffer_or_its_declared_size(tmp_path):
    _, manifest, members = valid_maia(tmp_path)
    m2, mem2 = with_blob(manifest, members, "c", bytes(4096))
    with pytest.raises(ProgramError, match="its buffer holds 128"):
        load_program(write_maia(tmp_path / "a.maia", m2, mem2))
    m3 = copy.deepcopy(manifest)
    m3["constants"][0]["nbytes"] = 64
    with pytest.raises(ProgramError, match="manifest says 64"):
        load_program(write_maia(tmp_path / "b.maia", m3, members))


def test_huge_manifest_is_refused_by_its_declared_size(tmp_path, small_limit):
    _, manifest, members = valid_maia(tmp_path)
    raw = json.dumps(manifest).encode() + b" " * (65 << 20)  # valid JSON, 65 MiB
    path = write_maia(tmp_path / "m.maia", None, members, raw_manifest=raw)
    with pytest.raises(ProgramError, match="manifest.json is .* over the bound"):
        load_program(path)


def test_deep_json_manifest(tmp_path):
    _, manifest, members = valid_maia(tmp_path)
    text = json.dumps(manifest)
    deep = text[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    with pytest.raises(ProgramError, match="nests deeper"):
        load_program(write_maia(tmp_path / "d.maia", None, members, raw_manifest=deep.encode()))
    shallow_but_deep = text[:-1] + ', "x": ' + "[" * 100 + "]" * 100 + "}"
    with pytest.raises(ProgramError, match="nests deeper than 64"):
        load_program(write_maia(tmp_path / "e.maia", None, members,
                                raw_manifest=shallow_but_deep.encode()))


@pytest.mark.parametrize("key,value", [("n_clusters", 10**9), ("dma_queues", 10**9),
                                       ("tiles_per_cluster", 5000)])
def test_target_parameters_are_bounded(tmp_path, key, value):
    path = _mutated(tmp_path, lambda m: m["target"].__setitem__(key, value))
    with pytest.raises(ProgramError, match=key):
        load_program(path)


def test_string_where_a_number_belongs(tmp_path):
    path = _mutated(tmp_path, lambda m: m["buffers"][0].__setitem__("nbytes", "128"))
    with pytest.raises(ProgramError, match="malformed manifest .buffers.*expected an integer"):
        load_program(path)
    path = _mutated(tmp_path, lambda m: m["instructions"][0].__setitem__("trips", ["4"]))
    with pytest.raises(ProgramError, match="instruction 0"):
        load_program(path)
    path = _mutated(tmp_path, lambda m: m["buffers"][0].__setitem__("addr", 10**40))
    with pytest.raises(ProgramError, match="out of range"):
        load_program(path)


def _nest(depth: int) -> dict:
    body = {"kind": "vec", "fn": "relu", "ins": [], "out": {}}
    for _ in range(depth):
        body = {"kind": "loop", "trips": [2], "op": "", "body": [body]}
    return body


def test_deeply_nested_loops(tmp_path):
    path = _mutated(tmp_path, lambda m: m["instructions"].append(_nest(300)))
    with pytest.raises(ProgramError, match="nests deeper than 64"):
        load_program(path)
    path = _mutated(tmp_path, lambda m: m["instructions"].append(_nest(12)))
    with pytest.raises(ProgramError, match=r"instruction 4(\.0)+: loops nest deeper than 8"):
        load_program(path)


def _huge_loop_program(trips: tuple[int, ...]):
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (16,))
    y = pb.output("y", "f32", (16,))
    t = pb.alloc("t", "tsram", 64)
    acc = pb.access
    add = Vec("add", [acc(t, "f32", (16,)), acc(t, "f32", (16,))], acc(t, "f32", (16,)))
    pb.emit(Dma(acc(x, "f32", (16,)), acc(t, "f32", (16,))),
            Loop(trips, [add, copy.deepcopy(add)]),
            Dma(acc(t, "f32", (16,)), acc(y, "f32", (16,))))
    return pb.build()


def test_huge_trip_counts_time_in_closed_form_and_refuse_to_run(tmp_path):
    prog = _huge_loop_program((100_000, 100_000))
    from maiac.runtime.program import save_program

    save_program(prog, tmp_path / "h.maia")
    loaded = load_program(tmp_path / "h.maia")
    rep = simulate(loaded)
    assert rep.visits == 2 + 2 * SIM_ITERS  # the DMAs, SIM_ITERS iterations of the loop
    assert rep.modeled_time_s > 1e10 * 50e-9  # 2e10 vec instructions, each >= 50 ns
    with pytest.raises(ProgramError, match="more than .* instructions"):
        run_program(loaded, {"x": np.ones(16, np.float32)})
    loop = loaded.instructions[1]
    loop.trips = (10**13,)
    with pytest.raises(ProgramError, match="over the bound"):
        limits.check_structure(loaded)


def test_liveness_is_closed_form_in_trip_counts():
    prog = _huge_loop_program((100_000, 100_000))
    mem = {"hbm": np.zeros(256, np.uint8), "csram": np.zeros(64, np.uint8),
           "tsram": np.zeros((64, 128), np.uint8)}
    work: dict[str, int] = {}
    ranges, _ = liveness.first_reads(prog, mem, lambda *a: False, work)
    assert work == {"visits": 2, "summarized": 1}  # the two DMAs; the loop all at once
    assert ranges["tsram"] == []  # t was written before the loop


@pytest.mark.parametrize("budget,view_limit", [(0, 1 << 26), (0, 0)])
def test_summarized_liveness_stays_correct(monkeypatch, budget, view_limit):
    """Past the walk budget a loop is summarized: more bytes may be poisoned, never fewer,
    and the results are the same."""
    pb = ProgramBuilder()
    x = pb.input("x", "f32", (1,))
    y = pb.output("y", "f32", (8,))
    t = pb.alloc("t", "tsram", 32)
    acc = pb.access
    pb.emit(Dma(acc(x, "f32", (1,)), acc(t, "f32", (1,))),
            Loop((7,), [Dma(acc(t, "f32", (1,), loop_strides=(1,)),
                            acc(t, "f32", (1,), offset=1, loop_strides=(1,))),
                        Vec("copy", [acc(t, "f32", (1,), offset=1, loop_strides=(1,))],
                            acc(t, "f32", (1,), offset=1, loop_strides=(1,)))]),
            Dma(acc(t, "f32", (8,)), acc(y, "f32", (8,))))
    monkeypatch.setattr(liveness, "WALK_BUDGET", budget)
    monkeypatch.setattr(liveness, "SUMMARY_VIEW_LIMIT", view_limit)
    prog = pb.build()
    for v in (3.0, 5.0):
        got = run_program(prog, {"x": np.array([v], np.float32)})["y"]
        np.testing.assert_array_equal(got, np.full(8, v, np.float32))
    poisoned = prog.runtime_cache["machine"].poison["tsram"]
    assert poisoned
    if view_limit:  # the extent fallback also counts the tiles the first DMA did not write
        assert poisoned[0][0] >= t.addr + 4  # never the byte written first


def test_buffer_past_host_memory_loads_times_but_does_not_run(tmp_path, small_limit):
    prog = small_program()
    big = prog.buffer("y")
    big.nbytes = 199 * 10**9
    from maiac.runtime.program import save_program

    save_program(prog, tmp_path / "big.maia")
    loaded = load_program(tmp_path / "big.maia")
    simulate(loaded)
    with pytest.raises(ProgramError, match="memory levels.*over the limit"):
        run_program(loaded, {"x": np.ones((4, 8), np.float32)})


def test_stride_zero_block_past_host_memory_does_not_run(small_limit):
    prog = small_program()
    dma = prog.instructions[-1]
    dma.src = type(dma.src)(dma.src.level, dma.src.addr, "f32", (1 << 30, 8), (0, 1))
    dma.dst = type(dma.dst)(dma.dst.level, dma.dst.addr, "f32", (1 << 30, 8), (0, 1))
    with pytest.raises(ProgramError, match="instruction 3 .*over the limit"):
        run_program(prog, {"x": np.ones((4, 8), np.float32)})


def test_encrypted_or_truncated_member(tmp_path):
    path, manifest, members = valid_maia(tmp_path)
    data = path.read_bytes()
    (tmp_path / "t.maia").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupt|not a .maia"):
        load_program(tmp_path / "t.maia")
    # a member stored with an unsupported compression method
    bad = write_maia(tmp_path / "lz.maia", manifest, members)
    raw = bytearray(bad.read_bytes())
    central = raw.index(b"PK\x01\x02")  # the manifest's central directory record
    raw[central + 10:central + 12] = (99).to_bytes(2, "little")  # method 99 (AES)
    (tmp_path / "m99.maia").write_bytes(bytes(raw))
    with pytest.raises(ProgramError):
        load_program(tmp_path / "m99.maia")


def test_corrupt_deflate_stream(tmp_path):
    """Damaged compressed bytes (zlib 'invalid distance too far back', found by the fuzz
    suite) are a ProgramError, not a zlib.error."""
    _, manifest, members = valid_maia(tmp_path)
    manifest["meta"]["pad"] = "abc" * 5000  # a long, well-compressed manifest
    path = write_maia(tmp_path / "z.maia", manifest, members)
    raw = bytearray(path.read_bytes())
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("manifest.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    failures = 0
    for k in range(1, 40):  # some byte flips must break the deflate stream itself
        data = bytearray(raw)
        data[start + k * (info.compress_size // 41)] ^= 0xA5
        (tmp_path / "c.maia").write_bytes(bytes(data))
        try:
            load_program(tmp_path / "c.maia")
        except ProgramError:
            failures += 1
    assert failures == 39


def test_report_of_a_zip_bomb_keeps_no_blob(tmp_path):
    """maiac report loads with keep_constants=False: every blob's sha256 is still checked,
    streaming, but a 256 MiB blob costs ~a chunk of memory, not 256 MiB."""
    import tracemalloc

    _, manifest, members = valid_maia(tmp_path)
    big = 256 << 20
    manifest["buffers"] = [dict(b, nbytes=big) if b["name"] == "c" else b
                           for b in manifest["buffers"]]
    manifest, members = with_blob(manifest, members, "c", bytes(big))
    path = write_maia(tmp_path / "bomb.maia", manifest, members)
    tracemalloc.start()
    prog = load_program(path, keep_constants=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20 and prog.constants == {}
    simulate(prog)
    bad = dict(members)
    blob = manifest["constants"][0]["blob"]
    bad[blob] = bytes(big - 1) + b"\x01"
    with pytest.raises(ProgramError, match="sha256"):
        load_program(write_maia(tmp_path / "t.maia", manifest, bad), keep_constants=False)


def test_cli_report_of_a_zip_bomb_keeps_no_blob(tmp_path):
    import tracemalloc

    from click.testing import CliRunner

    from maiac.cli import main

    _, manifest, members = valid_maia(tmp_path)
    big = 128 << 20
    manifest["buffers"] = [dict(b, nbytes=big) if b["name"] == "c" else b
                           for b in manifest["buffers"]]
    manifest, members = with_blob(manifest, members, "c", bytes(big))
    path = write_maia(tmp_path / "bomb.maia", manifest, members)
    tracemalloc.start()
    r = CliRunner().invoke(main, ["report", str(path)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.exit_code == 0, r.output
    assert peak < 32 << 20


def _big_const_program(nbytes: int):
    pb = ProgramBuilder()
    w = pb.const("w", np.arange(nbytes // 4, dtype=np.float32))
    y = pb.output("y", "f32", (1024,))
    t = pb.alloc("t", "tsram", 4096)
    acc = pb.access
    pb.emit(Dma(acc(w, "f32", (1024,), offset=nbytes // 4 - 1024), acc(t, "f32", (1024,))),
            Dma(acc(t, "f32", (1024,)), acc(y, "f32", (1024,))))
    return pb.build()


# Peak RSS of one load + run in a fresh process (the machine's memory is an anonymous
# mapping, which tracemalloc does not see; in the test process, pages earlier tests freed
# but the allocator kept would hide part of the growth).
_PEAK_OF_RUN = """
import sys
from pathlib import Path
import numpy as np
from maiac.runtime.interpreter import run_program
from maiac.runtime.program import ZipBlob, load_program

def status_kib(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith(field + ":"))
    return int(line.split()[1])

path, in_place, nbytes = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
rss = status_kib("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
prog = load_program(path, in_place=in_place)
out = run_program(prog, {})
peak = (status_kib("VmHWM") - rss) << 10
want = np.arange(nbytes // 4 - 1024, nbytes // 4, dtype=np.float32)
assert np.array_equal(out["y"], want)
assert isinstance(prog.constants["w"], ZipBlob) == in_place
print(peak)
"""


def test_run_inflates_weights_in_place_once(tmp_path):
    """load_program(in_place=True) (maiac run) keeps no copy of a blob: the interpreter
    inflates it into its HBM, so a run's peak is ~1x the blob, not 2x; a blob
    changed after loading is an error, not wrong weights."""
    import subprocess
    import sys

    from maiac.runtime.program import ZipBlob, save_program

    nbytes = 64 << 20
    path = tmp_path / "big.maia"
    save_program(_big_const_program(nbytes), path)
    peaks = {}
    for in_place in (False, True):
        done = subprocess.run([sys.executable, "-c", _PEAK_OF_RUN, str(path),
                               str(int(in_place)), str(nbytes)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        peaks[in_place] = int(done.stdout)
    assert peaks[True] < 1.25 * nbytes < 1.75 * nbytes < peaks[False], peaks
    prog = load_program(path, in_place=True)
    blob = prog.constants["w"]
    with pytest.raises(ProgramError, match="sha256"):
        ZipBlob(blob.path, blob.member, blob.nbytes, "0" * 64).read_into(
            np.zeros(nbytes, np.uint8))
