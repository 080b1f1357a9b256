"""The KV-cache interface of a decoder graph, and the rewrites `generate`/`perf` apply to it.

A decoder exported "with past" (optimum's ``text-generation-with-past``, the llama builder in
maiac.models) takes ``past_key_values.{i}.key|value`` [batch, kv_heads, past, head_dim] and
returns ``present.{i}.key|value`` = Concat(past, new) on the sequence axis. Run as is, every
step would write the whole cache back out. For generation on the machine the cache is a
fixed-capacity buffer that stays in HBM between steps (maiac/generate.py), so:

* :func:`cache_in_place` (the default) adds a ``cache_position`` input and drops the
  presents: the `kv-cache-inplace` pass makes the decode program write its new rows into
  the resident cache itself (Concat(past, new) exports, and GroupQueryAttention ones, whose
  op it marks for that);
* :func:`new_slots_only` (the fallback) makes each ``present`` output just this step's
  keys/values (the Concat's second operand) — the generation loop writes them into the
  resident cache at the sequence's length; attention still reads Concat(cache, new) with
  the unused capacity masked by ``attention_mask``;
* :func:`store_cache_as` keeps the cache in bf16 or fp8 (E4M3): past inputs of that type
  with a Cast to fp32 after, present outputs cast to it, so the modeled HBM traffic of the
  cache is that of its storage format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from maiac.importers.contrib import IN_PLACE_CACHE
from maiac.passes.kv_cache_inplace import POSITION_INPUT
from maiac.runtime.errors import MaiacError

KV_DTYPES = {"fp32": TensorProto.FLOAT, "bf16": TensorProto.BFLOAT16,
             "fp8": TensorProto.FLOAT8E4M3FN}
# past input name -> the present output name exporters give it
_PAST_PATTERNS = (
    (re.compile(r"^past_key_values\.(\d+)\.(key|value)$"), "present.{0}.{1}"),
    (re.compile(r"^past_(key|value)_(\d+)$"), "present_{0}_{1}"),
    (re.compile(r"^past\.(\d+)\.(key|value)$"), "present.{0}.{1}"),
)


@dataclass(frozen=True)
class KVPair:
    past: str      # graph input [batch, kv_heads, past, head_dim]
    present: str   # graph output, the cache after this step


def kv_pairs(model: onnx.ModelProto) -> list[KVPair]:
    """The (past input, present output) pairs of a decoder, in input order."""
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for inp in model.graph.input:
        for pattern, present in _PAST_PATTERNS:
            if (m := pattern.match(inp.name)) is not None:
                name = present.format(*m.groups())
                if name not in outputs:
                    raise MaiacError(f"decoder input {inp.name!r} has no matching output "
                                     f"{name!r}: cannot keep its KV cache")
                pairs.append(KVPair(inp.name, name))
                break
    return pairs


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _rename_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _concat_of(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto],
               pair: KVPair) -> onnx.NodeProto | None:
    """The Concat(past, new) on the sequence axis that makes ``present``, if it is one."""
    node = producers.get(pair.present)
    if node is not None and node.op_type == "Identity":  # present = Identity(Concat)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Concat" or len(node.input) != 2 \
            or node.input[0] != pair.past:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    return node if axis in (2, -2) else None


def appends(model: onnx.ModelProto) -> bool:
    """True if every present is Concat(past, new): the new slots come after the past.
    Otherwise (a GroupQueryAttention-style op) the new keys/values are written at the
    sequence's length inside a present as long as past + new."""
    producers = _producers(model)
    return all(_concat_of(model, producers, p) is not None for p in kv_pairs(model))


