"""Which ONNX ops maiac supports: the whole gap of a model at once, and the op table.

The importer calls ``unsupported_ops`` before anything else, so a model that cannot
compile names every unsupported op type with its count and first node in one error
(``3 unsupported op types: CumSum (1, first '/embeddings/CumSum'), ...``) instead of
stopping at the first. ``maiac ops`` prints ``supported_table()``; ``maiac ops
MODEL.onnx`` prints ``model_table()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from maiac.runtime.errors import MaiacError

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class OpUse:
    """One op type as a model uses it."""

    domain: str
    op_type: str
    count: int
    first: str  # the first node's name (or first output)
    reason: str = ""  # why it is not supported ("" when it is)

    @property
    def key(self) -> str:
        return self.op_type if self.domain in DEFAULT_DOMAINS else f"{self.domain}.{self.op_type}"


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "")


def why_unsupported(node: onnx.NodeProto) -> str:
    """"" when maiac supports the node, else the reason (as a short phrase)."""
    from maiac.importer import SUPPORTED_OPS
    from maiac.ir.onnx import ONNX_OPS

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for a in node.attribute):
        return "has subgraphs (control flow)"
    if node.op_type not in SUPPORTED_OPS or node.op_type not in ONNX_OPS:
        return "not supported"
    return ""


def op_uses(nodes: Iterable[onnx.NodeProto]) -> list[OpUse]:
    """Every op type of ``nodes`` in first-use order, with count, first node, reason."""
    uses: dict[tuple[str, str], OpUse] = {}
    for node in nodes:
        key = (node.domain, node.op_type)
        use = uses.get(key)
        if use is None:
            uses[key] = OpUse(node.domain, node.op_type, 1, _label(node), why_unsupported(node))
        else:
            use.count += 1
            if not use.reason:
                use.reason = why_unsupported(node)
    return list(uses.values())


def unsupported_ops(nodes: Iterable[onnx.NodeProto]) -> list[OpUse]:
    return [u for u in op_uses(nodes) if u.reason]


def unsupported_message(missing: list[OpUse], label: str) -> str:
    """One line naming every unsupported op type, its count and first node."""
    parts = []
    for use in missing:
        extra = "" if use.reason == "not supported" else f", {use.reason}"
        parts.append(f"{use.key} ({use.count}, first '{use.first}'{extra})")
    noun = "op type" if len(missing) == 1 else "op types"
    return f"{len(missing)} unsupported {noun}: {', '.join(parts)} (in {label})"


def check_supported(nodes: list[onnx.NodeProto], label: str) -> None:
    missing = unsupported_ops(nodes)
    if missing:
        raise MaiacError(unsupported_message(missing, label))


def opset_versions(op_type: str, domain: str = "") -> list[int]:
    """The opset versions at which the op's schema changed (each one is accepted)."""
    return sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                   if s.name == op_type and s.domain == domain})


def how_lowered(op_type: str) -> str:
    """``lowered`` (runs on runtime data), or ``folded`` (only when its inputs are constant
    or, like Shape and Size, its result depends on shapes alone)."""
    from maiac.passes.lower_onnx import all_rules

    return "lowered" if op_type in all_rules() else "folded"


def supported_table() -> list[dict[str, object]]:
    """One row per supported op type: name, opset versions, how it runs."""
    from maiac.importer import SUPPORTED_OPS

    return [{"op": op, "opsets": opset_versions(op) or ["contrib"], "how": how_lowered(op)}
            for op in sorted(SUPPORTED_OPS)]


def model_table(path: str) -> list[dict[str, object]]:
    """One row per op type of the model at ``path``: count, first node, supported or why not."""
    from pathlib import Path

    if not Path(path).is_file():
        raise MaiacError(f"{path}: no such ONNX model file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, onnx may raise others
        raise MaiacError(f"{path}: not a valid ONNX model ({type(err).__name__})") from None
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    opsets = {("" if o.domain in DEFAULT_DOMAINS else o.domain): o.version
              for o in proto.opset_import}
    rows = []
    for use in op_uses(proto.graph.node):
        domain = "" if use.domain in DEFAULT_DOMAINS else use.domain
        rows.append({"op": use.key, "opset": opsets.get(domain), "count": use.count,
                     "first": use.first, "supported": not use.reason,
                     "how": how_lowered(use.op_type) if not use.reason else use.reason})
    return rows
