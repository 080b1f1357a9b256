"""N chips of a tensor-parallel group: functional run and timing, in one process.

Each chip runs its own program (passes/shard.py makes them). Collectives sit at the top
level of every program in the same order; between two collectives each chip runs on its
own, at a collective every chip hands its ``src`` block over and computes its ``dst`` from
all of them (:func:`collective_result`, the same numbers on every chip). The Ray backend
(maiac/ray_backend.py) runs the same :class:`ChipRunner` inside one actor per chip.

Inputs and outputs of a sharded program: ``meta["shard"]["inputs"|"outputs"][name] =
{"axis": a, "start": s, "stop": e}`` says the chip's tensor is ``full[..., s:e, ...]``
along axis ``a`` (a KV cache split by heads); anything else is replicated.

Timing: every chip's program is scheduled by runtime/timing.py in its own thread; a
collective starts on all chips when the last one is ready (the cross-chip semaphore).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.isa import Collective, Instr
from maiac.runtime.memory import np_dtype
from maiac.runtime.network import Network
from maiac.runtime.parallel import single_threaded_blas
from maiac.runtime.program import Program, instr_label
from maiac.runtime.timing import TimingReport, simulate


def collectives_of(program: Program) -> list[tuple[int, Collective]]:
    return [(i, ins) for i, ins in enumerate(program.instructions) if isinstance(ins, Collective)]


def check_group(programs: Sequence[Program], group_size: int | None = None) -> None:
    """Every chip has the same collectives in the same order, ranks 0..len-1 of
    ``group_size`` chips (default: one program per chip). A pipeline stage's sends and
    receives (``peer`` >= 0) are checked by runtime/pipeline.py."""
    n = group_size or len(programs)
    if n == 0:
        raise MaiacError("a multi-chip run needs at least one program")
    first = [(c.collective, c.chips, c.op) for _, c in collectives_of(programs[0])]
    for rank, prog in enumerate(programs):
        seq = collectives_of(prog)
        if [(c.collective, c.chips, c.op) for _, c in seq] != first:
            raise MaiacError(f"chip {rank}'s collectives differ from chip 0's: the programs "
                             f"are not one tensor-parallel group")
        for i, c in seq:
            if c.peer >= 0:
                continue
            if c.chips != n or c.rank != rank:
                raise MaiacError(f"chip {rank}: {instr_label(str(i), c)} is rank {c.rank} of "
                                 f"{c.chips} chips, the group has {n}")


def _block(machine: Any, acc: Any) -> np.ndarray:
    return machine.view(acc, (1,), ())[0]


def collective_result(instr: Collective, pieces: Sequence[np.ndarray]) -> np.ndarray:
    """``dst`` of chip ``instr.rank`` from every chip's ``src`` block (fp32, rank order)."""
    if instr.collective == "all_gather":
        return np.stack([np.asarray(p, np.float32) if p.dtype.kind == "f" else p
                         for p in pieces])
    total = np.zeros(pieces[0].shape, np.float32)
    for p in pieces:  # rank order: every chip gets bit-identical sums
        total += p.astype(np.float32)
    return total if instr.collective == "all_reduce" else total[instr.rank]


def apply_collective(instrs: Sequence[Collective], machines: Sequence[Any]) -> None:
    """Run one collective over the machines of a group (in one process)."""
    pieces = [_block(m, ins.src).copy() for m, ins in zip(machines, instrs, strict=True)]
    for m, ins in zip(machines, instrs, strict=True):
        store_dst(m, ins, collective_result(ins, pieces))


def store_dst(machine: Any, instr: Collective, value: np.ndarray) -> None:
    dst = _block(machine, instr.dst)
    dst[...] = value.astype(np_dtype(instr.dst.dtype))


