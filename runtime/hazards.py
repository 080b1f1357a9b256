"""Hazards of the asynchronous machine: what ``waits`` must order, checked or inferred.

Under the asynchronous semantics (``isa`` WAITS; a program with ``meta["async"]``), each
engine (DMA queues, TTU, TVP) runs its own instructions in order and only ``waits``
order instructions of different engines. Two accesses *conflict* when they touch
overlapping bytes of one level and at least one writes. Every conflicting pair on two
engines must be ordered by a chain of waits (happens-before), else the program has a
hazard:

* a read of bytes a DMA writes before that DMA completed (no wait),
* a write over bytes an in-flight DMA (or a compute engine) still reads,
* two unordered writes of the same bytes.

``HazardTracker`` follows a run instruction by instruction with vector clocks (one
component per engine; FastTrack-style shadow memory over byte ranges, TSRAM addresses
shared by all tiles). ``check`` mode raises ``MachineError`` naming both instructions;
``infer`` mode (the ``sync`` pass) instead tightens the waits of the later instruction
until the pair is ordered. Accesses outside their allocation are caught when the program
is loaded (``program.validate_program``).

Footprints are byte ranges ``[lo, hi)`` per level: the bounding box of a strided block
(as the timing model uses), so interleaved strided blocks count as overlapping.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from maiac.runtime.errors import MachineError
from maiac.runtime.isa import (
    Access,
    Collective,
    Dma,
    Gather,
    Instr,
    Loop,
    MatMul,
    Scatter,
    Sync,
    Vec,
    engine_of,
    engines,
)
from maiac.runtime.memory import StepMap, block_extent, itemsize
from maiac.runtime.program import Program, instr_label
from maiac.runtime.target import Target

SAMPLE_ITERS = 3  # infer mode: iterations of each loop followed exactly (first + steady state)


@dataclass
class Span:
    """Bytes ``[lo, hi)`` of ``level`` at loop iteration 0, moving by ``loop_bytes``."""

    level: str
    lo: int
    hi: int
    loop_bytes: tuple[int, ...]
    write: bool

    def at(self, it: tuple[int, ...]) -> tuple[int, int]:
        off = sum(i * s for i, s in zip(it, self.loop_bytes, strict=False))
        return self.lo + off, self.hi + off

    def over(self, prefix: tuple[int, ...], trips: tuple[int, ...]) -> tuple[int, int]:
        """Range over every iteration of the loop dims after ``prefix``."""
        lo, hi = self.at(prefix)
        for n, s in zip(trips[len(prefix):], self.loop_bytes[len(prefix):], strict=False):
            lo += min(0, (n - 1) * s)
            hi += max(0, (n - 1) * s)
        return lo, hi


def instr_accesses(instr: Instr) -> list[tuple[Access, bool]]:
    """(access, is_write) of a non-loop instruction; reads first."""
    if isinstance(instr, Sync):
        return []  # a barrier touches no memory
    if isinstance(instr, Collective) and instr.collective == "recv":
        return [(instr.dst, True)]  # a recv writes dst (its src is dst, not read)
    if isinstance(instr, Dma | Collective):  # a collective reads src, writes all of dst
        return [(instr.src, False), (instr.dst, True)]
    if isinstance(instr, Gather):
        return [(instr.table, False), (instr.indices, False), (instr.dst, True)]
    if isinstance(instr, Scatter):  # the whole table counts as written (data-dependent rows)
        return [(instr.indices, False), (instr.src, False), (instr.table, True)]
    if isinstance(instr, MatMul):
        reads = [instr.a, instr.b] + ([instr.c] if instr.accumulate else [])
        reads += [s for s in (getattr(instr, "a_scale", None), getattr(instr, "b_scale", None))
                  if s is not None]
        return [(a, False) for a in reads] + [(instr.c, True)]
    assert isinstance(instr, Vec)
    return [(a, False) for a in instr.ins] + [(instr.out, True)]


def spans(instr: Instr, n_loops: int) -> list[Span]:
    """Footprints of a non-loop instruction inside ``n_loops`` enclosing loop dims."""
    grid = tuple(instr.grid)
    out = []
    for acc, write in instr_accesses(instr):
        lo, hi = block_extent(acc, grid)
        isz = itemsize(acc.dtype)
        ls = tuple(s * isz for s in acc.loop_strides) or (0,) * n_loops
        out.append(Span(acc.level, lo, hi, ls, write))
    return out


@dataclass
class Leaf:
    """A non-loop instruction, precomputed for the tracker."""

    instr: Instr
    label: str
    engine: int
    spans: list[Span]
    waits: list[tuple[int, int]]  # (engine index, pending)


@dataclass
class LoopNode:
    instr: Loop
    label: str
    body: list[Leaf | LoopNode]
    leaves: list[Leaf] = field(default_factory=list)


def build(instrs: list[Instr], names: list[str], prefix: str = "",
          n_loops: int = 0) -> list[Leaf | LoopNode]:
    """The tracker's tree of a program's instructions (engine names from ``names``)."""
    index = {e: i for i, e in enumerate(names)}
    dma_queues = sum(1 for e in names if e.startswith("dma"))
    out: list[Leaf | LoopNode] = []
    for i, ins in enumerate(instrs):
        path = f"{prefix}{i}"
        if isinstance(ins, Loop):
            body = build(ins.body, names, f"{path}.", n_loops + len(ins.trips))
            node = LoopNode(ins, instr_label(path, ins), body)
            node.leaves = [x for b in body for x in (b.leaves if isinstance(b, LoopNode) else [b])]
            out.append(node)
            continue
        waits = []
        for e, k in (ins.waits or {}).items():
            if e not in index or not isinstance(k, int) or k < 0:
                raise MachineError(f"{instr_label(path, ins)}: bad wait {e}={k!r} (engines: "
                                   f"{', '.join(names)}; pending counts >= 0)")
            waits.append((index[e], k))
        engine = engine_of(ins, dma_queues)
        if engine not in index:
            raise MachineError(f"{instr_label(path, ins)}: unknown engine {engine!r} "
                               f"(engines: {', '.join(names)})")
        out.append(Leaf(ins, instr_label(path, ins), index[engine],
                        spans(ins, n_loops), waits))
    return out


# --------------------------------------------------------------------------- shadow memory

# A segment's state: (writer engine or -1, writer seq, writer label, reader seqs, reader labels)
_Seg = tuple[int, int, str, tuple[int, ...], tuple[str, ...]]


class _Shadow(StepMap):
    """Last write and last read per engine, over byte ranges of one level."""

    def __init__(self, n: int) -> None:
        self.empty: _Seg = (-1, 0, "", (0,) * n, ("",) * n)
        super().__init__(self.empty)

    def segments(self, lo: int, hi: int) -> Iterator[tuple[int, int, _Seg]]:
        keys, vals = self.keys, self.vals
        i = bisect.bisect_right(keys, lo) - 1
        while i < len(keys) and keys[i] < hi:
            end = keys[i + 1] if i + 1 < len(keys) else 1 << 62
            yield max(lo, keys[i]), min(hi, end), vals[i]
            i += 1

    def read(self, lo: int, hi: int, eng: int, seq: int, label: str) -> None:
        i, j = self._split(lo), self._split(hi)
        vals = self.vals
        for k in range(i, j):
            w, ws, wl, rs, rl = vals[k]
            if rs[eng] != seq:
                rs = rs[:eng] + (seq,) + rs[eng + 1:]
                rl = rl[:eng] + (label,) + rl[eng + 1:]
                vals[k] = (w, ws, wl, rs, rl)

    def write(self, lo: int, hi: int, eng: int, seq: int, label: str) -> None:
        self.assign(lo, hi, (eng, seq, label, self.empty[3], self.empty[4]))


# --------------------------------------------------------------------------- tracker

Clock = tuple[int, ...]


class HazardTracker:
    """Vector-clock race detection over one run (``mode="check"``) or wait inference
    (``mode="infer"``, which samples ``SAMPLE_ITERS`` iterations of each loop)."""

    def __init__(self, names: list[str], mode: str = "check") -> None:
        assert mode in ("check", "infer")
        self.names = names
        self.n = len(names)
        self.mode = mode
        self.issued = [0] * self.n
        # per engine: seq at the end of each recorded block, and the block's clock
        self.block_end: list[list[int]] = [[] for _ in names]
        self.block_clock: list[list[Clock]] = [[] for _ in names]
        self.shadow: dict[str, _Shadow] = {}
        self.inferred: dict[int, dict[int, int]] = {}  # id(leaf) -> engine -> pending
        self.last_seq: dict[int, int] = {}  # id(leaf) -> seq of its latest instance

    # -- clocks ------------------------------------------------------------------
    def _clock_of(self, e: int, seq: int) -> Clock:
        """Clock of instance ``seq`` of engine ``e`` (component e exactly ``seq``)."""
        ends = self.block_end[e]
        i = bisect.bisect_left(ends, seq)
        if i == len(ends):
            i -= 1
        c = self.block_clock[e][i]
        return c[:e] + (seq,) + c[e + 1:]

    def _start_clock(self, leaf: Leaf, waits: list[tuple[int, int]]) -> list[int]:
        f = leaf.engine
        clock = list(self.block_clock[f][-1]) if self.block_clock[f] else [0] * self.n
        for e, k in waits:
            s = self.issued[e] - k
            if s >= 1 and clock[e] < s:
                for g, v in enumerate(self._clock_of(e, s)):
                    if v > clock[g]:
                        clock[g] = v
        return clock

    def _record(self, f: int, count: int, clock: list[int]) -> int:
        self.issued[f] += count
        seq = self.issued[f]
        clock[f] = seq
        self.block_end[f].append(seq)
        self.block_clock[f].append(tuple(clock))
        return seq

    # -- one instance --------------------------------------------------------------
    def step(self, leaf: Leaf, it: tuple[int, ...], count: int = 1,
             inner: tuple[int, ...] = ()) -> None:
        """Account one instance of ``leaf`` at loop iteration ``it`` (``count`` > 1: a
        vectorized loop of ``count`` instances over the trailing loop dims ``inner``)."""
        waits = leaf.waits
        if self.mode == "infer":
            extra = self.inferred.get(id(leaf))
            if extra:
                waits = list(extra.items())
        clock = self._start_clock(leaf, waits)
        f = leaf.engine
        ranges = []
        for sp in leaf.spans:
            lo, hi = sp.over(it, it + inner) if inner else sp.at(it)
            if hi > lo:
                ranges.append((sp, lo, hi))
        for sp, lo, hi in ranges:
            shadow = self.shadow.get(sp.level)
            if shadow is None:
                continue
            for seg_lo, seg_hi, (w, ws, wl, rs, rl) in shadow.segments(lo, hi):
                if sp.write:  # the most recent conflicts first: readers of the old data
                    for g, rseq in enumerate(rs):
                        if g != f and rseq and clock[g] < rseq:
                            clock = self._conflict(leaf, clock, g, rseq, rl[g], sp, seg_lo,
                                                   seg_hi, "read", it)
                if w >= 0 and w != f and clock[w] < ws:
                    clock = self._conflict(leaf, clock, w, ws, wl, sp, seg_lo, seg_hi,
                                           "write", it)
        seq = self._record(f, count, clock)
        self.last_seq[id(leaf)] = seq
        for sp, lo, hi in ranges:
            shadow = self.shadow.setdefault(sp.level, _Shadow(self.n))
            if sp.write:
                shadow.write(lo, hi, f, seq, leaf.label)
            else:
                shadow.read(lo, hi, f, seq, leaf.label)

    def _conflict(self, leaf: Leaf, clock: list[int], e: int, seq: int, other: str, sp: Span,
                  lo: int, hi: int, other_kind: str, it: tuple[int, ...]) -> list[int]:
        if self.mode == "infer":
            pending = self.issued[e] - seq
            waits = self.inferred.setdefault(id(leaf), dict(leaf.waits))
            waits[e] = min(waits.get(e, pending), pending)
            for g, v in enumerate(self._clock_of(e, seq)):
                clock[g] = max(clock[g], v)
            return clock
        where = f" at iteration {it}" if it else ""
        rng = f"bytes [{lo}, {hi}) of {sp.level}"
        eng = self.names[e]
        if not sp.write:
            what = (f"reads {rng} before the DMA that writes them completed ({other} on {eng}); "
                    f"no wait on {eng} orders them" if eng.startswith("dma") else
                    f"reads {rng} before {eng} finished writing them ({other}); no wait on {eng}")
        elif other_kind == "read":
            what = (f"writes {rng} still being read by an in-flight DMA ({other} on {eng})"
                    if eng.startswith("dma") else
                    f"writes {rng} while {eng} may still read them ({other})")
        else:
            what = f"writes {rng} while {other} on {eng} may still be writing them"
        raise MachineError(f"hazard: {leaf.label}{where} {what}")

    # -- whole programs ------------------------------------------------------------
    def run(self, nodes: list[Leaf | LoopNode], it: tuple[int, ...] = ()) -> None:
        """Follow ``nodes`` (infer mode: sampling loops)."""
        for node in nodes:
            if isinstance(node, Leaf):
                self.step(node, it)
            else:
                self.loop(node, it)

    def loop(self, node: LoopNode, prefix: tuple[int, ...]) -> None:
        trips = tuple(node.instr.trips)
        n = math.prod(trips)
        if len(node.body) == 1 and isinstance(node.body[0], Leaf):
            # one engine runs every iteration in order: one block of n instances
            self.step(node.body[0], prefix, n, trips)
            return
        k = n if self.mode == "check" else min(n, SAMPLE_ITERS)
        before = list(self.issued)
        for inner in itertools.islice(itertools.product(*map(range, trips)), k):
            before = list(self.issued)
            self.run(node.body, prefix + inner)
        if n <= k:
            return
        # infer: the remaining iterations repeat the last one (same waits, same engines)
        per_iter = [a - b for a, b in zip(self.issued, before, strict=True)]
        for e, c in enumerate(per_iter):
            if c:
                clock = list(self.block_clock[e][-1])
                self._record(e, (n - k) * c, clock)
        full = prefix + trips
        for leaf in node.leaves:
            seq = self.last_seq.get(id(leaf), 0) + (n - k) * per_iter[leaf.engine]
            self.last_seq[id(leaf)] = seq
            for sp in leaf.spans:
                lo, hi = sp.over(prefix, full)
                if hi <= lo:
                    continue
                shadow = self.shadow.setdefault(sp.level, _Shadow(self.n))
                if sp.write:
                    shadow.write(lo, hi, leaf.engine, seq, leaf.label)
                else:
                    shadow.read(lo, hi, leaf.engine, seq, leaf.label)


def check_program(program: Program) -> None:
    """Raise ``MachineError`` naming the first hazard of an asynchronous program (no-op for
    synchronous ones). Needs no data: the result depends only on addresses and waits."""
    if not is_async(program):
        return
    names = engines(Target.from_json(program.target or {}).dma_queues)
    HazardTracker(names, "check").run(build(program.instructions, names))


def is_async(program: Program) -> bool:
    """True if ``program`` uses the asynchronous semantics (``meta["async"]``)."""
    return isinstance(program.meta, dict) and bool(program.meta.get("async"))


def infer_waits(instrs: list[Instr], dma_queues: int) -> None:
    """Set every instruction's ``waits`` to what its hazards need (tightest pending counts
    seen over the sampled iterations, merged with the waits it already had)."""
    names = engines(dma_queues)
    tree = build(instrs, names)
    tracker = HazardTracker(names, "infer")
    tracker.run(tree)
    for leaf in _leaves(tree):
        waits = tracker.inferred.get(id(leaf))
        if waits:
            leaf.instr.waits = {names[e]: int(k) for e, k in sorted(waits.items())}


def _leaves(nodes: list[Leaf | LoopNode]) -> Iterator[Leaf]:
    for node in nodes:
        if isinstance(node, Leaf):
            yield node
        else:
            yield from node.leaves
