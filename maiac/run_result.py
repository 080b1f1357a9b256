"""What ``maiac run`` did, for one program or a chip group: its ``--json`` form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunResult:
    feeds: dict[str, Any]
    outputs: dict[str, Any]
    run_s: float
    written: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # chips, backend, modeled time

    def to_json(self, program: str, random_inputs: bool, seed: int) -> dict[str, Any]:
        return {"program": program, "random_inputs": random_inputs, "seed": seed,
                "run_s": self.run_s,
                "inputs": [array_json(k, v) for k, v in self.feeds.items()],
                "outputs": [array_json(k, v) for k, v in self.outputs.items()],
                "written": self.written, **self.extra}


def array_json(name: str, value: Any) -> dict[str, Any]:
    """An array's name, shape, dtype and finite range."""
    arr = np.asarray(value)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind in "fc" else arr
    return {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "nonfinite": int(arr.size - finite.size)}