@dataclass
class ChipRunner:
    """One chip's program, run step by step up to each collective."""

    program: Program

    def __post_init__(self) -> None:
        from maiac.runtime.interpreter import _machine

        self.machine = _machine(self.program)
        self.pos = 0

    def start(self, inputs: dict[str, np.ndarray], resident: Sequence[str] = ()) -> None:
        """Load ``inputs`` (the whole tensors: this chip takes its slice); ``resident``
        inputs are already in this chip's memory (its slice of a KV cache kept between
        runs, runtime/session.py's tensor_view) and are not written."""
        from maiac.runtime.interpreter import _check_inputs
        from maiac.runtime.session import tensor_view

        feeds = local_inputs(self.program, inputs)
        feeds.update({n: tensor_view(self.program, self.machine, n) for n in resident})
        arrays = _check_inputs(self.program, feeds)
        self.machine.reset()
        for spec in self.program.inputs:
            if spec.name not in resident:
                b = self.program.buffer(spec.buffer)
                self.machine._write_bytes(b.level, b.addr, arrays[spec.name])
        self.pos = 0

    def run_to_collective(self) -> Collective | None:
        """Run until the next collective (returned, not run) or the end (None)."""
        steps, instrs = self.machine.steps, self.program.instructions
        with np.errstate(all="ignore"), single_threaded_blas(self.machine.blas_limit):
            while self.pos < len(steps):
                ins: Instr = instrs[self.pos]
                if isinstance(ins, Collective):
                    return ins
                label, step = steps[self.pos]
                try:
                    step(())
                except MachineError:
                    raise
                except Exception as err:
                    raise MachineError(f"{label}: {type(err).__name__}: {err}") from err
                self.pos += 1
        return None

    def collective_src(self, instr: Collective) -> np.ndarray:
        return _block(self.machine, instr.src).copy()

    def finish_collective(self, instr: Collective, pieces: Sequence[np.ndarray]) -> None:
        store_dst(self.machine, instr, collective_result(instr, pieces))
        self.pos += 1

    def send(self, instr: Collective) -> np.ndarray:
        """Run a point-to-point ``send``: the block that leaves for ``instr.peer``."""
        block = self.collective_src(instr)
        self.pos += 1
        return block

    def receive(self, instr: Collective, block: np.ndarray) -> None:
        """Run a ``recv``: ``block`` (sent by ``instr.peer``) lands in ``instr.dst``."""
        store_dst(self.machine, instr, block)
        self.pos += 1

    def outputs(self) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.program.outputs:
            b = self.program.buffer(spec.buffer)
            out[spec.name] = self.machine.read(b.level, b.addr, spec.dtype, tuple(spec.shape))
        return out


def _shard_map(program: Program, key: str) -> dict[str, dict[str, int]]:
    shard = program.meta.get("shard") if isinstance(program.meta, dict) else None
    return dict((shard or {}).get(key, {}))


