"""Where prefill time goes at kernel boundaries: per op, the TTU idle time before its
first TTU instruction and what that instruction (and the chain behind it) waited for.

For each instruction the timing model schedules, the constraint that set its start is
recorded (its engine's previous instruction, a semaphore wait on another engine, a
read-after-write / write-after-read hazard on a byte range, or the shared bandwidth of
a DMA's transfer); following those links back from each op's first TTU instruction
until it reaches an earlier op says why the TTU idled at the boundary. Deterministic
(the analytic machine model), shape-only Llama-3-8B prefill:

    python bench/boundaries.py [--layers 1] [--format mxfp4] [--chain 6] [-q]
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import maiac
from maiac import models, progress
from maiac.runtime import timing
from maiac.runtime.target import get_target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from schedule import op_bound  # noqa: E402


def _instrumented(record: dict[int, tuple[str, float, int | None]]) -> Any:
    """A ``_Sim.leaf`` that records, per event index, (reason, time, the event it
    waited for or None) for the latest of the constraints on its start."""
    orig = timing._Sim.leaf
    end_of_event: dict[float, int] = {}

    def leaf(self: Any, lf: Any, it: tuple[int, ...]) -> float:
        free = self.free[lf.engine]
        cands: list[tuple[float, str, int | None]] = [
            (free, f"engine {lf.engine} busy", end_of_event.get(free))]
        for e, k in lf.waits:
            seq = self.issued[e] - k
            if seq >= 1:
                cands.append((self._end_of(e, seq), f"wait {e}", self.event_of.get((e, seq))))
        for f in lf.reads:
            lo, hi = f.at(it)
            t = self.wf[f.level].query(lo, hi)
            cands.append((t, f"RAW {f.level}", end_of_event.get(t)))
        for f in lf.writes:
            lo, hi = f.at(it)
            t = self.af[f.level].query(lo, hi)
            cands.append((t, f"WAR/WAW {f.level}", end_of_event.get(t)))
        best = max(cands, key=lambda c: c[0])
        index = len(self.events)
        end = orig(self, lf, it)
        record[index] = (best[1], best[0], best[2])
        end_of_event[end] = index
        return end

    return leaf


def analyse(layers: int, fmt: str, target: str = "maia200") -> dict[str, Any]:
    model = models.llama_decoder(models.LLAMA3_8B, weights="shape_only", layers=layers,
                                 mode="prefill", seq=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = maiac.compile(model, quant=None if fmt == "fp32" else fmt,
                                 shape_only=True, target=target)
    record: dict[int, tuple[str, float, int | None]] = {}
    orig = timing._Sim.leaf
    timing._Sim.leaf = _instrumented(record)  # type: ignore[method-assign]
    try:
        rep = timing.simulate(compiled.program)
    finally:
        timing._Sim.leaf = orig  # type: ignore[method-assign]
    return {"report": rep, "record": record, "target": get_target(target)}


def boundaries(result: dict[str, Any], chain: int) -> list[dict[str, Any]]:
    rep, record = result["report"], result["record"]
    events = rep.events
    first_ttu: dict[str, int] = {}
    last_ttu_end: dict[str, float] = {}
    for i, e in enumerate(events):
        if e.engine != "ttu" or e.kind == "loop":
            continue
        first_ttu.setdefault(e.name, i)
        last_ttu_end[e.name] = max(last_ttu_end.get(e.name, 0.0), e.start + e.dur)
    order = [op["name"] for op in rep.to_json()["ops"]]
    out = []
    prev_end = None
    prev_name = None
    for name in order:
        if name not in first_ttu:
            continue
        i = first_ttu[name]
        e = events[i]
        idle = e.start - prev_end if prev_end is not None else 0.0
        links = []
        j: int | None = i
        for _ in range(chain):
            if j is None or j not in record:
                break
            reason, t, pred = record[j]
            ev = events[j]
            links.append({"event": j, "op": ev.name, "engine": ev.engine, "kind": ev.kind,
                          "start": ev.start, "dur": ev.dur, "reason": reason, "at": t,
                          "pred": pred})
            j = pred
        firsts = {}
        for q, ev in enumerate(events):
            if ev.name == name and ev.engine not in firsts and ev.kind != "loop":
                firsts[ev.engine] = q
        out.append({"op": name, "prev": prev_name, "ttu_idle": idle, "chain": links,
                    "firsts": {e: (events[q].start, record.get(q, ("?", 0.0, None)))
                               for e, q in sorted(firsts.items())}})
        prev_end = last_ttu_end[name]
        prev_name = name
    return out


def per_op(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per op: modeled window, calibrated bound, TTU busy inside the op's own events."""
    rep = result["report"].to_json()
    rows = []
    for op in rep["ops"]:
        rows.append({"op": op["name"], "kind": op["kind"], "time": op["time_s"],
                     "bound": op_bound(op, result["target"]),
                     "ttu": op["busy_s"].get("ttu", 0.0), "tvp": op["busy_s"].get("tvp", 0.0)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = progress.argument_parser(__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--format", default="mxfp4")
    ap.add_argument("--chain", type=int, default=6, help="links followed back per op")
    ap.add_argument("--target", default="maia200")
    args = ap.parse_args(argv)
    with progress.step(f"boundaries: compile and time {args.layers} layer(s) {args.format}"):
        result = analyse(args.layers, args.format, args.target)
    rows = per_op(result)
    print("| op | kind | modeled us | bound us | gap us | ttu busy us | tvp busy us |")
    print("|---|---|---|---|---|---|---|")
    kinds: dict[str, float] = defaultdict(float)
    for r in rows:
        kinds[r["kind"] or "other"] += r["time"] - r["bound"]
        print(f"| {r['op']} | {r['kind']} | {r['time'] * 1e6:.2f} | {r['bound'] * 1e6:.2f} "
              f"| {(r['time'] - r['bound']) * 1e6:.2f} | {r['ttu'] * 1e6:.2f} "
              f"| {r['tvp'] * 1e6:.2f} |")
    print("gap per kind (us): " + ", ".join(f"{k} {v * 1e6:.1f}" for k, v in kinds.items()))
    print()
    total = 0.0
    events = result["report"].events
    for b in boundaries(result, args.chain):
        total += max(b["ttu_idle"], 0.0)
        print(f"{b['op']}: TTU idle {b['ttu_idle'] * 1e6:.2f} us after {b['prev']}")
        for eng, (t0, (why, at, pred)) in b["firsts"].items():
            pe = events[pred] if pred is not None else None
            print(f"    first {eng} at {t0 * 1e6:.2f} <- {why} @{at * 1e6:.2f} "
                  f"({pe.name + ' ' + pe.engine if pe else '-'})")
        for lk in b["chain"]:
            print(f"    #{lk['event']} {lk['op']} {lk['engine']} {lk['kind']} "
                  f"[{lk['start'] * 1e6:.2f} +{lk['dur'] * 1e6:.2f}] <- {lk['reason']} "
                  f"@{lk['at'] * 1e6:.2f} (#{lk['pred']})")
    print(f"total TTU idle at op boundaries: {total * 1e6:.2f} us")


if __name__ == "__main__":
    main()
