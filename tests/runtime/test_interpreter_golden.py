"""The interpreter's outputs stay bit-identical: stored programs give the stored bytes.

tests/data/interpreter_golden/ was written by make_interpreter_golden.py with the
interpreter of the commit named in golden.json (before the speed work of issue 12); any
change to how the interpreter batches or copies must reproduce those bytes exactly.
A case added later (a new layout the tiler emits) names the commit that wrote it in its
own entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from maiac.runtime.interpreter import run_program
from maiac.runtime.program import load_program

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "interpreter_golden"
INDEX = json.loads((GOLDEN / "golden.json").read_text())["programs"]


@pytest.mark.parametrize("name", sorted(INDEX))
def test_same_bytes_as_before(name: str) -> None:
    program = load_program(GOLDEN / f"{name}.maia")
    with np.load(GOLDEN / f"{name}.inputs.npz") as npz:
        feeds = {k: npz[k] for k in npz.files}
    for attempt in range(2):  # a second run on the cached machine gives the same bytes
        outs = run_program(program, feeds)
        assert set(outs) == set(INDEX[name]["outputs"])
        for out, want in INDEX[name]["outputs"].items():
            got = outs[out]
            assert (str(got.dtype), list(got.shape)) == (want["dtype"], want["shape"])
            digest = hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest()
            assert digest == want["sha256"], f"{name}:{out} run {attempt} changed bytes"
