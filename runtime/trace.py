"""Chrome / Perfetto trace of a timing report: one track (tid) per engine, times in µs.

Open the JSON in ``chrome://tracing`` or https://ui.perfetto.dev.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maiac.runtime.timing import TimingReport


def chrome_trace(report: TimingReport) -> dict[str, Any]:
    """The trace as a dict: ``traceEvents`` with "X" events and thread-name metadata.

    Built from the timing model alone (no data: shape-only programs work). Each event is
    named by its op; ``args`` hold the instruction, bytes moved, HBM bytes, FLOPs, number
    format, and the op's bound (compute/memory/network).
    """
    engines = [e["name"] for e in report.engines]
    for ev in report.events:
        if ev.engine not in engines:
            engines.append(ev.engine)
    tid = {name: i + 1 for i, name in enumerate(engines)}
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": 0, "pid": 1, "tid": 0,
         "args": {"name": f"maiac {report.target} (modeled)"}},
    ]
    for name, t in tid.items():
        events.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": t,
                       "args": {"name": name}})
        events.append({"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": 1, "tid": t,
                       "args": {"sort_index": t}})
    # each event also carries its op's roofline verdict and kind (the report's op row)
    op_rows = {o["name"]: o for o in report.ops}
    for ev in report.events:
        row = op_rows.get(ev.name, {})
        args = {**ev.args, "bound": row.get("bound"), "op_kind": row.get("kind")}
        events.append({"name": ev.name, "cat": ev.kind, "ph": "X", "pid": 1,
                       "tid": tid[ev.engine], "ts": ev.start * 1e6, "dur": ev.dur * 1e6,
                       "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {k: v for k, v in report.to_json().items() if k != "ops"}}


def write_chrome_trace(report: TimingReport, path: str | os.PathLike[str]) -> None:
    """Write ``chrome_trace(report)`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(chrome_trace(report), separators=(",", ":")))
