"""Pre-quantized graphs: QuantizeLinear / DequantizeLinear and onnxruntime's integer ops."""

from __future__ import annotations

from collections.abc import Callable

from maiac.importers.graph_builder import Expansion

EXPANSIONS: dict[tuple[str, str], Callable[[Expansion], None]] = {}