def local_inputs(program: Program, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This chip's slice of every sharded input (the others as they are)."""
    out = dict(inputs)
    for name, cut in _shard_map(program, "inputs").items():
        if name in out:
            arr = np.asarray(out[name])
            index = [slice(None)] * arr.ndim
            index[cut["axis"]] = slice(cut["start"], cut["stop"])
            out[name] = arr[tuple(index)]
    return out


def merge_outputs(programs: Sequence[Program],
                  per_chip: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The group's outputs: sharded ones concatenated in rank order, the rest from chip 0."""
    merged = dict(per_chip[0])
    for name, cut in _shard_map(programs[0], "outputs").items():
        pieces: dict[int, np.ndarray] = {}  # by start: chips sharing a KV head hold copies
        for prog, out in zip(programs, per_chip, strict=True):
            pieces.setdefault(_shard_map(prog, "outputs")[name]["start"], out[name])
        merged[name] = np.concatenate([pieces[k] for k in sorted(pieces)], axis=cut["axis"])
    return merged


def run_chips(programs: Sequence[Program], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a tensor-parallel group in this process; the group's outputs."""
    check_group(programs)
    return run_runners([ChipRunner(p) for p in programs], inputs)


def run_runners(runners: Sequence[ChipRunner], inputs: dict[str, np.ndarray],
                resident: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """One run of a group's chips (machines kept by the caller between runs; ``resident``
    inputs stay in each chip's memory, see :meth:`ChipRunner.start`)."""
    programs = [r.program for r in runners]
    for r in runners:
        r.start(inputs, resident)
    while True:
        instrs = [r.run_to_collective() for r in runners]
        if all(i is None for i in instrs):
            break
        if any(i is None for i in instrs):  # check_group makes this unreachable
            raise MachineError("chips disagree on the number of collectives")
        pieces = [r.collective_src(i) for r, i in zip(runners, instrs, strict=True)]
        for r, i in zip(runners, instrs, strict=True):
            r.finish_collective(i, pieces)
    return merge_outputs(programs, [r.outputs() for r in runners])


# --------------------------------------------------------------------------- timing

class _GroupSemaphore:
    """The cross-chip semaphore of a collective: start when the last chip is ready."""

    def __init__(self, n: int, timeout_s: float = 600.0) -> None:
        self.barrier = threading.Barrier(n, timeout=timeout_s)
        self.lock = threading.Lock()
        self.ready: dict[int, float] = {}
        self.count = threading.local()  # collectives this chip's thread has reached

    def __call__(self, path: str, t: float) -> float:
        # the k-th collective of every chip is the same one (check_group); paths differ
        # where rank 0 has extra epilogue instructions
        k = getattr(self.count, "n", 0)
        self.count.n = k + 1
        with self.lock:
            self.ready[k] = max(self.ready.get(k, 0.0), t)
        self.barrier.wait()
        start = self.ready[k]
        self.barrier.wait()  # nobody moves on until every chip read the start time
        return start


def simulate_chips(programs: Sequence[Program], network: Network | None = None,
                   group_size: int | None = None) -> list[TimingReport]:
    """Timing of every chip of a group, collectives synchronized across chips.

    ``group_size`` > ``len(programs)``: the programs are ranks 0..k-1 and the last one
    stands for every further rank (they differ only in which slice they hold), so the
    cross-chip semaphore over the k programs equals the one over all chips.
    """
    check_group(programs, group_size)
    if len(programs) == 1:
        return [simulate(programs[0], network=network)]
    sem = _GroupSemaphore(len(programs))
    reports: list[TimingReport | None] = [None] * len(programs)
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            reports[rank] = simulate(programs[rank], network=network, sync=sem)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            sem.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(programs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                     errors[0])
        raise first
    return [r for r in reports if r is not None]


def group_report(reports: Sequence[TimingReport], programs: Sequence[Program],
                 chips: int | None = None) -> dict[str, Any]:
    """The group's report: chip 0's keys, the makespan over chips, per-chip rows and the
    share of time the network engine is busy (``chips`` > len: the last report stands
    for the remaining ranks, see :func:`simulate_chips`)."""
    chips = chips or len(reports)
    modeled = max(r.modeled_time_s for r in reports)
    base = reports[0].to_json()
    rows = []
    for rank, r in enumerate(reports):
        net = next((e["busy_s"] for e in r.engines if e["name"] == "net"), 0.0)
        rows.append({"rank": rank, "modeled_time_s": r.modeled_time_s, "net_busy_s": net,
                      "collective_share": net / r.modeled_time_s if r.modeled_time_s else 0.0,
                      "hbm_bytes": r.hbm_bytes, "weight_bytes": r.weight_bytes})
    collectives = []
    net = Network.from_json((programs[0].meta or {}).get("network"))
    for _, c in collectives_of(programs[0]):
        size = _collective_size(c)
        seconds, algo = (net.p2p_cost(size, c.rank, c.peer, c.chips) if c.peer >= 0
                         else net.cost(c.collective, size, c.chips))
        collectives.append({"op": c.op, "collective": c.collective, "bytes": int(size),
                            "algorithm": algo, "time_s": seconds})
    if chips > len(reports):
        rows[-1]["stands_for_ranks"] = [len(reports) - 1, chips - 1]
    per_rank = [r.weight_bytes for r in reports]
    per_rank += [per_rank[-1]] * (chips - len(reports))
    base.update({
        "chips": chips, "modeled_time_s": modeled,
        "roofline_fraction": base["roofline_time_s"] / modeled if modeled else 0.0,
        "per_chip": rows, "collectives": collectives,
        "collective_share": max(c["collective_share"] for c in rows),
        "collective_time_s": sum(c["time_s"] for c in collectives),
        "weight_bytes_total": sum(per_rank),
    })
    if "tokens" in base and modeled > 0:
        base["tokens_per_s"] = base["tokens"] / modeled
    return base


def _collective_size(c: Collective) -> float:
    from maiac.runtime.memory import distinct_bytes

    acc = c.dst if c.collective == "all_gather" else c.src
    return float(distinct_bytes(acc, tuple(c.grid)))


def group_trace(reports: Sequence[TimingReport]) -> dict[str, Any]:
    """One Perfetto process per chip (pid = rank + 1), one track per engine, flow ids
    unique across chips."""
    from maiac.runtime.trace import chrome_trace

    events: list[dict[str, Any]] = []
    for rank, r in enumerate(reports):
        events += chrome_trace(r, pid=rank + 1, flow_id_base=len(events),
                               process_name=f"chip {rank} ({r.target}, modeled)")["traceEvents"]
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"chips": len(reports),
                          "modeled_time_s": max(r.modeled_time_s for r in reports)}}
