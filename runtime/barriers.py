"""Barriers: keep every instruction within the target's limit on waits.

A Maia 200 instruction carries at most ``Target.max_waits`` waits (2, public; isa.py
WAITS). An instruction whose hazards need more gets ``Sync`` barriers on its own engine
right before it, each carrying up to ``max_waits`` of them, and keeps the last
``max_waits`` itself: its engine runs in order, so it cannot start before its barriers
completed, which is what the waits they carry asked for (no other engine issues between
a barrier and its instruction, so the pending counts mean the same instructions).

A barrier counts on its engine's semaphore, so it shifts the pending counts of later
waits on that engine. With ``reinfer`` the waits are therefore inferred again
(runtime/hazards.py) with the barriers in place, from the barriers' waits alone: that
only adds ordering, so the instructions they precede then need only what the barriers
do not already give, and every other instruction's waits count the barriers. Waits that
drain an engine completely (pending 0, the naive schedule) are not shifted by a
barrier, so they need no reinference.

The ``sync`` pass (passes/schedule.py) calls ``limit_waits`` on the program it emits;
scripts/limit_waits.py brings stored programs written before the limit within it (the
same instructions and data, the same numbers).
"""

from __future__ import annotations

from collections.abc import Iterator

from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import Instr, Loop, Sync, engine_of

MAX_ROUNDS = 4
"""Split-and-reinfer rounds before giving up (one is enough for the compiler's programs)."""


def leaves(instrs: list[Instr]) -> Iterator[Instr]:
    """Every non-loop instruction, in program order."""
    for ins in instrs:
        if isinstance(ins, Loop):
            yield from leaves(ins.body)
        else:
            yield ins


def split(instrs: list[Instr], dma_queues: int, max_waits: int) -> int:
    """Put the waits beyond ``max_waits`` of every instruction on barriers right before it
    (in place, loop bodies included); the number of barriers inserted."""
    added = 0
    i = 0
    while i < len(instrs):
        ins = instrs[i]
        if isinstance(ins, Loop):
            added += split(ins.body, dma_queues, max_waits)
        elif len(ins.waits) > max_waits:
            items = sorted(ins.waits.items())
            extra, keep = items[:-max_waits], items[-max_waits:]
            engine = engine_of(ins, dma_queues)
            new = [Sync(engine, ins.op, waits=dict(extra[k:k + max_waits]))
                   for k in range(0, len(extra), max_waits)]
            ins.waits = dict(keep)
            instrs[i:i] = new
            i += len(new)
            added += len(new)
        i += 1
    return added


def limit_waits(instrs: list[Instr], dma_queues: int, max_waits: int,
                reinfer: bool = True) -> int:
    """Insert barriers until no instruction of ``instrs`` carries more than ``max_waits``
    waits (``reinfer``: infer every non-barrier wait again after each round); the number
    of barriers inserted. ``MaiacError`` if ``max_waits`` < 1 or the rounds run out."""
    from maiac.runtime.hazards import infer_waits

    if max_waits < 1:
        raise MaiacError(f"the target allows {max_waits} waits per instruction; at least 1 "
                         "is needed to order two engines")
    total = 0
    for _ in range(MAX_ROUNDS):
        added = split(instrs, dma_queues, max_waits)
        total += added
        if not added or not reinfer:
            return total
        for ins in leaves(instrs):
            if not isinstance(ins, Sync):
                ins.waits = {}
        infer_waits(instrs, dma_queues)
    over = sum(len(i.waits) > max_waits for i in leaves(instrs))
    if over:
        raise MaiacError(f"{over} instructions still need more than {max_waits} waits after "
                         f"{MAX_ROUNDS} rounds of barriers")
    return total