def new_slots_only(model: onnx.ModelProto) -> list[str]:
    """Make every ``present`` output of a Concat(past, new) just ``new`` (in place).

    Returns the present names rewritten; a present made some other way (e.g. a contrib
    attention op that updates a shared buffer) is left whole.
    """
    producers = _producers(model)
    outputs = {o.name: o for o in model.graph.output}
    done = []
    for pair in kv_pairs(model):
        node = _concat_of(model, producers, pair)
        if node is None:
            continue
        writer = producers[pair.present]
        inner = f"{pair.present}/concat"
        writer.output[0] = inner
        _rename_uses(model, pair.present, inner)
        model.graph.node.append(helper.make_node("Identity", [node.input[1]], [pair.present],
                                                 name=f"{pair.present}/new_slots"))
        dims = outputs[pair.present].type.tensor_type.shape.dim
        dims[2].Clear()
        dims[2].dim_param = "sequence_length"
        done.append(pair.present)
    return done


def cache_in_place(model: onnx.ModelProto) -> None:
    """Prepare a decode-step graph for the in-place cache (in place).

    Adds the input ``cache_position`` [batch] (each sequence's length: the slot its new
    keys/values go to) and drops the ``present`` outputs with the nodes only they used;
    the `kv-cache-inplace` pass (passes/kv_cache_inplace.py) then turns every
    Concat(past, new) read by attention into a write of the new rows into the resident
    cache at that slot plus attention over the cache. Every present must be a
    Concat(past, new) (:func:`appends`) or made by a GroupQueryAttention, which is marked
    ``maiac_in_place_cache`` (its expansion then reads ``Concat(past, new)`` with the new
    keys seen at slot ``past length = cache_position``: maiac/importers/contrib.py).
    """
    pairs = kv_pairs(model)
    pasts = {p.past for p in pairs}
    pasts |= {n.output[0] for n in model.graph.node  # a narrow cache's load (store_cache_as)
              if n.op_type == "Cast" and n.input[0] in pasts}
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and pasts & set(node.input[3:5]):
            node.attribute.append(helper.make_attribute(IN_PLACE_CACHE, 1))
            node.output[1:] = [""] * (len(node.output) - 1)
    presents = {p.present for p in pairs}
    kept = [o for o in model.graph.output if o.name not in presents]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    batch = next(i for i in model.graph.input if i.name == "input_ids") \
        .type.tensor_type.shape.dim[0]
    position = helper.make_tensor_value_info(POSITION_INPUT, TensorProto.INT64, [None])
    position.type.tensor_type.shape.dim[0].CopyFrom(batch)
    model.graph.input.append(position)
    _drop_dead_nodes(model)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    live = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))


def store_cache_as(model: onnx.ModelProto, kv_dtype: str) -> None:
    """Store the cache (past inputs, present outputs) in ``kv_dtype`` (in place)."""
    if kv_dtype not in KV_DTYPES:
        raise MaiacError(f"--kv-cache must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
    elem = KV_DTYPES[kv_dtype]
    if elem == TensorProto.FLOAT:
        return
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    casts = []
    pairs = kv_pairs(model)
    for pair in pairs:
        f32 = f"{pair.past}/fp32"
        _rename_uses(model, pair.past, f32)
        casts.append(helper.make_node("Cast", [pair.past], [f32], to=TensorProto.FLOAT,
                                      name=f"{pair.past}/load"))
        inputs[pair.past].type.tensor_type.elem_type = elem
    # a prefill graph has presents but no pasts
    presents = [p.present for p in pairs] or [o for o in outputs if o.startswith("present")]
    for present in presents:
        inner = f"{present}/fp32"
        for node in model.graph.node:
            node.output[:] = [inner if o == present else o for o in node.output]
        _rename_uses(model, present, inner)
        model.graph.node.append(helper.make_node("Cast", [inner], [present], to=elem,
                                                 name=f"{present}/store"))
        outputs[present].type.tensor_type.elem_type = elem
    # Cast of float8 needs opset 19; the casts go first so they precede their users
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if elem == TensorProto.FLOAT8E4M3FN:
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 19:
                op.version = 19
        model.ir_version = max(model.ir_version, 9)
