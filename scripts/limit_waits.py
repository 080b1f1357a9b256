"""Bring stored `.maia` programs written before the wait limit within it, in place.

    python scripts/limit_waits.py FILE.maia [...]

Only the manifest's instructions change (runtime/barriers.py: barriers inserted, waits
inferred again); constants, buffers and every other zip member are copied byte for byte,
so the program computes the same numbers (tests/data/interpreter_golden/ was migrated
this way, its output digests unchanged).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from maiac.runtime import isa
from maiac.runtime.barriers import limit_waits
from maiac.runtime.program import MANIFEST
from maiac.runtime.target import Target


def migrate(path: Path) -> int:
    """Rewrite ``path``; the number of barriers inserted."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    out = []
    added = 0
    for info, data in members:
        if info.filename == MANIFEST:
            m = json.loads(data)
            target = Target.from_json(m["target"])
            instrs = [isa.instr_from_json(i) for i in m["instructions"]]
            added = limit_waits(instrs, target.dma_queues, target.max_waits,
                                reinfer=bool(m["meta"].get("async")))
            m["instructions"] = [isa.instr_to_json(i) for i in instrs]
            data = json.dumps(m, separators=(",", ":")).encode()
        out.append((info, data))
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for info, data in out:
            zf.writestr(info, data)
    tmp.replace(path)
    return added


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {migrate(Path(name))} barriers")
