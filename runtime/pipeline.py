"""Pipeline parallelism on the machine model: a model's layers cut into P stages
(passes/pipeline_stages.py), each stage a tensor-parallel group of ``tp`` chips (one chip
when ``tp`` = 1), activations sent stage to stage by point-to-point ``send``/``recv``
instructions on the network engines (runtime/isa.py).

Chips are numbered stage by stage: chip ``s * tp + r`` is rank ``r`` of stage ``s``, and
rank ``r`` sends to rank ``r`` of a later stage (the activation is whole on every rank).

Functional run (:func:`run_pipeline`): one micro-batch goes through the stages in order;
within a stage the chips run as a tensor-parallel group (runtime/multichip.py) and each
``send`` leaves its block in the channel to its peer, where the matching ``recv`` (the k-th
of that channel) takes it. The group's outputs are the union of the stages' outputs.

Timing (:func:`pipeline_timing`): each stage's programs are timed with their receives
ready at the start (the steady state of a full pipeline: stage s receives micro-batch m+1
while working on m); the transfer itself is costed on both chips' ``net`` engines
(runtime/network.py ``p2p_cost``). With per-stage times t_s and M micro-batches, the
GPipe schedule takes ``sum(t_s) + (M - 1) * max(t_s)``: the fill is the first micro-batch
going through every stage, then one micro-batch leaves every ``max(t_s)`` (the steady
throughput). The bubble is the share of chip-time idle: ``1 - M * sum(t_s) / (P * T)``.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from maiac.runtime.errors import MachineError, MaiacError
from maiac.runtime.isa import POINT_TO_POINT, Collective
from maiac.runtime.program import Program


def p2p_of(program: Program) -> list[Collective]:
    return [i for i in program.instructions
            if isinstance(i, Collective) and i.collective in POINT_TO_POINT]


def check_pipeline(stages: Sequence[Sequence[Program]]) -> None:
    """Every send has its recv: the same count, shapes and dtypes per channel, in order."""
    if not stages or any(not s for s in stages):
        raise MaiacError("a pipeline needs at least one program per stage")
    sent: dict[tuple[int, int], list[tuple[tuple[int, ...], str]]] = defaultdict(list)
    got: dict[tuple[int, int], list[tuple[tuple[int, ...], str]]] = defaultdict(list)
    for programs in stages:
        for prog in programs:
            for c in p2p_of(prog):
                if c.collective == "send":
                    sent[(c.rank, c.peer)].append((tuple(c.src.shape), c.src.dtype))
                else:
                    got[(c.peer, c.rank)].append((tuple(c.dst.shape), c.dst.dtype))
    for channel in sorted(set(sent) | set(got)):
        if sent.get(channel, []) != got.get(channel, []):
            a, b = channel
            raise MaiacError(f"chip {a} -> chip {b}: the sends {sent.get(channel, [])} do not "
                             f"match the receives {got.get(channel, [])} (not one pipeline)")


def take_sent(channels: dict[tuple[int, int], deque[Any]], rank: int, peer: int,
              stage: int) -> Any:
    """The oldest block chip ``peer`` sent to chip ``rank`` (a ``recv`` takes the k-th
    ``send`` of its channel)."""
    queue = channels[(peer, rank)]
    if not queue:
        raise MachineError(f"stage {stage}: chip {rank} receives from chip {peer}, "
                           f"which sent nothing (yet)")
    return queue.popleft()


def run_pipeline(stages: Sequence[Sequence[Program]],
                 inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One micro-batch through every stage; the outputs of all stages."""
    from maiac.runtime.multichip import ChipRunner, merge_outputs

    check_pipeline(stages)
    channels: dict[tuple[int, int], deque[np.ndarray]] = defaultdict(deque)
    outputs: dict[str, np.ndarray] = {}
    for s, programs in enumerate(stages):
        runners = [ChipRunner(p) for p in programs]
        names = {spec.name for spec in programs[0].inputs}
        for r in runners:
            r.start({k: v for k, v in inputs.items() if k in names})
        while True:
            instrs = [r.run_to_collective() for r in runners]
            if all(i is None for i in instrs):
                break
            if any(i is None for i in instrs) or len({i.collective for i in instrs}) > 1:
                raise MachineError(f"stage {s}: its chips disagree on the next collective")
            for r, i in zip(runners, instrs, strict=True):
                assert i is not None
                if i.collective == "send":
                    channels[(i.rank, i.peer)].append(r.send(i))
                elif i.collective == "recv":
                    r.receive(i, take_sent(channels, i.rank, i.peer, s))
            if instrs[0].collective not in POINT_TO_POINT:  # the stage's own TP collective
                pieces = [r.collective_src(i) for r, i in zip(runners, instrs, strict=True)]
                for r, i in zip(runners, instrs, strict=True):
                    r.finish_collective(i, pieces)
        outputs.update(merge_outputs(programs, [r.outputs() for r in runners]))
    return outputs


def stage_times(stages: Sequence[Sequence[Program]], tp: int) -> list[Any]:
    """Per stage, the timing reports of its chips (receives ready at the start)."""
    from maiac.runtime.multichip import simulate_chips

    return [simulate_chips(list(programs), group_size=tp) for programs in stages]


def pipeline_summary(times: Sequence[float], micro_batches: int) -> dict[str, Any]:
    """Fill, total time, steady throughput and bubble of ``micro_batches`` over stages
    taking ``times`` each (GPipe schedule)."""
    if micro_batches < 1:
        raise MaiacError(f"--micro-batches must be a positive integer, got {micro_batches}")
    p, m = len(times), micro_batches
    fill, slowest = sum(times), max(times)
    total = fill + (m - 1) * slowest
    return {"stages": p, "micro_batches": m, "stage_time_s": list(times),
            "fill_s": fill, "total_s": total, "steady_interval_s": slowest,
            "micro_batches_per_s": 1 / slowest if slowest else 0.0,
            "bubble_fraction": 1 - m * fill / (p * total) if total else 0.0,
            "balance": (fill / p) / slowest if slowest else 1.0}
